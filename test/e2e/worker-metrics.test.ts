import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshDb } from '../helpers/db.js';
import { cairn, ensureBuilt, until, type Proc } from '../helpers/bin.js';
import type { Db } from '../../src/db/types.js';
import { createCircle } from '../../src/store/circles.js';
import { createElement } from '../../src/elements/service.js';
import { getType, operationsOf, typeLookup } from '../../src/elements/registry.js';
import { getElement } from '../../src/store/elements.js';
import { submitRun } from '../../src/engine/submit.js';
import { getRun } from '../../src/store/runs.js';
import { createToken } from '../../src/store/tokens.js';

/**
 * A `cairn worker` serves /metrics of its own (issue 14, R-OTEL): the same registry and auth as
 * `cairn serve`'s, with the runs it settled counted and timed by kind and status (no run ids).
 */
describe('cairn worker --metrics-port', () => {
  let db: Db;
  let drop: () => Promise<void>;
  let worker: Proc;
  let metricsUrl: string;
  let admin: string;

  beforeAll(async () => {
    ensureBuilt();
    const h = await freshDb('pg');
    db = h.db;
    drop = h.drop;
    admin = (await createToken(db, { circleId: null, role: 'admin', name: 'scraper' })).token;
    worker = cairn(['worker', '--json', '--metrics-port', '0'], {
      DATABASE_URL: h.url!,
      CAIRN_POLL_MS: '100',
    });
    metricsUrl = await until(
      async () => {
        const line = worker
          .output()
          .split('\n')
          .find((l) => l.startsWith('{"event":"worker"'));
        return line ? (JSON.parse(line) as { metrics_url: string }).metrics_url : undefined;
      },
      60_000,
      `the worker to start\n${worker.output()}`,
    );
  }, 120_000);

  afterAll(async () => {
    worker?.child.kill('SIGKILL');
    await drop?.();
  });

  it('counts and times the runs it settled, for an instance-admin token only', async () => {
    const circle = await createCircle(db, 'metered', 1_000_000_000);
    await createElement(
      db,
      circle,
      { element_type: 'sql', slug: 'one', spec: { query: 'select 1 as n' } },
      'test',
      typeLookup,
    );
    const el = (await getElement(db, circle.id, 'one'))!;
    const type = getType('sql');
    const op = operationsOf(type).find((o) => o.name === 'invoke')!;
    const ids: string[] = [];
    for (let i = 0; i < 3; i++)
      ids.push(
        (
          await submitRun(
            db,
            {
              circle,
              element: el,
              type,
              op,
              input: {},
              trigger: { type: 'manual', source: null, actor: 'test' },
            },
            {},
          )
        ).run.id,
      );
    await until(
      async () =>
        (await Promise.all(ids.map((id) => getRun(db, id)))).every((r) => r?.status === 'succeeded'),
      30_000,
      'the runs to succeed',
    );
    const anon = await fetch(metricsUrl);
    expect(anon.status).toBe(401);
    expect(((await anon.json()) as { error: { code: string } }).error.code).toBe('UNAUTHENTICATED');
    const other = await fetch(metricsUrl.replace('/metrics', '/other'), {
      headers: { authorization: `Bearer ${admin}` },
    });
    expect(other.status).toBe(404);
    const r = await fetch(metricsUrl, { headers: { authorization: `Bearer ${admin}` } });
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toContain('text/plain');
    const text = await r.text();
    expect(text).toMatch(/cairn_runs_total\{kind="invoke",status="succeeded"\} 3\b/);
    expect(text).toMatch(/cairn_run_duration_seconds_count\{kind="invoke",status="succeeded"\} 3\b/);
    expect(text).toMatch(/cairn_run_queue_wait_seconds_count\{kind="invoke"\} 3\b/);
    expect(text).toContain('cairn_process_cpu_seconds_total');
    for (const id of ids) expect(text).not.toContain(id);
  }, 60_000);
});

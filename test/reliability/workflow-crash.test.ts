import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pgWithCircle } from '../helpers/db.js';
import { ensureBuilt, until, workerProcs } from '../helpers/bin.js';
import type { Db } from '../../src/db/types.js';
import { circleIdentity, type CircleRow } from '../../src/store/circles.js';
import { typeLookup } from '../../src/elements/registry.js';
import { createElement } from '../../src/elements/service.js';
import { getElement } from '../../src/store/elements.js';
import { triggerWorkflow } from '../../src/engine/workflow-submit.js';
import { getRun } from '../../src/store/runs.js';
import { loadTasks } from '../../src/store/workflow.js';

/**
 * Workflows across worker processes (issue 12, reliability): a worker killed
 * with SIGKILL in the middle of a workflow — another worker finishes it, a
 * task safe to repeat runs again, one that is not fails with WORKER_LOST,
 * nothing stays running and every hold is released; and with two worker
 * processes, the tasks of one fan-out run on both.
 */
describe('workflows across worker processes', () => {
  let db: Db;
  let url: string;
  let drop: () => Promise<void>;
  let circle: CircleRow;
  const workers = workerProcs(() => url);
  const worker = (concurrency = 4) => workers.start(concurrency);
  const mk = (slug: string, element_type: string, spec: unknown) =>
    createElement(
      db,
      circle,
      { element_type, slug, spec: spec as Record<string, unknown> },
      'test',
      typeLookup,
    );
  const trigger = async (slug: string, parameters: Record<string, unknown> = {}) =>
    (
      await triggerWorkflow(db, {
        circle,
        element: (await getElement(db, circle.id, slug))!,
        parameters,
        trigger: { type: 'manual', source: null, actor: 'test' },
        snapshotExtra: {},
      })
    ).run.id;
  const ended = (id: string, ms = 60_000) =>
    until(
      async () => {
        const r = await getRun(db, id);
        return r && ['succeeded', 'failed', 'cancelled'].includes(r.status) ? r : undefined;
      },
      ms,
      `run ${id} to end`,
    );

  beforeAll(async () => {
    ensureBuilt();
    ({ db, url, drop, circle } = await pgWithCircle('wfrel'));
    await db.asCircle(circleIdentity(circle), (q) =>
      q.query('create table marks (at timestamptz default now())'),
    );
    await mk('slow-read', 'sql', { query: 'select 1 as done from pg_sleep(2)' });
    await mk('slow-write', 'sql', {
      query: 'insert into marks select now() from pg_sleep(2) returning 1 as done',
    });
    await mk('add-one', 'sql', { query: 'select $1::int + 1 as n' });
    await mk('nap', 'sql', { query: 'select $1::int as i from pg_sleep(0.4)' });
    await mk('crashy', 'workflow', {
      steps: [
        { name: 'read', element: 'slow-read' },
        { name: 'write', element: 'slow-write', continue_on_error: true },
        { name: 'then', element: 'add-one', input: { params: ['${{ steps.read.output.rows[0].done }}'] } },
      ],
      outputs: { n: '${{ steps.then.output.rows[0].n }}' },
    });
    await mk('fan', 'workflow', {
      concurrency: 16,
      steps: [
        { name: 'each', element: 'nap', for_each: [...Array(16).keys()], input: { params: ['${{ item }}'] } },
      ],
    });
  }, 120_000);

  afterAll(async () => {
    workers.killAll();
    await drop();
  });

  it('a worker killed mid-workflow: another finishes it; safe tasks re-run, unsafe ones fail WORKER_LOST', async () => {
    const id = await trigger('crashy');
    const a = worker();
    // Worker A holds the workflow and runs both of its first tasks.
    const lost = await until(
      async () => {
        const run = await getRun(db, id);
        const tasks = await loadTasks(db, id);
        const kids = await Promise.all(
          tasks.filter((t) => t.child_run_id).map(async (t) => (await getRun(db, t.child_run_id!))!),
        );
        return run?.worker_id &&
          kids.length === 2 &&
          kids.every((k) => k.status === 'running' && k.worker_id === run.worker_id)
          ? run.worker_id
          : undefined;
      },
      30_000,
      'worker A to orchestrate the workflow and run both tasks',
    );
    a.child.kill('SIGKILL');
    expect(await a.exited).toBeNull();
    worker();
    const run = await ended(id);
    expect(run.status, JSON.stringify(run.error)).toBe('succeeded');
    expect(run.worker_id).not.toBe(lost); // finished by the other worker
    expect(run.output).toEqual({ n: 2 });
    const tasks = Object.fromEntries((await loadTasks(db, id)).map((t) => [t.key, t]));
    // Safe to repeat: its child run was re-queued and ran again elsewhere.
    const read = (await getRun(db, tasks.read!.child_run_id!))!;
    expect(read.status).toBe('succeeded');
    expect(read.attempt).toBe(2);
    expect(read.worker_id).not.toBe(lost);
    expect(tasks.read!.status).toBe('succeeded');
    // Not safe to repeat: failed with WORKER_LOST (the step continues on error, so the run goes on).
    expect(tasks.write!.status).toBe('failed');
    expect(tasks.write!.error?.code).toBe('WORKER_LOST');
    expect(tasks.then!.status).toBe('succeeded');
    // Nothing stays running; nothing stays held.
    const left = await db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM cairn.runs WHERE root_run_id = $1 AND status IN ('queued', 'running', 'paused')`,
      [id],
    );
    expect(left.rows[0]!.n).toBe(0);
    const held = await db.query<{ held: string }>(
      `SELECT coalesce(sum(h.held), 0)::text AS held FROM cairn.run_holds h JOIN cairn.runs r ON r.id = h.run_id
       WHERE r.root_run_id = $1`,
      [id],
    );
    expect(Number(held.rows[0]!.held)).toBe(0);
  });

  it('with two worker processes, the tasks of one fan-out run on both', async () => {
    worker(4);
    worker(4);
    await new Promise((r) => setTimeout(r, 500));
    const id = await trigger('fan');
    const run = await ended(id);
    expect(run.status, JSON.stringify(run.error)).toBe('succeeded');
    const tasks = (await loadTasks(db, id)).filter((t) => /^each\[\d+\]$/.test(t.key));
    expect(tasks).toHaveLength(16);
    const workers = new Set<string>();
    for (const t of tasks) workers.add((await getRun(db, t.child_run_id!))!.worker_id!);
    expect(workers.size).toBeGreaterThanOrEqual(2);
  });
});

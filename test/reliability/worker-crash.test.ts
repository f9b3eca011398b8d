import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pgWithCircle } from '../helpers/db.js';
import { ensureBuilt, until, workerProcs } from '../helpers/bin.js';
import type { Db } from '../../src/db/types.js';
import type { CircleRow } from '../../src/store/circles.js';
import { typeLookup } from '../../src/elements/registry.js';
import { createElement } from '../../src/elements/service.js';
import { getElement } from '../../src/store/elements.js';
import { getType, operationsOf } from '../../src/elements/registry.js';
import { submitRun } from '../../src/engine/submit.js';
import { getRun, runEvents } from '../../src/store/runs.js';
import { circleIdentity } from '../../src/store/circles.js';

describe('a worker killed with SIGKILL while holding a run', () => {
  let db: Db;
  let url: string;
  let drop: () => Promise<void>;
  let circle: CircleRow;
  const workers = workerProcs(() => url);

  beforeAll(async () => {
    ensureBuilt();
    ({ db, url, drop, circle } = await pgWithCircle('rel'));
    await db.asCircle(circleIdentity(circle), (q) =>
      q.query('create table marks (at timestamptz default now())'),
    );
    await createElement(
      db,
      circle,
      { element_type: 'sql', slug: 'slow-read', spec: { query: 'select 1 as done from pg_sleep(2)' } },
      'test',
      typeLookup,
    );
    await createElement(
      db,
      circle,
      {
        element_type: 'sql',
        slug: 'slow-write',
        spec: { query: 'insert into marks select now() from pg_sleep(2) returning 1 as done' },
      },
      'test',
      typeLookup,
    );
  }, 120_000);

  afterAll(async () => {
    workers.killAll();
    await drop();
  });

  async function submit(slug: string) {
    const el = (await getElement(db, circle.id, slug))!;
    const type = getType('sql');
    const op = operationsOf(type).find((o) => o.name === 'invoke')!;
    const { run } = await submitRun(
      db,
      { circle, element: el, type, op, input: {}, trigger: { type: 'manual', source: null, actor: 'test' } },
      {},
    );
    return run.id;
  }

  const worker = () => workers.start(4);

  it('is recovered by another worker after the lease expires: retried if safe, failed with evidence if not', async () => {
    const readId = await submit('slow-read');
    const writeId = await submit('slow-write');
    const a = worker();
    const held = await until(
      async () => {
        const [r, w] = [await getRun(db, readId), await getRun(db, writeId)];
        return r?.status === 'running' &&
          w?.status === 'running' &&
          r.worker_id &&
          r.worker_id === w.worker_id
          ? r.worker_id
          : undefined;
      },
      30_000,
      'worker A to claim both runs',
    );
    a.child.kill('SIGKILL');
    expect(await a.exited).toBeNull(); // killed by signal, no clean exit
    const b = worker();
    const read = await until(
      async () => {
        const r = await getRun(db, readId);
        return r && ['succeeded', 'failed'].includes(r.status) ? r : undefined;
      },
      30_000,
      'the read run to finish on worker B',
    );
    const write = await until(
      async () => {
        const r = await getRun(db, writeId);
        return r && r.status === 'failed' ? r : undefined;
      },
      30_000,
      'the write run to be failed',
    );

    // Safe to repeat: re-queued and run again, by the other worker.
    expect(read.status).toBe('succeeded');
    expect(read.attempt).toBe(2);
    expect(read.worker_id).not.toBe(held);
    expect(read.output).toEqual({ rows: [{ done: 1 }], row_count: 1 });
    const rEv = (await runEvents(db, readId)).filter((e) => e.type === 'status');
    expect(rEv.map((e) => `${e.from_status}>${e.to_status}`)).toEqual([
      'null>queued',
      'queued>running',
      'running>queued',
      'queued>running',
      'running>succeeded',
    ]);
    expect(rEv[2]!.data).toMatchObject({ reason: 'lease_expired', lost_worker: held, requeued: true });

    // Not safe to repeat: failed, saying the worker was lost; nothing stays running.
    expect(write.error).toMatchObject({ code: 'WORKER_LOST', class: 'unavailable' });
    expect(write.finished_at).toBeTruthy();
    const wEv = (await runEvents(db, writeId)).filter((e) => e.type === 'status');
    // Its reservation was released when it failed.
    expect(
      (await runEvents(db, writeId)).filter((e) => e.type === 'ledger').map((e) => e.data.movement),
    ).toEqual(['reserve', 'release']);
    expect(wEv.at(-1)).toMatchObject({
      from_status: 'running',
      to_status: 'failed',
      data: { reason: 'lease_expired', lost_worker: held, requeued: false },
    });

    b.child.kill('SIGTERM');
    expect(await b.exited).toBe(0);
    expect(b.output()).toMatch(/worker stopped/);
  }, 90_000);

  it('a worker stopped gracefully hands back what it could not finish', async () => {
    const id = await submit('slow-read');
    const a = worker();
    const holder = await until(async () => (await getRun(db, id))?.worker_id ?? undefined, 30_000, 'a claim');
    a.child.kill('SIGTERM'); // grace is 300 ms, the query takes 2 s
    expect(await a.exited, a.output()).toBe(0);
    const back = await getRun(db, id);
    expect(back!.status).toBe('queued');
    const ev = (await runEvents(db, id)).filter((e) => e.type === 'status');
    expect(ev.at(-1)).toMatchObject({
      from_status: 'running',
      to_status: 'queued',
      actor: `worker:${holder}`,
      data: { reason: 'worker_shutdown' },
    });
    const b = worker();
    const done = await until(
      async () => {
        const r = await getRun(db, id);
        return r?.status === 'succeeded' ? r : undefined;
      },
      30_000,
      'the handed-back run to finish',
    );
    expect(done.worker_id).not.toBe(holder);
    b.child.kill('SIGTERM');
    await b.exited;
  }, 90_000);
});

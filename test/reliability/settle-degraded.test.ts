import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshDb } from '../helpers/db.js';
import { testApp, type TestApp } from '../helpers/app.js';
import { PgDb } from '../../src/db/pg.js';
import { Worker } from '../../src/engine/worker.js';

/**
 * Issue 9, finding 1: a settle that keeps failing is never retried silently
 * forever. On a real PostgreSQL, another session holds an exclusive lock on a
 * table every settle writes (and no submit does) while the database's
 * lock_timeout is short: each settle fails (55P03, the database unavailable
 * to it, not the row's fault), backs off, and the worker reports degraded in
 * /healthz, diagnostics and /metrics. Released, everything settles. A worker
 * stopped meanwhile stops within its grace period and loses no run.
 */
describe('a settle that keeps failing [pg]', () => {
  let handle: Awaited<ReturnType<typeof freshDb>>;
  let db: PgDb;
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  let locker: pg.Client;

  beforeAll(async () => {
    handle = await freshDb('pg');
    const admin = new pg.Client({ connectionString: handle.url });
    await admin.connect();
    await admin.query(`ALTER DATABASE "${admin.database}" SET lock_timeout = '150ms'`);
    await admin.end();
    db = new PgDb(handle.url!, { max: 10 }); // connects after the setting, so its sessions have it
    t = await testApp(db, { concurrency: 2, leaseMs: 1_000, syncWaitMs: 0 });
    c = await t.circle('jammed');
    const r = await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: 'sql', slug: 'add-one', spec: { query: 'select $1::int + 1 as n' } },
      c.tokens.write,
    );
    expect(r.status).toBe(201);
    locker = new pg.Client({ connectionString: handle.url });
    await locker.connect();
  }, 60_000);
  afterAll(async () => {
    await locker?.end().catch(() => undefined);
    await t?.close();
    await db?.close();
    await handle?.drop();
  });

  const lock = async () => {
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE cairn.events IN ACCESS EXCLUSIVE MODE');
  };
  const unlock = () => locker.query('ROLLBACK');
  const invoke = async () => {
    const r = await t.call(
      'POST',
      `/api/${c.slug}/add-one/ops/invoke?async=1`,
      { params: [1] },
      c.tokens.execute,
    );
    expect(r.status).toBe(202);
    return r.body.run_id as string;
  };
  const status = async (id: string) =>
    (await t.call('GET', `/api/runs/${id}`, undefined, c.tokens.read)).body.status;
  const until = async (what: () => Promise<boolean>, ms: number) => {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      if (await what()) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('timed out');
  };

  it('is reported degraded while it fails, and everything settles once it can', async () => {
    await lock();
    const ids = [await invoke(), await invoke()];
    await until(async () => t.worker!.healthReport().degraded, 10_000);
    const h = await t.call('GET', '/healthz', undefined, '');
    expect(h.status).toBe(503);
    expect(h.body.status).toBe('degraded');
    expect(h.body.failing[0]).toMatchObject({ statement: 'settle' });
    expect(h.body.failing[0].last_error).toMatch(/lock/);
    const d = await t.call('GET', '/api/diagnostics');
    expect(d.body.worker.statements.settle.consecutive_failures).toBeGreaterThanOrEqual(3);
    expect(d.body.worker.settle_backlog).toBeGreaterThanOrEqual(1);
    const m = await t.call('GET', '/metrics');
    // Process metrics carry one prefix, not two (issue 10: cairn_process_process_…).
    expect(m.body).toMatch(/^cairn_process_cpu_seconds_total /m);
    expect(m.body).not.toMatch(/process_process/);
    expect(m.body).toMatch(new RegExp(`cairn_worker_degraded\\{worker="${t.worker!.id}"\\} 1`));
    expect(m.body).toMatch(
      /cairn_worker_statement_consecutive_failures\{worker="[^"]+",statement="settle"\} [3-9]/,
    );
    // Backing off, not spinning: a handful of tries in a second, not one every 200 ms forever.
    const before = d.body.worker.statements.settle.failures_total;
    await new Promise((r) => setTimeout(r, 1_000));
    const after = t.worker!.healthReport().statements.settle.failures_total;
    expect(after - before).toBeLessThanOrEqual(3);
    for (const id of ids) expect(await status(id)).toBe('running');

    await unlock();
    await until(async () => (await Promise.all(ids.map(status))).every((s) => s === 'succeeded'), 15_000);
    expect(t.worker!.healthReport().degraded).toBe(false);
    expect((await t.call('GET', '/healthz', undefined, '')).status).toBe(200);
  }, 40_000);

  it('stops within its grace period while the settle fails, and no run is lost', async () => {
    await lock();
    const ids = [await invoke(), await invoke()];
    await until(async () => t.worker!.healthReport().statements.settle.consecutive_failures >= 1, 10_000);
    const t0 = Date.now();
    await t.worker!.stop(500);
    expect(Date.now() - t0).toBeLessThan(3_000);
    await unlock();
    // Their leases expire; another worker's reaper requeues them (a read-only query is safe to repeat).
    const rescuer = new Worker({ db, concurrency: 2, leaseMs: 1_000, reapMs: 200, pollMs: 100 });
    await rescuer.start();
    try {
      await until(async () => (await Promise.all(ids.map(status))).every((s) => s === 'succeeded'), 20_000);
    } finally {
      await rescuer.stop(2_000);
    }
  }, 40_000);
});

import { expect, it } from 'vitest';
import type { Db } from '../../src/db/types.js';
import { freshDb } from '../helpers/db.js';
import { createCircle } from '../../src/store/circles.js';
import { MaintenanceSystem } from '../../src/engine/maintenance.js';
import { WorkerHealth } from '../../src/engine/health.js';
import { silentLogger } from '../../src/telemetry/log.js';
import { testApp } from '../helpers/app.js';

/**
 * 20,000 runs written the way the engine writes them (inserted queued with
 * their item, claimed, settled: each row written three times), in batches of
 * 1,000, on PGlite, which has no autovacuum and no checkpointer.
 */
async function history(db: Db, maintain?: () => Promise<unknown>): Promise<void> {
  const c = await createCircle(db, 'm' + Math.random().toString(36).slice(2, 8));
  for (let b = 0; b < 20; b++) {
    await db.query(
      `WITH r AS (
         INSERT INTO cairn.runs (id, circle_id, kind, operation, status, trigger, engine_version, trace_id,
           snapshot, input)
         SELECT gen_random_uuid(), $1, 'invoke', 'invoke', 'queued', '{"type": "api"}', 't', 't',
           '{"element": {"spec": {"query": "select 1"}}}', '{}'
         FROM generate_series(1, 1000) RETURNING id, circle_id)
       INSERT INTO cairn.items (id, run_id, circle_id, key, status)
       SELECT gen_random_uuid(), id, circle_id, 'invoke', 'pending' FROM r`,
      [c.id],
    );
    await db.query(
      `UPDATE cairn.runs SET status = 'running', started_at = now(), worker_id = 'w',
         lease_expires_at = now() + interval '30 s' WHERE circle_id = $1 AND status = 'queued'`,
      [c.id],
    );
    await db.query(
      `UPDATE cairn.items SET status = 'running', started_at = now() WHERE circle_id = $1 AND status = 'pending'`,
      [c.id],
    );
    await db.query(
      `UPDATE cairn.runs SET status = 'succeeded', finished_at = now(), output = '{"rows": [{"one": 1}]}',
         lease_expires_at = NULL WHERE circle_id = $1 AND status = 'running'`,
      [c.id],
    );
    await db.query(
      `UPDATE cairn.items SET status = 'succeeded', finished_at = now(), evidence = '{"command": ["x"]}'
       WHERE circle_id = $1 AND status = 'running'`,
      [c.id],
    );
    if (maintain && b % 5 === 4) await maintain();
  }
}

async function footprint(db: Db): Promise<{ wal: number; runs: number; items: number }> {
  const r = await db.query<{ wal: string; runs: string; items: string }>(
    `SELECT (SELECT sum(size) FROM pg_ls_waldir())::text AS wal,
       pg_total_relation_size('cairn.runs')::text AS runs, pg_total_relation_size('cairn.items')::text AS items`,
  );
  return { wal: Number(r.rows[0]!.wal), runs: Number(r.rows[0]!.runs), items: Number(r.rows[0]!.items) };
}

/**
 * Issue 11, step 2: the embedded database is maintained. Without Cairn's
 * maintenance, PGlite keeps every dead row version and every WAL segment;
 * with it (a pass every 5,000 runs here, the worker's timer in a server), the
 * tables reuse their space and the WAL is recycled at the checkpoint, each
 * statement short enough not to stall the API.
 */
it('PGlite: dead rows and WAL stay bounded over 20,000 runs', async () => {
  const bare = await freshDb('pglite');
  const kept = await freshDb('pglite');
  try {
    await history(bare.db);
    const system = new MaintenanceSystem({ db: kept.db, log: silentLogger, health: new WorkerHealth() });
    await history(kept.db, () => system.maintain());
    const [b, k] = [await footprint(bare.db), await footprint(kept.db)];
    // Three row versions per run without vacuum; with it the freed space is reused.
    expect(k.runs).toBeLessThan(b.runs * 0.75);
    expect(k.items).toBeLessThan(b.items * 0.75);
    // Without a checkpoint the WAL only grows; with one it is recycled down to min_wal_size.
    expect(b.wal).toBeGreaterThan(96 * 1024 * 1024);
    expect(k.wal).toBeLessThanOrEqual(80 * 1024 * 1024);
    const r = system.state();
    expect(r).toMatchObject({ mode: 'cairn', passes_total: 4, failures_total: 0, last_error: null });
    expect(r.database_bytes).toBeGreaterThan(0);
    expect(r.wal_bytes).toBe(k.wal);
    // No single statement of a pass holds the (single-threaded) database long.
    expect(r.last_longest_pause_ms).toBeLessThan(1_000);
  } finally {
    await bare.drop();
    await kept.drop();
  }
}, 180_000);

it('a failing pass is reported and retried, never skipped silently', async () => {
  const h = await freshDb('pglite');
  try {
    const health = new WorkerHealth();
    const system = new MaintenanceSystem({ db: h.db, log: silentLogger, health });
    const closed = {
      ...h.db,
      exec: () => Promise.reject(new Error('database is closed')),
      query: () => Promise.reject(new Error('database is closed')),
      kind: 'pglite' as const,
    };
    const failing = new MaintenanceSystem({ db: closed as unknown as Db, log: silentLogger, health });
    await failing.maintain();
    await failing.maintain();
    await failing.maintain();
    expect(failing.state()).toMatchObject({ failures_total: 3, last_error: 'database is closed' });
    expect(health.statements.maintenance.state().consecutive_failures).toBe(3);
    expect(health.degraded).toBe(true);
    await system.maintain();
    expect(health.statements.maintenance.state().consecutive_failures).toBe(0);
  } finally {
    await h.drop();
  }
});

it('PostgreSQL: autovacuum maintains, and diagnostics and /metrics report the pass', async () => {
  const h = await freshDb('pg');
  const t = await testApp(h.db);
  try {
    await t.worker!.maintain();
    const d = await t.call('GET', '/api/diagnostics');
    expect(d.body.worker.maintenance).toMatchObject({
      mode: 'autovacuum',
      passes_total: 1,
      failures_total: 0,
    });
    expect(d.body.worker.maintenance.database_bytes).toBeGreaterThan(1_000_000);
    const m = await t.app.inject({
      method: 'GET',
      url: '/metrics',
      headers: { authorization: `Bearer ${t.admin}` },
    });
    expect(m.body).toMatch(/cairn_maintenance_passes_total\{worker="[^"]+"\} 1/);
    expect(m.body).toMatch(/cairn_database_bytes\{worker="[^"]+"\} \d{7,}/);
  } finally {
    await t.close();
    await h.drop();
  }
});

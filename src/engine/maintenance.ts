import { pruneLive } from '../store/live.js';
import { foldElementStats } from '../store/stats.js';
import type { MaintenanceReport } from './health.js';
import type { EngineResources } from './resources.js';

export type { MaintenanceReport };

/** Deltas folded at once past which their table is vacuumed right away. */
const LARGE_FOLD = 10_000;

/** The tables whose rows change after they are written (vacuumed one at a time, most churned first). */
const CHURNED = [
  'runs',
  'items',
  'wallets',
  'run_holds',
  'element_stat_deltas',
  'element_minutes',
  'element_minute_durations',
  'grants',
  'idempotency',
  'run_events',
  'events',
  'ledger_transfers',
  'schedules',
  'schedule_occurrences',
  'run_outbox',
  'webhook_deliveries',
  'policies',
  'policy_versions',
  'live_events',
];

/**
 * The database's upkeep, done by every worker on timers: the element
 * statistics deltas are folded into their rollups (exactly once, whichever
 * worker gets them), and the database is maintained. On PGlite, which runs no
 * autovacuum and no checkpointer, Cairn vacuums (and analyzes) the churned
 * tables one at a time, yielding between them so that no pause is longer than
 * one table's vacuum, then checkpoints so the WAL is recycled; on PostgreSQL
 * autovacuum does that and Cairn only reports it. A failure is counted in the
 * worker's health (diagnostics, /metrics) and retried at the next tick, never
 * skipped silently.
 */
export class MaintenanceSystem {
  private running = false;
  private report: MaintenanceReport;

  constructor(
    private readonly r: Pick<EngineResources, 'db' | 'log' | 'health'>,
    private readonly liveRetentionHours = 24,
  ) {
    this.report = {
      mode: r.db.kind === 'pglite' ? 'cairn' : 'autovacuum',
      passes_total: 0,
      failures_total: 0,
      last_run_at: null,
      last_duration_ms: null,
      last_longest_pause_ms: null,
      last_error: null,
      last_vacuum_at: null,
      database_bytes: null,
      wal_bytes: null,
    };
  }

  state(): MaintenanceReport {
    return { ...this.report };
  }

  /** Folds the statistics deltas; returns how many it folded. */
  async fold(): Promise<number> {
    try {
      const n = await foldElementStats(this.r.db);
      // The deltas table is a queue: after a large fold (bulk work), its dead rows would slow the
      // reads that add the deltas not folded yet until autovacuum came by, so it is vacuumed now.
      if (n >= LARGE_FOLD) await this.r.db.exec('VACUUM (ANALYZE) cairn.element_stat_deltas');
      this.r.health.statements.fold.succeeded();
      return n;
    } catch (e) {
      this.r.health.statements.fold.failed(e);
      this.r.log.warn({ err: e }, 'folding element statistics failed; retried at the next tick');
      return 0;
    }
  }

  /** One maintenance pass (a pass already under way makes this one a no-op). */
  async maintain(): Promise<MaintenanceReport> {
    if (this.running) return this.state();
    this.running = true;
    const t0 = performance.now();
    let longest = 0;
    const timed = async (sql: string) => {
      const s = performance.now();
      await this.r.db.exec(sql);
      longest = Math.max(longest, performance.now() - s);
      await new Promise((res) => setImmediate(res)); // let waiting requests in between
    };
    try {
      await this.fold();
      // The live stream is a window: what is older than its retention cannot be resumed from.
      await pruneLive(this.r.db, this.liveRetentionHours);
      if (this.report.mode === 'cairn') {
        for (const t of CHURNED) await timed(`VACUUM (ANALYZE) cairn.${t}`);
        await timed('CHECKPOINT');
      }
      const sizes = await this.r.db.query<{ db: string; vac: string | null }>(
        `SELECT pg_database_size(current_database())::text AS db,
           (SELECT max(greatest(last_vacuum, last_autovacuum))::text FROM pg_stat_user_tables
            WHERE schemaname = 'cairn') AS vac`,
      );
      // The WAL directory needs pg_monitor (or superuser): a server's role may not have it.
      const wal = await this.r.db
        .query<{ b: string | null }>('SELECT sum(size)::text AS b FROM pg_ls_waldir()')
        .then((x) => (x.rows[0]?.b == null ? null : Number(x.rows[0].b)))
        .catch(() => null);
      this.report = {
        ...this.report,
        passes_total: this.report.passes_total + 1,
        last_run_at: new Date().toISOString(),
        last_duration_ms: Math.round((performance.now() - t0) * 1000) / 1000,
        last_longest_pause_ms: Math.round(longest * 1000) / 1000,
        last_error: null,
        last_vacuum_at: sizes.rows[0]?.vac ? new Date(sizes.rows[0].vac).toISOString() : null,
        database_bytes: Number(sizes.rows[0]?.db ?? 0),
        wal_bytes: wal,
      };
      this.r.health.statements.maintenance.succeeded();
      this.r.log.debug({ ...this.report }, 'database maintained');
    } catch (e) {
      this.report = {
        ...this.report,
        failures_total: this.report.failures_total + 1,
        last_error: String((e as Error)?.message ?? e).slice(0, 500),
      };
      this.r.health.statements.maintenance.failed(e);
      this.r.log.warn({ err: e }, 'database maintenance failed; retried at the next tick');
    } finally {
      this.running = false;
    }
    return this.state();
  }
}

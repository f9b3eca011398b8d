/**
 * How the worker's shared statements are faring. A statement that keeps
 * failing is never retried silently: its consecutive failures, last error and
 * rejected rows are reported in `GET /api/diagnostics`, `/metrics` and
 * `/healthz` (degraded), and its retries back off.
 */
export interface StatementState {
  /** Failures in a row (0 once it succeeds again). */
  consecutive_failures: number;
  failures_total: number;
  /** Rows refused by the database and settled as failed runs instead (RUN_RECORD_REJECTED). */
  rows_rejected_total: number;
  failing_since: string | null;
  last_error: string | null;
  last_ok_at: string | null;
}

/** After this many failures in a row the statement makes the worker degraded. */
export const DEGRADED_AFTER = 3;

export class StatementHealth {
  private failures = 0;
  private total = 0;
  private rejected = 0;
  private since: number | null = null;
  private lastError: string | null = null;
  private lastOk: number | null = null;

  succeeded(): void {
    this.failures = 0;
    this.since = null;
    this.lastOk = Date.now();
  }

  /** Records a failure; returns how long to wait before the next try (200 ms doubling, at most 5 s). */
  failed(e: unknown): number {
    this.failures++;
    this.total++;
    this.since ??= Date.now();
    this.lastError = String((e as { message?: unknown } | null)?.message ?? e).slice(0, 500);
    return Math.min(5_000, 200 * 2 ** Math.min(this.failures - 1, 5));
  }

  rowsRejected(n: number): void {
    this.rejected += n;
  }

  get degraded(): boolean {
    return this.failures >= DEGRADED_AFTER;
  }

  state(): StatementState {
    const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());
    return {
      consecutive_failures: this.failures,
      failures_total: this.total,
      rows_rejected_total: this.rejected,
      failing_since: iso(this.since),
      last_error: this.lastError,
      last_ok_at: iso(this.lastOk),
    };
  }
}

export const STATEMENTS = [
  'settle',
  'settle_items',
  'claim',
  'heartbeat',
  'reap',
  'fold',
  'maintenance',
  'retention',
] as const;
export type StatementName = (typeof STATEMENTS)[number];

export interface WorkerHealthReport {
  worker: string;
  degraded: boolean;
  /** Settlements finished but not yet written (waiting for a retry). */
  settle_backlog: number;
  statements: Record<StatementName, StatementState>;
  /** The database's upkeep (engine/maintenance.ts), when the worker reports it. */
  maintenance?: MaintenanceReport;
}

export class WorkerHealth {
  readonly statements = Object.fromEntries(STATEMENTS.map((s) => [s, new StatementHealth()])) as Record<
    StatementName,
    StatementHealth
  >;

  get degraded(): boolean {
    return STATEMENTS.some((s) => this.statements[s].degraded);
  }

  report(worker: string, settleBacklog: number): WorkerHealthReport {
    return {
      worker,
      degraded: this.degraded,
      settle_backlog: settleBacklog,
      statements: Object.fromEntries(STATEMENTS.map((s) => [s, this.statements[s].state()])) as Record<
        StatementName,
        StatementState
      >,
    };
  }
}

/** What the last maintenance pass did, for `GET /api/diagnostics` and `/metrics`. */
export interface MaintenanceReport {
  /** `cairn`: Cairn vacuums and checkpoints (PGlite has no autovacuum nor checkpointer); `autovacuum`: PostgreSQL does. */
  mode: 'cairn' | 'autovacuum';
  passes_total: number;
  failures_total: number;
  last_run_at: string | null;
  last_duration_ms: number | null;
  /** The longest single statement of the last pass: how long the API could have waited on it. */
  last_longest_pause_ms: number | null;
  last_error: string | null;
  /** The latest (auto)vacuum PostgreSQL reports for a Cairn table. */
  last_vacuum_at: string | null;
  database_bytes: number | null;
  wal_bytes: number | null;
}

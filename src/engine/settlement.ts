import type { ErrorBody } from '../core/errors.js';
import { storable } from '../core/storable.js';
import { applyIsolated, isRowError, sqlState } from '../store/isolate.js';
import type { Logger } from '../telemetry/log.js';
import type { StatementHealth } from './health.js';
import { settleRuns, type SettledRun, type Settlement } from '../store/queue.js';
import type { EngineResources } from './resources.js';

/**
 * The database refused a run's (or item's) settlement on its own: the run
 * fails alone with this error, recorded without what was refused, so one
 * tenant's value never holds up anyone else's work.
 */
export function recordRejected(e: unknown): ErrorBody {
  const state = sqlState(e) ?? 'unknown';
  const detail = String((e as { message?: unknown } | null)?.message ?? e).slice(0, 300);
  return storable({
    code: 'RUN_RECORD_REJECTED',
    class: 'internal',
    message: `The database refused to record this run's result (SQLSTATE ${state}: ${detail}); the run failed on its own and its output was not kept.`,
    retryable: false,
    _suggestion:
      'Return plain JSON (no NUL characters, no lone surrogates, no numbers beyond ±1.8e308); the evidence kept on the item shows what ran. If the output was plain JSON, report this with the run id.',
    details: { sqlstate: state },
  });
}

/** The settlement written instead of one the database refused alone. */
export function rejectedSettlement<
  T extends { output: unknown; error: ErrorBody | null; evidence: Record<string, unknown> },
>(s: T, e: unknown, where: { host: string; worker: string }): T {
  return {
    ...s,
    status: 'failed',
    output: null,
    error: recordRejected(e),
    credits: 0,
    evidence: {
      ...where,
      record_rejected: { sqlstate: sqlState(e) ?? null, original_error: s.error?.code ?? null },
    },
    events: [],
  };
}

/** What one round of a batched settle wrote, and what waits for the next. */
export interface SettleRound<T, R> {
  /** What the statement answered, for every row it wrote (originals and stand-ins alike). */
  done: R[];
  /** Rows written, by original: the row itself, or the stand-in written for a refused one. */
  written: Map<T, T>;
  /** Rows not written (the database unavailable, or even a stand-in refused), in order. */
  retry: T[];
  /** How long to wait before the next try (0: nothing to retry). */
  wait: number;
}

/**
 * One round of a batched statement over many tenants' rows (a settle of runs,
 * or of a batch run's items), with the fallback every such statement needs:
 * the batch, then each row alone (`applyIsolated`); a row refused for its
 * content is written once more as its `standIn` (failed, without what was
 * refused) through `applyStandIns`; rows that fail because the database is
 * unavailable come back in `retry`. The statement's health records it all,
 * and the wait before a retry backs off.
 */
export async function settleRound<T extends { id: string }, R>(o: {
  batch: T[];
  apply: (rows: T[]) => Promise<R[]>;
  applyStandIns?: (rows: T[]) => Promise<R[]>;
  standIn: (row: T, error: unknown) => T;
  health: StatementHealth;
  log: Logger;
  /** What is settled, for the log ("settlement", "item settlement"), and fields to log with it. */
  what: string;
  context?: Record<string, unknown>;
}): Promise<SettleRound<T, R>> {
  const first = await applyIsolated(o.batch, o.apply);
  const done = [...first.done];
  const written = new Map(o.batch.map((row) => [row, row]));
  const retry: T[] = [];
  const refused = first.rejected.filter((x) => isRowError(x.error));
  for (const x of first.rejected) if (!isRowError(x.error)) retry.push(x.row);
  if (refused.length > 0) {
    o.health.rowsRejected(refused.length);
    for (const x of refused)
      o.log.error(
        { ...o.context, err: x.error, id: x.row.id },
        `the database refused a ${o.what}; it fails alone`,
      );
    const standIns = refused.map((x) => o.standIn(x.row, x.error));
    const second = await applyIsolated(standIns, o.applyStandIns ?? o.apply);
    done.push(...second.done);
    // Even the bare record failed: the database itself is the problem, so the original waits.
    const back = new Set(second.rejected.map((x) => x.row.id));
    refused.forEach((x, n) => (back.has(x.row.id) ? retry.push(x.row) : written.set(x.row, standIns[n]!)));
  }
  for (const row of retry) written.delete(row);
  if (retry.length === 0) {
    o.health.succeeded();
    return { done, written, retry, wait: 0 };
  }
  const failedIds = new Set(retry.map((row) => row.id));
  const wait = o.health.failed(
    first.rejected.find((x) => failedIds.has(x.row.id))?.error ?? `${o.what} failed`,
  );
  o.log.error(
    {
      ...o.context,
      ids: retry.map((row) => row.id),
      retry_in_ms: wait,
      failures: o.health.state().consecutive_failures,
    },
    `${o.what} failed; retrying`,
  );
  return { done, written, retry, wait };
}

/**
 * Settlement: writes finished runs in batches — everything finished so far in
 * one statement, what finishes meanwhile in the next. A batch the database
 * refuses is applied row by row: a row refused for its content fails its run
 * on its own (RUN_RECORD_REJECTED, without the refused values); rows that fail
 * because the database is unavailable wait for a retry, with backoff, and make
 * the worker degraded. Once stopping, it gives up at its deadline.
 */
export class SettlementSystem {
  private pending: Settlement[] = [];
  private flushing: Promise<void> | undefined;
  private deadline = Infinity;

  constructor(
    private readonly r: Pick<EngineResources, 'db' | 'host' | 'workerId' | 'log' | 'health'>,
    /** Told once per settlement: the row the settle wrote (undefined: the run had changed meanwhile). */
    private readonly settled: (s: Settlement, row: SettledRun | undefined) => void,
  ) {}

  enqueue(s: Settlement): void {
    this.pending.push(s);
    this.flushing ??= this.flush();
  }

  /** Settlements finished but not yet written. */
  get backlog(): number {
    return this.pending.length;
  }

  isPending(id: string): boolean {
    return this.pending.some((p) => p.id === id);
  }

  pendingIds(): string[] {
    return this.pending.map((p) => p.id);
  }

  /** Waits for what is being written, but not past `deadline` (a settle that keeps failing cannot hold a stop). */
  async drain(deadline: number): Promise<void> {
    this.deadline = deadline;
    await Promise.race([
      this.flushing,
      new Promise((r) => setTimeout(r, Math.max(0, deadline - Date.now())).unref()),
    ]);
  }

  private async flush(): Promise<void> {
    await new Promise((r) => setImmediate(r));
    const where = { host: this.r.host, worker: this.r.workerId };
    while (this.pending.length > 0) {
      const batch = this.pending;
      this.pending = [];
      const round = await settleRound({
        batch,
        apply: (b) => settleRuns(this.r.db, this.r.workerId, b),
        standIn: (s, e) => rejectedSettlement(s, e, where),
        health: this.r.health.statements.settle,
        log: this.r.log,
        what: 'settlement',
      });
      const rows = new Map(round.done.map((row) => [row.id, row]));
      for (const [s, w] of round.written) this.settled(w, rows.get(s.id));
      if (round.retry.length === 0) continue;
      this.pending = round.retry.concat(this.pending);
      // Stopping: these runs' leases expire and recovery takes them.
      if (Date.now() + round.wait > this.deadline) break;
      await new Promise((r) => setTimeout(r, round.wait));
    }
    this.flushing = undefined;
  }
}

import type { ErrorBody } from '../core/errors.js';
import { storable } from '../core/storable.js';
import { applyIsolated, isRowError, sqlState } from '../store/isolate.js';
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
    const health = this.r.health.statements.settle;
    const settle = (b: Settlement[]) => settleRuns(this.r.db, this.r.workerId, b);
    while (this.pending.length > 0) {
      const batch = this.pending;
      this.pending = [];
      const first = await applyIsolated(batch, settle);
      const done = new Map(first.done.map((row) => [row.id, row]));
      const written = new Map(batch.map((s) => [s.id, s]));
      const retry: Settlement[] = [];
      const refused = first.rejected.filter((x) => isRowError(x.error));
      for (const x of first.rejected) if (!isRowError(x.error)) retry.push(x.row);
      if (refused.length > 0) {
        health.rowsRejected(refused.length);
        for (const x of refused)
          this.r.log.error(
            { err: x.error, run: x.row.id },
            'the database refused a settlement; the run fails alone',
          );
        const fallback = refused.map((x) => rejectedSettlement(x.row, x.error, where));
        const second = await applyIsolated(fallback, settle);
        for (const row of second.done) done.set(row.id, row);
        for (const f of fallback) written.set(f.id, f);
        // Even the bare record failed: the database itself is the problem, so the original waits.
        const back = new Set(second.rejected.map((x) => x.row.id));
        for (const x of refused) if (back.has(x.row.id)) retry.push(x.row);
      }
      const retried = new Set(retry.map((s) => s.id));
      for (const s of batch) if (!retried.has(s.id)) this.settled(written.get(s.id)!, done.get(s.id));
      if (retry.length === 0) {
        health.succeeded();
        continue;
      }
      const wait = health.failed(first.rejected.find((x) => retried.has(x.row.id))?.error ?? 'settle failed');
      this.r.log.error(
        { runs: retry.map((s) => s.id), retry_in_ms: wait, failures: health.state().consecutive_failures },
        'settle failed; retrying',
      );
      this.pending = retry.concat(this.pending);
      if (Date.now() + wait > this.deadline) break; // stopping: these runs' leases expire and recovery takes them
      await new Promise((r) => setTimeout(r, wait));
    }
    this.flushing = undefined;
  }
}

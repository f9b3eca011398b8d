/**
 * Executes a claimed batch run (R-BATCH): items are claimed a few at a time
 * (up to the run's concurrency), executed through the same path as an invoke,
 * and settled in batches — one call writes the items, their cells, the run's
 * counters and the capture of what succeeded. The run holds its lease by the
 * worker's heartbeat; pause lets running items finish and then lets go of the
 * run; cancel aborts them; a budget stop skips what has not started.
 */
import { withSpan } from '../telemetry/tracing.js';
import type { Db } from '../db/types.js';
import type { ErrorBody } from '../core/errors.js';
import type { Logger } from '../telemetry/log.js';
import type { RunRow } from '../store/runs.js';
import {
  claimItems,
  finishBatch,
  flagRun,
  itemsLeft,
  letGoPaused,
  settleItems,
  skipRemaining,
  type ClaimedItem,
  type ItemSettlement,
} from '../store/batch.js';
import { getRunsStatus, loadSnapshot } from '../store/runs.js';
import type { Outcome } from '../store/queue.js';
import { settleRound } from './settlement.js';
import type { WorkerHealth } from './health.js';

export interface BatchHost {
  db: Db;
  workerId: string;
  log: Logger;
  runOnce: (run: RunRow, input: unknown, signal: AbortSignal) => Promise<Outcome>;
  health: WorkerHealth;
  /** The settlement written instead of one the database refused alone. */
  rejected: (item: ItemSettlement, e: unknown) => ItemSettlement;
}

/** Control signals reach a running batch through this (NOTIFY, heartbeat). */
/** A child run this worker settled, as its orchestrator (in this process) absorbs it without a read. */
export interface ChildEnd {
  id: string;
  status: string;
  output: unknown;
  error: ErrorBody | null;
  credits: number;
  evidence: Record<string, unknown>;
}

export class BatchControl {
  private waiters: (() => void)[] = [];
  /** Children settled in this process since the orchestrator last looked. */
  readonly ended: ChildEnd[] = [];
  /** Something may have changed that only the database knows (a NOTIFY, the first turn, a poll). */
  remote = true;
  /** A wake that came while nobody waited: the next wait returns at once (no wake is lost). */
  private woken = false;
  /** Set when the run's status must be re-read (pause). */
  dirty = false;
  /**
   * Set when another loop of this worker took the run over (claimed again after a resume): this
   * one starts nothing more, lets its running items finish and settle, and lets go of nothing.
   */
  retired = false;
  retire(): void {
    this.retired = true;
    this.wake();
  }
  poke(): void {
    this.dirty = true;
    this.wake();
  }
  /** Something changed that the loop should look at (a child run ended), without a status re-read. */
  wake(): void {
    this.remote = true;
    this.woken = true;
    this.wakeAll();
  }
  /** A child run settled by this very worker: its end travels here, no read needed. */
  childSettled(c: ChildEnd): void {
    this.ended.push(c);
    this.woken = true;
    this.wakeAll();
  }
  wakeAll(): void {
    for (const w of this.waiters.splice(0)) w();
  }
  /** Resolves on the next wake (at once if one came since the last wait), or after `ms`. */
  wait(ms: number): Promise<void> {
    if (this.woken) {
      this.woken = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.woken = false;
        resolve();
      };
      const t = setTimeout(done, ms);
      this.waiters.push(done);
    });
  }
}

export const BUDGET_EXCEEDED: ErrorBody = {
  code: 'BUDGET_EXCEEDED',
  class: 'payment',
  message: "The run reached its budget; items not yet started were skipped (its policy is 'stop').",
  retryable: false,
  _suggestion: "Raise the run's budget (or the column's default), then rerun or retry the skipped rows.",
};

/** Backoff of an automatic item retry: 250 ms doubling, capped at 30 s, with jitter. */
export function retryDelayMs(attempt: number): number {
  const base = Math.min(30_000, 250 * 2 ** Math.max(0, attempt - 1));
  return Math.round(base * (0.5 + Math.random() / 2));
}

/** What finished items cost (a failed or retried one too, when its execution was billed). */
function costOf(batch: ItemSettlement[]): number {
  return batch.reduce((s, i) => s + i.credits, 0);
}

export async function runBatch(
  host: BatchHost,
  run: RunRow,
  signal: AbortSignal,
  control: BatchControl,
): Promise<void> {
  const { db, workerId } = host;
  const snap = await loadSnapshot(db, run);
  const price = snap.operation?.price ?? 0;
  const cells = snap.batch?.cells ?? null;
  const concurrency = Math.max(1, run.concurrency);
  const active = new Set<Promise<void>>();
  let queue: ItemSettlement[] = [];
  let flushing: Promise<void> | undefined;
  let captured = run.credits_used;
  /** What finished items cost that is not settled (captured) yet. */
  let unsettled = 0;
  let stop: ErrorBody | null = null;
  let paused = false;
  const onAbort = () => control.wakeAll();
  signal.addEventListener('abort', onAbort);

  // Like the worker's settles (settleRound): a refused item fails alone, and is recorded without
  // its output or its cell write (the cell may be what failed); an unavailable database is retried.
  const flush = async (): Promise<void> => {
    while (queue.length > 0) {
      const batch = queue;
      queue = [];
      const round = await settleRound({
        batch,
        apply: async (b) => [await settleItems(db, run.id, workerId, b, cells)],
        applyStandIns: async (b) => [await settleItems(db, run.id, workerId, b, null)],
        standIn: host.rejected,
        health: host.health.statements.settle_items,
        log: host.log,
        what: 'item settlement',
        context: { run: run.id },
      });
      for (const x of round.done) captured += Number(x.captured);
      unsettled -= costOf([...round.written.keys()]);
      if (round.retry.length === 0) continue;
      queue = round.retry.concat(queue);
      await new Promise((res) => setTimeout(res, round.wait));
      if (signal.aborted) return;
    }
  };
  const scheduleFlush = () => {
    flushing ??= (async () => {
      await new Promise((r) => setImmediate(r));
      await flush();
      flushing = undefined;
    })();
  };
  const drainSettles = async () => {
    while (flushing || queue.length > 0) {
      if (flushing) await flushing;
      else await flush();
    }
  };

  const start = (item: ClaimedItem) => {
    const p = withSpan('item', { 'cairn.item': item.key, 'cairn.run_id': run.id }, async (span) => {
      const o = await host.runOnce(run, item.inputs, signal);
      span.setAttribute('cairn.status', o.status);
      return o;
    }).then((o) => {
      const retry =
        o.status === 'failed' && o.error?.retryable === true && item.attempt_count < run.item_max_attempts;
      queue.push({
        id: item.id,
        status: o.status === 'succeeded' ? 'succeeded' : retry ? 'retrying' : 'failed',
        output: o.output,
        error: o.error,
        credits: o.credits,
        evidence: o.evidence,
        retry_in_ms: retry ? retryDelayMs(item.attempt_count) : undefined,
      });
      unsettled += o.credits;
      scheduleFlush();
    });
    const tracked = p.finally(() => {
      active.delete(tracked);
      control.wakeAll();
    });
    active.add(tracked);
  };

  /** One turn of the loop; true when the run is over for this worker. */
  const step = async (): Promise<boolean> => {
    if (control.dirty) {
      control.dirty = false;
      const [s] = await getRunsStatus(db, [run.id]);
      if (s?.status === 'paused') paused = true;
      if (s && s.status !== 'running' && s.status !== 'paused') return true; // cancelled or recovered elsewhere
    }
    if (paused) return true;
    // Budget: what is captured, finished but unsettled, and running must stay within it; with
    // 'stop', an item starts only while the budget still has room for it (at any concurrency).
    const committed = captured + unsettled + active.size * price;
    const room =
      run.budget !== null && price > 0
        ? Math.floor((run.budget - committed) / price)
        : Number.POSITIVE_INFINITY;
    if (stop === null && run.budget !== null && price > 0 && room < 1) {
      const first = await flagRun(db, run.id, 'budget_exceeded', `worker:${workerId}`, {
        budget: run.budget,
        credits_used: captured,
        policy: run.budget_policy,
      });
      if (run.budget_policy === 'stop') {
        stop = BUDGET_EXCEEDED;
        await skipRemaining(db, run.id);
      } else if (first) {
        host.log.warn({ run: run.id }, 'run exceeded its budget; its policy lets it go on');
      }
      run = { ...run, budget: null }; // flagged once; 'flag' goes on
    }
    const free =
      run.budget_policy === 'stop' ? Math.min(concurrency - active.size, room) : concurrency - active.size;
    const claimed = free > 0 && stop === null ? await claimItems(db, run.id, workerId, free) : [];
    for (const item of claimed) start(item);
    if (claimed.length === 0 && active.size === 0) {
      await drainSettles();
      const left = await itemsLeft(db, run.id);
      if (left.pending + left.running + left.retrying === 0) {
        await finishBatch(db, run.id, workerId, stop);
        return true;
      }
      // Retries waiting for their backoff, or items another worker is still finishing.
      await control.wait(Math.min(Math.max(left.next_retry_ms ?? 200, 5), 1_000));
      return false;
    }
    if (claimed.length < free || active.size >= concurrency) await control.wait(250);
    return false;
  };

  try {
    for (;;) {
      // Yield to timers and I/O: on the embedded database every query resolves without real I/O,
      // so without this a batch would run as one chain of microtasks and starve API requests.
      await new Promise((r) => setImmediate(r));
      if (signal.aborted || paused || control.retired) break;
      try {
        if (await step()) break;
      } catch (e) {
        // A database hiccup must not strand the run: log, back off, go on (the lease still holds it).
        host.log.error({ err: e, run: run.id }, 'batch step failed; retrying');
        await control.wait(500);
      }
    }
    await Promise.all(active);
    await drainSettles();
    if (paused && !signal.aborted && !control.retired) await letGoPaused(db, run.id, workerId);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}

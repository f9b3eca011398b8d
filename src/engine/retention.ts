import { collectExpired, type RetentionCounts } from '../store/retention.js';
import type { EngineResources } from './resources.js';

export interface RetentionOptions {
  /** Days a run is kept in circles without a policy of their own (CAIRN_RETENTION_DAYS). */
  defaultDays: number;
  /** Runs per transaction: each batch locks only these, briefly. */
  batchSize?: number;
  /** Batches per pass at most, so one pass never holds the collector for long; the next pass goes on. */
  maxBatches?: number;
}

/** What one pass deleted, and the error that ended it early, if one did. */
export interface RetentionPass extends RetentionCounts {
  batches: number;
  error: string | null;
}

/**
 * Retention's collector (issue 11): deletes expired runs, a batch per
 * transaction, until none is left or the pass has done `maxBatches`. Every
 * worker runs one on a timer; several at once on one PostgreSQL take
 * different runs (SKIP LOCKED), so each run is deleted and counted once.
 */
export class RetentionSystem {
  private readonly batchSize: number;
  private readonly maxBatches: number;

  constructor(
    private readonly r: Pick<EngineResources, 'db' | 'log' | 'health'>,
    private readonly opts: RetentionOptions,
  ) {
    this.batchSize = opts.batchSize ?? 500;
    this.maxBatches = opts.maxBatches ?? 20;
  }

  /**
   * One pass: batches until one finds nothing or `keepGoing` says stop (a stopping worker);
   * a failing batch ends it (logged), the next pass tries again.
   */
  async collect(keepGoing: () => boolean = () => true): Promise<RetentionPass> {
    const total: RetentionPass = {
      runs: 0,
      items: 0,
      run_events: 0,
      events: 0,
      holds: 0,
      idempotency: 0,
      batches: 0,
      error: null,
    };
    while (total.batches < this.maxBatches && keepGoing()) {
      let batch;
      try {
        batch = await collectExpired(this.r.db, {
          defaultDays: this.opts.defaultDays,
          limit: this.batchSize,
        });
      } catch (e) {
        total.error = String((e as { message?: unknown } | null)?.message ?? e);
        // Counted like every shared statement: diagnostics, /metrics, and degraded after repeated failures.
        this.r.health.statements.retention.failed(e);
        this.r.log.warn({ err: e }, 'retention batch failed; the next pass retries');
        break;
      }
      this.r.health.statements.retention.succeeded();
      if (batch.runs === 0) break;
      total.batches++;
      for (const k of ['runs', 'items', 'run_events', 'events', 'holds', 'idempotency'] as const)
        total[k] += batch[k];
      // Until a batch finds nothing: a short one may have unreferenced older runs (a chain goes link by link).
      // The embedded database answers without real I/O: let requests in between batches.
      await new Promise((resolve) => setImmediate(resolve));
    }
    if (total.runs > 0) this.r.log.info({ ...total, error: undefined }, 'retention deleted expired runs');
    return total;
  }
}

import { foldElementStats } from '../store/stats.js';
import type { EngineResources } from './resources.js';

/**
 * The database's upkeep, done by every worker on a timer: the element
 * statistics deltas are folded into their rollups (exactly once, whichever
 * worker gets them). A failure is counted in the worker's health (diagnostics,
 * /metrics) and retried at the next tick, never skipped silently.
 */
export class MaintenanceSystem {
  constructor(private readonly r: Pick<EngineResources, 'db' | 'log' | 'health'>) {}

  /** Folds the statistics deltas; returns how many it folded. */
  async fold(): Promise<number> {
    try {
      const n = await foldElementStats(this.r.db);
      this.r.health.statements.fold.succeeded();
      return n;
    } catch (e) {
      this.r.health.statements.fold.failed(e);
      this.r.log.warn({ err: e }, 'folding element statistics failed; retried at the next tick');
      return 0;
    }
  }
}

import { expireGrants } from '../store/ledger.js';
import { heartbeat, recoverExpired } from '../store/queue.js';
import type { EngineResources } from './resources.js';

/**
 * Leases and recovery: a worker holds each claimed run by heartbeat, and
 * recovers runs whose worker stopped heartbeating (requeued when safe to
 * repeat, WORKER_LOST otherwise). Any number of workers do this at once on one
 * database; SKIP LOCKED keeps them apart.
 */
export class LeaseSystem {
  constructor(
    private readonly r: Pick<EngineResources, 'db' | 'workerId' | 'log' | 'health'>,
    private readonly leaseMs: number,
  ) {}

  /**
   * Extends the leases of `ids`. Returns the ones still held, with their
   * status; a run missing from the answer was lost (cancelled, or recovered
   * elsewhere), and its work should stop. Undefined when the heartbeat failed.
   */
  async beat(ids: string[]): Promise<{ id: string; status: string }[] | undefined> {
    if (ids.length === 0) return [];
    try {
      const rows = await heartbeat(this.r.db, this.r.workerId, ids, this.leaseMs);
      this.r.health.statements.heartbeat.succeeded();
      return rows;
    } catch (e) {
      this.r.health.statements.heartbeat.failed(e);
      this.r.log.warn({ err: e }, 'heartbeat failed');
      return undefined;
    }
  }

  /** Recovers runs whose lease expired; returns how many. */
  async recover(): Promise<number> {
    try {
      const recovered = await recoverExpired(this.r.db, `reaper:${this.r.workerId}`);
      for (const x of recovered)
        this.r.log.warn({ run: x.id, status: x.status }, 'recovered run whose lease expired');
      this.r.health.statements.reap.succeeded();
      return recovered.length;
    } catch (e) {
      this.r.health.statements.reap.failed(e);
      this.r.log.warn({ err: e }, 'reap failed');
      return 0;
    }
  }
}

/** Grants past their expiry lose what is left of them (never what running work holds). */
export async function expireDueGrants(r: Pick<EngineResources, 'db' | 'workerId' | 'log'>): Promise<void> {
  try {
    const expired = await expireGrants(r.db, new Date(), `reaper:${r.workerId}`);
    if (expired > 0) r.log.info({ micro_credits: expired }, 'expired grants');
  } catch (e) {
    r.log.warn({ err: e }, 'grant expiry failed');
  }
}

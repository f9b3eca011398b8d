import type { Db } from '../db/types.js';
import { isTerminal } from '../core/status.js';
import { getRunsStatus } from '../store/runs.js';

/**
 * Lets a sync invoke wait for its run: woken by NOTIFY cairn_run_done, with a
 * poll of the waited-on runs as fallback (a lost notification only costs
 * latency, never an answer).
 */
export class RunWaiter {
  private readonly waiting = new Map<string, Set<() => void>>();
  private unlisten: (() => Promise<void>) | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly db: Db,
    private readonly pollMs = 1_000,
  ) {}

  async start(): Promise<void> {
    this.unlisten = await this.db.listen('cairn_run_done', (id) => this.resolve(id));
    this.timer = setInterval(() => void this.poll(), this.pollMs);
    this.timer.unref();
  }

  private resolve(id: string): void {
    const set = this.waiting.get(id);
    if (!set) return;
    this.waiting.delete(id);
    for (const fn of set) fn();
  }

  private async poll(): Promise<void> {
    if (this.waiting.size === 0) return;
    try {
      for (const r of await getRunsStatus(this.db, [...this.waiting.keys()]))
        if (isTerminal(r.status)) this.resolve(r.id);
    } catch {
      // the next tick tries again
    }
  }

  /** Resolves true when the run reached a terminal state, false when `timeoutMs` passed first. */
  wait(runId: string, timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      let set = this.waiting.get(runId);
      if (!set) {
        set = new Set();
        this.waiting.set(runId, set);
      }
      const done = () => {
        clearTimeout(t);
        resolve(true);
      };
      const t = setTimeout(() => {
        set.delete(done);
        if (set.size === 0) this.waiting.delete(runId);
        resolve(false);
      }, timeoutMs);
      set.add(done);
      // The run may have finished before we started listening for it.
      void getRunsStatus(this.db, [runId]).then(
        (r) => r[0] && isTerminal(r[0].status) && this.resolve(runId),
        () => undefined,
      );
    });
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.unlisten?.();
    for (const id of [...this.waiting.keys()]) this.resolve(id);
  }
}

import type { Client } from './client.js';

/**
 * Wakes a command that follows a run whenever the run's live stream says something happened, so
 * it reads the run again at once instead of polling. Without a stream (an older server, a drop
 * it cannot recover from), `next` waits its fallback interval: the command still finishes.
 */
export class RunWaker {
  private readonly ac = new AbortController();
  private pending = false;
  private wake: (() => void) | undefined;
  /** Whether the stream has delivered anything (it replays the run's history first). */
  live = false;

  constructor(client: Client, runId: string) {
    void (async () => {
      try {
        for await (const _e of client.events(
          `/api/runs/${encodeURIComponent(runId)}/events?types=status,item`,
          {
            signal: this.ac.signal,
          },
        )) {
          this.live = true;
          this.pending = true;
          this.wake?.();
        }
      } catch {
        // aborted, or no stream: next() falls back to its interval
      }
    })();
  }

  /** Resolves at the next event since the last call, or after `maxMs`. */
  next(maxMs: number): Promise<void> {
    if (this.pending) {
      this.pending = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.wake = undefined; // a later event is kept as pending for the next call, not lost here
        resolve();
      };
      const t = setTimeout(done, maxMs);
      this.wake = () => {
        this.wake = undefined;
        this.pending = false;
        // A burst of events (a batch's items) is one read: let it arrive first.
        setTimeout(done, 50);
      };
    });
  }

  close(): void {
    this.ac.abort();
  }
}

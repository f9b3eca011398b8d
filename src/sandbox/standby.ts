/**
 * Sandboxes made ahead of time. When a run of some request is done, another
 * sandbox for the identical request (same program, binds, env and limits) is
 * set up in the background and held, armed: namespaces, mounts and seccomp
 * filter ready, the program not yet started. The next run with that request
 * takes it, hands it its input and releases it, so the set-up is off its
 * clock. A sandbox serves exactly one run; one not taken within `idleMs` is
 * killed, as is every one at shutdown.
 */
export interface Standby {
  readonly exited: boolean;
  discard(): void;
}

interface Held<T> {
  sandbox: T;
  timer: NodeJS.Timeout;
}

export interface StandbyOptions {
  /** Held per request; 0 turns standbys off. */
  perKey: number;
  /** Held in all. */
  maxTotal?: number;
  idleMs?: number;
  /** Checked before each start (e.g. enough uids left for runs that do not wait). */
  canStart?: () => boolean;
}

export class StandbyPool<T extends Standby> {
  private readonly held = new Map<string, Held<T>[]>();
  private readonly starting = new Map<string, number>();
  private generation = 0;
  private readonly maxTotal: number;
  private readonly idleMs: number;

  constructor(private readonly opts: StandbyOptions) {
    this.maxTotal = opts.maxTotal ?? 16;
    this.idleMs = opts.idleMs ?? 60_000;
  }

  /** Held and starting, in all (a handful of keys: counted, not tracked). */
  private count(): number {
    let n = 0;
    for (const l of this.held.values()) n += l.length;
    for (const k of this.starting.values()) n += k;
    return n;
  }

  /** A live standby for `key`, no longer held; undefined when none is. */
  take(key: string): T | undefined {
    const list = this.held.get(key);
    while (list && list.length > 0) {
      const h = list.shift()!;
      clearTimeout(h.timer);
      if (list.length === 0) this.held.delete(key);
      if (!h.sandbox.exited) return h.sandbox;
    }
    return undefined;
  }

  /** Starts one more standby for `key` unless enough are held or starting. */
  refill(key: string, start: () => Promise<T>): void {
    const n = (this.held.get(key)?.length ?? 0) + (this.starting.get(key) ?? 0);
    if (this.opts.perKey <= 0 || n >= this.opts.perKey || this.count() >= this.maxTotal) return;
    if (this.opts.canStart && !this.opts.canStart()) return;
    this.starting.set(key, (this.starting.get(key) ?? 0) + 1);
    const generation = this.generation;
    // On a later turn of the event loop: what the finished run's caller does next
    // (e.g. send its settle to the database) goes first, and the spawn overlaps that wait.
    setTimeout(() => {
      start().then(
        (sandbox) => {
          this.started(key);
          if (generation !== this.generation) sandbox.discard();
          else this.hold(key, sandbox);
        },
        () => this.started(key),
      );
    }, 0);
  }

  private started(key: string): void {
    const n = (this.starting.get(key) ?? 1) - 1;
    if (n > 0) this.starting.set(key, n);
    else this.starting.delete(key);
  }

  private hold(key: string, sandbox: T): void {
    const list = this.held.get(key) ?? [];
    const h: Held<T> = {
      sandbox,
      timer: setTimeout(() => {
        const i = list.indexOf(h);
        if (i < 0) return;
        list.splice(i, 1);
        if (list.length === 0 && this.held.get(key) === list) this.held.delete(key);
        sandbox.discard();
      }, this.idleMs),
    };
    h.timer.unref();
    list.push(h);
    this.held.set(key, list);
  }

  /** Kills every held standby; those still starting are discarded as they finish. */
  clear(): void {
    this.generation++;
    for (const list of this.held.values())
      for (const h of list) {
        clearTimeout(h.timer);
        h.sandbox.discard();
      }
    this.held.clear();
  }
}

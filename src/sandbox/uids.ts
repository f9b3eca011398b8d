/**
 * Each concurrent sandbox runs as its own unprivileged host uid, taken from a
 * pool. Per-sandbox uids make RLIMIT_NPROC a per-sandbox cap (it counts by
 * uid) and keep sandboxes from signalling one another even outside their pid
 * namespaces. Only possible when Cairn runs as root; otherwise every sandbox
 * runs as Cairn's own uid.
 */
export class UidPool {
  private readonly free: number[];
  private readonly waiters: ((uid: number) => void)[] = [];

  constructor(
    readonly base = Number(process.env.CAIRN_SANDBOX_UID_BASE ?? 2_300_000),
    readonly size = 64,
  ) {
    this.free = Array.from({ length: size }, (_, i) => base + i);
  }

  get enabled(): boolean {
    return process.getuid?.() === 0;
  }

  acquire(): Promise<number | undefined> {
    if (!this.enabled) return Promise.resolve(undefined);
    const uid = this.free.pop();
    if (uid !== undefined) return Promise.resolve(uid);
    return new Promise((r) => this.waiters.push(r));
  }

  release(uid: number | undefined): void {
    if (uid === undefined) return;
    const w = this.waiters.shift();
    if (w) w(uid);
    // To the back of the line: a released uid is the last one reused.
    else this.free.unshift(uid);
  }
}

export const uidPool = new UidPool();

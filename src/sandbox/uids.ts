import { processAlive } from '../process.js';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const SLOTS_DIR = join(tmpdir(), 'cairn-uid-slots');
const MAX_SLOTS = 1024;

/**
 * Claims a slot of uids for this process, so that two Cairn processes on one
 * host (a server and a worker, or test workers) never hand out the same uid:
 * the helper kills every process of a run's uid when the run ends. A slot is a
 * directory made atomically; one whose owner died is taken over.
 */
function claimSlot(): number {
  mkdirSync(SLOTS_DIR, { recursive: true, mode: 0o700 });
  for (let n = 0; n < MAX_SLOTS; n++) {
    const dir = join(SLOTS_DIR, String(n));
    try {
      mkdirSync(dir);
    } catch {
      let owner = NaN;
      try {
        owner = Number(readFileSync(join(dir, 'pid'), 'utf8'));
      } catch {
        continue; // being made right now by its owner
      }
      if (owner === process.pid || processAlive(owner)) continue;
      rmSync(dir, { recursive: true, force: true });
      try {
        mkdirSync(dir);
      } catch {
        continue;
      }
    }
    writeFileSync(join(dir, 'pid'), String(process.pid));
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    return n;
  }
  throw new Error(`no free sandbox uid slot in ${SLOTS_DIR} (${MAX_SLOTS} in use)`);
}

/**
 * Each concurrent sandbox runs as its own unprivileged host uid, taken from a
 * pool. Per-sandbox uids make RLIMIT_NPROC a per-sandbox cap (it counts by
 * uid) and keep sandboxes from signalling one another even outside their pid
 * namespaces. Only possible when Cairn runs as root; otherwise every sandbox
 * runs as Cairn's own uid.
 */
export class UidPool {
  private free: number[] | undefined;
  private readonly waiters: ((uid: number) => void)[] = [];

  /** `base`: the first sandbox uid (CAIRN_SANDBOX_UID_BASE); the slots start there. */
  constructor(
    readonly base: number,
    readonly size = 64,
  ) {}

  get enabled(): boolean {
    return process.getuid?.() === 0;
  }

  /** This process's own uids, claimed on first use. */
  private uids(): number[] {
    if (!this.free) {
      const start = this.base + claimSlot() * this.size;
      this.free = Array.from({ length: this.size }, (_, i) => start + i);
    }
    return this.free;
  }

  /** Uids free right now (the pool's size when uids are not pooled). */
  get available(): number {
    return this.enabled ? this.uids().length : this.size;
  }

  acquire(): Promise<number | undefined> {
    if (!this.enabled) return Promise.resolve(undefined);
    const uid = this.uids().pop();
    if (uid !== undefined) return Promise.resolve(uid);
    return new Promise((r) => this.waiters.push(r));
  }

  release(uid: number | undefined): void {
    if (uid === undefined) return;
    const w = this.waiters.shift();
    if (w) w(uid);
    // To the back of the line: a released uid is the last one reused.
    else this.uids().unshift(uid);
  }
}

import { chownSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Memory limits by cgroup where one is writable (cgroup v1 `memory`), which
 * gives an exact limit on the whole process tree, its real peak usage, and a
 * kernel-counted OOM kill instead of a guess. One cgroup per pooled sandbox
 * uid: Cairn (root) sets its limit before each run, and the exec helper, as
 * that uid, moves itself in before starting bwrap. Without a writable
 * hierarchy the sandbox falls back to RLIMIT_DATA.
 */
const ROOT = process.env.CAIRN_CGROUP_MEMORY_ROOT ?? '/sys/fs/cgroup/memory';
const BASE = join(ROOT, 'cairn');

let usable: boolean | undefined;

export function memoryCgroupsAvailable(): boolean {
  if (usable !== undefined) return usable;
  usable = false;
  if (process.env.CAIRN_CGROUPS === '0' || process.getuid?.() !== 0) return usable;
  try {
    if (!existsSync(join(ROOT, 'memory.limit_in_bytes'))) return usable;
    mkdirSync(BASE, { recursive: true });
    usable = existsSync(join(BASE, 'memory.limit_in_bytes'));
  } catch {
    usable = false;
  }
  return usable;
}

function oomKills(dir: string): number {
  const m = /^oom_kill (\d+)$/m.exec(readFileSync(join(dir, 'memory.oom_control'), 'utf8'));
  return m ? Number(m[1]) : 0;
}

export interface CgroupRun {
  /** The cgroup.procs file the helper writes its pid to. */
  procs: string;
  finish(): { peakKb: number; oomKilled: boolean };
}

/** Readies the uid's cgroup for one run with `limitBytes`; undefined when cgroups are not usable. */
export function prepareMemoryCgroup(uid: number, limitBytes: number): CgroupRun | undefined {
  if (!memoryCgroupsAvailable()) return undefined;
  try {
    const dir = join(BASE, `u${uid}`);
    if (!existsSync(dir)) {
      mkdirSync(dir);
      for (const f of ['cgroup.procs', 'tasks']) chownSync(join(dir, f), uid, uid);
    }
    writeFileSync(join(dir, 'memory.limit_in_bytes'), String(limitBytes));
    if (existsSync(join(dir, 'memory.memsw.limit_in_bytes'))) {
      try {
        writeFileSync(join(dir, 'memory.memsw.limit_in_bytes'), String(limitBytes)); // no swapping past the limit
      } catch {
        // swap accounting off: the memory limit alone applies
      }
    }
    writeFileSync(join(dir, 'memory.max_usage_in_bytes'), '0');
    const before = oomKills(dir);
    return {
      procs: join(dir, 'cgroup.procs'),
      finish: () => ({
        peakKb: Math.round(Number(readFileSync(join(dir, 'memory.max_usage_in_bytes'), 'utf8')) / 1024),
        oomKilled: oomKills(dir) > before,
      }),
    };
  } catch {
    return undefined;
  }
}

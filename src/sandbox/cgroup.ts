import { existsSync, mkdirSync, readFileSync, rmdirSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Memory limits for sandboxes, strongest first (docs/architecture.md#sandbox):
 *
 * - **cgroup v2** where the unified hierarchy has the memory controller and
 *   Cairn may create cgroups in it (root, or a delegated subtree named by
 *   CAIRN_CGROUP_V2_ROOT): `memory.max`, `memory.swap.max = 0`, `pids.max`,
 *   the peak from `memory.peak`, OOM kills from `memory.events`, and
 *   `cgroup.kill` on the kill path.
 * - **cgroup v1** `memory` where it is writable: `memory.limit_in_bytes` (and
 *   `memsw` where swap accounting is on), the peak and the OOM count.
 * Both count every page the sandbox's processes charge, shared memory
 * (MAP_SHARED|MAP_ANONYMOUS, memfd, /dev/shm and /tmp tmpfs pages) included,
 * and the kernel kills at the limit.
 * - **The memory watch** otherwise: the exec helper polls the sandbox's
 *   resident and shared memory, its memfds and its tmpfs usage every 10 ms
 *   and kills at the limit (helper.c); RLIMIT_DATA still caps private memory.
 *
 * One cgroup per pooled sandbox uid: Cairn sets its limit before each run and
 * the exec helper moves itself in before starting bwrap.
 */
export type MemoryEnforcement = 'cgroup-v2' | 'cgroup-v1' | 'watch';

const CGROUP2_MAGIC = 0x63677270;

interface Backend {
  mode: MemoryEnforcement;
  /** Where per-uid cgroups are made. */
  base: string;
  reason: string;
}

/** Where cgroups may be made (CAIRN_CGROUPS, CAIRN_CGROUP_MEMORY_ROOT, CAIRN_CGROUP_V2_ROOT). */
export interface CgroupOptions {
  enabled: boolean;
  v1Root: string;
  v2Root?: string;
}

/** The unified hierarchy's base for Cairn, when it has the memory controller and is writable. */
function detectV2(v2Root: string | undefined): Backend | undefined {
  const mount = v2Root ?? '/sys/fs/cgroup';
  try {
    if (statfsSync(mount).type !== CGROUP2_MAGIC) return undefined;
    const controllers = readFileSync(join(mount, 'cgroup.controllers'), 'utf8').split(/\s+/);
    if (!controllers.includes('memory')) return undefined;
    const base = join(mount, 'cairn');
    mkdirSync(base, { recursive: true });
    // Children of `mount` and of `base` get the memory and pids controllers.
    for (const dir of [mount, base])
      writeFileSync(
        join(dir, 'cgroup.subtree_control'),
        controllers.includes('pids') ? '+memory +pids' : '+memory',
      );
    return { mode: 'cgroup-v2', base, reason: `cgroup v2 at ${base}` };
  } catch {
    return undefined;
  }
}

function detectV1(root: string): Backend | undefined {
  try {
    if (!existsSync(join(root, 'memory.limit_in_bytes'))) return undefined;
    const base = join(root, 'cairn');
    mkdirSync(base, { recursive: true });
    if (!existsSync(join(base, 'memory.limit_in_bytes'))) return undefined;
    return { mode: 'cgroup-v1', base, reason: `cgroup v1 memory at ${base}` };
  } catch {
    return undefined;
  }
}

export interface CgroupRun {
  /** The cgroup.procs file the helper writes its pid to. */
  procs: string;
  finish(): { peakKb: number; oomKilled: boolean };
}

function counter(file: string, name: string): number {
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(readFileSync(file, 'utf8'));
  return m ? Number(m[1]) : 0;
}

function prepareV1(dir: string, limitBytes: number): CgroupRun {
  if (!existsSync(dir)) mkdirSync(dir);
  writeFileSync(join(dir, 'memory.limit_in_bytes'), String(limitBytes));
  if (existsSync(join(dir, 'memory.memsw.limit_in_bytes'))) {
    try {
      writeFileSync(join(dir, 'memory.memsw.limit_in_bytes'), String(limitBytes)); // no swapping past the limit
    } catch {
      // swap accounting off: the memory limit alone applies
    }
  }
  writeFileSync(join(dir, 'memory.max_usage_in_bytes'), '0');
  const before = counter(join(dir, 'memory.oom_control'), 'oom_kill');
  return {
    procs: join(dir, 'cgroup.procs'),
    finish: () => ({
      peakKb: Math.round(Number(readFileSync(join(dir, 'memory.max_usage_in_bytes'), 'utf8')) / 1024),
      oomKilled: counter(join(dir, 'memory.oom_control'), 'oom_kill') > before,
    }),
  };
}

function prepareV2(dir: string, limitBytes: number, maxProcs: number): CgroupRun {
  // A fresh cgroup per run: its peak and event counters start at zero (the last run's processes are all reaped).
  if (existsSync(dir)) rmdirSync(dir);
  mkdirSync(dir);
  writeFileSync(join(dir, 'memory.max'), String(limitBytes));
  if (existsSync(join(dir, 'memory.swap.max'))) writeFileSync(join(dir, 'memory.swap.max'), '0');
  if (existsSync(join(dir, 'pids.max'))) writeFileSync(join(dir, 'pids.max'), String(maxProcs));
  return {
    procs: join(dir, 'cgroup.procs'),
    finish: () => ({
      peakKb: existsSync(join(dir, 'memory.peak'))
        ? Math.round(Number(readFileSync(join(dir, 'memory.peak'), 'utf8')) / 1024)
        : 0,
      oomKilled: counter(join(dir, 'memory.events'), 'oom_kill') > 0,
    }),
  };
}

/** The memory cgroups of one sandbox instance: the backend is detected on first use. */
export class MemoryCgroups {
  private backend: Backend | undefined;

  constructor(private readonly opts: CgroupOptions) {}

  private detect(): Backend {
    if (this.backend) return this.backend;
    const o = this.opts;
    if (!o.enabled) this.backend = { mode: 'watch', base: '', reason: 'CAIRN_CGROUPS=0' };
    else if (process.getuid?.() !== 0 && !o.v2Root)
      this.backend = {
        mode: 'watch',
        base: '',
        reason: 'not root and no delegated cgroup (CAIRN_CGROUP_V2_ROOT)',
      };
    else
      this.backend = detectV2(o.v2Root) ??
        detectV1(o.v1Root) ?? {
          mode: 'watch',
          base: '',
          reason: 'no writable memory cgroup (v2 or v1) found',
        };
    return this.backend;
  }

  /** How memory_mb is enforced, for diagnostics. */
  enforcement(): { mode: MemoryEnforcement; reason: string; counts_shared_memory: true } {
    const b = this.detect();
    return { mode: b.mode, reason: b.reason, counts_shared_memory: true };
  }

  get available(): boolean {
    return this.detect().mode !== 'watch';
  }

  /** Readies the uid's cgroup for one run with `limitBytes`; undefined when no cgroup is usable. */
  prepare(uid: number, limitBytes: number, maxProcs = 64): CgroupRun | undefined {
    const b = this.detect();
    if (b.mode === 'watch') return undefined;
    try {
      const dir = join(b.base, `u${uid}`);
      return b.mode === 'cgroup-v2' ? prepareV2(dir, limitBytes, maxProcs) : prepareV1(dir, limitBytes);
    } catch {
      return undefined;
    }
  }
}

import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { buildSeccompFilter } from './seccomp.js';
import { UidPool } from './uids.js';
import { SpawnServer, frame, frameReader } from './spawn-server.js';
import { MemoryCgroups, type CgroupOptions } from './cgroup.js';
import { StandbyPool } from './standby.js';
import type { Span } from '@opentelemetry/api';
import { sandboxStart } from '../telemetry/metrics.js';
import { withSpan } from '../telemetry/tracing.js';
import { constants } from 'node:os';
import { setting } from '../config.js';

function signalName(n: number): string | undefined {
  return Object.entries(constants.signals).find(([, v]) => v === n)?.[0];
}

export const BWRAP = '/usr/bin/bwrap';

/** Size cap of the sandbox's /dev/shm (its use counts toward memory_mb as well). */
const DEV_SHM_MB = 16;

export interface Bind {
  src: string;
  dest: string;
  /** Read-only unless `rw`. */
  rw?: boolean;
}

export interface Limits {
  /** Wall clock; the whole process tree is killed when it passes. */
  timeoutMs: number;
  /** RLIMIT_DATA (not RLIMIT_AS, which breaks Go's address-space reservations). */
  memoryMb: number;
  /** RLIMIT_NPROC for the sandbox's own uid. */
  maxProcs: number;
  /** RLIMIT_FSIZE. */
  fileSizeMb: number;
  /** RLIMIT_NOFILE. */
  openFiles: number;
  /** Private /tmp size. */
  tmpMb: number;
  stdoutBytes: number;
  stderrBytes: number;
  resultBytes: number;
}

export const DEFAULT_LIMITS: Limits = {
  timeoutMs: 30_000,
  memoryMb: 128,
  maxProcs: 64,
  fileSizeMb: 16,
  openFiles: 256,
  tmpMb: 64,
  stdoutBytes: 1024 * 1024,
  stderrBytes: 1024 * 1024,
  resultBytes: 6 * 1024 * 1024,
};

/** How a sandbox instance is built: from the declared settings (docs/configuration.md), or given by a test. */
export interface SandboxOptions {
  /**
   * The explicit, loud opt-out: CAIRN_UNSAFE_NO_SANDBOX=1 runs code without bubblewrap
   * (rlimits, a dedicated uid and reaping still apply). `serve` and `worker` log it at
   * start, and every such run carries the flag `unsandboxed`.
   */
  disabled: boolean;
  /** Sandboxes kept ready per distinct request (CAIRN_SANDBOX_STANDBY). */
  standbyPerKey: number;
  /** The first sandbox uid (CAIRN_SANDBOX_UID_BASE); the Go builder runs as the uid below it. */
  uidBase: number;
  /** Uids per process slot. */
  uidPoolSize?: number;
  cgroups: CgroupOptions;
}

/** The sandbox options the settings declare. */
export function sandboxOptions(): SandboxOptions {
  return {
    disabled: setting('CAIRN_UNSAFE_NO_SANDBOX'),
    standbyPerKey: setting('CAIRN_SANDBOX_STANDBY'),
    uidBase: setting('CAIRN_SANDBOX_UID_BASE'),
    cgroups: {
      enabled: setting('CAIRN_CGROUPS'),
      v1Root: setting('CAIRN_CGROUP_MEMORY_ROOT'),
      v2Root: setting('CAIRN_CGROUP_V2_ROOT'),
    },
  };
}

export type Verdict =
  'ok' | 'timeout' | 'memory_exceeded' | 'output_limit' | 'crashed' | 'invalid_output' | 'cancelled';

export interface SandboxRequest {
  argv: string[];
  binds: Bind[];
  env?: Record<string, string>;
  stdin?: Buffer | string;
  limits?: Partial<Limits>;
  cwd?: string;
  /** Let the sandbox reach the network (only for module downloads, where no user code runs). */
  network?: boolean;
  /** A writable /out of this many MiB (a tmpfs of the sandbox's own: full is full, the host disk is not touched). */
  outMb?: number;
  /** Patterns on stderr that mean the program ran out of memory (runtime-specific). */
  oomMarkers?: RegExp[];
  signal?: AbortSignal;
  /** Run as this host uid instead of one from the pool (the Go builder's own uid). */
  asUid?: number;
  /**
   * Start from a sandbox made ahead of time for an identical request (same
   * argv, binds, env and limits), and leave one ready for the next: the
   * namespaces and mounts are set up off the run's clock, while no code of the
   * run starts before its input is handed over. Each run still gets a fresh
   * sandbox that no other run has used.
   */
  standby?: boolean;
}

/** One log line as it arrived: [epoch ms, stream, text]. */
export type LogLine = [number, 'stdout' | 'stderr', string];

/** Most log lines kept per run; the overflow is counted, not stored. */
export const MAX_LOG_LINES = 2000;

export interface SandboxResult {
  verdict: Verdict;
  exitCode: number | null;
  signal: string | null;
  stdout: Buffer;
  stderr: Buffer;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  /** What the program wrote on fd 3: its result, kept apart from its logs. */
  result: Buffer;
  /** stdout and stderr split into lines, timestamped on arrival (at most MAX_LOG_LINES). */
  lines: LogLine[];
  linesDropped: number;
  durationMs: number;
  /** False when the operator opted out of the sandbox (CAIRN_UNSAFE_NO_SANDBOX=1). */
  sandboxed: boolean;
  /** Peak resident memory of the sandbox's process tree (wait4 rusage), when known. */
  peakMemoryKb: number | null;
  uid: number | null;
  argv: string[];
  limits: Limits;
}

function seccompFile(filterPaths: Map<boolean, string>, allowInet: boolean): string {
  const known = filterPaths.get(allowInet);
  if (known && existsSync(known)) return known;
  const dir = join(tmpdir(), `cairn-seccomp-${process.pid}`);
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const path = join(dir, allowInet ? 'filter-net.bpf' : 'filter.bpf');
  writeFileSync(path, buildSeccompFilter({ allowInet }), { mode: 0o444 });
  filterPaths.set(allowInet, path);
  return path;
}

/**
 * The bwrap command line: every namespace unshared, nothing of the host but the
 * binds. `armed`: bwrap waits on its fd 5 (a pipe the exec helper writes to) before it
 * starts the program, with everything else already set up.
 */
export function bwrapArgs(req: SandboxRequest, limits: Limits, armed = false): string[] {
  const a = [
    '--unshare-all',
    '--unshare-user',
    '--disable-userns',
    '--die-with-parent',
    '--new-session',
    '--cap-drop',
    'ALL',
    '--clearenv',
  ];
  if (req.network) a.push('--share-net');
  a.push('--hostname', 'sandbox');
  for (const b of req.binds) a.push(b.rw ? '--bind' : '--ro-bind', b.src, b.dest);
  a.push('--dev', '/dev', '--proc', '/proc');
  a.push('--size', String(limits.tmpMb * 1024 * 1024), '--tmpfs', '/tmp');
  a.push('--size', String(DEV_SHM_MB * 1024 * 1024), '--tmpfs', '/dev/shm');
  if (req.outMb)
    a.push('--size', String(req.outMb * 1024 * 1024), '--tmpfs', '/out', '--chmod', '0777', '/out');
  a.push('--remount-ro', '/dev');
  a.push('--remount-ro', '/');
  for (const [k, v] of Object.entries(req.env ?? {})) a.push('--setenv', k, v);
  a.push('--chdir', req.cwd ?? '/tmp');
  a.push('--seccomp', '4');
  if (armed) a.push('--block-fd', '5');
  a.push('--', ...req.argv);
  return a;
}

/** Without bwrap, each bind destination in argv is its host source path. */
function unsandboxedArgv(req: SandboxRequest): string[] {
  return req.argv.map((a) => {
    const b = [...req.binds]
      .sort((x, y) => y.dest.length - x.dest.length)
      .find((x) => a === x.dest || a.startsWith(x.dest + '/'));
    return b ? b.src + a.slice(b.dest.length) : a;
  });
}

/** The helper's report frame, sent once the whole tree is reaped. */
interface HelperReport {
  exit: number;
  signal: number;
  max_rss_kb: number;
  killed: boolean;
  timed_out: boolean;
  /** The memory watch killed the sandbox at its limit. */
  memory_exceeded: boolean;
  /** The most the watch saw the sandbox hold (0 when it did not watch). */
  watched_peak_kb: number;
  elapsed_ms: number;
}

/** A sandbox started through the spawn server: released at once, or held until `go`. */
interface Launched {
  /** The helper has exited (a standby that died before its run is useless). */
  readonly exited: boolean;
  /** Hands the program its input, starts its clock; resolves once every process is reaped. */
  go(stdin: Buffer | string | undefined, signal: AbortSignal | undefined): Promise<SandboxResult>;
  /** A standby that is not wanted: killed before anything of a run started. */
  discard(): void;
}

/**
 * Asks the spawn server for a sandbox for `req`, with a pooled uid and, where writable, a
 * memory cgroup. Armed, bwrap sets the sandbox up and then waits; otherwise
 * the program starts as soon as bwrap has set it up.
 */
/** What launching needs of its sandbox instance. */
interface LaunchParts {
  spawner: SpawnServer;
  uids: UidPool;
  cgroups: MemoryCgroups;
  disabled: boolean;
  seccomp(allowInet: boolean): string;
}

async function launch(
  parts: LaunchParts,
  req: SandboxRequest,
  limits: Limits,
  wantArmed: boolean,
): Promise<Launched> {
  const { uids: uidPool } = parts;
  const pooled = req.asUid === undefined;
  const sock = await parts.spawner.connect(); // before taking a uid: a server that cannot start must not leak one
  let spawnError = '';
  let exited = false;
  // Done once the helper has reported (it reaps every process of the sandbox first) and hung up.
  const ended = new Promise<void>((resolve) => {
    sock.on('error', (e) => (spawnError = e.message));
    sock.on('close', () => {
      exited = true;
      resolve();
    });
  });
  const uid = pooled ? await uidPool.acquire() : req.asUid;
  const sandboxed = !parts.disabled;
  const armed = wantArmed && sandboxed;
  // A memory cgroup where one is writable (exact, whole tree, counted OOM kills); RLIMIT_DATA otherwise.
  const cgroup =
    uid !== undefined && pooled
      ? parts.cgroups.prepare(uid, limits.memoryMb * 1024 * 1024, limits.maxProcs)
      : undefined;
  // Without a cgroup, the helper watches the sandbox's memory, shared memory included (helper.c).
  const watchBytes = !cgroup && pooled ? limits.memoryMb * 1024 * 1024 : 0;
  const argv = sandboxed ? [BWRAP, ...bwrapArgs(req, limits, armed)] : unsandboxedArgv(req);
  // bwrap's options (host paths, limits) go on a fd, not on its command line (/proc/1/cmdline inside).
  const fdArgs = sandboxed ? argv.indexOf('--') - 1 : 0;
  // bwrap's own pid 1 keeps its environment (readable in /proc/1/environ), so it gets none;
  // without bwrap the program gets exactly the requested environment.
  const env = sandboxed ? [] : Object.entries(req.env ?? {}).map(([k, v]) => `${k}=${v}`);
  const header = [
    uid === undefined ? '-' : String(uid),
    cgroup ? String(64 * 1024 * 1024 * 1024) : String(limits.memoryMb * 1024 * 1024),
    String(limits.maxProcs),
    String(limits.fileSizeMb * 1024 * 1024),
    String(limits.openFiles),
    // With a pooled uid the helper may kill every process of that uid when the run ends.
    uid !== undefined && pooled ? '1' : '0',
    String(limits.timeoutMs),
    cgroup?.procs ?? '-',
    armed ? '1' : '0',
    parts.seccomp(Boolean(req.network)),
    sandboxed ? '-' : tmpdir(),
    String(watchBytes),
    String(fdArgs),
    String(env.length),
    ...env,
    ...argv,
  ];
  sock.write(frame('h', header.join('\0') + '\0'));
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const res: Buffer[] = [];
  let outN = 0;
  let errN = 0;
  let resN = 0;
  let stdoutTruncated = false;
  let stderrTruncated = false;
  let resultOver = false;
  let timedOut = false;
  let cancelled = false;
  let watchKilled = false;
  // The helper kills and reaps the whole sandbox on a kill frame; closing the connection is the fallback.
  let killTimer: NodeJS.Timeout | undefined;
  const send = (f: Buffer) => {
    if (!sock.destroyed && sock.writable) sock.write(f);
  };
  const kill = () => {
    send(frame('k'));
    killTimer ??= setTimeout(() => sock.destroy(), 500);
  };
  const take = (chunks: Buffer[], cap: number, n: number, d: Buffer): [number, boolean] => {
    if (n + d.length > cap) {
      chunks.push(d.subarray(0, Math.max(0, cap - n)));
      kill();
      return [cap, true];
    }
    chunks.push(d);
    return [n + d.length, false];
  };
  const lines: LogLine[] = [];
  let linesDropped = 0;
  const partial = { stdout: '', stderr: '' };
  const split = (stream: 'stdout' | 'stderr', d: Buffer, final = false) => {
    const text = partial[stream] + d.toString('utf8');
    const parts = text.split('\n');
    partial[stream] = final ? '' : parts.pop()!;
    const now = Date.now();
    for (const p of final ? parts.filter((x) => x !== '') : parts) {
      if (lines.length < MAX_LOG_LINES)
        lines.push([now, stream, p.length > 4096 ? p.slice(0, 4096) + '…' : p]);
      else linesDropped++;
    }
  };
  let reportText = '';
  const read = frameReader((type, d) => {
    if (type === 'o') {
      if (stdoutTruncated) return;
      [outN, stdoutTruncated] = take(out, limits.stdoutBytes, outN, d);
      split('stdout', d);
    } else if (type === 'e') {
      if (stderrTruncated) return;
      [errN, stderrTruncated] = take(err, limits.stderrBytes, errN, d);
      split('stderr', d);
    } else if (type === 'r') {
      if (resultOver) return;
      [resN, resultOver] = take(res, limits.resultBytes, resN, d);
    } else if (type === 'R') reportText = d.toString('utf8');
  });
  sock.on('data', read);
  let finished: Promise<SandboxResult> | undefined;
  const finish = async (signal: AbortSignal | undefined): Promise<SandboxResult> => {
    // The helper enforces the limit with its own timer; this one only covers a helper that died.
    const timer = setTimeout(() => {
      timedOut = true;
      kill();
    }, limits.timeoutMs + 1_000);
    const onAbort = () => {
      cancelled = true;
      kill();
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    if (signal?.aborted) onAbort();
    const t0 = performance.now();
    await ended;
    clearTimeout(timer);
    if (killTimer) clearTimeout(killTimer);
    signal?.removeEventListener('abort', onAbort);
    // The helper's report: bwrap's real exit status and the tree's peak RSS (wait4).
    let exitCode: number | null = null;
    let sig: string | null = reportText ? null : 'SPAWN_ERROR';
    let peakMemoryKb: number | null = null;
    let helperElapsedMs: number | undefined;
    try {
      const rep = JSON.parse(reportText) as HelperReport;
      exitCode = rep.exit >= 0 ? rep.exit : null;
      sig = rep.signal ? (signalName(rep.signal) ?? String(rep.signal)) : null;
      peakMemoryKb = rep.max_rss_kb;
      if (rep.timed_out) timedOut = true;
      if (rep.memory_exceeded) watchKilled = true;
      if (rep.watched_peak_kb > (peakMemoryKb ?? 0)) peakMemoryKb = rep.watched_peak_kb;
      helperElapsedMs = rep.elapsed_ms;
    } catch {
      // no report: the helper itself died (or never started)
      if (spawnError || !reportText)
        split('stderr', Buffer.from(`cairn: no report from the sandbox helper ${spawnError}\n`));
    }
    let oomKilled = watchKilled;
    if (cgroup) {
      try {
        const c = cgroup.finish();
        peakMemoryKb = c.peakKb;
        oomKilled = c.oomKilled;
      } catch {
        // keep wait4's figure
      }
    }
    // Only now may another run take this uid (and reset its cgroup's counters).
    if (pooled) uidPool.release(uid);
    // The helper's clock: from releasing the program to reaping the last process (no event-loop lag).
    const durationMs = helperElapsedMs ?? performance.now() - t0;
    split('stdout', Buffer.alloc(0), true);
    split('stderr', Buffer.alloc(0), true);
    const stdout = Buffer.concat(out);
    const stderr = Buffer.concat(err);
    const result = Buffer.concat(res);
    const errText = stderr.toString('utf8');

    let verdict: Verdict;
    if (cancelled) verdict = 'cancelled';
    else if (timedOut) verdict = 'timeout';
    else if (oomKilled) verdict = 'memory_exceeded';
    else if (stdoutTruncated || stderrTruncated || resultOver) verdict = 'output_limit';
    else if ((req.oomMarkers ?? []).some((re) => re.test(errText))) verdict = 'memory_exceeded';
    else if (exitCode === 0 && result.length > 0) verdict = 'ok';
    else if (exitCode === 0) verdict = 'invalid_output';
    else verdict = 'crashed';

    return {
      verdict,
      exitCode,
      signal: sig,
      stdout,
      stderr,
      stdoutTruncated,
      stderrTruncated,
      result,
      lines,
      linesDropped,
      durationMs,
      sandboxed,
      peakMemoryKb,
      uid: uid ?? null,
      argv: req.argv,
      limits,
    };
  };
  return {
    get exited() {
      return exited;
    },
    go(stdin, signal) {
      if (finished) throw new Error('a sandbox runs once');
      // Input first, then the release: the program finds its input waiting.
      const input = stdin === undefined ? Buffer.alloc(0) : Buffer.from(stdin);
      send(Buffer.concat([frame('i', input), frame('I'), ...(armed ? [frame('g')] : [])]));
      finished = finish(signal);
      return finished;
    },
    discard() {
      if (finished) return;
      send(frame('k')); // before its go: the helper kills the sandbox, nothing of a run started
      finished = finish(undefined);
      void finished;
    },
  };
}

function standbyKey(req: SandboxRequest, limits: Limits): string {
  return JSON.stringify([
    req.argv,
    req.binds,
    req.env ?? {},
    limits,
    req.cwd ?? null,
    Boolean(req.network),
    req.outMb ?? 0,
  ]);
}

/**
 * The sandbox of one Cairn process (or one test): its spawn server, its slot
 * of host uids, its memory cgroups, its seccomp filter files and the sandboxes
 * it made ahead of time. Built from its options and held in the engine's
 * resources; executors and builders reach it through their context.
 */
export class Sandbox {
  readonly disabled: boolean;
  private readonly uids: UidPool;
  private readonly cgroups: MemoryCgroups;
  private readonly spawner = new SpawnServer();
  private readonly filterPaths = new Map<boolean, string>();
  private readonly standbys: StandbyPool<Launched>;
  private readonly parts: LaunchParts;

  constructor(readonly options: SandboxOptions = sandboxOptions()) {
    this.disabled = options.disabled;
    this.uids = new UidPool(options.uidBase, options.uidPoolSize);
    this.cgroups = new MemoryCgroups(options.cgroups);
    this.standbys = new StandbyPool<Launched>({
      perKey: options.standbyPerKey,
      // Never hold uids that runs are waiting for.
      canStart: () => this.uids.available > 8,
    });
    this.parts = {
      spawner: this.spawner,
      uids: this.uids,
      cgroups: this.cgroups,
      disabled: this.disabled,
      seccomp: (inet) => seccompFile(this.filterPaths, inet),
    };
  }

  /** Runs as a pooled uid per sandbox (only when Cairn runs as root). */
  get pooledUids(): boolean {
    return this.uids.enabled;
  }

  /** The host uid that owns the build caches and runs every build; functions never run as it. */
  get builderUid(): number | undefined {
    return this.uids.enabled ? this.uids.base - 1 : undefined;
  }

  /** Whether a memory cgroup (v2 or v1) enforces memory_mb here, rather than the helper's watch. */
  get memoryCgroups(): boolean {
    return this.cgroups.available;
  }

  /** How this sandbox contains runs, for `GET /api/diagnostics` and the go-fn diagnostics op. */
  diagnostics() {
    return {
      backend: this.disabled ? 'none (CAIRN_UNSAFE_NO_SANDBOX=1)' : 'bubblewrap',
      memory: this.cgroups.enforcement(),
      tmpfs: { tmp_mb: DEFAULT_LIMITS.tmpMb, dev_shm_mb: DEV_SHM_MB, counted_in_memory: true },
      seccomp: 'x86_64 deny-list (docs/architecture.md#sandbox)',
    };
  }

  /** Kills every sandbox made ahead of time (they hold no run). */
  discardStandbys(): void {
    this.standbys.clear();
  }

  /** At shutdown: the standbys are killed and the spawn server stops. */
  close(): void {
    this.discardStandbys();
    this.spawner.close();
  }

  /**
   * Runs `argv` in a fresh bubblewrap sandbox and decides the verdict from what
   * it saw: its own timer, the output caps, the OOM markers, the exit status and
   * whether a result arrived on fd 3.
   */
  run(req: SandboxRequest): Promise<SandboxResult> {
    return withSpan('sandbox', { 'cairn.sandbox.argv0': req.argv[0] ?? '' }, (span) => this.run1(req, span));
  }

  private async run1(req: SandboxRequest, span: Span): Promise<SandboxResult> {
    const limits: Limits = { ...DEFAULT_LIMITS, ...req.limits };
    const useStandby = Boolean(req.standby) && req.asUid === undefined && !this.disabled;
    const key = useStandby ? standbyKey(req, limits) : '';
    const ready = useStandby ? this.standbys.take(key) : undefined;
    const t0 = performance.now();
    const sandbox = ready ?? (await launch(this.parts, req, limits, false));
    sandboxStart.observe({ standby: ready ? 'hit' : 'miss' }, (performance.now() - t0) / 1000);
    span.setAttribute('cairn.sandbox.standby', Boolean(ready));
    let result = await sandbox.go(req.stdin, req.signal);
    // A held sandbox whose helper died before the run (e.g. killed from outside) did not run it: run it fresh.
    if (ready && result.signal === 'SPAWN_ERROR' && !req.signal?.aborted)
      result = await (await launch(this.parts, req, limits, false)).go(req.stdin, req.signal);
    // The next one is made once this run is done: spawning forks this whole process, and the
    // set-up competes for the same cores, so doing it during the run would slow the run.
    if (useStandby) this.standbys.refill(key, () => launch(this.parts, req, limits, true));
    span.setAttribute('cairn.sandbox.verdict', result.verdict);
    span.setAttribute('cairn.sandbox.exit_code', result.exitCode ?? -1);
    return result;
  }
}

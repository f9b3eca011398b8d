import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { buildSeccompFilter } from './seccomp.js';
import { uidPool } from './uids.js';
import { execHelper } from './exec-helper.js';
import { prepareMemoryCgroup } from './cgroup.js';
import { constants } from 'node:os';

function signalName(n: number): string | undefined {
  return Object.entries(constants.signals).find(([, v]) => v === n)?.[0];
}

export const BWRAP = '/usr/bin/bwrap';

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

/**
 * The explicit, loud opt-out: CAIRN_UNSAFE_NO_SANDBOX=1 runs code without bubblewrap
 * (rlimits, a dedicated uid and reaping still apply). `serve` and `worker` log it at
 * start, and every such run carries the flag `unsandboxed`.
 */
export function sandboxDisabled(): boolean {
  return process.env.CAIRN_UNSAFE_NO_SANDBOX === '1';
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
  /** Patterns on stderr that mean the program ran out of memory (runtime-specific). */
  oomMarkers?: RegExp[];
  signal?: AbortSignal;
  /** Run as this host uid instead of one from the pool (the Go builder's own uid). */
  asUid?: number;
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

const filterPaths = new Map<boolean, string>();
function seccompFile(allowInet: boolean): string {
  const known = filterPaths.get(allowInet);
  if (known && existsSync(known)) return known;
  const dir = join(tmpdir(), `cairn-seccomp-${process.pid}`);
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const path = join(dir, allowInet ? 'filter-net.bpf' : 'filter.bpf');
  writeFileSync(path, buildSeccompFilter({ allowInet }), { mode: 0o444 });
  filterPaths.set(allowInet, path);
  return path;
}

/** The bwrap command line: every namespace unshared, nothing of the host but the binds. */
export function bwrapArgs(req: SandboxRequest, limits: Limits): string[] {
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
  a.push('--size', String(16 * 1024 * 1024), '--tmpfs', '/dev/shm');
  a.push('--remount-ro', '/dev');
  a.push('--remount-ro', '/');
  for (const [k, v] of Object.entries(req.env ?? {})) a.push('--setenv', k, v);
  a.push('--chdir', req.cwd ?? '/tmp');
  a.push('--seccomp', '4');
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

/**
 * Runs `argv` in a fresh bubblewrap sandbox and decides the verdict from what
 * it saw: its own timer, the output caps, the OOM markers, the exit status and
 * whether a result arrived on fd 3.
 */
export async function runSandbox(req: SandboxRequest): Promise<SandboxResult> {
  const limits: Limits = { ...DEFAULT_LIMITS, ...req.limits };
  const helper = execHelper(); // before taking a uid: a failed helper build must not leak one
  const pooled = req.asUid === undefined;
  const uid = pooled ? await uidPool.acquire() : req.asUid;
  const seccompFd = openSync(seccompFile(Boolean(req.network)), 'r');
  const sandboxed = !sandboxDisabled();
  // A memory cgroup where one is writable (exact, whole tree, counted OOM kills); RLIMIT_DATA otherwise.
  const cgroup =
    uid !== undefined && pooled ? prepareMemoryCgroup(uid, limits.memoryMb * 1024 * 1024) : undefined;
  const args = [
    cgroup ? String(64 * 1024 * 1024 * 1024) : String(limits.memoryMb * 1024 * 1024),
    String(limits.maxProcs),
    String(limits.fileSizeMb * 1024 * 1024),
    String(limits.openFiles),
    // With a pooled uid the helper may kill every process of that uid when the run ends.
    uid !== undefined && pooled ? '1' : '0',
    String(limits.timeoutMs),
    cgroup?.procs ?? '-',
    '--',
    ...(sandboxed ? [BWRAP, ...bwrapArgs(req, limits)] : unsandboxedArgv(req)),
  ];
  const t0 = performance.now();
  let child;
  try {
    child = spawn(helper, args, {
      // bwrap's own pid 1 keeps this environment (readable in /proc/1/environ), so it is empty;
      // without bwrap the program gets exactly the requested environment.
      env: sandboxed ? {} : { ...(req.env ?? {}) },
      ...(sandboxed ? {} : { cwd: tmpdir() }),
      stdio: ['pipe', 'pipe', 'pipe', 'pipe', seccompFd, 'pipe'],
      ...(uid !== undefined ? { uid, gid: uid } : {}),
      detached: false,
    });
  } finally {
    closeSync(seccompFd);
  }
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
  // The helper kills and reaps the whole sandbox on SIGTERM; SIGKILL is the fallback.
  let killTimer: NodeJS.Timeout | undefined;
  const kill = () => {
    try {
      child.kill('SIGTERM');
    } catch {
      // already gone
    }
    killTimer ??= setTimeout(() => {
      try {
        child.kill('SIGKILL');
      } catch {
        // already gone
      }
    }, 500);
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
  child.stdout!.on('data', (d: Buffer) => {
    if (stdoutTruncated) return;
    [outN, stdoutTruncated] = take(out, limits.stdoutBytes, outN, d);
    split('stdout', d);
  });
  child.stderr!.on('data', (d: Buffer) => {
    if (stderrTruncated) return;
    [errN, stderrTruncated] = take(err, limits.stderrBytes, errN, d);
    split('stderr', d);
  });
  const resultStream = child.stdio[3] as NodeJS.ReadableStream;
  resultStream.on('data', (d: Buffer) => {
    if (resultOver) return;
    [resN, resultOver] = take(res, limits.resultBytes, resN, d);
  });
  resultStream.on('error', () => undefined);
  let reportText = '';
  const reportStream = (child.stdio as unknown as NodeJS.ReadableStream[])[5]!;
  reportStream.on('data', (d: Buffer) => (reportText += d.toString('utf8')));
  reportStream.on('error', () => undefined);
  child.stdin!.on('error', () => undefined);
  child.stdin!.end(req.stdin ?? '');
  // The helper enforces the limit with its own timer; this one only covers a helper that died.
  const timer = setTimeout(() => {
    timedOut = true;
    kill();
  }, limits.timeoutMs + 1_000);
  const onAbort = () => {
    cancelled = true;
    kill();
  };
  req.signal?.addEventListener('abort', onAbort, { once: true });
  if (req.signal?.aborted) onAbort();

  const [helperExit, helperSignal] = await new Promise<[number | null, string | null]>((resolve) => {
    let status: [number | null, string | null] | undefined;
    let open = 4;
    const done = () => status && open === 0 && resolve(status);
    for (const s of [child.stdout!, child.stderr!, resultStream, reportStream])
      s.on('close', () => (open--, done()));
    child.on('exit', (code, sig) => {
      status = [code, sig];
      // A grandchild may hold the pipes; the namespace dies with bwrap, so this is brief.
      setTimeout(() => {
        open = 0;
        done();
      }, 200).unref();
      done();
    });
    child.on('error', () => resolve([null, 'SPAWN_ERROR']));
  });
  clearTimeout(timer);
  if (killTimer) clearTimeout(killTimer);
  req.signal?.removeEventListener('abort', onAbort);
  // The helper's report: bwrap's real exit status and the tree's peak RSS (wait4).
  let exitCode = helperExit;
  let signal = helperSignal;
  let peakMemoryKb: number | null = null;
  let helperElapsedMs: number | undefined;
  try {
    const rep = JSON.parse(reportText) as {
      exit: number;
      signal: number;
      max_rss_kb: number;
      timed_out: boolean;
      elapsed_ms: number;
    };
    exitCode = rep.exit >= 0 ? rep.exit : null;
    signal = rep.signal ? (signalName(rep.signal) ?? String(rep.signal)) : null;
    peakMemoryKb = rep.max_rss_kb;
    if (rep.timed_out) timedOut = true;
    helperElapsedMs = rep.elapsed_ms;
  } catch {
    // the helper itself was killed: keep what Node saw
  }
  let oomKilled = false;
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
  // The helper's clock: from starting bwrap to reaping the last process (no event-loop lag).
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
    signal,
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
}

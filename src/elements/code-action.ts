import { errors as coreErrors, type CairnError } from '../core/errors.js';
import { sha256Hex } from '../core/hash.js';
import type { Bind, Sandbox, SandboxResult } from '../sandbox/runner.js';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cacheRoot } from '../sandbox/exec-helper.js';
import type { ExecContext } from './types.js';
import { findUnstorable, unstorableOutputMessage } from '../core/storable.js';

/** What every code-action wrapper writes on fd 3. */
export interface ResultEnvelope {
  kind: string;
  output?: unknown;
  error?: string;
  stack?: string;
  /** The regular files left in /out (base64), and what else was there (refused). */
  files?: { name: string; b64?: string; refused?: string }[];
}

/** Most files one run may leave in /out, and the size of its /out (MiB). */
export const OUT_FILES_MAX = 100;
export const OUT_MB = 16;
/** The result channel's cap when /out's files travel in it (base64): the output's room plus theirs. */
export const RESULT_BYTES_WITH_FILES = 6 * 1024 * 1024 + Math.ceil(OUT_MB * 1.4) * 1024 * 1024;

/** Evidence hashes of the files a run read (`in/<name>`) or wrote (`out/<name>`). */
export function fileHashes(
  dir: 'in' | 'out',
  files: ({ name: string; sha256: string } | { name: string; data: Buffer })[],
): Record<string, string> {
  return Object.fromEntries(
    files.map((f) => [`${dir}/${f.name}`, 'sha256:' + ('sha256' in f ? f.sha256 : sha256Hex(f.data))]),
  );
}

/** A file name /out may hold: one path segment, no NUL, not `.` or `..`, at most 255 bytes. */
export function fileNameOk(name: string): boolean {
  return (
    name !== '.' &&
    name !== '..' &&
    !/[/\\\0]/.test(name) &&
    Buffer.byteLength(name) <= 255 &&
    name.length > 0
  );
}

/** The envelope's files → what the engine stores, and what it refuses (with why). */
export function filesOf(env: ResultEnvelope): {
  files: { name: string; data: Buffer }[];
  refused: { name: string; refused: string }[];
} {
  const files: { name: string; data: Buffer }[] = [];
  const refused: { name: string; refused: string }[] = [];
  for (const f of env.files ?? []) {
    if (typeof f?.name !== 'string' || !fileNameOk(f.name)) {
      refused.push({ name: String(f?.name ?? '').slice(0, 255), refused: 'bad name' });
      continue;
    }
    if (f.refused) refused.push({ name: f.name, refused: String(f.refused) });
    else if (files.length >= OUT_FILES_MAX)
      refused.push({ name: f.name, refused: `more than ${OUT_FILES_MAX} files` });
    else files.push({ name: f.name, data: Buffer.from(typeof f.b64 === 'string' ? f.b64 : '', 'base64') });
  }
  return { files, refused };
}

/** Builds a type's own error from a shared suffix (TIMEOUT → GO_FN_TIMEOUT, PYTHON_FN_TIMEOUT …). */
export type Fail = (suffix: string, message: string, details?: unknown) => CairnError;

export function stderrTail(r: SandboxResult, lines: number): string {
  return r.stderr.toString('utf8').trimEnd().split('\n').slice(-lines).join('\n');
}

/**
 * The sandbox's verdict, shared by every code action: anything but `ok`
 * becomes the type's TIMEOUT / MEMORY_EXCEEDED / OUTPUT_TOO_LARGE /
 * EXECUTION_FAILED / INVALID_OUTPUT error; `ok` yields the wrapper's envelope.
 */
export function readEnvelope(
  r: SandboxResult,
  limits: { timeout_ms: number; memory_mb: number },
  fail: Fail,
  noResultHint = '',
): ResultEnvelope {
  switch (r.verdict) {
    case 'timeout':
      throw fail(
        'TIMEOUT',
        `The function ran longer than timeout_ms (${limits.timeout_ms} ms) and was killed.`,
      );
    case 'memory_exceeded':
      throw fail(
        'MEMORY_EXCEEDED',
        `The function exceeded memory_mb (${limits.memory_mb} MB): ${stderrTail(r, 1)}`,
      );
    case 'output_limit':
      throw fail(
        'OUTPUT_TOO_LARGE',
        r.stdoutTruncated || r.stderrTruncated
          ? `The function wrote more than ${r.limits.stdoutBytes} bytes of logs and was stopped.`
          : `The result is larger than ${r.limits.resultBytes} bytes.`,
      );
    case 'cancelled':
      throw coreErrors.conflict(
        'RUN_CANCELLED',
        'The run was cancelled; its sandbox was killed.',
        'Rerun it if the work is still needed.',
      );
    case 'crashed':
      throw fail(
        'EXECUTION_FAILED',
        `The function crashed (${r.signal ? `signal ${r.signal}` : `exit code ${r.exitCode}`}): ${stderrTail(r, 3)}`,
        { stderr_tail: stderrTail(r, 12) },
      );
    case 'invalid_output':
      throw fail('INVALID_OUTPUT', `The function exited without returning a result${noResultHint}.`);
    case 'ok':
      break;
  }
  let env: ResultEnvelope;
  try {
    env = JSON.parse(r.result.toString('utf8')) as ResultEnvelope;
  } catch {
    throw fail('INVALID_OUTPUT', 'The function wrote something that is not a Cairn result envelope on fd 3.');
  }
  // What the run record cannot hold is refused here, with the type's own code (core/storable.ts says why).
  const bad = env?.kind === 'ok' ? findUnstorable(env.output) : undefined;
  if (bad) throw fail('INVALID_OUTPUT', unstorableOutputMessage(bad), { path: bad.path });
  return env;
}

/** A stream's size and hash; the hash of what the run records of it when a secret was scrubbed out. */
function stream(buf: Buffer, truncated: boolean, scrub: (s: string) => string) {
  const text = buf.toString('utf8');
  const shown = scrub(text);
  return {
    bytes: buf.length,
    sha256: 'sha256:' + sha256Hex(shown === text ? buf : Buffer.from(shown)),
    truncated,
  };
}

/** R-EVIDENCE every code action records: exit status, verdict, streams (sizes, hashes, lines), sandbox, memory. */
export function sandboxEvidence(
  r: SandboxResult,
  limits: { timeout_ms: number; memory_mb: number },
  scrub: (s: string) => string = (x) => x,
): Record<string, unknown> {
  return {
    exit_code: r.exitCode,
    signal: r.signal,
    verdict: r.verdict,
    stdout: stream(r.stdout, r.stdoutTruncated, scrub),
    stderr: stream(r.stderr, r.stderrTruncated, scrub),
    log_lines: r.lines,
    log_lines_dropped: r.linesDropped,
    sandbox: {
      backend: r.sandboxed ? 'bubblewrap' : 'none',
      uid: r.uid,
      limits: { memory_mb: limits.memory_mb, timeout_ms: limits.timeout_ms, max_procs: r.limits.maxProcs },
    },
    peak_memory_kb: r.peakMemoryKb,
  };
}

/** How a code action's sandbox sees files: its inputs read-only at /in, a size-capped writable /out. */
export interface FileMounts {
  binds: Bind[];
  env: Record<string, string>;
  outMb?: number;
  /** A sandbox made ahead of time has no inputs of this run mounted: only when there are none. */
  standbyOk: boolean;
  cleanup(): void;
}

/**
 * Writes the run's input files where the sandbox reads them (/in, read-only) and gives it a
 * /out of OUT_MB (its own tmpfs). Without the sandbox (operator opt-out), both are host
 * directories named by $CAIRN_IN_DIR and $CAIRN_OUT_DIR.
 */
export async function fileMounts(sb: Sandbox, files: ExecContext['files']): Promise<FileMounts> {
  const made: string[] = [];
  const scratch = () => {
    const root = join(cacheRoot(), 'files');
    mkdirSync(root, { recursive: true, mode: 0o755 });
    const d = mkdtempSync(join(root, 'run-'));
    chmodSync(d, 0o755);
    made.push(d);
    return d;
  };
  const cleanup = () => {
    for (const d of made) rmSync(d, { recursive: true, force: true });
  };
  try {
    let inDir: string | undefined;
    if (files.inputs.length > 0) {
      inDir = scratch();
      for (const f of files.inputs) {
        if (!fileNameOk(f.name))
          throw new Error(`input file name ${JSON.stringify(f.name)} is not one path segment`);
        writeFileSync(join(inDir, f.name), await files.read(f.sha256), { mode: 0o444 });
      }
    }
    if (!sb.disabled)
      return {
        binds: inDir ? [{ src: inDir, dest: '/in' }] : [],
        env: { CAIRN_OUT_DIR: '/out', ...(inDir ? { CAIRN_IN_DIR: '/in' } : {}) },
        outMb: OUT_MB,
        standbyOk: !inDir,
        cleanup,
      };
    const outDir = scratch();
    chmodSync(outDir, 0o777);
    return {
      binds: [],
      env: { CAIRN_OUT_DIR: outDir, ...(inDir ? { CAIRN_IN_DIR: inDir } : {}) },
      standbyOk: false,
      cleanup,
    };
  } catch (e) {
    cleanup();
    throw e;
  }
}

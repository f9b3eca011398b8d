import { errors as coreErrors, type CairnError } from '../core/errors.js';
import { sha256Hex } from '../core/hash.js';
import type { SandboxResult } from '../sandbox/runner.js';
import { findUnstorable, unstorableOutputMessage } from '../core/storable.js';

/** What every code-action wrapper writes on fd 3. */
export interface ResultEnvelope {
  kind: string;
  output?: unknown;
  error?: string;
  stack?: string;
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

function stream(buf: Buffer, truncated: boolean) {
  return { bytes: buf.length, sha256: 'sha256:' + sha256Hex(buf), truncated };
}

/** R-EVIDENCE every code action records: exit status, verdict, streams (sizes, hashes, lines), sandbox, memory. */
export function sandboxEvidence(
  r: SandboxResult,
  limits: { timeout_ms: number; memory_mb: number },
): Record<string, unknown> {
  return {
    exit_code: r.exitCode,
    signal: r.signal,
    verdict: r.verdict,
    stdout: stream(r.stdout, r.stdoutTruncated),
    stderr: stream(r.stderr, r.stderrTruncated),
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

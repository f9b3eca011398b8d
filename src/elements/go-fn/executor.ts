import { attachedEnv } from '../attachments.js';
import { thrown } from '../../core/errors.js';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { canonicalJson, sha256Hex } from '../../core/hash.js';
import {
  buildGo,
  GoBuildError,
  goVersion,
  vetGo,
  type GoBuild,
  type GoRequest,
} from '../../sandbox/builders/go.js';
import { WRAPPER_VERSION } from '../../sandbox/builders/go-wrapper.js';
import { withSpan } from '../../telemetry/tracing.js';
import type { Sandbox, SandboxResult } from '../../sandbox/runner.js';
import { declaredError } from '../errors.js';
import {
  fileHashes,
  fileMounts,
  filesOf,
  readEnvelope,
  RESULT_BYTES_WITH_FILES,
  sandboxEvidence,
  type ResultEnvelope,
} from '../code-action.js';
import type { ElementEvent, ExecContext, ExecResult, OpContext } from '../types.js';
import { GO_FN_ERRORS } from './errors.js';

const fail = (code: string, message: string, details?: unknown) =>
  declaredError(GO_FN_ERRORS, code, message, details);

/** What the Go runtime prints when an allocation fails under RLIMIT_DATA. */
const GO_OOM = [
  /fatal error: runtime: out of memory/,
  /runtime: cannot allocate memory/,
  /fatal error: out of memory/,
];

import type { GoSpec } from './spec.js';

export type { GoSpec };

function request(spec: GoSpec): GoRequest {
  return { source: spec.source, handler: spec.handler };
}

function friendly(e: GoBuildError): string {
  const sig = /does not satisfy cairnHandler/.exec(e.message);
  if (sig) {
    return `The handler has an unsupported signature (${e.message.split(': ').slice(1).join(': ').split(' does not')[0]}); use func(map[string]interface{}) (map[string]interface{}, error) or func(context.Context, map[string]interface{}) (map[string]interface{}, error).`;
  }
  const undef = /cairn_main\.go:\d+:\d+: undefined: (\w+)/.exec(e.diagnostics);
  if (undef) return `spec.handler "${undef[1]}" is not defined in the source.`;
  return `Go build failed: ${e.message}`;
}

export function build(sb: Sandbox, spec: GoSpec): Promise<GoBuild> {
  return withSpan('build', { 'cairn.toolchain': 'go' }, async (span) => {
    const b = await build1(sb, spec);
    span.setAttribute('cairn.build.cached', b.cached);
    return b;
  });
}

async function build1(sb: Sandbox, spec: GoSpec): Promise<GoBuild> {
  try {
    return await buildGo(sb, request(spec));
  } catch (e) {
    if (e instanceof GoBuildError) {
      if (e.kind === 'source' || e.kind === 'download')
        throw fail('GO_FN_COMPILATION_FAILED', `${e.message}`, { kind: e.kind, diagnostics: e.diagnostics });
      throw fail('GO_FN_COMPILATION_FAILED', friendly(e), { kind: e.kind, diagnostics: e.diagnostics });
    }
    throw e;
  }
}

const binaryHashes = new Map<string, string>();
function binaryHash(b: GoBuild): string {
  let h = binaryHashes.get(b.key);
  if (!h) {
    h = 'sha256:' + createHash('sha256').update(readFileSync(b.binary)).digest('hex');
    binaryHashes.set(b.key, h);
  }
  return h;
}

/** The sandbox's verdict and the wrapper's envelope → output or a typed GO_FN_* error. */
function interpret(r: SandboxResult, spec: GoSpec): { output: unknown; env: ResultEnvelope } {
  const env = readEnvelope(
    r,
    spec,
    (suffix, m, d) => fail(`GO_FN_${suffix}`, m, d),
    ' (did it call os.Exit?)',
  );
  switch (env.kind) {
    case 'ok':
      return { output: env.output ?? null, env };
    case 'panic':
      throw fail('GO_FN_EXECUTION_FAILED', `The handler panicked: ${env.error}`, {
        kind: 'panic',
        stack: env.stack,
      });
    case 'error':
      throw fail('GO_FN_EXECUTION_FAILED', `The handler returned an error: ${env.error}`, { kind: 'error' });
    case 'invalid_output':
      throw fail(
        'GO_FN_INVALID_OUTPUT',
        `The handler's return value cannot be encoded as JSON: ${env.error}`,
      );
    default:
      throw fail('GO_FN_EXECUTION_FAILED', `The function could not read its input: ${env.error}`, {
        kind: env.kind,
      });
  }
}

export async function invokeGo(ctx: ExecContext<GoSpec, Record<string, unknown>>): Promise<ExecResult> {
  const spec = ctx.spec;
  const b = await build(ctx.sandbox, spec);
  const events: ElementEvent[] = b.cached
    ? []
    : [
        [
          'go_fn.build_completed',
          Date.now(),
          { build_key: b.key, duration_ms: round(b.durationMs), go_version: b.goVersion },
        ],
      ];
  const stdin = JSON.stringify(ctx.input ?? {});
  const argv = ['/fn/handler'];
  // Its input files read-only at /in, a writable /out of its own (code-action.ts).
  const fm = await fileMounts(ctx.sandbox, ctx.files);
  let r: SandboxResult;
  try {
    r = await ctx.sandbox.run({
      argv,
      binds: [{ src: b.binary, dest: '/fn/handler' }, ...fm.binds],
      // Attachments as environment variables (after spec.env: an attached value wins; CAIRN_* last).
      env: {
        ...spec.env,
        ...attachedEnv(ctx.attachments),
        CAIRN_TIMEOUT_MS: String(spec.timeout_ms),
        ...fm.env,
      },
      stdin,
      limits: {
        timeoutMs: spec.timeout_ms,
        memoryMb: spec.memory_mb,
        resultBytes: RESULT_BYTES_WITH_FILES,
      },
      outMb: fm.outMb,
      oomMarkers: GO_OOM,
      signal: ctx.signal,
      // A sandbox made ahead holds its env while it waits: never a secret's value.
      standby: fm.standbyOk && !ctx.attachments.some((a) => a.secret),
    });
  } finally {
    fm.cleanup();
  }
  const evidence = {
    command: argv,
    toolchain: { go: goVersion(), wrapper: WRAPPER_VERSION, build_key: b.key, commit: b.commit ?? null },
    binary_hash: binaryHash(b),
    input_hashes: {
      stdin: 'sha256:' + sha256Hex(stdin),
      ...fileHashes('in', ctx.files.inputs),
    },
    ...sandboxEvidence(r, spec, ctx.scrub),
    host: ctx.host || hostname(),
    timing: { build_ms: round(b.durationMs), build_cached: b.cached, run_ms: round(r.durationMs) },
    peak_memory_kb: r.peakMemoryKb ?? peakOf(r),
  };
  const flags = r.sandboxed ? [] : ['unsandboxed'];
  let output: unknown;
  let env: ResultEnvelope;
  try {
    ({ output, env } = interpret(r, spec));
  } catch (caught) {
    const e = thrown(caught);
    // Failed runs keep their evidence (and events) too.
    e.evidence = evidence;
    e.events = events;
    e.flags = flags;
    throw e;
  }
  const { files, refused } = filesOf(env);
  return {
    output,
    events,
    flags,
    files,
    refusedFiles: refused,
    evidence: {
      ...evidence,
      output_hashes: {
        output: 'sha256:' + sha256Hex(canonicalJson(ctx.scrub(output))),
        ...fileHashes('out', files),
      },
    },
  };
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}

function peakOf(r: SandboxResult): number | null {
  try {
    return JSON.parse(r.result.toString('utf8')).peak_rss_kb ?? null;
  } catch {
    return null;
  }
}

export async function buildOp(ctx: OpContext) {
  const spec = ctx.element.spec as unknown as GoSpec;
  const b = await build(ctx.sandbox, spec);
  return {
    status: 'built',
    cached: b.cached,
    build_key: b.key,
    go_version: b.goVersion,
    duration_ms: round(b.durationMs),
    diagnostics: '',
  };
}

export async function validateOp(ctx: OpContext) {
  const spec = ctx.element.spec as unknown as GoSpec;
  try {
    const v = await vetGo(ctx.sandbox, request(spec));
    const lines = v.diagnostics.split('\n').filter((l) => /\.go:\d+:\d+/.test(l));
    return { valid: v.ok, errors: v.ok ? [] : lines.length ? lines : [v.diagnostics], warnings: [] };
  } catch (e) {
    if (e instanceof GoBuildError) return { valid: false, errors: [e.message], warnings: [] };
    throw e;
  }
}

let lastError: string | null = null;

/** Is the isolation backend healthy? Runs the toolchain in a sandbox, to tell platform faults from user errors. */
export async function diagnosticsOp(ctx: OpContext) {
  const t0 = performance.now();
  let reachable = false;
  try {
    const { goRootDir } = await import('../../sandbox/toolchains.js');
    const r = await ctx.sandbox.run({
      argv: ['/goroot/bin/go', 'version'],
      binds: [{ src: goRootDir(), dest: '/goroot' }],
      env: { HOME: '/tmp', GOTOOLCHAIN: 'local' },
      limits: { timeoutMs: 10_000, memoryMb: 512 },
    });
    reachable = r.exitCode === 0;
    if (!reachable) lastError = r.stderr.toString('utf8').slice(0, 500) || `exit ${r.exitCode}`;
  } catch (caught) {
    const e = thrown(caught);
    lastError = String(e?.message ?? e);
  }
  // A worker is available when this process runs one, or some worker claimed a run lately.
  const recent = await ctx.db.query<{ at: string | null }>(
    "SELECT max(started_at)::text AS at FROM cairn.runs WHERE started_at > clock_timestamp() - interval '5 minutes'",
  );
  const lastClaim = recent.rows[0]?.at ?? null;
  return {
    isolation_backend: ctx.sandbox.disabled ? 'none (CAIRN_UNSAFE_NO_SANDBOX=1)' : 'bubblewrap',
    isolation_reachable: reachable,
    worker_available: ctx.workerId !== null || lastClaim !== null,
    embedded_worker: ctx.workerId,
    last_claim_at: lastClaim,
    go_version: goVersion(),
    check_ms: round(performance.now() - t0),
    last_error: lastError,
  };
}

import { thrown } from '../../core/errors.js';
import { attachedEnv } from '../attachments.js';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { canonicalJson, sha256Hex } from '../../core/hash.js';
import { cacheRoot } from '../../sandbox/exec-helper.js';
import type { Sandbox, SandboxResult } from '../../sandbox/runner.js';
import { nodeRuntime, pythonRuntime, type Runtime } from '../../sandbox/runtimes.js';
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
import { LOGS_OP } from '../logs-op.js';
import {
  defineOp,
  defineType,
  executorFor,
  type ElementTypeDecl,
  type ErrorCodeDecl,
  type ExecContext,
  type ExecResult,
  type OperationDecl,
} from '../types.js';
import { nodeWrapper, pythonWrapper, SCRIPT_WRAPPER_VERSION } from './wrappers.js';
import {
  DependencyError,
  NPM_NAME,
  NPM_RANGE,
  npmDeps,
  PIP_LINE,
  pythonDeps,
  type Deps,
} from '../../sandbox/builders/deps.js';
import { symlinkSync } from 'node:fs';
import type { Bind } from '../../sandbox/runner.js';

interface DepsSupport {
  /** The spec.source field that declares them. */
  field: 'requirements' | 'dependencies';
  schema: z.ZodType;
  declared: (source: Record<string, unknown>) => boolean;
  install: (sb: Sandbox, source: Record<string, unknown>) => Promise<Deps>;
  /** Binds and env that make the installed packages importable. */
  mount: (d: Deps, sandboxed: boolean) => { binds: Bind[]; env: Record<string, string> };
}

interface Lang {
  type: 'python' | 'javascript';
  deps: DepsSupport;
  prefix: 'PYTHON_FN' | 'JS_FN';
  title: string;
  file: string;
  wrapperFile: string;
  wrapper: (handler: string) => string;
  runtime: () => Runtime;
  argv: (rt: Runtime, memoryMb: number) => string[];
  defaultMemoryMb: number;
  /** Below this the runtime cannot start (Node's ESM loader aborts under 128 MB of data). */
  minMemoryMb: number;
  oom: RegExp[];
  example: string;
}

const LANGS: Lang[] = [
  {
    type: 'python',
    prefix: 'PYTHON_FN',
    title: 'Python',
    file: 'handler.py',
    wrapperFile: 'cairn_main.py',
    wrapper: pythonWrapper,
    runtime: pythonRuntime,
    // -I: isolated (no env vars, no user site), -S: no site import, -B: no .pyc writes
    argv: (rt) => [rt.path, '-I', '-S', '-B', '/fn/cairn_main.py'],
    deps: {
      field: 'requirements',
      schema: z
        .string()
        .max(20_000)
        .superRefine((v, ctx) => {
          for (const line of v.split('\n').map((l) => l.trim())) {
            if (line && !line.startsWith('#') && !PIP_LINE.test(line)) {
              ctx.addIssue({
                code: 'custom',
                message: `"${line}" is not a "name==version" requirement (no options, URLs or paths)`,
              });
            }
          }
        })
        .describe('pip requirement lines, installed as wheels'),
      declared: (src) => typeof src.requirements === 'string' && src.requirements.trim() !== '',
      install: (sb, src) => pythonDeps(sb, src.requirements as string),
      mount: (d, sandboxed) =>
        sandboxed
          ? { binds: [{ src: d.dir, dest: '/deps' }], env: { CAIRN_DEPS_DIR: '/deps' } }
          : { binds: [], env: { CAIRN_DEPS_DIR: d.dir } },
    },
    defaultMemoryMb: 128,
    minMemoryMb: 64,
    oom: [/\bMemoryError\b/],
    example: 'def handler(input):\n    return {"message": "Hello, " + input.get("name", "World") + "!"}',
  },
  {
    type: 'javascript',
    prefix: 'JS_FN',
    title: 'JavaScript',
    file: 'handler.mjs',
    wrapperFile: 'cairn_main.mjs',
    wrapper: nodeWrapper,
    runtime: nodeRuntime,
    // V8's heap below the sandbox's data limit, so running out is reported, not a crash
    argv: (rt, mb) => [
      rt.path,
      `--max-old-space-size=${Math.max(16, Math.floor(mb * 0.75))}`,
      '--disallow-code-generation-from-strings',
      '/fn/cairn_main.mjs',
    ],
    deps: {
      field: 'dependencies',
      schema: z
        .record(
          z.string().regex(NPM_NAME, 'an npm package name'),
          z.string().regex(NPM_RANGE, 'a version or range from the registry'),
        )
        .describe('npm packages (name → version), installed with --ignore-scripts'),
      declared: (src) =>
        typeof src.dependencies === 'object' &&
        src.dependencies !== null &&
        Object.keys(src.dependencies).length > 0,
      install: (sb, src) => npmDeps(sb, src.dependencies as Record<string, string>),
      // Node resolves bare imports from /fn up to /node_modules.
      mount: (d, sandboxed) =>
        sandboxed
          ? { binds: [{ src: join(d.dir, 'node_modules'), dest: '/node_modules' }], env: {} }
          : { binds: [], env: {} },
    },
    defaultMemoryMb: 256,
    minMemoryMb: 128,
    oom: [
      /JavaScript heap out of memory/,
      /Fatal JavaScript invalid size error/,
      /FATAL ERROR: .*(Allocation failed|heap)/,
    ],
    example: 'export function handler(input) {\n  return { message: `Hello, ${input.name ?? "World"}!` };\n}',
  },
];

function errorTable(l: Lang): ErrorCodeDecl[] {
  const p = l.prefix;
  return [
    {
      code: `${p}_SYNTAX_ERROR`,
      class: 'validation',
      retryable: false,
      description: `The ${l.title} source does not parse`,
      suggestion: 'Fix the line the message names; run POST …/ops/validate to check without invoking.',
    },
    {
      code: `${p}_HANDLER_NOT_FOUND`,
      class: 'validation',
      retryable: false,
      description: 'The source defines no function named spec.handler',
      suggestion: `Define ${l.type === 'python' ? '`def handler(input):`' : '`export function handler(input)`'} or set spec.handler to your function's name.`,
    },
    {
      code: `${p}_EXECUTION_FAILED`,
      class: 'internal',
      retryable: true,
      description: 'The handler raised an exception, or the process crashed',
      suggestion:
        'Read the exception and the stack in details; fix the handler or its input, then invoke again.',
    },
    {
      code: `${p}_TIMEOUT`,
      class: 'timeout',
      retryable: true,
      description: 'Execution exceeded timeout_ms',
      suggestion: 'Make the handler faster, or raise spec.timeout_ms (at most 900000).',
    },
    {
      code: `${p}_MEMORY_EXCEEDED`,
      class: 'internal',
      retryable: false,
      description: 'The function exceeded its memory_mb allocation',
      suggestion: `Process data in smaller pieces, or raise spec.memory_mb (${l.minMemoryMb}–4096).`,
    },
    {
      code: `${p}_INVALID_OUTPUT`,
      class: 'validation',
      retryable: false,
      description: 'The handler returned a value that cannot be encoded as JSON',
      suggestion: 'Return only JSON values (objects, arrays, strings, numbers, booleans, null).',
    },
    {
      code: `${p}_DEPENDENCY_FAILED`,
      class: 'validation',
      retryable: false,
      description: `The declared ${l.deps.field} could not be installed`,
      suggestion: `Check the package names and versions in spec.source.${l.deps.field}; the installer's output is in details.`,
    },
    {
      code: `${p}_OUTPUT_TOO_LARGE`,
      class: 'validation',
      retryable: false,
      description: 'The function wrote more than the log cap, or returned more than the result cap',
      suggestion: 'Log less and return less; put large data in a table or file element.',
    },
  ];
}

function specSchema(l: Lang) {
  return z
    .object({
      source: z
        .object({
          type: z.literal('inline').default('inline'),
          code: z.string().max(1_000_000).optional(),
          [l.deps.field]: l.deps.schema.optional(),
        })
        .strict(),
      handler: z
        .string()
        .regex(/^[A-Za-z_$][A-Za-z0-9_$]*$/, 'an identifier')
        .default('handler'),
      env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), z.string().max(32_768)).default({}),
      timeout_ms: z.number().int().min(100).max(900_000).default(30_000),
      memory_mb: z.number().int().min(l.minMemoryMb).max(4096).default(l.defaultMemoryMb),
      side_effects: z.boolean().optional(),
    })
    .strict();
}

/** A python or javascript spec, as its schema outputs it. */
type ScriptSpec = z.output<ReturnType<typeof specSchema>>;

/** The handler and wrapper, written once per content key, read-only, bound at /fn. */
function stage(l: Lang, spec: ScriptSpec, deps: Deps | undefined): { dir: string; key: string } {
  const key = sha256Hex(
    canonicalJson({
      wrapper: SCRIPT_WRAPPER_VERSION,
      type: l.type,
      code: spec.source.code ?? '',
      handler: spec.handler,
      deps: deps?.key ?? null,
    }),
  );
  const root = join(cacheRoot(), 'scripts');
  const dir = join(root, key);
  if (existsSync(dir)) return { dir, key };
  mkdirSync(root, { recursive: true, mode: 0o755 });
  chmodSync(root, 0o755);
  const tmp = `${dir}.${randomBytes(4).toString('hex')}.tmp`;
  mkdirSync(tmp, { mode: 0o755 });
  writeFileSync(join(tmp, l.file), typeof spec.source.code === 'string' ? spec.source.code : '', {
    mode: 0o444,
  });
  writeFileSync(join(tmp, l.wrapperFile), l.wrapper(spec.handler), { mode: 0o444 });
  // Unsandboxed, Node finds packages next to the handler; in the sandbox this link dangles and /node_modules serves.
  if (deps && l.type === 'javascript') symlinkSync(join(deps.dir, 'node_modules'), join(tmp, 'node_modules'));
  try {
    renameSync(tmp, dir);
  } catch {
    rmSync(tmp, { recursive: true, force: true }); // same content, written by a concurrent invoke
  }
  return { dir, key };
}

function interpret(l: Lang, r: SandboxResult, spec: ScriptSpec): { output: unknown; env: ResultEnvelope } {
  const fail = (code: string, message: string, details?: unknown) =>
    declaredError(errorTable(l), `${l.prefix}_${code}`, message, details);
  const env = readEnvelope(r, spec, fail);
  switch (env.kind) {
    case 'ok':
      return { output: env.output ?? null, env };
    case 'syntax_error':
      throw fail('SYNTAX_ERROR', `Syntax error: ${env.error}`);
    case 'no_handler':
      throw fail('HANDLER_NOT_FOUND', `The source defines no function "${spec.handler}".`);
    case 'invalid_output':
      throw fail('INVALID_OUTPUT', `The handler's return value cannot be encoded as JSON: ${env.error}`);
    case 'error':
      throw fail('EXECUTION_FAILED', `The handler raised ${env.error}`, { stack: env.stack });
    default:
      throw fail('EXECUTION_FAILED', `The function could not read its input: ${env.error}`);
  }
}

/** What a code action accepts: secrets and variables, as environment variables named by the attachment. */
export const CODE_ACCEPTS = {
  types: ['secret', 'variable'],
  name: 'env',
  injects: 'environment variables of the sandboxed process, named by the attachment',
} as const;

const scriptInvokeInput = z.record(z.string(), z.unknown());

function executor(l: Lang) {
  return async (ctx: ExecContext<ScriptSpec, z.output<typeof scriptInvokeInput>>): Promise<ExecResult> => {
    const { r, evidence, spec } = await runScript(
      l,
      ctx.sandbox,
      ctx.spec,
      ctx.input,
      ctx.signal,
      ctx.host,
      // Attachments as environment variables (a sandbox with them is never one made ahead).
      attachedEnv(ctx.attachments),
      ctx.files,
      ctx.scrub,
    );
    const flags = r.sandboxed ? [] : ['unsandboxed'];
    try {
      const { output, env } = interpret(l, r, spec);
      const { files, refused } = filesOf(env);
      return {
        output,
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
    } catch (caught) {
      const e = thrown(caught);
      e.evidence = evidence;
      e.flags = flags;
      throw e;
    }
  };
}

async function runScript(
  l: Lang,
  sb: Sandbox,
  spec: ScriptSpec,
  input: unknown,
  signal: AbortSignal,
  host: string,
  extraEnv: Record<string, string>,
  files?: ExecContext['files'],
  scrub: (s: string) => string = (x) => x,
) {
  const rt = l.runtime();
  let deps: Deps | undefined;
  if (l.deps.declared(spec.source)) {
    try {
      deps = await l.deps.install(sb, spec.source);
    } catch (e) {
      if (e instanceof DependencyError) {
        throw declaredError(errorTable(l), `${l.prefix}_DEPENDENCY_FAILED`, e.message, { output: e.output });
      }
      throw e;
    }
  }
  const { dir, key } = stage(l, spec, deps);
  const mount = deps ? l.deps.mount(deps, !sb.disabled) : { binds: [], env: {} };
  const stdin = JSON.stringify(input ?? {});
  const argv = l.argv(rt, spec.memory_mb);
  const fm = files ? await fileMounts(sb, files) : undefined;
  let r: SandboxResult;
  try {
    r = await sb.run({
      argv,
      binds: [...rt.binds, { src: dir, dest: '/fn' }, ...mount.binds, ...(fm?.binds ?? [])],
      env: { ...rt.env, ...spec.env, ...mount.env, ...extraEnv, ...(fm?.env ?? {}) },
      stdin,
      // The files of /out travel in the result envelope (base64): room for them beyond the output's.
      limits: {
        timeoutMs: spec.timeout_ms,
        memoryMb: spec.memory_mb,
        ...(fm ? { resultBytes: RESULT_BYTES_WITH_FILES } : {}),
      },
      outMb: fm?.outMb,
      oomMarkers: l.oom,
      signal,
      // Invokes start from a sandbox made ahead of time; a one-off check, or a run with input files, does not.
      standby: Object.keys(extraEnv).length === 0 && (fm?.standbyOk ?? true),
    });
  } finally {
    fm?.cleanup();
  }
  const evidence: Record<string, unknown> = {
    command: argv,
    toolchain: { runtime: rt.name, version: rt.version, wrapper: SCRIPT_WRAPPER_VERSION },
    source_hash: 'sha256:' + key,
    dependencies: deps ? { key: deps.key, cached: deps.cached } : null,
    input_hashes: {
      stdin: 'sha256:' + sha256Hex(stdin),
      ...fileHashes('in', files?.inputs ?? []),
    },
    ...sandboxEvidence(r, spec, scrub),
    host,
    timing: { run_ms: Math.round(r.durationMs * 1000) / 1000 },
  };
  return { r, evidence, spec };
}

function scriptType(l: Lang): ElementTypeDecl {
  const invoke = {
    name: 'invoke',
    method: 'POST',
    path: 'invoke',
    auth: 'execute',
    summary: `Invoke the ${l.title} function with input data`,
    description:
      'The JSON body (envelopes payload/data/input unwrapped) is the handler argument; its return value is the run output.',
    input: scriptInvokeInput,
    createsRun: true,
    price: 10_000,
    retryOnLoss: false,
    sideEffects: (spec: { side_effects?: boolean }) => spec.side_effects !== false,
  } satisfies OperationDecl<typeof scriptInvokeInput>;
  return defineType({
    type: l.type,
    category: 'actions',
    title: l.title,
    accepts: CODE_ACCEPTS,
    description: `Runs a ${l.title} function in a fresh bubblewrap sandbox with no network. The handler gets the clean input object and returns a JSON value. Example:\n\n\`\`\`\n${l.example}\n\`\`\``,
    spec: specSchema(l),
    operations: [
      defineOp(invoke),
      {
        name: 'validate',
        method: 'POST',
        path: 'validate',
        auth: 'read',
        summary: 'Check that the source loads and defines the handler, without invoking it',
        input: z.object({}).strict(),
        handler: async (ctx) => {
          // The wrapper's check mode loads the module and reports whether the handler exists; nothing is called.
          const spec = ctx.element.spec as unknown as ScriptSpec;
          const { r } = await runScript(l, ctx.sandbox, spec, {}, new AbortController().signal, '', {
            CAIRN_CHECK: '1',
          });
          try {
            const env = r.verdict === 'ok' ? JSON.parse(r.result.toString('utf8')) : undefined;
            if (env?.kind === 'checked') {
              return env.has_handler
                ? { valid: true, errors: [], warnings: [] }
                : {
                    valid: false,
                    errors: [`The source defines no function "${spec.handler}".`],
                    warnings: [],
                  };
            }
            interpret(l, r, spec);
            return { valid: false, errors: ['the source did not load'], warnings: [] };
          } catch (caught) {
            const e = thrown(caught);
            return { valid: false, errors: [String(e?.message ?? e)], warnings: [] };
          }
        },
      },
      LOGS_OP,
    ],
    errors: errorTable(l),
    rules: [
      {
        level: 'error',
        message: 'source.code is required',
        check: (s) => typeof s.source?.code === 'string' && s.source.code.trim() !== '',
      },
      {
        level: 'warning',
        message: 'memory_mb over 1024MB — consider whether your function truly needs this much memory',
        check: (s) => s.memory_mb <= 1024,
      },
      {
        level: 'warning',
        message:
          'timeout_ms over 5 minutes — long-running functions may be better suited to an agent element',
        check: (s) => s.timeout_ms <= 300_000,
      },
    ],
    executors: { invoke: executorFor(invoke, executor(l)) },
    telemetry: { prefix: l.prefix.toLowerCase() },
    timeoutMs: (s) => s.timeout_ms,
  });
}

export const pythonType = scriptType(LANGS[0]!);
export const javascriptType = scriptType(LANGS[1]!);

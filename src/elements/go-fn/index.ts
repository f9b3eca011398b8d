import { CODE_ACCEPTS } from '../script/index.js';
import { z } from 'zod';
import { defineOp, defineType, executorFor, type OperationDecl } from '../types.js';
import { goFnSpec, goInvokeInput } from './spec.js';
import { GO_FN_ERRORS } from './errors.js';
import { buildOp, diagnosticsOp, invokeGo, validateOp } from './executor.js';
import { LOGS_OP } from '../logs-op.js';
import { CairnError } from '../../core/errors.js';
import { checkGitRef, checkGitSource, GitSourceRefused } from '../../sandbox/builders/git-source.js';

const HANDLER_RE = /^[A-Z][a-zA-Z0-9_]*$/;

const invoke = {
  name: 'invoke',
  method: 'POST',
  path: 'invoke',
  auth: 'execute',
  summary: 'Invoke the Go function with input data',
  description:
    "Calls the compiled Handler with the JSON body (envelopes payload/data/input are unwrapped). Returns the Handler's return value as the run output.",
  input: goInvokeInput,
  output: z.record(z.string(), z.unknown()),
  createsRun: true,
  price: 10_000,
  // A handler may have side effects: never repeated behind the caller's back.
  retryOnLoss: false,
  sideEffects: (spec: { side_effects?: boolean }) => spec.side_effects !== false,
} satisfies OperationDecl<typeof goInvokeInput>;

export const goFnType = defineType({
  type: 'go-fn',
  category: 'actions',
  title: 'Go',
  accepts: CODE_ACCEPTS,
  description:
    'Execute compiled Go code in a sandboxed environment. Code is compiled ahead of time and cached by content; ' +
    'each invoke runs the binary in a fresh bubblewrap sandbox with no network. Put your code in spec.source.code or ' +
    'point to a git repository. Your code must define a Handler function. Supports Go modules via spec.source.requirements.',
  spec: goFnSpec,
  operations: [
    defineOp(invoke),
    {
      name: 'build',
      method: 'POST',
      path: 'build',
      auth: 'write',
      summary: 'Compile the Go function ahead of time',
      input: z.object({}).strict(),
      handler: buildOp,
    },
    {
      name: 'validate',
      method: 'POST',
      path: 'validate',
      auth: 'read',
      summary: 'Validate Go source code and module dependencies (go vet, no binary)',
      input: z.object({}).strict(),
      handler: validateOp,
    },
    LOGS_OP,
    {
      name: 'diagnostics',
      method: 'GET',
      path: 'diagnostics',
      auth: 'read',
      summary: 'Check isolation backend health',
      input: z.object({}).strict(),
      handler: diagnosticsOp,
    },
  ],
  errors: GO_FN_ERRORS,
  rules: [
    {
      level: 'error',
      message: 'source.code is required when source.type is inline',
      check: (s) =>
        s.source.type !== 'inline' || (typeof s.source.code === 'string' && s.source.code.trim() !== ''),
    },
    {
      level: 'error',
      message: 'source.git_url is required when source.type is git',
      check: (s) =>
        s.source.type !== 'git' || (typeof s.source.git_url === 'string' && s.source.git_url !== ''),
    },
    {
      level: 'error',
      code: 'GO_FN_HANDLER_NOT_EXPORTED',
      message: 'handler must be an exported Go function name (start with a capital letter, e.g. Handler)',
      check: (s) => HANDLER_RE.test(s.handler),
    },
    {
      level: 'warning',
      message: 'memory_mb over 1024MB — consider whether your function truly needs this much memory',
      check: (s) => s.memory_mb <= 1024,
    },
    {
      level: 'warning',
      message: 'timeout_ms over 5 minutes — long-running functions may be better suited to an agent element',
      check: (s) => s.timeout_ms <= 300_000,
    },
    {
      level: 'warning',
      message:
        "Pinning to 'main' branch means code changes automatically — consider pinning to a commit SHA for stable deployments",
      check: (s) =>
        !(s.source.type === 'git' && (s.source.git_ref === 'main' || s.source.git_ref === undefined)),
    },
  ],
  // Where a git source may come from is the instance admin's policy (git-source.ts), checked
  // here with the same 400 as the rules, and again when the source is cloned.
  validateSpec: (s: { source: { type: string; git_url?: string; git_ref?: string } }) => {
    if (s.source.type !== 'git') return;
    try {
      checkGitSource(s.source.git_url ?? '');
      checkGitRef(s.source.git_ref);
    } catch (e) {
      if (!(e instanceof GitSourceRefused)) throw e;
      throw new CairnError({
        code: 'INVALID_SPEC',
        class: 'validation',
        message: e.message,
        details: [{ rule: e.message }],
        suggestion: e.suggestion,
      });
    }
  },
  executors: { invoke: executorFor(invoke, invokeGo) },
  telemetry: { prefix: 'go_fn' },
  timeoutMs: (s) => s.timeout_ms,
});
export { goFnSpec };

import type { z } from 'zod';
import type { Role } from '../core/status.js';
import type { ErrorClass } from '../core/errors.js';
import type { Db, Queryable } from '../db/types.js';
import type { CircleRow } from '../store/circles.js';
import type { ElementRow } from '../store/elements.js';
import type { RunRow } from '../store/runs.js';
import type { ReusedTask } from '../store/workflow.js';
import type { Sandbox } from '../sandbox/runner.js';
import type { FileRef } from '../store/files.js';

export type HttpMethod = 'GET' | 'POST' | 'PATCH' | 'DELETE';

/** An error code a type can produce (seed 004's table): the same data renders docs and errors. */
export interface ErrorCodeDecl {
  code: string;
  class: ErrorClass;
  retryable: boolean;
  description: string;
  suggestion: string;
}

/** Definition-time rules (seed 004 "Errors / when it fails" and "Validation rules"). */
export interface ValidationRule<S = unknown> {
  level: 'error' | 'warning';
  message: string;
  /** The error code a failing `error` rule answers with (default INVALID_SPEC). */
  code?: string;
  /** Returns true when the spec is fine. */
  check(spec: S): boolean;
}

export type RunMode = 'live' | 'dry_run' | 'smoke_test';

/** One unit of a batch: a key (the row id) and the input its mapping produced, or why it has none. */
export interface BatchUnit {
  key: string;
  input?: unknown;
  /** The row could not be turned into an input (e.g. a mapped field is missing). */
  problem?: string;
}

export interface BatchRequest {
  circle: CircleRow;
  /** The element each item invokes, its type and op. */
  target: ElementRow;
  type: ElementTypeDecl;
  op: OperationDecl;
  units: BatchUnit[];
  mode: RunMode;
  /** smoke_test: how many units run (the first ones). */
  sample?: number;
  concurrency: number;
  itemMaxAttempts: number;
  budget: number | null;
  budgetPolicy: 'flag' | 'stop';
  trigger: RunTrigger;
  /** Recorded as the run's input: what was asked (table, column, filter…). */
  input: Record<string, unknown>;
  /** Pinned into the snapshot next to the element (source table, mapping, where cells go). */
  batch: Record<string, unknown>;
  snapshotExtra: Record<string, unknown>;
  idempotencyKey?: string;
  rerunOf?: string | null;
  /** The policy action (default run) and more of its context (a replay's original run). */
  action?: 'run' | 'replay' | 'retry';
  policyContext?: Record<string, unknown>;
  replayOf?: string | null;
}

export interface BatchSubmitted {
  run: RunRow;
  created: boolean;
  valid: number;
  invalid: number;
  estimated_credits: number;
}

/** How a task of an approval type waits (read from its spec). */
export interface ApprovalGate {
  instructions: string;
  role: Role;
  timeout_ms: number;
  on_timeout: 'approve' | 'reject';
  /** JSON Schema an approval's `response` must match. */
  response_schema?: Record<string, unknown>;
}

/** A trigger of a workflow: by name (its element, resolved now) or by a pinned definition hash. */
export interface WorkflowTriggerRequest {
  circle: CircleRow;
  /** The workflow element; optional when triggering by hash alone (the definition names it). */
  element?: ElementRow;
  parameters: Record<string, unknown>;
  definitionHash?: string;
  trigger: RunTrigger;
  idempotencyKey?: string;
  rerunOf?: string | null;
  snapshotExtra: Record<string, unknown>;
  /** Run `element` alone as a one-step workflow (an approval invoked by itself). */
  oneStep?: boolean;
  action?: 'run' | 'replay' | 'retry';
  policyContext?: Record<string, unknown>;
  replayOf?: string | null;
  /** A replay from a task: the tasks before it, done as the original run recorded them. */
  reuse?: (ReusedTask & { key: string; ord: number })[];
  /** At most this many micro-credits (null: the workflow's own budget, if any). */
  budget?: number | null;
  budgetPolicy?: 'flag' | 'stop';
}

export interface WorkflowTriggered {
  run: RunRow;
  created: boolean;
  definition_hash: string;
  estimated_credits: number;
}

/**
 * The engine as element types reach it: a port on their op context, so no
 * element imports src/engine (the engine implements it; api wires it in).
 */
export interface EnginePort {
  /** Creates one batch run (one item per unit) over `target`'s run-creating op. */
  submitBatch(req: BatchRequest): Promise<BatchSubmitted>;
  /** Queues a workflow run (one task per step). */
  triggerWorkflow(req: WorkflowTriggerRequest): Promise<WorkflowTriggered>;
  /** Cancels a run (wakes its worker). */
  cancel(runId: string, actor: string, reason: string | null): Promise<RunRow>;
  /** Starts a run of a trigger's target (a run-creating or run-starting op of an element). */
  start(req: StartRequest): Promise<Started>;
}

/** Who started a run, as the run records it (R-TRIGGERS), plus what identifies the occurrence. */
export interface RunTrigger {
  type: string;
  source: string | null;
  actor: string;
  [k: string]: unknown;
}

/** A trigger's target: an element of the circle and one of its run-creating or run-starting ops. */
export interface TargetRef {
  element: string;
  op: string;
}

export interface StartRequest {
  circle: CircleRow;
  target: TargetRef;
  /** The op's input (validated by its schema). */
  input: unknown;
  trigger: RunTrigger;
  /** Makes the start happen once however often it is asked (an occurrence, a delivery, a handoff). */
  idempotencyKey: string;
  /** Most starts under this key are the first: insert at once (a repeat still meets the key's unique index). */
  fresh?: boolean;
}

export interface Started {
  run_id: string;
  status: string;
  /** False when the key answered an earlier run; unknown (undefined) for a handler op's run. */
  created?: boolean;
}

/** The element types as element code looks them up (the registry implements it). */
export interface TypeLookup {
  get(name: string): ElementTypeDecl;
  /** All ops of a type: the base ops plus its own. */
  operationsOf(t: ElementTypeDecl): OperationDecl[];
  /** Every type (the policy schema is generated from them). */
  list(): ElementTypeDecl[];
}

/** What an operation handler sees when it does not create a run (get, update, …). */
export interface OpContext<I = unknown> {
  db: Db;
  circle: CircleRow;
  element: ElementRow;
  type: ElementTypeDecl;
  /** The op's input, parsed by its declared schema. */
  input: I;
  params: Record<string, string>;
  actor: string;
  /** The trigger of runs this request starts (api, or manual when a person asked through the CLI or UI). */
  trigger: RunTrigger;
  baseUrl: string;
  /** The worker inside this process, when there is one. */
  workerId: string | null;
  /** The engine, through its port (runs, cancels). */
  engine: EnginePort;
  /** This process's sandbox (ops that build or check code run it). */
  sandbox: Sandbox;
  /** Every element type (a column names an element of another type). */
  types: TypeLookup;
  /** Facts pinned into every run snapshot (toolchains, database version). */
  snapshotExtra: Record<string, unknown>;
  /** The request's Idempotency-Key, for ops that create runs themselves. */
  idempotencyKey?: string;
  /** Answer with another HTTP status than the op's default (e.g. 200 for a finished dry run). */
  setStatus: (code: number) => void;
  /** Set a response header (e.g. Location of a created run). */
  setHeader: (name: string, value: string) => void;
  /**
   * Answer with the live event stream (Server-Sent Events) instead of JSON: one run's events from
   * its start, or the element's from now on; `types` limits the event types. Resolves once the
   * stream is open; the op then returns nothing.
   */
  streamEvents: (f: { runId?: string; types: readonly string[] }) => Promise<void>;
}

/**
 * A check of the element's spec by an op (which is declared apart from the
 * type's spec schema): method-typed, so an op may name the spec type it
 * knows its type's schema outputs.
 */
type SpecCheck = { check(spec: unknown): boolean }['check'];

export interface OperationDecl<I extends z.ZodType = z.ZodType> {
  name: string;
  method: HttpMethod;
  /** Relative to `/api/{circle}/{slug}/ops/`, e.g. `invoke` or `runs/{run_id}/cancel`. */
  path: string;
  auth: Role;
  summary: string;
  description?: string;
  /** Body (POST/PATCH/DELETE) or query string (GET). */
  input: I;
  output?: z.ZodType;
  /** Run-creating ops are executed by a worker through the type's executor. */
  createsRun?: boolean;
  /**
   * A handler op that starts a run itself (a workflow's trigger, a table's column run) and answers
   * with its `run_id`: a trigger (schedule, webhook, upstream) may target it like a run-creating op.
   */
  startsRun?: boolean;
  /** Price per run in micro-credits (metered ops); free when absent. */
  price?: number;
  /** May a run of this op be executed again after its worker was lost? */
  retryOnLoss?: boolean | SpecCheck;
  /**
   * Does a run of it change anything outside its own record (a write, a call)? A strict replay
   * refuses to repeat one. Run-creating ops that do not say are assumed to.
   */
  sideEffects?: boolean | SpecCheck;
  /** How many attempts a run may take in total (lost workers included). */
  maxAttempts?: number;
  /** Ops that do not create a run answer directly. */
  handler?(ctx: OpContext<z.output<I>>): Promise<unknown>;
  /** HTTP status on success (default 200). */
  status?: number;
}

/** An attachment as a run's snapshot pins it: the modifier's exact version, never its value. */
export interface AttachmentRef {
  id: string;
  name: string;
  priority: number;
  modifier: { id: string; slug: string; element_type: string; version: number; definition_hash: string };
}

/** An element as a run's snapshot pins it, with its attachments and the elements it uses. */
export interface PinnedElement {
  id: string;
  slug: string;
  element_type: string;
  version: number;
  definition_hash: string;
  spec: Record<string, unknown>;
  attachments?: AttachmentRef[];
  /** Elements it uses (an llm's providers), by slug, pinned the same way. */
  uses?: Record<string, PinnedElement>;
}

/** An attachment opened for an execution: what the target injects (a secret's value is scrubbed from what the run records). */
export interface ResolvedAttachment {
  name: string;
  slug: string;
  element_type: string;
  version: number;
  secret: boolean;
  value: string;
}

/** A used element as an execution sees it: its pinned definition and its opened attachments. */
export interface ResolvedUse {
  element: PinnedElement;
  attachments: ResolvedAttachment[];
}

/** How a type takes attachments (seed 004's "attaches to"): which types, and how each is named. */
export interface AttachRule {
  types: readonly string[];
  /** env: an environment variable name (code actions); identifier: a template name (`${{ secrets.<name> }}`). */
  name: 'env' | 'identifier';
  /** What an attachment becomes (docs). */
  injects: string;
}

/** A type whose elements attach to others (secret, variable). */
export interface Attachable {
  /** Modifiers enforce policy, resources inject data (seed 004's is_modifier flag). */
  modifier: boolean;
  /** A secret: its value is sealed, never shown, and scrubbed from what a run records. */
  secret: boolean;
  /** The value an attachment injects, from the pinned spec (`open` unseals a secret's box). */
  value(spec: Record<string, unknown>, open: (box: unknown) => string): string;
}

/** How a type answers the OpenAI Chat Completions wire format (src/elements/llm/compat.ts). */
export interface ChatCompletionsCompat {
  op: string;
  /** The request body → the op's input (throws a typed 400). */
  toInput(body: Record<string, unknown>): unknown;
  /** A finished run's output → a ChatCompletion object. */
  toCompletion(
    output: unknown,
    meta: { id: string; created: number; requestedModel: string },
  ): Record<string, unknown>;
  /**
   * The chunks that close a stream (finish_reason, then usage when asked) from the output; when no
   * content was streamed (the run executed in another process), the content first.
   */
  closingChunks(
    output: unknown,
    meta: { id: string; created: number; includeUsage: boolean; streamed: boolean },
  ): Record<string, unknown>[];
  /** One streamed content chunk. */
  deltaChunk(
    text: string,
    meta: { id: string; created: number; model: string; first: boolean },
  ): Record<string, unknown>;
}

/** Delta events an execution streams to whoever waits on it in this process (an LLM's tokens). */
export type StreamSink = (
  event: { type: 'delta'; text: string } | { type: 'meta'; data: Record<string, unknown> },
) => void;

export interface ExecContext<S = unknown, I = unknown> {
  db: Db;
  circle: CircleRow;
  run: RunRow;
  /** The spec of the definition the run pinned, as the type's schema outputs it. */
  spec: S;
  input: I;
  signal: AbortSignal;
  host: string;
  /** The sandbox the executor runs code in (the engine's). */
  sandbox: Sandbox;
  /** Files the run reads (mounted read-only at /in by code actions), and how to get their bytes. */
  files: { inputs: FileRef[]; read(sha256: string): Promise<Buffer> };
  /** The element's attachments, opened (the snapshot's versions), in priority order. */
  attachments: ResolvedAttachment[];
  /** The elements it uses (its type's `uses`), with their attachments opened. */
  uses: Record<string, ResolvedUse>;
  /** Where an execution's stream goes when a caller in this process follows it (else undefined). */
  stream?: StreamSink;
  /**
   * The value as the run will record it: the secrets it was given replaced by [secret:<slug>]
   * (identity without secrets). Hashes an executor records are of this, never of a raw secret.
   */
  scrub: <T>(v: T) => T;
}

/** A file an execution produced (a code action's /out). */
export interface OutFile {
  name: string;
  data: Buffer;
}

/** An element event to record with the run's settlement: [name, epoch ms, data]. */
export type ElementEvent = [string, number, Record<string, unknown>];

export interface ExecResult {
  output: unknown;
  /** Events the executor saw (e.g. go_fn.build_completed). */
  events?: ElementEvent[];
  /** R-EVIDENCE: command, hashes, timings… recorded on the item. */
  evidence: Record<string, unknown>;
  /** Flags for the run record (e.g. `unsandboxed`). */
  flags?: string[];
  /** Micro-credits to charge; defaults to the op's declared price. */
  credits?: number;
  /** Files it wrote (stored content-addressed by the engine, recorded as the item's output files). */
  files?: OutFile[];
  /** What was left in /out but not taken (symlinks, directories, special files). */
  refusedFiles?: { name: string; refused: string }[];
}

export type Executor<S = unknown, I = unknown> = (ctx: ExecContext<S, I>) => Promise<ExecResult>;

export interface ElementTypeDecl<S extends z.ZodType = z.ZodType> {
  type: string;
  category: 'actions' | 'data' | 'intelligence' | 'flows' | 'triggers';
  title: string;
  description: string;
  /** The spec schema, with defaults; parsed on create/update. Every spec the type's code sees is its output. */
  spec: S;
  /**
   * The least role that may define an element of this type (create, apply, update, restore, enable,
   * disable, delete); default write. A policy needs admin (the tokens it constrains must not rewrite
   * it); a trigger execute (it starts runs).
   */
  writeAuth?: Role;
  /** The type's own ops; the base ops (get, update, …) are added by the registry. */
  operations: OperationDecl[];
  errors: readonly ErrorCodeDecl[];
  rules: ValidationRule<z.output<S>>[];
  /** Deeper definition-time checks that answer with the type's own codes (e.g. SQL_SYNTAX_ERROR). */
  validateSpec?(spec: z.output<S>): void;
  /** Checks against the circle (e.g. that named elements exist), on create, update and apply. */
  validateInCircle?(db: Queryable, circle: CircleRow, spec: z.output<S>, types: TypeLookup): Promise<void>;
  /** Executors of run-creating ops, by op name (`executorFor` types each one's input by its op). */
  executors: Record<string, Executor<z.output<S>>>;
  /** Prefix of the type's metrics and events (go_fn → go_fn_invocation_count, go_fn.invoked). */
  telemetry?: { prefix: string };
  /** Default timeout of a run of this type (ms), read from the spec. */
  timeoutMs?(spec: z.output<S>): number;
  /**
   * A type whose step waits for a person's decision (hitl): no executor runs; the engine holds the
   * task until an approver with `role` approves or rejects it, or `timeout_ms` passes.
   */
  approval?(spec: z.output<S>): ApprovalGate;
  /**
   * Called in the transaction that saves a version (create, update, apply): a trigger type writes
   * what the engine reads (its schedule, its hook, its link). What it returns is shown once in
   * the create answer, as `shown_once` (a webhook's generated secret).
   */
  afterSave?(
    tx: Queryable,
    circle: CircleRow,
    element: ElementRow,
    created: boolean,
    types: TypeLookup,
  ): Promise<Record<string, unknown> | void>;
  /** Turns plain secret values of a parsed spec into sealed boxes before it is stored (secret). */
  seal?(spec: z.output<S>, circleId: string): z.output<S>;
  /** The attachments it accepts (a type without it accepts none). */
  accepts?: AttachRule;
  /** It attaches to others (secret, variable). */
  attachable?: Attachable;
  /** The circle's elements it uses (slug and the type each must be), pinned with it into each run's snapshot (an llm's providers). */
  uses?(spec: z.output<S>): { slug: string; type: string }[];
  /**
   * The element answers the OpenAI Chat Completions API at POST /api/{circle}/{slug}/v1/chat/completions
   * (an llm): how a request becomes the input of `op`, and its run's output the answer.
   */
  chatCompletions?: ChatCompletionsCompat;
  /**
   * Checks an input against the spec before a run starts (an http URL built from the input is
   * refused by the SSRF guard with a 4xx, and no run is made). Throws a typed error.
   */
  checkInput?(op: string, spec: z.output<S>, input: unknown): void;
  /**
   * The price of one run of `op` (micro-credits), when it depends on the spec and the input (an
   * LLM call's most it can cost); `input` is undefined when a definition is priced ahead (a
   * workflow step). Else the op's fixed `price`.
   */
  priceOf?(op: string, spec: z.output<S>, input: unknown, uses: Record<string, PinnedElement>): number;
}

/**
 * A type's declaration, typed by its spec schema: every spec its rules,
 * checks, executors and timeouts see is `z.output` of that schema. The
 * registry holds types erased to `ElementTypeDecl` (the engine passes specs
 * through, it never reads them); this is the one place the erasure happens.
 */
export function defineType<S extends z.ZodType>(t: ElementTypeDecl<S>): ElementTypeDecl {
  return t as unknown as ElementTypeDecl;
}

/** An operation typed by its input schema: its handler's `ctx.input` is `z.output` of it. */
export function defineOp<I extends z.ZodType>(op: OperationDecl<I>): OperationDecl {
  return op as unknown as OperationDecl;
}

/**
 * An executor typed by the op it executes: a run's input was parsed by that
 * op's schema when the run was created, so `ctx.input` is its output.
 */
export function executorFor<S, I extends z.ZodType>(
  _op: OperationDecl<I>,
  fn: (ctx: ExecContext<S, z.output<I>>) => Promise<ExecResult>,
): Executor<S> {
  return fn as Executor<S>;
}

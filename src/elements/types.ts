import type { z } from 'zod';
import type { Role } from '../core/status.js';
import type { ErrorClass } from '../core/errors.js';
import type { Db, Queryable } from '../db/types.js';
import type { CircleRow } from '../store/circles.js';
import type { ElementRow } from '../store/elements.js';
import type { RunRow } from '../store/runs.js';

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
export interface ValidationRule {
  level: 'error' | 'warning';
  message: string;
  /** The error code a failing `error` rule answers with (default INVALID_SPEC). */
  code?: string;
  /** Returns true when the spec is fine. */
  check: (spec: any) => boolean;
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
  trigger: { type: string; source: string | null; actor: string };
  /** Recorded as the run's input: what was asked (table, column, filter…). */
  input: Record<string, unknown>;
  /** Pinned into the snapshot next to the element (source table, mapping, where cells go). */
  batch: Record<string, unknown>;
  snapshotExtra: Record<string, unknown>;
  idempotencyKey?: string;
  rerunOf?: string | null;
}

export interface BatchSubmitted {
  run: RunRow;
  created: boolean;
  valid: number;
  invalid: number;
  estimated_credits: number;
}

/**
 * The engine as element types reach it: a port on their op context, so no
 * element imports src/engine (the engine implements it; api wires it in).
 */
export interface EnginePort {
  /** Creates one batch run (one item per unit) over `target`'s run-creating op. */
  submitBatch(req: BatchRequest): Promise<BatchSubmitted>;
  /** Cancels a run (wakes its worker). */
  cancel(runId: string, actor: string, reason: string | null): Promise<RunRow>;
}

/** The element types as element code looks them up (the registry implements it). */
export interface TypeLookup {
  get(name: string): ElementTypeDecl;
  /** All ops of a type: the base ops plus its own. */
  operationsOf(t: ElementTypeDecl): OperationDecl[];
}

/** What an operation handler sees when it does not create a run (get, update, …). */
export interface OpContext {
  db: Db;
  circle: CircleRow;
  element: ElementRow;
  type: ElementTypeDecl;
  input: any;
  params: Record<string, string>;
  actor: string;
  baseUrl: string;
  /** The worker inside this process, when there is one. */
  workerId: string | null;
  /** The engine, through its port (runs, cancels). */
  engine: EnginePort;
  /** Every element type (a column names an element of another type). */
  types: TypeLookup;
  /** Facts pinned into every run snapshot (toolchains, database version). */
  snapshotExtra: Record<string, unknown>;
  /** The request's Idempotency-Key, for ops that create runs themselves. */
  idempotencyKey?: string;
  /** Answer with another HTTP status than the op's default (e.g. 200 for a finished dry run). */
  setStatus: (code: number) => void;
}

export interface OperationDecl {
  name: string;
  method: HttpMethod;
  /** Relative to `/api/{circle}/{slug}/ops/`, e.g. `invoke` or `runs/{run_id}/cancel`. */
  path: string;
  auth: Role;
  summary: string;
  description?: string;
  /** Body (POST/PATCH/DELETE) or query string (GET). */
  input: z.ZodType;
  output?: z.ZodType;
  /** Run-creating ops are executed by a worker through the type's executor. */
  createsRun?: boolean;
  /** Price per run in micro-credits (metered ops); free when absent. */
  price?: number;
  /** May a run of this op be executed again after its worker was lost? */
  retryOnLoss?: boolean | ((spec: any) => boolean);
  /** How many attempts a run may take in total (lost workers included). */
  maxAttempts?: number;
  /** Ops that do not create a run answer directly. */
  handler?: (ctx: OpContext) => Promise<unknown>;
  /** HTTP status on success (default 200). */
  status?: number;
}

export interface ExecContext {
  db: Db;
  circle: CircleRow;
  run: RunRow;
  spec: any;
  input: any;
  signal: AbortSignal;
  host: string;
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
}

export type Executor = (ctx: ExecContext) => Promise<ExecResult>;

export interface ElementTypeDecl {
  type: string;
  category: 'actions' | 'data' | 'intelligence' | 'flows' | 'triggers';
  title: string;
  description: string;
  /** The spec schema, with defaults; parsed on create/update. */
  spec: z.ZodType;
  /** The type's own ops; the base ops (get, update, …) are added by the registry. */
  operations: OperationDecl[];
  errors: readonly ErrorCodeDecl[];
  rules: ValidationRule[];
  /** Deeper definition-time checks that answer with the type's own codes (e.g. SQL_SYNTAX_ERROR). */
  validateSpec?: (spec: any) => void;
  /** Checks against the circle (e.g. that named elements exist), on create, update and apply. */
  validateInCircle?: (db: Queryable, circle: CircleRow, spec: any, types: TypeLookup) => Promise<void>;
  /** Executors of run-creating ops, by op name. */
  executors: Record<string, Executor>;
  /** Prefix of the type's metrics and events (go_fn → go_fn_invocation_count, go_fn.invoked). */
  telemetry?: { prefix: string };
  /** Default timeout of a run of this type (ms), read from the spec. */
  timeoutMs?: (spec: any) => number;
  /** What the type pins into the run snapshot beyond the element itself (toolchains…). */
  snapshot?: (spec: any, db: Db) => Promise<Record<string, unknown>>;
}

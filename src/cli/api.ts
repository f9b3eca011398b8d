/**
 * The HTTP API's answers as the CLI reads them: each type names the fields a
 * command prints (the server sends more, and `--json` prints all of it).
 * Micro-credits are numbers, times ISO strings.
 */
import type { ErrorBody } from '../core/errors.js';

/** A run (GET /api/runs/{id}; also what pause, resume, rerun and cancel answer). */
export interface Run {
  id: string;
  kind: string;
  element: {
    slug: string | null;
    type: string | null;
    version: number | null;
    definition_hash: string | null;
  };
  operation: string;
  status: string;
  mode: string;
  trigger: { type: string; source: string | null; actor: string };
  input: unknown;
  output: unknown;
  error: ErrorBody | null;
  attempt: number;
  max_attempts: number;
  queued_at: string;
  started_at: string | null;
  finished_at: string | null;
  duration_ms: number | null;
  engine_version: string;
  host: string | null;
  worker: string | null;
  items_total: number;
  items_succeeded: number;
  items_failed: number;
  items_pending: number;
  credits_reserved: number;
  credits_used: number;
  trace_id: string;
  /** Kept whatever the circle's retention. */
  pinned?: boolean;
}

export interface RunPage {
  runs: Run[];
  next_cursor: string | null;
}

/** POST /api/runs/{id}/retry-failed. */
export interface RetryAnswer {
  retried: number;
  message: string;
  run: Run;
}

/**
 * POST /api/{circle}/{slug}/ops/{op}: a run-creating op answers its run (finished,
 * or 202 with only run_id and status); any other op answers its own body.
 */
export interface OpAnswer {
  run_id?: string;
  status?: string;
  output?: unknown;
  error?: ErrorBody | null;
  duration_ms?: number | null;
  credits_used?: number;
}

/** POST /api/{circle}/ops/apply. */
export interface ApplyAnswer {
  action: 'created' | 'updated' | 'unchanged';
  element: {
    slug: string;
    element_type: string;
    version: number;
    definition_hash: string;
    warnings?: string[];
  };
}

export interface RunEvent {
  at: string;
  type: string;
  from_status: string | null;
  to_status: string | null;
  actor: string;
  data: Record<string, unknown>;
}

export interface LogLine {
  ts: string;
  stream: 'stdout' | 'stderr';
  line: string;
}

/** An item of a run (one per row of a batch run). */
export interface Item {
  run_id: string;
  key: string;
  status: string;
  attempt_count: number;
  inputs: unknown;
  error: ErrorBody | null;
  credits_used: number;
  duration_ms: number | null;
}

export interface Circle {
  id: string;
  slug: string;
  schema: string;
  created_at: string;
}

/** GET / PUT /api/{circle}/retention. */
export interface Retention {
  circle: string;
  /** Days that apply (the circle's, else the instance default). */
  days: number;
  failed_days: number;
  /** Whether days come from the instance default (CAIRN_RETENTION_DAYS). */
  inherited: boolean;
  instance_default_days: number;
  /** What the circle set (null: nothing). */
  policy: { days: number | null; failed_days: number | null } | null;
  updated_at: string | null;
  updated_by: string | null;
  /** Runs past the policy the collector deletes. */
  expired: number;
  /** Runs past the policy that stay. */
  kept: { pinned: number; referenced: number };
  history: { day: string; runs: number; items: number; run_events: number; events: number }[];
}

export interface Token {
  id: string;
  role: string;
  name: string | null;
  created_at: string;
  revoked_at: string | null;
}

/** POST /api/{circle}/tokens: the only answer that carries the secret. */
export interface CreatedToken {
  token: string;
  role: string;
  circle: string;
}

/** One element's part of a run (GET /api/runs/{id}/summary). */
export interface ProviderSummary {
  element: string | null;
  element_type: string | null;
  items: number;
  by_status: Record<string, number>;
  credits_used: number;
  errors: { code: string; count: number }[];
  duration_ms: { p50: number | null; p95: number | null; max: number | null };
}

export interface Transfer {
  id: string;
  kind: string;
  amount: number;
  run_id: string | null;
  at: string;
}

export interface RunLedger {
  totals: { reserved: number; captured: number; released: number; held: number };
  transfers: Transfer[];
}

/** A failed item, across runs (GET /api/{circle}/failures). */
export interface Failure {
  run_id: string;
  key: string;
  element: string | null;
  error: ErrorBody | null;
  attempt_count: number;
  finished_at: string | null;
}

/** A table cell: what the column's latest run left there. */
export interface Cell {
  status?: string;
  value?: unknown;
  error?: ErrorBody | null;
}

export interface Row {
  id: string;
  data: Record<string, unknown>;
  cells: Record<string, Cell>;
}

export interface RowPage {
  rows: Row[];
  next_cursor: string | null;
}

/** POST …/ops/columns/{column}/run. */
export interface ColumnRun {
  run_id: string;
  status: string;
  mode: string;
  items_total: number;
  items_invalid: number;
  estimated_credits: number;
  credits_reserved: number;
  output: unknown;
}

/** GET …/ops/rows/{row}/cells/{column}. */
export interface CellInspection {
  table: string;
  row_id: string;
  column: string;
  row: unknown;
  cell: Cell | null;
  item: Item | null;
}

export interface Wallet {
  available: number;
  balance: number;
  credits_posted: number;
  debits_posted: number;
  debits_pending: number;
}

/** GET /api/{circle}/wallet: the wallet, with the circle's slug. */
export interface CircleWallet extends Wallet {
  circle: string;
}

export interface Grant {
  id: string;
  category: string;
  amount: number;
  remaining: number;
  expires_at: string | null;
  created_at: string;
}

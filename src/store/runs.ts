import type { Queryable } from '../db/types.js';
import { allowedFrom, type RunStatus } from '../core/status.js';
import type { ErrorBody } from '../core/errors.js';
import { isoFields } from './rows.js';

/** A runs row as stored. `toRunView` turns it into the R-RUN shape the API returns. */
/**
 * A run's bill of materials as the engine reads it (written by runSnapshot at
 * submit): the definition it pinned, the op and its price, and, for a batch
 * over table rows, where the rows are, how they map to the input and where
 * outputs go. `snapshotOf()` is the one reader.
 */
export interface RunSnapshot {
  element?: {
    id?: string;
    slug?: string;
    element_type?: string;
    version?: number;
    definition_hash?: string;
    spec?: unknown;
  };
  operation?: { name?: string; price?: number; retry_on_loss?: boolean };
  batch?: {
    /** The column's input mapping (row field names or constants, per input key). */
    mapping?: Record<string, unknown>;
    cells?: { schema: string; table: string; column: string } | null;
    [k: string]: unknown;
  };
  earlier_definitions?: unknown[];
  /** Files the run reads (a workflow task's `files:`), mounted at /in. */
  input_files?: { name: string; sha256: string; size: number; media_type: string }[];
  [k: string]: unknown;
}

/** Snapshots by hash: immutable content, so a process may keep them as long as it likes. */
const SNAPSHOT_CACHE_SIZE = 512;
const snapshots = new Map<string, RunSnapshot>();

/**
 * The run's snapshot, typed (every field optional: old runs may lack newer ones). It is stored
 * content-addressed (cairn.snapshots, by `snapshot_hash`); runs written before that hold it inline.
 */
export async function loadSnapshot(
  q: Queryable,
  run: Pick<RunRow, 'snapshot' | 'snapshot_hash'>,
): Promise<RunSnapshot> {
  const h = run.snapshot_hash;
  if (!h) return (run.snapshot ?? {}) as RunSnapshot;
  const hit = snapshots.get(h);
  if (hit) {
    snapshots.delete(h);
    snapshots.set(h, hit);
    return hit;
  }
  const r = await q.query<{ body: RunSnapshot }>('SELECT body FROM cairn.snapshots WHERE hash = $1', [h]);
  const body = r.rows[0]?.body ?? {};
  snapshots.set(h, body);
  if (snapshots.size > SNAPSHOT_CACHE_SIZE) snapshots.delete(snapshots.keys().next().value!);
  return body;
}

export interface RunRow {
  id: string;
  circle_id: string;
  kind: 'invoke' | 'workflow' | 'batch';
  element_id: string | null;
  element_slug: string | null;
  element_type: string | null;
  element_version: number | null;
  definition_hash: string | null;
  operation: string;
  status: RunStatus;
  mode: string;
  trigger: { type: string; source: string | null; actor: string };
  input: unknown;
  output: unknown;
  error: ErrorBody | null;
  parent_run_id: string | null;
  root_run_id: string | null;
  replay_of: string | null;
  rerun_of: string | null;
  attempt: number;
  max_attempts: number;
  retryable_on_loss: boolean;
  queued_at: string;
  run_after: string;
  started_at: string | null;
  finished_at: string | null;
  duration_ms: number | null;
  engine_version: string;
  host: string | null;
  worker_id: string | null;
  lease_expires_at: string | null;
  items_total: number;
  items_succeeded: number;
  items_failed: number;
  items_pending: number;
  credits_reserved: number;
  credits_used: number;
  budget: number | null;
  flags: string[];
  /** Empty for runs stored content-addressed: loadSnapshot() reads it by `snapshot_hash`. */
  snapshot: Record<string, unknown>;
  snapshot_hash: string | null;
  trace_id: string;
  idempotency_key: string | null;
  timeout_ms: number;
  /** Batch runs: items executed at once. */
  concurrency: number;
  /** What exceeding `budget` does: flag the run, or stop it. */
  budget_policy: 'flag' | 'stop';
  /** Batch runs: attempts an item may take when its error is retryable. */
  item_max_attempts: number;
  /** Kept whatever the circle's retention (POST /api/runs/{id}/pin). */
  pinned: boolean;
  /** The policy decision it started under (null: the circle had no policy then, or an older run). */
  policy: Record<string, unknown> | null;
}

const RUN_TS = ['queued_at', 'run_after', 'started_at', 'finished_at', 'lease_expires_at'] as const;

export function runRow(r: RunRow): RunRow {
  const out = isoFields(r, RUN_TS);
  if (out.duration_ms !== null) out.duration_ms = Number(out.duration_ms);
  delete (out as unknown as Record<string, unknown>)._n;
  return out;
}

export interface RunView {
  id: string;
  circle: { id: string; slug: string };
  kind: string;
  element: {
    id: string | null;
    slug: string | null;
    type: string | null;
    version: number | null;
    definition_hash: string | null;
  };
  /** The definition it ran: its element's (an invoke, a batch), or the pinned workflow definition's. */
  definition_hash: string | null;
  operation: string;
  status: RunStatus;
  mode: string;
  trigger: RunRow['trigger'];
  input: unknown;
  output: unknown;
  error: ErrorBody | null;
  parent_run_id: string | null;
  root_run_id: string | null;
  replay_of: string | null;
  rerun_of: string | null;
  attempt: number;
  max_attempts: number;
  queued_at: string;
  started_at: string | null;
  finished_at: string | null;
  duration_ms: number | null;
  engine_version: string;
  host: string | null;
  worker: string | null;
  lease_expires_at: string | null;
  items_total: number;
  items_succeeded: number;
  items_failed: number;
  items_pending: number;
  credits_reserved: number;
  credits_used: number;
  budget: number | null;
  budget_policy: string;
  concurrency: number;
  flags: string[];
  snapshot: Record<string, unknown>;
  snapshot_hash: string | null;
  trace_id: string;
  idempotency_key: string | null;
  pinned: boolean;
  policy: Record<string, unknown> | null;
  run_url: string;
  web_url: string;
}

/** The run as the API shows it; `snapshot` is the loaded one when given (else what the row holds). */
export function toRunView(
  r: RunRow,
  circleSlug: string,
  baseUrl: string,
  snapshot?: Record<string, unknown>,
): RunView {
  return {
    id: r.id,
    circle: { id: r.circle_id, slug: circleSlug },
    kind: r.kind,
    element: {
      id: r.element_id,
      slug: r.element_slug,
      type: r.element_type,
      version: r.element_version,
      definition_hash: r.definition_hash,
    },
    definition_hash: r.definition_hash,
    operation: r.operation,
    status: r.status,
    mode: r.mode,
    trigger: r.trigger,
    input: r.input,
    output: r.output ?? null,
    error: r.error ?? null,
    parent_run_id: r.parent_run_id,
    root_run_id: r.root_run_id,
    replay_of: r.replay_of,
    rerun_of: r.rerun_of,
    attempt: r.attempt,
    max_attempts: r.max_attempts,
    queued_at: r.queued_at,
    started_at: r.started_at,
    finished_at: r.finished_at,
    duration_ms: r.duration_ms,
    engine_version: r.engine_version,
    host: r.host,
    worker: r.worker_id,
    lease_expires_at: r.lease_expires_at,
    items_total: r.items_total,
    items_succeeded: r.items_succeeded,
    items_failed: r.items_failed,
    items_pending: r.items_pending,
    credits_reserved: r.credits_reserved,
    credits_used: r.credits_used,
    budget: r.budget,
    budget_policy: r.budget_policy,
    concurrency: r.concurrency,
    flags: r.flags,
    snapshot: snapshot ?? r.snapshot,
    snapshot_hash: r.snapshot_hash ?? null,
    trace_id: r.trace_id,
    idempotency_key: r.idempotency_key,
    pinned: r.pinned ?? false,
    policy: r.policy ?? null,
    run_url: `/api/runs/${r.id}`,
    web_url: `${baseUrl.replace(/\/$/, '')}/runs/${r.id}`,
  };
}

export async function getRun(q: Queryable, id: string): Promise<RunRow | undefined> {
  const r = await q.query<RunRow>('SELECT * FROM cairn.runs WHERE id = $1', [id]);
  return r.rows[0] && runRow(r.rows[0]);
}

/**
 * Pins or unpins a run: a pinned run is never deleted by retention. A change
 * writes its audit event (type `control`, no status change) in the same
 * statement; setting what is already set changes nothing and records nothing.
 * Undefined when there is no such run.
 */
export async function setPinned(
  q: Queryable,
  runId: string,
  pinned: boolean,
  actor: string,
  reason: string | null,
): Promise<RunRow | undefined> {
  const r = await q.query<RunRow>(
    `WITH u AS (UPDATE cairn.runs SET pinned = $2 WHERE id = $1 AND pinned <> $2 RETURNING *),
     e AS (INSERT INTO cairn.run_events (run_id, circle_id, type, actor, data)
       SELECT u.id, u.circle_id, 'control', $3, jsonb_strip_nulls(jsonb_build_object(
         'action', CASE WHEN $2 THEN 'pin' ELSE 'unpin' END, 'reason', $4::text)) FROM u)
     SELECT * FROM u`,
    [runId, pinned, actor, reason],
  );
  if (r.rows[0]) return runRow(r.rows[0]);
  return getRun(q, runId);
}

export async function getRunsStatus(
  q: Queryable,
  ids: string[],
): Promise<{ id: string; status: RunStatus }[]> {
  const r = await q.query<{ id: string; status: RunStatus }>(
    'SELECT id, status FROM cairn.runs WHERE id = ANY($1::uuid[])',
    [ids],
  );
  return r.rows;
}

// Not a named prepared statement: a generic plan cannot prove `$2 IS NOT NULL`, so it would not use
// the partial index runs_idempotency (the predicate below lets a custom plan use it for sure).
const BY_KEY =
  'SELECT * FROM cairn.runs WHERE circle_id = $1 AND idempotency_key = $2 AND idempotency_key IS NOT NULL';

export async function findByIdempotencyKey(
  q: Queryable,
  circleId: string,
  key: string,
): Promise<RunRow | undefined> {
  const r = await q.query<RunRow>(BY_KEY, [circleId, key]);
  return r.rows[0] && runRow(r.rows[0]);
}

export interface RunFilter {
  circleId: string;
  statuses?: RunStatus[];
  kinds?: string[];
  elementSlug?: string;
  elementId?: string;
  triggers?: string[];
  since?: string;
  until?: string;
  before?: string; // cursor: runs with id < before
  limit: number;
}

/** Newest first; UUIDv7 ids are time-ordered, so the cursor is simply the last id seen. */
export async function listRuns(q: Queryable, f: RunFilter): Promise<RunRow[]> {
  const where = ['circle_id = $1'];
  const params: unknown[] = [f.circleId];
  const add = (clause: string, v: unknown) => {
    params.push(v);
    where.push(clause.replace('?', '$' + params.length));
  };
  // One status (the common filter) as an equality: a range scan of runs_circle_status in id order.
  if (f.statuses?.length === 1) add('status = ?', f.statuses[0]);
  else if (f.statuses?.length) add('status = ANY(?::text[])', f.statuses);
  if (f.kinds?.length) add('kind = ANY(?::text[])', f.kinds);
  if (f.elementSlug) add('element_slug = ?', f.elementSlug);
  if (f.elementId) add('element_id = ?', f.elementId);
  if (f.triggers?.length) add("trigger ->> 'type' = ANY(?::text[])", f.triggers);
  if (f.since) add('queued_at >= ?::timestamptz', f.since);
  if (f.until) add('queued_at < ?::timestamptz', f.until);
  if (f.before) add('id < ?::uuid', f.before);
  params.push(f.limit);
  const r = await q.query<RunRow>(
    `SELECT * FROM cairn.runs WHERE ${where.join(' AND ')} ORDER BY id DESC LIMIT $${params.length}`,
    params,
  );
  return r.rows.map(runRow);
}

export interface RunEvent {
  id: number;
  run_id: string;
  type: string;
  from_status: string | null;
  to_status: string | null;
  actor: string;
  data: Record<string, unknown>;
  at: string;
}

export async function runEvents(q: Queryable, runId: string): Promise<RunEvent[]> {
  const r = await q.query<RunEvent>(
    `SELECT id, run_id, type, from_status, to_status, actor, data, at FROM cairn.run_events
     WHERE run_id = $1 ORDER BY id`,
    [runId],
  );
  return r.rows.map((e) => isoFields(e, ['at']));
}

export interface ItemRow {
  id: string;
  run_id: string;
  key: string;
  ord: number;
  status: string;
  attempt_count: number;
  inputs: unknown;
  outputs: unknown;
  error: ErrorBody | null;
  credits_used: number;
  started_at: string | null;
  finished_at: string | null;
  duration_ms: number | null;
  evidence: Record<string, unknown>;
}

const ITEM_COLS = `id, run_id, key, ord, status, attempt_count, inputs, outputs, error, credits_used, started_at,
  finished_at, duration_ms, evidence`;

function itemRow(i: ItemRow): ItemRow {
  const o = isoFields(i, ['started_at', 'finished_at']);
  if (o.duration_ms !== null) o.duration_ms = Number(o.duration_ms);
  return o;
}

/** A run's items in order (row order for a batch), optionally by status, a page at a time. */
export async function listItems(
  q: Queryable,
  runId: string,
  opts: { status?: string; limit?: number; afterOrd?: number } = {},
): Promise<ItemRow[]> {
  // Only the filters given, so each form is an index range scan in row order that stops at its limit.
  const params: unknown[] = [runId];
  let where = 'run_id = $1';
  if (opts.status !== undefined) where += ` AND status = $${params.push(opts.status)}`;
  if (opts.afterOrd !== undefined) where += ` AND ord > $${params.push(opts.afterOrd)}::int`;
  const r = await q.query<ItemRow>(
    `SELECT ${ITEM_COLS} FROM cairn.items WHERE ${where} ORDER BY ord, key LIMIT $${params.push(opts.limit ?? 100_000)}`,
    params,
  );
  return r.rows.map(itemRow);
}

export async function getItem(q: Queryable, id: string): Promise<ItemRow | undefined> {
  const r = await q.query<ItemRow>(`SELECT ${ITEM_COLS} FROM cairn.items WHERE id = $1`, [id]);
  return r.rows[0] && itemRow(r.rows[0]);
}

export const CANCELLED: ErrorBody = {
  code: 'RUN_CANCELLED',
  class: 'conflict',
  message: 'The run was cancelled before it finished.',
  retryable: false,
  _suggestion: 'Rerun it if the work is still needed.',
};

/**
 * Cancels a run that has not finished. Returns the updated row, or undefined
 * when the run was already terminal (the caller answers 409).
 */
export async function cancelRun(
  q: Queryable,
  runId: string,
  actor: string,
  reason: string | null,
): Promise<RunRow | undefined> {
  const r = await q.query<RunRow>(
    `WITH p AS (SELECT id, status AS prev FROM cairn.runs WHERE id = $1 AND status = ANY($3::text[]) FOR UPDATE),
     -- A workflow's tasks go with it: its child runs still queued or running are cancelled too.
     kids AS (SELECT id, status AS prev FROM cairn.runs WHERE parent_run_id = (SELECT id FROM p)
       AND status = ANY($3::text[]) FOR UPDATE),
     x AS (SELECT * FROM p UNION ALL SELECT * FROM kids),
     u AS (
       UPDATE cairn.runs r SET status = 'cancelled', finished_at = clock_timestamp(), lease_expires_at = NULL,
         error = $4::jsonb, items_pending = 0,
         duration_ms = CASE WHEN r.started_at IS NULL THEN NULL
           ELSE round((extract(epoch FROM clock_timestamp() - r.started_at) * 1000)::numeric, 3) END
       FROM x WHERE r.id = x.id RETURNING r.*, x.prev),
     it AS (UPDATE cairn.items i SET status = 'cancelled', finished_at = clock_timestamp()
       FROM u WHERE i.run_id = u.id AND i.status IN ('pending', 'running', 'retrying')),
     e AS (INSERT INTO cairn.run_events (run_id, circle_id, type, from_status, to_status, actor, data)
       SELECT u.id, u.circle_id, 'control', u.prev, 'cancelled', $2,
         jsonb_strip_nulls(jsonb_build_object('action', 'cancel', 'reason', $5::text,
           'with_parent', CASE WHEN u.id <> $1 THEN $1 END))
       FROM u),
     l AS (SELECT cairn.ledger_settle_run(u.id, 0, true, $2, cairn.release_reason('cancelled', NULL)) AS c FROM u)
     SELECT u.*, pg_notify('cairn_run_cancel', u.id::text) AS _c, pg_notify('cairn_run_done', u.id::text) AS _n
     FROM u CROSS JOIN (SELECT count(*) AS n FROM l) lc`,
    [runId, actor, allowedFrom('cancelled'), CANCELLED, reason],
  );
  const row = r.rows.find((x) => x.id === runId);
  if (!row) return undefined;
  delete (row as unknown as Record<string, unknown>)._c;
  delete (row as unknown as Record<string, unknown>).prev;
  return runRow(row);
}

/**
 * Batch runs (R-BATCH) and run control (R-CONTROL) in SQL. Like the queue,
 * every change is one statement (or one PL/pgSQL call) that writes the run,
 * its items, its audit events and its ledger movements together.
 */
import type { Queryable } from '../db/types.js';
import type { ErrorBody } from '../core/errors.js';
import { allowedFrom } from '../core/status.js';
import { runRow, type RunRow } from './runs.js';

export interface NewBatchItem {
  id: string;
  key: string;
  ord: number;
  /** `pending` (to run), `failed` (its input was refused), `skipped` (dry run). */
  status: 'pending' | 'failed' | 'skipped';
  inputs: unknown;
  error: ErrorBody | null;
}

export interface NewBatchRun {
  id: string;
  circleId: string;
  element: { id: string; slug: string; type: string; version: number; definition_hash: string };
  operation: string;
  mode: 'live' | 'dry_run' | 'smoke_test';
  /** queued (live, smoke_test) or a terminal status (dry_run: nothing executes). */
  status: 'queued' | 'succeeded' | 'completed' | 'failed';
  trigger: { type: string; source: string | null; actor: string };
  input: unknown;
  output: unknown;
  rerunOf: string | null;
  retryableOnLoss: boolean;
  engineVersion: string;
  reserve: number;
  budget: number | null;
  budgetPolicy: 'flag' | 'stop';
  concurrency: number;
  itemMaxAttempts: number;
  snapshot: unknown;
  traceId: string;
  idempotencyKey: string | null;
  timeoutMs: number;
  items: NewBatchItem[];
  policy?: unknown;
  replayOf?: string | null;
}

const INSERT_BATCH = `
WITH res AS (
  SELECT CASE WHEN $15::bigint = 0 THEN true
    ELSE cairn.ledger_reserve($1::text || ':reserve:0', $2::uuid, $1::uuid, $15::bigint, $25::text) END AS ok),
src AS (
  SELECT * FROM jsonb_to_recordset($24::jsonb)
    AS x(id uuid, key text, ord int, status text, inputs jsonb, error jsonb)),
cnt AS (
  SELECT count(*)::int AS total, (count(*) FILTER (WHERE status = 'pending'))::int AS pending,
    (count(*) FILTER (WHERE status = 'failed'))::int AS failed FROM src),
r AS (
  INSERT INTO cairn.runs (id, circle_id, kind, element_id, element_slug, element_type, element_version,
    definition_hash, operation, status, mode, trigger, input, output, root_run_id, rerun_of, max_attempts,
    retryable_on_loss, engine_version, items_total, items_pending, items_failed, credits_reserved, budget,
    budget_policy, concurrency, item_max_attempts, snapshot, trace_id, idempotency_key, timeout_ms,
    started_at, finished_at, duration_ms, policy, replay_of)
  SELECT $1::uuid, $2::uuid, 'batch', $3::uuid, $4, $5, $6::int, $7, $8, $9, $10, $11::jsonb, $12::jsonb,
    $13::jsonb, $1::uuid, $14::uuid, 1000000, $16::boolean, $17, cnt.total, cnt.pending, cnt.failed, $15::bigint,
    $18::bigint, $19, $20::int, $21::int, $22::jsonb, $23, $26, $27::int,
    CASE WHEN $9 = 'queued' THEN NULL ELSE clock_timestamp() END,
    CASE WHEN $9 = 'queued' THEN NULL ELSE clock_timestamp() END,
    CASE WHEN $9 = 'queued' THEN NULL ELSE 0 END, $28::jsonb, $29::uuid
  FROM res, cnt WHERE res.ok
  RETURNING *),
i AS (
  INSERT INTO cairn.items (id, run_id, circle_id, key, ord, status, inputs, error, finished_at)
  SELECT src.id, r.id, r.circle_id, src.key, src.ord, src.status, src.inputs, src.error,
    CASE WHEN src.status = 'pending' THEN NULL ELSE clock_timestamp() END
  FROM r, src),
e AS (
  INSERT INTO cairn.run_events (run_id, circle_id, type, from_status, to_status, actor, data)
  SELECT r.id, r.circle_id, 'status', NULL, 'queued', $25::text,
    jsonb_build_object('trigger', r.trigger, 'operation', r.operation, 'definition_hash', r.definition_hash,
      'mode', r.mode, 'items_total', r.items_total) || CASE WHEN r.policy IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('policy', r.policy) END FROM r
  UNION ALL
  SELECT r.id, r.circle_id, 'status', 'queued', r.status, $25::text, jsonb_build_object('mode', r.mode)
  FROM r WHERE r.status <> 'queued'
  UNION ALL
  SELECT r.id, r.circle_id, 'ledger', NULL, NULL, $25::text,
    jsonb_build_object('movement', 'reserve', 'amount', r.credits_reserved, 'transfer_id', r.id::text || ':reserve:0')
  FROM r WHERE r.credits_reserved > 0)
SELECT r.*, CASE WHEN r.status = 'queued' THEN pg_notify('cairn_run_queued', r.id::text)
  ELSE pg_notify('cairn_run_done', r.id::text) END AS _n FROM r`;

/** Inserts a batch run with all its items; undefined when the wallet could not cover the reservation. */
export async function insertBatchRun(q: Queryable, n: NewBatchRun): Promise<RunRow | undefined> {
  const r = await q.query<RunRow>(INSERT_BATCH, [
    n.id,
    n.circleId,
    n.element.id,
    n.element.slug,
    n.element.type,
    n.element.version,
    n.element.definition_hash,
    n.operation,
    n.status,
    n.mode,
    n.trigger,
    JSON.stringify(n.input ?? null),
    n.output === undefined ? null : JSON.stringify(n.output),
    n.rerunOf,
    n.reserve,
    n.retryableOnLoss,
    n.engineVersion,
    n.budget,
    n.budgetPolicy,
    n.concurrency,
    n.itemMaxAttempts,
    n.snapshot,
    n.traceId,
    JSON.stringify(n.items),
    n.trigger.actor,
    n.idempotencyKey,
    n.timeoutMs,
    n.policy === undefined || n.policy === null ? null : JSON.stringify(n.policy),
    n.replayOf ?? null,
  ]);
  return r.rows[0] && runRow(r.rows[0]);
}

export interface ClaimedItem {
  id: string;
  key: string;
  inputs: unknown;
  attempt_count: number;
}

/**
 * Starts up to `limit` items of a run: retrying ones whose backoff has passed
 * first, then pending ones in row order. Two index scans on (run_id, status,
 * ord), so a claim costs the same at the first row as at the ten-thousandth.
 */
export async function claimItems(
  q: Queryable,
  runId: string,
  workerId: string,
  limit: number,
): Promise<ClaimedItem[]> {
  const r = await q.query<ClaimedItem>(
    `WITH due AS (
       SELECT id, 0 AS pri, ord FROM cairn.items
       WHERE run_id = $1 AND status = 'retrying' AND retry_at <= clock_timestamp()
       ORDER BY ord LIMIT $3 FOR UPDATE SKIP LOCKED),
     next AS (
       SELECT id, 1 AS pri, ord FROM cairn.items WHERE run_id = $1 AND status = 'pending'
       ORDER BY ord LIMIT $3 FOR UPDATE SKIP LOCKED),
     c AS (SELECT id FROM (SELECT * FROM due UNION ALL SELECT * FROM next) x ORDER BY pri, ord LIMIT $3)
     UPDATE cairn.items i SET status = 'running', attempt_count = i.attempt_count + 1,
       started_at = clock_timestamp(), worker_id = $2, retry_at = NULL
     FROM c WHERE i.id = c.id
     RETURNING i.id, i.key, i.inputs, i.attempt_count`,
    [runId, workerId, limit],
  );
  return r.rows;
}

/** What is left of a run: items not yet terminal, and when the next retry is due. */
export async function itemsLeft(
  q: Queryable,
  runId: string,
): Promise<{ pending: number; running: number; retrying: number; next_retry_ms: number | null }> {
  const r = await q.query<{
    pending: number;
    running: number;
    retrying: number;
    next_retry_ms: number | null;
  }>(
    `SELECT (count(*) FILTER (WHERE status = 'pending'))::int AS pending,
       (count(*) FILTER (WHERE status = 'running'))::int AS running,
       (count(*) FILTER (WHERE status = 'retrying'))::int AS retrying,
       (extract(epoch FROM min(retry_at) FILTER (WHERE status = 'retrying') - clock_timestamp()) * 1000)::float8
         AS next_retry_ms
     FROM cairn.items WHERE run_id = $1 AND status IN ('pending', 'running', 'retrying')`,
    [runId],
  );
  const x = r.rows[0]!;
  return { ...x, next_retry_ms: x.next_retry_ms === null ? null : Number(x.next_retry_ms) };
}

export interface ItemSettlement {
  id: string;
  status: 'succeeded' | 'failed' | 'retrying';
  output: unknown;
  error: ErrorBody | null;
  credits: number;
  evidence: Record<string, unknown>;
  retry_in_ms?: number;
}

/** Settles finished items (and writes their cells when the run targets a table). */
export async function settleItems(
  q: Queryable,
  runId: string,
  workerId: string,
  items: ItemSettlement[],
  cells: { schema: string; table: string; column: string } | null,
): Promise<{ succeeded: number; failed: number; retrying: number; captured: number }> {
  const r = await q.query<{ succeeded: number; failed: number; retrying: number; captured: number }>(
    'SELECT * FROM cairn.settle_items($1::uuid, $2, $3::jsonb, $4, $5, $6)',
    [
      runId,
      workerId,
      JSON.stringify(items),
      cells?.schema ?? null,
      cells?.table ?? null,
      cells?.column ?? null,
    ],
  );
  return r.rows[0]!;
}

/** Ends the run if nothing is left to do; returns its final status, or null. */
export async function finishBatch(
  q: Queryable,
  runId: string,
  workerId: string,
  error: ErrorBody | null,
): Promise<string | null> {
  const r = await q.query<{ st: string | null }>('SELECT cairn.finish_batch($1::uuid, $2, $3::jsonb) AS st', [
    runId,
    workerId,
    error === null ? null : JSON.stringify(error),
  ]);
  return r.rows[0]!.st;
}

/** A paused run whose running items have drained: the worker lets go of it. */
export async function letGoPaused(q: Queryable, runId: string, workerId: string): Promise<boolean> {
  const r = await q.query(
    `UPDATE cairn.runs SET worker_id = NULL, lease_expires_at = NULL
     WHERE id = $1 AND status = 'paused' AND worker_id = $2 RETURNING id`,
    [runId, workerId],
  );
  return r.rows.length > 0;
}

/** Flags a run (e.g. budget_exceeded) once, with an audit event and an element event. */
export async function flagRun(
  q: Queryable,
  runId: string,
  flag: string,
  actor: string,
  data: Record<string, unknown>,
): Promise<boolean> {
  const r = await q.query(
    `WITH u AS (UPDATE cairn.runs SET flags = array_append(flags, $2)
       WHERE id = $1 AND NOT ($2 = ANY(flags)) RETURNING id, circle_id, element_id),
     e AS (INSERT INTO cairn.run_events (run_id, circle_id, type, actor, data)
       SELECT u.id, u.circle_id, 'flag', $3, jsonb_build_object('flag', $2::text) || $4::jsonb FROM u),
     ev AS (INSERT INTO cairn.events (circle_id, run_id, element_id, name, data)
       SELECT u.circle_id, u.id, u.element_id, 'run.' || $2, $4::jsonb FROM u)
     SELECT id FROM u`,
    [runId, flag, actor, JSON.stringify(data)],
  );
  return r.rows.length > 0;
}

/** Budget stop: items not yet started are skipped (they will not run, nothing is charged for them). */
export async function skipRemaining(q: Queryable, runId: string): Promise<number> {
  const r = await q.query<{ n: number }>(
    `WITH lk AS (SELECT id FROM cairn.runs WHERE id = $1 FOR UPDATE), -- run before items, as cancel does
     s AS (UPDATE cairn.items SET status = 'skipped', finished_at = clock_timestamp(), retry_at = NULL
       WHERE run_id = (SELECT id FROM lk) AND status IN ('pending', 'retrying') RETURNING id),
     u AS (UPDATE cairn.runs SET items_pending = items_pending - (SELECT count(*) FROM s) WHERE id = $1)
     SELECT count(*)::int AS n FROM s`,
    [runId],
  );
  return r.rows[0]!.n;
}

function controlEvent(action: string, extra = '$3::jsonb'): string {
  return `INSERT INTO cairn.run_events (run_id, circle_id, type, from_status, to_status, actor, data)
    SELECT u.id, u.circle_id, 'control', u.prev, u.status, $2, jsonb_build_object('action', '${action}') || ${extra} FROM u`;
}

/**
 * pause: a queued run, or a running batch run → paused. No new item starts;
 * running ones finish. (A running invoke's one item has already started.)
 */
export async function pauseRun(q: Queryable, runId: string, actor: string): Promise<RunRow | undefined> {
  const r = await q.query<RunRow>(
    `WITH x AS (SELECT id, status AS prev FROM cairn.runs WHERE id = $1 AND status = ANY($4::text[])
       AND (status = 'queued' OR kind IN ('batch', 'workflow')) FOR UPDATE),
     u AS (UPDATE cairn.runs r SET status = 'paused' FROM x WHERE r.id = x.id RETURNING r.*, x.prev),
     e AS (${controlEvent('pause')})
     SELECT u.*, pg_notify('cairn_run_control', u.id::text) AS _n FROM u`,
    [runId, actor, '{}', allowedFrom('paused')],
  );
  return r.rows[0] && clean(r.rows[0]);
}

/** resume: paused → queued; any worker picks it up and goes on with the items left. */
export async function resumeRun(q: Queryable, runId: string, actor: string): Promise<RunRow | undefined> {
  const r = await q.query<RunRow>(
    `WITH x AS (SELECT id, status AS prev FROM cairn.runs WHERE id = $1 AND status = 'paused' FOR UPDATE),
     u AS (UPDATE cairn.runs r SET status = 'queued', worker_id = NULL, lease_expires_at = NULL,
       run_after = clock_timestamp() FROM x WHERE r.id = x.id RETURNING r.*, x.prev),
     e AS (${controlEvent('resume')})
     SELECT u.*, pg_notify('cairn_run_queued', u.id::text) AS _n FROM u`,
    [runId, actor, '{}'],
  );
  return r.rows[0] && clean(r.rows[0]);
}

/**
 * retry-failed: the failed items of a finished run go back to pending in the
 * same run, which is queued again with a reservation for them. Returns
 * undefined when the wallet cannot cover it (nothing changes).
 */
export async function retryFailed(
  q: Queryable,
  runId: string,
  actor: string,
  pricePerItem: number,
  only: string[] | null = null,
): Promise<{ run: RunRow; retried: number } | undefined> {
  const r = await q.query<RunRow & { retried: number }>(
    `WITH x AS (
       SELECT r.id, r.status AS prev, r.circle_id,
         (SELECT count(*)::int FROM cairn.items i WHERE i.run_id = r.id AND i.status = 'failed'
           AND ($6::uuid[] IS NULL OR i.id = ANY($6::uuid[]))) AS n
       FROM cairn.runs r WHERE r.id = $1 AND r.status = ANY($5::text[]) FOR UPDATE),
     res AS (SELECT x.*, CASE WHEN x.n * $4::bigint = 0 THEN true
       ELSE cairn.ledger_reserve(x.id::text || ':reserve:' ||
         (SELECT count(*) FROM cairn.ledger_transfers t WHERE t.run_id = x.id AND t.kind = 'reserve'),
         x.circle_id, x.id, x.n * $4::bigint, $2) END AS ok
       FROM x WHERE x.n > 0),
     it AS (UPDATE cairn.items i SET status = 'pending', retry_at = NULL, finished_at = NULL
       FROM res WHERE res.ok AND i.run_id = res.id AND i.status = 'failed'
         AND ($6::uuid[] IS NULL OR i.id = ANY($6::uuid[]))),
     u AS (UPDATE cairn.runs r SET status = 'queued', worker_id = NULL, lease_expires_at = NULL,
       run_after = clock_timestamp(), finished_at = NULL, duration_ms = NULL, error = NULL, output = NULL,
       items_failed = r.items_failed - res.n, items_pending = r.items_pending + res.n,
       credits_reserved = r.credits_reserved + res.n * $4::bigint
       FROM res WHERE res.ok AND r.id = res.id RETURNING r.*, res.prev, res.n AS retried),
     e AS (${controlEvent('retry-failed', "jsonb_build_object('items', u.retried) || $3::jsonb")})
     SELECT u.*, pg_notify('cairn_run_queued', u.id::text) AS _n FROM u`,
    [runId, actor, '{}', pricePerItem, ['completed', 'failed'], only],
  );
  const row = r.rows[0];
  if (!row) return undefined;
  const retried = Number(row.retried);
  return { run: clean(row), retried };
}

function clean(row: RunRow): RunRow {
  const o = { ...row } as Record<string, unknown>;
  delete o.prev;
  delete o.retried;
  return runRow(o as unknown as RunRow);
}

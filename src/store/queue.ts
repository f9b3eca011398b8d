/**
 * The queue is the runs table (DESIGN). Each hot path is one SQL statement
 * that changes run + item and appends the audit event in the same statement,
 * so there is never a transition without its event. Batches travel as one
 * jsonb parameter (graphile-worker style).
 */
import { prepared, type Queryable } from '../db/types.js';
import type { ErrorBody } from '../core/errors.js';
import { runRow, type RunRow } from './runs.js';

export interface NewRun {
  id: string;
  itemId: string;
  circleId: string;
  kind: 'invoke' | 'workflow' | 'batch';
  element: { id: string; slug: string; type: string; version: number; definition_hash: string };
  operation: string;
  mode: 'live' | 'dry_run' | 'smoke_test';
  trigger: { type: string; source: string | null; actor: string };
  input: unknown;
  parentRunId: string | null;
  rootRunId: string | null;
  rerunOf?: string | null;
  maxAttempts: number;
  retryableOnLoss: boolean;
  engineVersion: string;
  creditsReserved: number;
  budget: number | null;
  snapshot: unknown;
  traceId: string;
  idempotencyKey: string | null;
  timeoutMs: number;
  /** Insert it already claimed by this worker (a sync invoke it executes at once), skipping the queue. */
  claim?: { workerId: string; host: string; leaseMs: number } | null;
  /** The policy decision it was started under (R-POLICY). */
  policy?: unknown;
  /** The run it replays. */
  replayOf?: string | null;
}

/**
 * Reserve (when the op is metered) and insert in one statement: when the
 * wallet cannot cover the reservation, nothing is written and no row returns.
 */
const INSERT_RUN = prepared(`
WITH res AS (
  SELECT CASE WHEN $18::bigint = 0 THEN true
    ELSE cairn.ledger_reserve($1::text || ':reserve:0', $2::uuid, $1::uuid, $18::bigint, $25::text) END AS ok,
    clock_timestamp() AS t),
-- A sync invoke this process executes at once is inserted already claimed ($27 = its worker): the queue is skipped.
r AS (
  INSERT INTO cairn.runs (id, circle_id, kind, element_id, element_slug, element_type, element_version,
    definition_hash, operation, status, mode, trigger, input, parent_run_id, root_run_id, max_attempts,
    retryable_on_loss, engine_version, items_total, items_pending, credits_reserved, budget, snapshot,
    trace_id, idempotency_key, timeout_ms, rerun_of, worker_id, host, attempt, queued_at, run_after, started_at,
    lease_expires_at, policy, replay_of)
  SELECT $1::uuid, $2::uuid, $3, $4::uuid, $5, $6, $7::int, $8, $9,
    CASE WHEN $27::text IS NULL THEN 'queued' ELSE 'running' END, $10, $11::jsonb, $12::jsonb,
    $13::uuid, COALESCE($14::uuid, $1::uuid), $15::int, $16::boolean, $17, 1, 1, $18::bigint, $19::bigint, $20::jsonb,
    $21, $22, $23::int, $26::uuid, $27::text, $28::text, CASE WHEN $27::text IS NULL THEN 0 ELSE 1 END,
    res.t, res.t, CASE WHEN $27::text IS NOT NULL THEN res.t END,
    CASE WHEN $27::text IS NOT NULL THEN res.t + make_interval(secs => $29::double precision / 1000) END,
    $30::jsonb, $31::uuid
  FROM res WHERE res.ok
  RETURNING *),
i AS (
  INSERT INTO cairn.items (id, run_id, circle_id, key, status, inputs, attempt_count, started_at)
  SELECT $24::uuid, r.id, r.circle_id, 'call', CASE WHEN r.status = 'running' THEN 'running' ELSE 'pending' END,
    r.input, CASE WHEN r.status = 'running' THEN 1 ELSE 0 END, r.started_at FROM r),
e AS (
  INSERT INTO cairn.run_events (run_id, circle_id, type, from_status, to_status, actor, data)
  SELECT r.id, r.circle_id, 'status', NULL, 'queued', $25::text,
    jsonb_build_object('trigger', r.trigger, 'operation', r.operation, 'definition_hash', r.definition_hash) || CASE WHEN r.policy IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('policy', r.policy) END
  FROM r
  UNION ALL
  SELECT r.id, r.circle_id, 'status', 'queued', 'running', 'worker:' || $27,
    jsonb_build_object('attempt', 1, 'host', $28::text) FROM r WHERE r.status = 'running'
  UNION ALL
  SELECT r.id, r.circle_id, 'ledger', NULL, NULL, $25::text,
    jsonb_build_object('movement', 'reserve', 'amount', r.credits_reserved, 'transfer_id', r.id::text || ':reserve:0')
  FROM r WHERE r.credits_reserved > 0)
SELECT r.*, CASE WHEN r.status = 'queued' THEN pg_notify('cairn_run_queued', r.id::text) END AS _n FROM r`);

/** Inserts a queued run with its item; undefined when the wallet could not cover its reservation. */
export async function insertRun(q: Queryable, n: NewRun): Promise<RunRow | undefined> {
  const res = await q.query<RunRow>(INSERT_RUN, [
    n.id,
    n.circleId,
    n.kind,
    n.element.id,
    n.element.slug,
    n.element.type,
    n.element.version,
    n.element.definition_hash,
    n.operation,
    n.mode,
    n.trigger,
    JSON.stringify(n.input ?? null),
    n.parentRunId,
    n.rootRunId,
    n.maxAttempts,
    n.retryableOnLoss,
    n.engineVersion,
    n.creditsReserved,
    n.budget,
    n.snapshot,
    n.traceId,
    n.idempotencyKey,
    n.timeoutMs,
    n.itemId,
    n.trigger.actor,
    n.rerunOf ?? null,
    n.claim?.workerId ?? null,
    n.claim?.host ?? null,
    n.claim?.leaseMs ?? null,
    n.policy === undefined || n.policy === null ? null : JSON.stringify(n.policy),
    n.replayOf ?? null,
  ]);
  return res.rows[0] && runRow(res.rows[0]);
}

/**
 * A dry run (mode dry_run): recorded and ended in one statement. Nothing
 * executes, nothing is reserved or charged; its item is skipped and its output
 * is the estimate. The audit trail says queued → succeeded, as for a batch dry run.
 */
const INSERT_DRY_RUN = `
WITH r AS (
  INSERT INTO cairn.runs (id, circle_id, kind, element_id, element_slug, element_type, element_version,
    definition_hash, operation, status, mode, trigger, input, output, root_run_id, max_attempts,
    retryable_on_loss, engine_version, items_total, items_pending, credits_reserved, snapshot, trace_id,
    idempotency_key, timeout_ms, queued_at, run_after, started_at, finished_at, duration_ms, policy)
  SELECT $1::uuid, $2::uuid, 'invoke', $3::uuid, $4, $5, $6::int, $7, $8, 'succeeded', 'dry_run', $9::jsonb,
    $10::jsonb, $11::jsonb, $1::uuid, 1, false, $12, 1, 0, 0, $13::jsonb, $14, $15, $16::int,
    clock_timestamp(), clock_timestamp(), clock_timestamp(), clock_timestamp(), 0, $19::jsonb
  RETURNING *),
i AS (
  INSERT INTO cairn.items (id, run_id, circle_id, key, status, inputs, finished_at)
  SELECT $17::uuid, r.id, r.circle_id, 'call', 'skipped', r.input, clock_timestamp() FROM r),
e AS (
  INSERT INTO cairn.run_events (run_id, circle_id, type, from_status, to_status, actor, data)
  SELECT r.id, r.circle_id, 'status', NULL, 'queued', $18::text,
    jsonb_build_object('trigger', r.trigger, 'operation', r.operation, 'definition_hash', r.definition_hash,
      'mode', r.mode) || CASE WHEN r.policy IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('policy', r.policy) END FROM r
  UNION ALL
  SELECT r.id, r.circle_id, 'status', 'queued', 'succeeded', $18::text, jsonb_build_object('mode', r.mode) FROM r)
SELECT r.*, pg_notify('cairn_run_done', r.id::text) AS _n FROM r`;

export interface NewDryRun {
  id: string;
  itemId: string;
  circleId: string;
  element: NewRun['element'];
  operation: string;
  trigger: NewRun['trigger'];
  input: unknown;
  output: unknown;
  engineVersion: string;
  snapshot: unknown;
  traceId: string;
  idempotencyKey: string | null;
  timeoutMs: number;
  policy?: unknown;
}

export async function insertDryRun(q: Queryable, n: NewDryRun): Promise<RunRow> {
  const r = await q.query<RunRow>(INSERT_DRY_RUN, [
    n.id,
    n.circleId,
    n.element.id,
    n.element.slug,
    n.element.type,
    n.element.version,
    n.element.definition_hash,
    n.operation,
    n.trigger,
    JSON.stringify(n.input ?? null),
    JSON.stringify(n.output),
    n.engineVersion,
    n.snapshot,
    n.traceId,
    n.idempotencyKey,
    n.timeoutMs,
    n.itemId,
    n.trigger.actor,
    n.policy === undefined || n.policy === null ? null : JSON.stringify(n.policy),
  ]);
  return runRow(r.rows[0]!);
}

const CLAIM = prepared(`
WITH c AS (
  SELECT id FROM cairn.runs
  WHERE status = 'queued' AND run_after <= clock_timestamp() AND ($5::boolean OR kind <> 'workflow')
  ORDER BY run_after, id
  LIMIT $1
  FOR UPDATE SKIP LOCKED),
u AS (
  UPDATE cairn.runs r SET status = 'running', worker_id = $2, host = $3, attempt = r.attempt + 1,
    started_at = COALESCE(r.started_at, clock_timestamp()),
    lease_expires_at = clock_timestamp() + make_interval(secs => $4::double precision / 1000)
  FROM c WHERE r.id = c.id
  RETURNING r.*),
it AS (
  UPDATE cairn.items i SET status = 'running', attempt_count = i.attempt_count + 1, started_at = clock_timestamp()
  FROM u WHERE u.kind = 'invoke' AND i.run_id = u.id AND i.status IN ('pending', 'retrying', 'running')),
e AS (
  INSERT INTO cairn.run_events (run_id, circle_id, type, from_status, to_status, actor, data)
  SELECT u.id, u.circle_id, 'status', 'queued', 'running', 'worker:' || $2,
    jsonb_build_object('attempt', u.attempt, 'host', $3::text) FROM u)
SELECT * FROM u ORDER BY queued_at, id`);

/** Claims up to `limit` queued runs for this worker, with a lease of `leaseMs`. */
export async function claimRuns(
  q: Queryable,
  workerId: string,
  host: string,
  limit: number,
  leaseMs: number,
  /** May it take workflow runs (it orchestrates fewer than its cap)? */
  workflows = true,
): Promise<RunRow[]> {
  const r = await q.query<RunRow>(CLAIM, [limit, workerId, host, leaseMs, workflows]);
  return r.rows.map(runRow);
}

/**
 * Extends the leases of the runs this worker still holds (a paused batch run
 * stays held while its running items drain); returns them with their status.
 */
export async function heartbeat(
  q: Queryable,
  workerId: string,
  ids: string[],
  leaseMs: number,
): Promise<{ id: string; status: string }[]> {
  if (ids.length === 0) return [];
  const r = await q.query<{ id: string; status: string }>(
    `UPDATE cairn.runs SET lease_expires_at = clock_timestamp() + make_interval(secs => $3::double precision / 1000)
     WHERE id = ANY($2::uuid[]) AND worker_id = $1 AND status IN ('running', 'paused') RETURNING id, status`,
    [workerId, ids, leaseMs],
  );
  return r.rows;
}

export interface Settlement {
  id: string;
  status: 'succeeded' | 'failed';
  output: unknown;
  error: ErrorBody | null;
  credits: number;
  evidence: Record<string, unknown>;
  /** Flags added to the run (e.g. `unsandboxed`). */
  flags?: string[];
  /** Element events to append with the settlement: [name, epoch ms, data]. */
  events?: [string, number, Record<string, unknown>][];
}

/** What one execution produced (a run's settlement without its id). */
export type Outcome = Omit<Settlement, 'id'>;

const SETTLE = prepared(`
WITH s AS (
  SELECT * FROM jsonb_to_recordset($1::jsonb)
    AS x(id uuid, status text, output jsonb, error jsonb, credits bigint, evidence jsonb, events jsonb, flags jsonb)),
u AS (
  UPDATE cairn.runs r SET status = s.status, output = s.output, error = s.error,
    finished_at = clock_timestamp(),
    duration_ms = round((extract(epoch FROM clock_timestamp() - r.started_at) * 1000)::numeric, 3),
    credits_used = r.credits_used + s.credits, lease_expires_at = NULL,
    flags = r.flags || ARRAY(SELECT jsonb_array_elements_text(COALESCE(s.flags, '[]'::jsonb))),
    items_succeeded = CASE WHEN s.status = 'succeeded' THEN r.items_total ELSE 0 END,
    items_failed = CASE WHEN s.status = 'failed' THEN r.items_total ELSE 0 END,
    items_pending = 0
  FROM s WHERE r.id = s.id AND r.status = 'running' AND r.worker_id = $2
  RETURNING r.id, r.circle_id, r.element_id, r.status, r.attempt, r.duration_ms, r.credits_used),
ev AS (
  INSERT INTO cairn.events (circle_id, run_id, element_id, name, at, data)
  SELECT u.circle_id, u.id, u.element_id, x ->> 0, to_timestamp((x ->> 1)::double precision / 1000), x -> 2
  FROM u JOIN s ON s.id = u.id, jsonb_array_elements(COALESCE(s.events, '[]'::jsonb)) AS x),
it AS (
  UPDATE cairn.items i SET status = u.status, outputs = s.output, error = s.error, credits_used = s.credits,
    finished_at = clock_timestamp(), evidence = s.evidence,
    duration_ms = round((extract(epoch FROM clock_timestamp() - i.started_at) * 1000)::numeric, 3)
  FROM u JOIN s ON s.id = u.id WHERE i.run_id = u.id),
e AS (
  INSERT INTO cairn.run_events (run_id, circle_id, type, from_status, to_status, actor, data)
  SELECT u.id, u.circle_id, 'status', 'running', u.status, 'worker:' || $2,
    jsonb_strip_nulls(jsonb_build_object('attempt', u.attempt, 'duration_ms', u.duration_ms,
      'credits_used', u.credits_used, 'error_code', s.error ->> 'code'))
  FROM u JOIN s ON s.id = u.id),
l AS (SELECT cairn.ledger_settle_run(u.id, s.credits, true, 'worker:' || $2,
  cairn.release_reason(u.status, s.error ->> 'code')) AS c FROM u JOIN s ON s.id = u.id)
SELECT u.id, u.status, u.duration_ms, u.credits_used, pg_notify('cairn_run_done', u.id::text) AS _n
FROM u CROSS JOIN (SELECT count(*) AS n FROM l) lc`);

/**
 * Settles finished runs in one statement. Only runs still `running` under this
 * worker's lease are touched: a run cancelled meanwhile, or recovered by
 * another worker after our lease expired, keeps its newer state.
 */
export async function settleRuns(q: Queryable, workerId: string, batch: Settlement[]): Promise<SettledRun[]> {
  if (batch.length === 0) return [];
  const r = await q.query<SettledRun>(SETTLE, [JSON.stringify(batch), workerId]);
  return r.rows.map((x) => ({
    id: x.id,
    status: x.status,
    duration_ms: x.duration_ms === null ? null : Number(x.duration_ms),
    credits_used: Number(x.credits_used),
  }));
}

/** What a settle changed on one run. */
export interface SettledRun {
  id: string;
  status: 'succeeded' | 'failed';
  duration_ms: number | null;
  credits_used: number;
}

/**
 * Lease expired: an invoke run is requeued when its op is safe to repeat and
 * attempts remain, failed otherwise. A batch run is always requeued (its
 * pending items are safe to start); the items its lost worker was running are
 * retried when the op is safe to repeat, failed with WORKER_LOST otherwise.
 */
const RECOVER = `
WITH x AS (
  SELECT id, status AS prev, worker_id AS lost_worker, host AS lost_host,
    (kind IN ('batch', 'workflow') OR (retryable_on_loss AND attempt < max_attempts)) AS requeue,
    (kind = 'batch' AND NOT retryable_on_loss) AS fail_items, kind
  FROM cairn.runs
  WHERE status IN ('running', 'paused') AND lease_expires_at < clock_timestamp()
  ORDER BY lease_expires_at
  LIMIT 100
  FOR UPDATE SKIP LOCKED),
lost AS (
  SELECT i.run_id, count(*)::int AS n FROM cairn.items i JOIN x ON x.id = i.run_id
  WHERE i.status = 'running' AND x.fail_items GROUP BY i.run_id),
u AS (
  UPDATE cairn.runs r SET
    status = CASE WHEN r.status = 'paused' THEN 'paused' WHEN x.requeue THEN 'queued' ELSE 'failed' END,
    worker_id = NULL, lease_expires_at = NULL, run_after = clock_timestamp(),
    error = CASE WHEN x.requeue THEN NULL ELSE $2::jsonb END,
    finished_at = CASE WHEN x.requeue THEN NULL ELSE clock_timestamp() END,
    duration_ms = CASE WHEN x.requeue THEN NULL
      ELSE round((extract(epoch FROM clock_timestamp() - r.started_at) * 1000)::numeric, 3) END,
    items_failed = CASE WHEN x.requeue THEN r.items_failed + coalesce(lost.n, 0) ELSE r.items_total END,
    items_pending = CASE WHEN x.requeue THEN r.items_pending - coalesce(lost.n, 0) ELSE 0 END
  FROM x LEFT JOIN lost ON lost.run_id = x.id WHERE r.id = x.id
  RETURNING r.id, r.circle_id, r.status, x.prev, r.attempt, r.kind, x.lost_worker, x.lost_host, x.fail_items),
-- A workflow's running tasks are child runs with leases of their own: recovery takes those one by one.
it AS (
  UPDATE cairn.items i SET
    status = CASE WHEN u.fail_items OR u.status = 'failed' THEN 'failed' ELSE 'retrying' END,
    error = CASE WHEN u.fail_items OR u.status = 'failed' THEN $2::jsonb ELSE i.error END,
    finished_at = CASE WHEN u.fail_items OR u.status = 'failed' THEN clock_timestamp() ELSE NULL END,
    retry_at = clock_timestamp(), worker_id = NULL
  FROM u WHERE u.kind <> 'workflow' AND i.run_id = u.id AND i.status = 'running'),
-- The transition as it happened (a paused run stays paused: its lease ends, its status does not change).
e AS (
  INSERT INTO cairn.run_events (run_id, circle_id, type, from_status, to_status, actor, data)
  SELECT u.id, u.circle_id, CASE WHEN u.prev = u.status THEN 'lease' ELSE 'status' END,
    CASE WHEN u.prev = u.status THEN NULL ELSE u.prev END, CASE WHEN u.prev = u.status THEN NULL ELSE u.status END, $1,
    jsonb_build_object('reason', 'lease_expired', 'lost_worker', u.lost_worker, 'lost_host', u.lost_host,
      'attempt', u.attempt, 'requeued', u.status = 'queued', 'status', u.status) FROM u),
l AS (SELECT cairn.ledger_settle_run(u.id, 0, true, $1, cairn.release_reason('failed', 'WORKER_LOST')) AS c
  FROM u WHERE u.status = 'failed')
SELECT u.id, u.status, CASE WHEN u.status = 'queued' THEN pg_notify('cairn_run_queued', u.id::text)
  ELSE pg_notify('cairn_run_done', u.id::text) END AS _n FROM u CROSS JOIN (SELECT count(*) AS n FROM l) lc`;

export const WORKER_LOST: ErrorBody = {
  code: 'WORKER_LOST',
  class: 'unavailable',
  message:
    'The worker running this run stopped responding and its lease expired; the operation is not safe to repeat automatically.',
  retryable: true,
  _suggestion: 'Check the result of the operation, then rerun it if it did not take effect.',
};

/** Requeues (retryable ops) or fails (others) runs whose worker's lease expired. */
export async function recoverExpired(q: Queryable, actor: string): Promise<{ id: string; status: string }[]> {
  const r = await q.query<{ id: string; status: string }>(RECOVER, [actor, WORKER_LOST]);
  return r.rows.map(({ id, status }) => ({ id, status }));
}

/** Graceful shutdown: give back runs this worker will not finish, so another worker picks them up now. */
export async function handBack(q: Queryable, workerId: string, ids: string[]): Promise<string[]> {
  if (ids.length === 0) return [];
  const r = await q.query<{ id: string }>(
    `WITH x AS (
       SELECT id, status AS prev FROM cairn.runs
       WHERE id = ANY($2::uuid[]) AND worker_id = $1 AND status IN ('running', 'paused') FOR UPDATE),
     u AS (
       UPDATE cairn.runs r SET status = CASE WHEN r.status = 'paused' THEN 'paused' ELSE 'queued' END,
         worker_id = NULL, lease_expires_at = NULL,
         run_after = clock_timestamp(), attempt = GREATEST(r.attempt - 1, 0)
       FROM x WHERE r.id = x.id
       RETURNING r.id, r.circle_id, r.status, r.kind, x.prev),
     it AS (UPDATE cairn.items i SET status = 'pending', worker_id = NULL, attempt_count = GREATEST(i.attempt_count - 1, 0)
       FROM u WHERE u.kind <> 'workflow' AND i.run_id = u.id AND i.status = 'running'),
     -- A paused run handed back stays paused: the worker lets go of it, its status does not change.
     e AS (INSERT INTO cairn.run_events (run_id, circle_id, type, from_status, to_status, actor, data)
       SELECT u.id, u.circle_id, CASE WHEN u.prev = u.status THEN 'lease' ELSE 'status' END,
         CASE WHEN u.prev = u.status THEN NULL ELSE u.prev END, CASE WHEN u.prev = u.status THEN NULL ELSE u.status END,
         'worker:' || $1, jsonb_build_object('reason', 'worker_shutdown', 'status', u.status) FROM u)
     SELECT u.id, CASE WHEN u.status = 'queued' THEN pg_notify('cairn_run_queued', u.id::text) END AS _n FROM u`,
    [workerId, ids],
  );
  return r.rows.map((x) => x.id);
}

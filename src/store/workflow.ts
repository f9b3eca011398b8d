/**
 * Workflow runs (R-WORKFLOW) in SQL. A workflow run is a run of kind
 * 'workflow' held by one orchestrating worker (its lease); its items are its
 * tasks; each task's execution is a child run in the queue, which any worker
 * claims. Like the queue, every change is one statement that writes the
 * tasks, the child runs, their audit events and their ledger movements
 * together, and only under the orchestrator's lease.
 */
import type { Queryable } from '../db/types.js';
import type { ErrorBody } from '../core/errors.js';
import { runRow, type RunRow } from './runs.js';
import { isoFields } from './rows.js';
import { ENGINE_VERSION } from '../core/version.js';

/** A pinned element of a workflow definition (a step's element, or the workflow itself). */
export interface PinnedElement {
  id: string;
  slug: string;
  element_type: string;
  version: number;
  definition_hash: string;
  spec: Record<string, unknown>;
}

/** What a step resolved to when the definition was pinned. */
export interface PinnedStep {
  element: PinnedElement;
  op: string;
  price: number;
  retry_on_loss: boolean;
  max_attempts: number;
  timeout_ms: number;
}

/** A workflow definition as pinned (content-addressed by its hash). */
export interface WorkflowDefinition {
  workflow: PinnedElement;
  steps: Record<string, PinnedStep>;
}

export async function saveDefinition(
  q: Queryable,
  circleId: string,
  hash: string,
  def: WorkflowDefinition,
): Promise<void> {
  await q.query(
    `INSERT INTO cairn.workflow_definitions (circle_id, hash, element_id, element_slug, definition)
     VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT DO NOTHING`,
    [circleId, hash, def.workflow.id, def.workflow.slug, JSON.stringify(def)],
  );
}

export async function getDefinition(
  q: Queryable,
  circleId: string,
  hash: string,
): Promise<WorkflowDefinition | undefined> {
  const r = await q.query<{ definition: WorkflowDefinition }>(
    'SELECT definition FROM cairn.workflow_definitions WHERE circle_id = $1 AND hash = $2',
    [circleId, hash],
  );
  return r.rows[0]?.definition;
}

export interface NewWorkflowRun {
  id: string;
  circleId: string;
  element: { id: string; slug: string; type: string; version: number };
  definitionHash: string;
  trigger: { type: string; source: string | null; actor: string };
  input: unknown;
  rerunOf: string | null;
  engineVersion: string;
  reserve: number;
  concurrency: number;
  snapshot: unknown;
  traceId: string;
  idempotencyKey: string | null;
  /** One per step; a replay from a task also gives the tasks before it, done, with their recorded outputs. */
  tasks: ({ id: string; key: string; ord: number } & Partial<ReusedTask>)[];
  policy?: unknown;
  replayOf?: string | null;
  budget?: number | null;
  budgetPolicy?: 'flag' | 'stop';
}

/** A task a replay (from_task) reuses: recorded as it ended in the original run. */
export interface ReusedTask {
  status: 'succeeded' | 'skipped';
  inputs: unknown;
  outputs: unknown;
  evidence: Record<string, unknown>;
  child_run_id: string | null;
  started_at: string | null;
  finished_at: string | null;
  duration_ms: number | null;
}

const INSERT_WORKFLOW = `
WITH res AS (
  SELECT CASE WHEN $11::bigint = 0 THEN true
    ELSE cairn.ledger_reserve($1::text || ':reserve:0', $2::uuid, $1::uuid, $11::bigint, $12::text) END AS ok),
src AS (SELECT * FROM jsonb_to_recordset($13::jsonb)
  AS x(id uuid, key text, ord int, status text, inputs jsonb, outputs jsonb, evidence jsonb, child_run_id uuid,
       started_at timestamptz, finished_at timestamptz, duration_ms float8)),
r AS (
  INSERT INTO cairn.runs (id, circle_id, kind, element_id, element_slug, element_type, element_version,
    definition_hash, operation, status, mode, trigger, input, root_run_id, rerun_of, max_attempts,
    retryable_on_loss, engine_version, items_total, items_pending, credits_reserved, concurrency, snapshot,
    trace_id, idempotency_key, timeout_ms, policy, replay_of, budget, budget_policy)
  SELECT $1::uuid, $2::uuid, 'workflow', $3::uuid, $4, $5, $6::int, $7, 'trigger', 'queued', 'live', $8::jsonb,
    $9::jsonb, $1::uuid, $10::uuid, 1000000, true, $14, (SELECT count(*) FROM src),
    (SELECT count(*) FROM src WHERE coalesce(status, 'pending') = 'pending'),
    $11::bigint, $15::int, $16::jsonb, $17, $18, 0, $19::jsonb, $20::uuid, $21::bigint, $22
  FROM res WHERE res.ok
  RETURNING *),
i AS (
  INSERT INTO cairn.items (id, run_id, circle_id, key, ord, status, inputs, outputs, evidence, child_run_id,
    attempt_count, started_at, finished_at, duration_ms)
  SELECT src.id, r.id, r.circle_id, src.key, src.ord, coalesce(src.status, 'pending'), coalesce(src.inputs, '{}'),
    src.outputs, coalesce(src.evidence, '{}'), src.child_run_id, CASE WHEN src.status IS NULL THEN 0 ELSE 1 END,
    src.started_at, src.finished_at, src.duration_ms FROM r, src),
e AS (
  INSERT INTO cairn.run_events (run_id, circle_id, type, from_status, to_status, actor, data)
  SELECT r.id, r.circle_id, 'status', NULL, 'queued', $12::text,
    jsonb_build_object('trigger', r.trigger, 'operation', r.operation, 'definition_hash', r.definition_hash,
      'tasks', r.items_total) || CASE WHEN r.policy IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('policy', r.policy) END FROM r
  UNION ALL
  SELECT r.id, r.circle_id, 'ledger', NULL, NULL, $12::text,
    jsonb_build_object('movement', 'reserve', 'amount', r.credits_reserved, 'transfer_id', r.id::text || ':reserve:0')
  FROM r WHERE r.credits_reserved > 0)
SELECT r.*, pg_notify('cairn_run_queued', r.id::text) AS _n FROM r`;

/** Inserts a queued workflow run with one pending task per step; undefined when the wallet could not cover it. */
export async function insertWorkflowRun(q: Queryable, n: NewWorkflowRun): Promise<RunRow | undefined> {
  const r = await q.query<RunRow>(INSERT_WORKFLOW, [
    n.id,
    n.circleId,
    n.element.id,
    n.element.slug,
    n.element.type,
    n.element.version,
    n.definitionHash,
    n.trigger,
    JSON.stringify(n.input ?? null),
    n.rerunOf,
    n.reserve,
    n.trigger.actor,
    JSON.stringify(n.tasks),
    n.engineVersion,
    n.concurrency,
    n.snapshot,
    n.traceId,
    n.idempotencyKey,
    n.policy === undefined || n.policy === null ? null : JSON.stringify(n.policy),
    n.replayOf ?? null,
    n.budget ?? null,
    n.budgetPolicy ?? 'stop',
  ]);
  const row = r.rows[0];
  if (!row) return undefined;
  delete (row as unknown as Record<string, unknown>)._n;
  return runRow(row);
}

/** A task as the orchestrator reads it, with its child run's state when it has one. */
export interface TaskRow {
  id: string;
  key: string;
  ord: number;
  status: 'pending' | 'running' | 'succeeded' | 'failed' | 'retrying' | 'skipped' | 'cancelled';
  attempt_count: number;
  inputs: unknown;
  outputs: unknown;
  error: ErrorBody | null;
  evidence: Record<string, unknown>;
  credits_used: number;
  child_run_id: string | null;
  retry_at: string | null;
  started_at: string | null;
  finished_at: string | null;
  duration_ms: number | null;
  child_status: string | null;
  child_output: unknown;
  child_error: ErrorBody | null;
  child_credits: number | null;
  child_duration_ms: number | null;
  child_evidence: Record<string, unknown> | null;
}

const TASK_COLS = `i.id, i.key, i.ord, i.status, i.attempt_count, i.inputs, i.outputs, i.error, i.evidence,
  i.credits_used, i.child_run_id, i.retry_at, i.started_at, i.finished_at, i.duration_ms, c.status AS child_status, c.output AS child_output,
  c.error AS child_error, c.credits_used AS child_credits, c.duration_ms AS child_duration_ms,
  ci.evidence AS child_evidence`;

function taskRow(t: TaskRow): TaskRow {
  const o = isoFields(t, ['retry_at', 'started_at', 'finished_at']);
  if (o.duration_ms !== null) o.duration_ms = Number(o.duration_ms);
  o.credits_used = Number(o.credits_used);
  if (o.child_credits !== null) o.child_credits = Number(o.child_credits);
  if (o.child_duration_ms !== null) o.child_duration_ms = Number(o.child_duration_ms);
  return o;
}

/** Every task of a workflow run (or the ones keyed `keys`), with its child run's state. */
export async function loadTasks(q: Queryable, runId: string, keys?: string[]): Promise<TaskRow[]> {
  const r = await q.query<TaskRow>(
    `SELECT ${TASK_COLS} FROM cairn.items i
     LEFT JOIN cairn.runs c ON c.id = i.child_run_id
     LEFT JOIN cairn.items ci ON ci.run_id = c.id AND ci.key = 'call'
     WHERE i.run_id = $1 ${keys === undefined ? '' : 'AND i.key = ANY($2::text[])'} ORDER BY i.ord, i.key`,
    keys === undefined ? [runId] : [runId, keys],
  );
  return r.rows.map(taskRow);
}

/** A decision on a task that awaits approval. */
export interface Decision {
  decision: 'approved' | 'rejected';
  approver: string;
  comment: string | null;
  response?: unknown;
  timed_out?: boolean;
}

/**
 * Decides a task that awaits approval: it ends (succeeded when approved,
 * failed with `error` when rejected), the decision is its output and is in the
 * audit trail, and the orchestrator is woken. Only once: false when the task
 * was not (or no longer) waiting, so a second decision changes nothing.
 */
export async function decideTask(
  q: Queryable,
  runId: string,
  key: string,
  d: Decision,
  error: ErrorBody | null,
): Promise<boolean> {
  const r = await q.query(
    `WITH u AS (UPDATE cairn.items i SET status = $3, outputs = $4::jsonb, error = $5::jsonb,
         finished_at = clock_timestamp(),
         duration_ms = round((extract(epoch FROM clock_timestamp() - i.started_at) * 1000)::numeric, 3),
         evidence = i.evidence || jsonb_build_object('decision', $4::jsonb)
       FROM cairn.runs r
       WHERE i.run_id = $1 AND i.key = $2 AND i.status = 'running' AND i.evidence ? 'awaiting'
         AND NOT i.evidence ? 'decision' AND r.id = i.run_id AND r.status IN ('queued', 'running', 'paused')
       RETURNING i.run_id, i.circle_id, i.key),
     e AS (INSERT INTO cairn.run_events (run_id, circle_id, type, actor, data)
       SELECT u.run_id, u.circle_id, 'approval', $6, jsonb_build_object('task', u.key) || $4::jsonb FROM u)
     SELECT u.key, pg_notify('cairn_run_child', u.run_id::text) AS _n FROM u`,
    [
      runId,
      key,
      d.decision === 'approved' ? 'succeeded' : 'failed',
      JSON.stringify(d),
      error === null ? null : JSON.stringify(error),
      d.approver,
    ],
  );
  return r.rows.length > 0;
}

/** Running tasks whose child run has ended (what the orchestrator must act on now). */
export async function endedChildren(q: Queryable, runId: string): Promise<TaskRow[]> {
  const r = await q.query<TaskRow>(
    `SELECT ${TASK_COLS} FROM cairn.items i
     JOIN cairn.runs c ON c.id = i.child_run_id
     LEFT JOIN cairn.items ci ON ci.run_id = c.id AND ci.key = 'call'
     WHERE i.run_id = $1 AND i.status = 'running'
       AND c.status IN ('succeeded', 'completed', 'failed', 'cancelled')`,
    [runId],
  );
  return r.rows.map(taskRow);
}

/** A child run to create for a task. */
export interface NewChild {
  id: string;
  item_id: string;
  /** The task's item. */
  task: string;
  key: string;
  element_id: string;
  element_slug: string;
  element_type: string;
  element_version: number;
  definition_hash: string;
  operation: string;
  input: unknown;
  max_attempts: number;
  retryable_on_loss: boolean;
  price: number;
  snapshot: unknown;
  timeout_ms: number;
  attempt: number;
  /** Files to mount at /in (resolved into the snapshot before the child is written). */
  files?: { name: string; sha256: string }[];
  /** Insert it already claimed by the orchestrating worker (a free slot of its own). */
  direct?: boolean;
}

/**
 * One round of the orchestrator, in one statement: the task changes it
 * computed (with one audit event each, and the run's counters), then the
 * tasks it starts — each a child run (funded from what the parent reserved,
 * else from the wallet; inserted already claimed when this worker has a free
 * slot for it, else queued), its item running with the child's id, both runs'
 * audit trails saying so. Only under the orchestrator's lease: `lease` is
 * false when it is gone (nothing was written). A change and a start of the
 * same task cannot share a statement (the start would not see the change):
 * `advanceTasks` splits those into two.
 */
async function advanceOnce(
  q: Queryable,
  runId: string,
  workerId: string,
  updates: TaskUpdate[],
  counters: Counters,
  children: NewChild[],
  claim?: { host: string; leaseMs: number },
): Promise<Advanced> {
  const r = await q.query<
    RunRow & { lease: number; task: string | null; ok: boolean | null; claimed_id: string | null }
  >(
    `WITH u_p AS (SELECT id, circle_id, status, root_run_id, trace_id FROM cairn.runs WHERE id = $1 AND worker_id = $2
       AND status IN ('running', 'paused') FOR UPDATE),
     u_src AS (SELECT * FROM jsonb_to_recordset($3::jsonb) AS x(id uuid, key text, status text, ord int,
       "isNew" boolean, inputs jsonb, outputs jsonb, error jsonb, credits bigint, evidence jsonb, retry_in_ms int,
       reason text, child_run_id uuid)),
     u_ins AS (INSERT INTO cairn.items (id, run_id, circle_id, key, ord, status, inputs, outputs, error, evidence,
         started_at, finished_at)
       SELECT u_src.id, u_p.id, u_p.circle_id, u_src.key, u_src.ord, u_src.status, coalesce(u_src.inputs, '{}'::jsonb),
         u_src.outputs, u_src.error, coalesce(u_src.evidence, '{}'::jsonb),
         CASE WHEN u_src.status = 'running' THEN clock_timestamp() END,
         CASE WHEN u_src.status IN ('succeeded', 'failed', 'skipped', 'cancelled') THEN clock_timestamp() END
       FROM u_src, u_p WHERE u_src."isNew"),
     u_upd AS (UPDATE cairn.items i SET status = u_src.status,
         inputs = coalesce(u_src.inputs, i.inputs), outputs = coalesce(u_src.outputs, i.outputs),
         error = CASE WHEN u_src.status IN ('succeeded', 'pending', 'running') THEN NULL
           ELSE coalesce(u_src.error, i.error) END,
         credits_used = coalesce(u_src.credits, i.credits_used),
         evidence = i.evidence || coalesce(u_src.evidence, '{}'::jsonb),
         retry_at = CASE WHEN u_src.status = 'retrying'
           THEN clock_timestamp() + make_interval(secs => coalesce(u_src.retry_in_ms, 0)::double precision / 1000) END,
         started_at = CASE WHEN u_src.status = 'running' THEN coalesce(i.started_at, clock_timestamp())
           ELSE i.started_at END,
         finished_at = CASE WHEN u_src.status IN ('succeeded', 'failed', 'skipped', 'cancelled') THEN clock_timestamp() END,
         duration_ms = CASE WHEN u_src.status IN ('succeeded', 'failed', 'skipped', 'cancelled') AND i.started_at IS NOT NULL
           THEN round((extract(epoch FROM clock_timestamp() - i.started_at) * 1000)::numeric, 3) END,
         child_run_id = CASE WHEN u_src.child_run_id IS NOT NULL THEN u_src.child_run_id ELSE i.child_run_id END
       FROM u_src, u_p WHERE NOT coalesce(u_src."isNew", false) AND i.id = u_src.id AND i.run_id = u_p.id),
     u_e AS (INSERT INTO cairn.run_events (run_id, circle_id, type, actor, data)
       SELECT u_p.id, u_p.circle_id, 'task', 'worker:' || $2,
         jsonb_strip_nulls(jsonb_build_object('task', u_src.key, 'status', u_src.status, 'reason', u_src.reason,
           'error_code', u_src.error ->> 'code', 'retry_in_ms', u_src.retry_in_ms))
       FROM u_src, u_p),
     u_c AS (UPDATE cairn.runs r SET items_total = $4::int, items_succeeded = $5::int, items_failed = $6::int,
         items_pending = $7::int, credits_used = $8::bigint
       FROM u_p WHERE r.id = u_p.id AND (r.items_total, r.items_succeeded, r.items_failed, r.items_pending,
         r.credits_used) IS DISTINCT FROM ($4::int, $5::int, $6::int, $7::int, $8::bigint)),
     -- Children start only while the run is running: read from the locked row, so a cancel or a pause that
     -- committed while this statement waited for the lock is seen (not the statement's older snapshot).
     p AS (SELECT id, circle_id, root_run_id, trace_id FROM u_p WHERE status = 'running'),
     src AS (SELECT * FROM jsonb_to_recordset($9::jsonb) AS x(id uuid, item_id uuid, task uuid, key text,
       element_id uuid, element_slug text, element_type text, element_version int, definition_hash text,
       operation text, input jsonb, max_attempts int, retryable_on_loss boolean, price bigint, snapshot jsonb,
       timeout_ms int, attempt int, direct boolean)),
     f AS MATERIALIZED (SELECT src.*, coalesce(src.direct, false) AS claimed, p.id AS parent, p.circle_id,
       p.root_run_id AS root, p.trace_id AS trace,
       cairn.fund_child(p.id, src.id, p.circle_id, src.price, 'worker:' || $2) AS ok FROM src, p),
     r AS (
       INSERT INTO cairn.runs (id, circle_id, kind, element_id, element_slug, element_type, element_version,
         definition_hash, operation, status, mode, trigger, input, parent_run_id, root_run_id, max_attempts,
         retryable_on_loss, engine_version, items_total, items_pending, credits_reserved, snapshot, trace_id,
         timeout_ms, worker_id, host, attempt, started_at, lease_expires_at)
       SELECT f.id, f.circle_id, 'invoke', f.element_id, f.element_slug, f.element_type, f.element_version,
         f.definition_hash, f.operation, CASE WHEN f.claimed THEN 'running' ELSE 'queued' END, 'live',
         jsonb_build_object('type', 'workflow', 'source', f.parent, 'actor', 'workflow:' || f.parent, 'task', f.key),
         f.input, f.parent, f.root, f.max_attempts, f.retryable_on_loss, $10, 1, 1, f.price, f.snapshot, f.trace,
         f.timeout_ms, CASE WHEN f.claimed THEN $2 END, CASE WHEN f.claimed THEN $11::text END,
         CASE WHEN f.claimed THEN 1 ELSE 0 END, CASE WHEN f.claimed THEN clock_timestamp() END,
         CASE WHEN f.claimed THEN clock_timestamp() + make_interval(secs => $12::double precision / 1000) END
       FROM f WHERE f.ok RETURNING *),
     ci AS (INSERT INTO cairn.items (id, run_id, circle_id, key, status, inputs, attempt_count, started_at)
       SELECT f.item_id, f.id, f.circle_id, 'call', CASE WHEN f.claimed THEN 'running' ELSE 'pending' END, f.input,
         CASE WHEN f.claimed THEN 1 ELSE 0 END, CASE WHEN f.claimed THEN clock_timestamp() END FROM f WHERE f.ok),
     t AS (UPDATE cairn.items i SET status = 'running', child_run_id = f.id, inputs = f.input,
         attempt_count = f.attempt, started_at = clock_timestamp(), retry_at = NULL, finished_at = NULL,
         worker_id = $2
       FROM f WHERE f.ok AND i.id = f.task),
     e AS (INSERT INTO cairn.run_events (run_id, circle_id, type, from_status, to_status, actor, data)
       SELECT f.id, f.circle_id, 'status', NULL, 'queued', 'workflow:' || f.parent,
         jsonb_build_object('trigger', jsonb_build_object('type', 'workflow', 'source', f.parent, 'task', f.key),
           'operation', f.operation, 'definition_hash', f.definition_hash) FROM f WHERE f.ok
       UNION ALL
       SELECT f.id, f.circle_id, 'ledger', NULL, NULL, 'worker:' || $2,
         jsonb_build_object('movement', 'reserve', 'amount', f.price, 'transfer_id', f.id::text || ':reserve:0')
       FROM f WHERE f.ok AND f.price > 0
       UNION ALL
       SELECT f.id, f.circle_id, 'status', 'queued', 'running', 'worker:' || $2,
         jsonb_build_object('attempt', 1, 'host', $11::text) FROM f WHERE f.ok AND f.claimed
       UNION ALL
       SELECT f.parent, f.circle_id, 'task', NULL, NULL, 'worker:' || $2,
         jsonb_build_object('task', f.key, 'status', 'running', 'child_run_id', f.id, 'attempt', f.attempt)
       FROM f WHERE f.ok),
     s AS (SELECT r.*, f.task::text AS task, f.ok, CASE WHEN f.claimed AND f.ok THEN f.id::text END AS claimed_id,
       CASE WHEN f.ok AND NOT f.claimed THEN pg_notify('cairn_run_queued', f.id::text) END AS _n
       FROM f LEFT JOIN r ON r.id = f.id)
     SELECT (SELECT count(*) FROM u_p)::int AS lease, s.* FROM (SELECT 1) one LEFT JOIN s ON true`,
    [
      runId,
      workerId,
      JSON.stringify(updates),
      counters.total,
      counters.succeeded,
      counters.failed,
      counters.pending,
      counters.credits,
      JSON.stringify(children),
      ENGINE_VERSION,
      claim?.host ?? null,
      claim?.leaseMs ?? 30_000,
    ],
  );
  const rows = r.rows.filter((x) => x.task !== null);
  const claimed = rows
    .filter((x) => x.claimed_id)
    .map((x) => {
      const o = { ...x } as Record<string, unknown>;
      for (const k of ['lease', 'task', 'ok', 'claimed_id', '_n']) delete o[k];
      return runRow(o as unknown as RunRow);
    });
  return {
    lease: (r.rows[0]?.lease ?? 0) > 0,
    started: rows.filter((x) => x.ok).map((x) => x.task!),
    unfunded: rows.filter((x) => !x.ok).map((x) => x.task!),
    claimed,
  };
}

export interface Counters {
  total: number;
  succeeded: number;
  failed: number;
  pending: number;
  credits: number;
}

/** What a round wrote: whether the lease held, the tasks started, the ones unfunded, the children claimed here. */
export interface Advanced {
  lease: boolean;
  started: string[];
  unfunded: string[];
  claimed: RunRow[];
}

/** Writes task changes, then starts tasks: in one statement, or two when a change and a start touch one task. */
export async function advanceTasks(
  q: Queryable,
  runId: string,
  workerId: string,
  updates: TaskUpdate[],
  counters: Counters,
  children: NewChild[],
  claim?: { host: string; leaseMs: number },
): Promise<Advanced> {
  const starting = new Set(children.map((c) => c.task));
  if (updates.length > 0 && children.length > 0 && updates.some((u) => starting.has(u.id))) {
    const first = await advanceOnce(q, runId, workerId, updates, counters, []);
    if (!first.lease) return first;
    return advanceOnce(q, runId, workerId, [], counters, children, claim);
  }
  return advanceOnce(q, runId, workerId, updates, counters, children, claim);
}

/** A change of one task (or a new task: a for_each step's fan-out). */
export interface TaskUpdate {
  id: string;
  key: string;
  status: TaskRow['status'];
  /** A new task (for_each) is inserted with this ord. */
  ord?: number;
  isNew?: boolean;
  inputs?: unknown;
  outputs?: unknown;
  error?: ErrorBody | null;
  credits?: number;
  evidence?: Record<string, unknown>;
  /** retrying: when it may start again. */
  retry_in_ms?: number;
  /** Why (skipped: when_false, dependency_failed …), for the audit trail. */
  reason?: string;
  child_run_id?: string | null;
}

/**
 * Ends a workflow run: its status, output or error, the audit event, and the
 * release of whatever it still holds. Only under the orchestrator's lease.
 */
export async function finishWorkflow(
  q: Queryable,
  runId: string,
  workerId: string,
  status: 'succeeded' | 'failed',
  output: unknown,
  error: ErrorBody | null,
): Promise<boolean> {
  const r = await q.query(
    `WITH u AS (UPDATE cairn.runs r SET status = $3, output = $4::jsonb, error = $5::jsonb,
         finished_at = clock_timestamp(), lease_expires_at = NULL,
         duration_ms = round((extract(epoch FROM clock_timestamp() - r.started_at) * 1000)::numeric, 3)
       WHERE r.id = $1 AND r.worker_id = $2 AND r.status = 'running'
       RETURNING r.id, r.circle_id, r.status, r.attempt, r.duration_ms, r.credits_used),
     e AS (INSERT INTO cairn.run_events (run_id, circle_id, type, from_status, to_status, actor, data)
       SELECT u.id, u.circle_id, 'status', 'running', u.status, 'worker:' || $2,
         jsonb_strip_nulls(jsonb_build_object('attempt', u.attempt, 'duration_ms', u.duration_ms,
           'credits_used', u.credits_used, 'error_code', $5::jsonb ->> 'code')) FROM u),
     l AS (SELECT cairn.ledger_settle_run(u.id, 0, true, 'worker:' || $2,
       cairn.release_reason(u.status, $5::jsonb ->> 'code')) AS c FROM u)
     SELECT u.id, pg_notify('cairn_run_done', u.id::text) AS _n FROM u CROSS JOIN (SELECT count(*) FROM l) lc`,
    [runId, workerId, status, JSON.stringify(output ?? null), error === null ? null : JSON.stringify(error)],
  );
  return r.rows.length > 0;
}

/** Cancels the children of a run that are still queued, running or paused (a cancelled workflow's tasks). */
export async function childrenLeft(q: Queryable, runId: string): Promise<string[]> {
  const r = await q.query<{ id: string }>(
    `SELECT id FROM cairn.runs WHERE parent_run_id = $1 AND status IN ('queued', 'running', 'paused')`,
    [runId],
  );
  return r.rows.map((x) => x.id);
}

/**
 * retry-failed of a workflow run: its failed (and cancelled) tasks and the
 * tasks skipped because of them go back to pending in the same run (a
 * for_each step whose tasks failed goes back to running: its failed tasks
 * run again), their attempts go on, and the run is queued again with `reserve`
 * held for them. Tasks skipped by their `when` stay skipped. Undefined when
 * the run is not failed or completed, or the wallet cannot cover `reserve`.
 */
export async function retryWorkflowTasks(
  q: Queryable,
  runId: string,
  actor: string,
  reserve: number,
  fanSteps: string[],
): Promise<{ run: RunRow; retried: number } | undefined> {
  const r = await q.query<RunRow & { retried: number; prev: string }>(
    `WITH x AS (SELECT id, status AS prev, circle_id FROM cairn.runs WHERE id = $1 AND status IN ('failed', 'completed')
       FOR UPDATE),
     t AS (SELECT i.id, i.key FROM cairn.items i, x WHERE i.run_id = x.id AND (i.status IN ('failed', 'cancelled')
       OR (i.status = 'skipped' AND i.evidence ? 'skipped_because'))),
     res AS (SELECT x.*, (SELECT count(*) FROM t)::int AS n, CASE WHEN $3::bigint = 0 THEN true
       ELSE cairn.ledger_reserve(x.id::text || ':reserve:' ||
         (SELECT count(*) FROM cairn.ledger_transfers l WHERE l.run_id = x.id AND l.kind = 'reserve'),
         x.circle_id, x.id, $3::bigint, $2) END AS ok FROM x),
     it AS (UPDATE cairn.items i SET status = CASE WHEN i.key = ANY($4::text[]) THEN 'running' ELSE 'pending' END,
         error = NULL, outputs = NULL, finished_at = NULL, retry_at = NULL, duration_ms = NULL,
         evidence = i.evidence - 'skipped_because' - 'awaiting' - 'decision'
       FROM t, res WHERE res.ok AND res.n > 0 AND i.id = t.id),
     u AS (UPDATE cairn.runs r SET status = 'queued', worker_id = NULL, lease_expires_at = NULL,
         run_after = clock_timestamp(), finished_at = NULL, duration_ms = NULL, error = NULL, output = NULL,
         credits_reserved = r.credits_reserved + $3::bigint
       FROM res WHERE res.ok AND res.n > 0 AND r.id = res.id RETURNING r.*, res.prev, res.n AS retried),
     e AS (INSERT INTO cairn.run_events (run_id, circle_id, type, from_status, to_status, actor, data)
       SELECT u.id, u.circle_id, 'control', u.prev, 'queued', $2,
         jsonb_build_object('action', 'retry-failed', 'tasks', u.retried,
           'task_names', (SELECT jsonb_agg(t.key ORDER BY t.key) FROM t)) FROM u)
     SELECT u.*, pg_notify('cairn_run_queued', u.id::text) AS _n FROM u`,
    [runId, actor, reserve, fanSteps],
  );
  const row = r.rows[0];
  if (!row) return undefined;
  const retried = Number(row.retried);
  const o = { ...row } as Record<string, unknown>;
  delete o.prev;
  delete o.retried;
  delete o._n;
  return { run: runRow(o as unknown as RunRow), retried };
}

/** Tasks retry-failed would run again (failed, cancelled, or skipped because of a failure). */
export async function retryableTasks(q: Queryable, runId: string): Promise<string[]> {
  const r = await q.query<{ key: string }>(
    `SELECT key FROM cairn.items WHERE run_id = $1 AND (status IN ('failed', 'cancelled')
       OR (status = 'skipped' AND evidence ? 'skipped_because'))`,
    [runId],
  );
  return r.rows.map((x) => x.key);
}

/** The tasks of a workflow run that wait for a decision: who may decide, what is asked, until when. */
export async function awaitingApproval(
  q: Queryable,
  runId: string,
): Promise<{ task: string; role: string; instructions: string; deadline: string }[]> {
  const r = await q.query<{
    task: string;
    awaiting: { role: string; instructions: string; deadline: string };
  }>(
    `SELECT key AS task, evidence -> 'awaiting' AS awaiting FROM cairn.items
     WHERE run_id = $1 AND status = 'running' AND evidence ? 'awaiting' AND NOT evidence ? 'decision'
     ORDER BY ord, key`,
    [runId],
  );
  return r.rows.map((x) => ({
    task: x.task,
    role: x.awaiting.role,
    instructions: x.awaiting.instructions,
    deadline: x.awaiting.deadline,
  }));
}

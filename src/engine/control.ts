import { errors, type CairnError, type ErrorBody } from '../core/errors.js';
import type { CircleRow } from '../store/circles.js';
import { getElementById } from '../store/elements.js';
import { getType, operationsOf } from '../elements/registry.js';
import { runPrice, submitRun } from './submit.js';
import { pinElement } from '../elements/attachments.js';
import { typeLookup } from '../elements/registry.js';
import { submitBatch, type RunMode } from './batch-submit.js';
import { mapRow } from '../elements/table/index.js';
import { ident } from '../db/types.js';
import { isTerminal } from '../core/status.js';
import type { Db, Queryable } from '../db/types.js';
import { pauseRun, resumeRun, retryFailed } from '../store/batch.js';
import { decideOnRun } from './policy.js';
import { reservationRefused } from '../store/ledger.js';
import { cancelRun, getRun, listItems, loadSnapshot, type RunRow } from '../store/runs.js';
import { childrenLeft, getDefinition, retryableTasks, retryWorkflowTasks } from '../store/workflow.js';
import { triggerWorkflow } from './workflow-submit.js';

async function existing(db: Queryable, runId: string): Promise<RunRow> {
  const run = await getRun(db, runId);
  if (!run) throw errors.notFound('RUN_NOT_FOUND', `No run ${runId}.`, 'Check the run id.');
  return run;
}

function finished(run: RunRow, action: string, suggestion: string): CairnError {
  return errors.conflict(
    'RUN_ALREADY_FINISHED',
    `Run ${run.id} already ended as ${run.status}; it cannot be ${action}.`,
    suggestion,
  );
}

/** Cancel (R-CONTROL): queued, running or paused → cancelled; the worker is told through NOTIFY. */
export async function cancel(db: Db, runId: string, actor: string, reason: string | null): Promise<RunRow> {
  const row = await cancelRun(db, runId, actor, reason);
  if (row) {
    // A workflow's orchestrator may have started children in a round that committed while the cancel
    // waited for the run's lock (the cancel's own statement did not see them): cancel those too.
    for (const child of await childrenLeft(db, runId)) await cancelRun(db, child, actor, reason);
    return row;
  }
  throw finished(
    await existing(db, runId),
    'cancelled',
    'Only queued, running or paused runs can be cancelled. Use rerun to start it again.',
  );
}

/** Pause: no new item starts; running ones finish, then the worker lets go of the run. */
export async function pause(db: Db, runId: string, actor: string): Promise<RunRow> {
  const row = await pauseRun(db, runId, actor);
  if (row) return row;
  const run = await existing(db, runId);
  if (run.status === 'paused') {
    throw errors.conflict(
      'RUN_ALREADY_PAUSED',
      `Run ${runId} is already paused.`,
      'Resume it with POST /api/runs/{id}/resume.',
    );
  }
  if (run.status === 'running') {
    throw errors.conflict(
      'RUN_NOT_PAUSABLE',
      `Run ${runId} is an ${run.kind} run whose only item is already running; it cannot be paused.`,
      'Cancel it, or let it finish. Queued runs and running batch runs can be paused.',
    );
  }
  throw finished(
    run,
    'paused',
    'Only queued or running runs can be paused. Use rerun or retry-failed to run it again.',
  );
}

export async function resume(db: Db, runId: string, actor: string): Promise<RunRow> {
  const row = await resumeRun(db, runId, actor);
  if (row) return row;
  const run = await existing(db, runId);
  if (isTerminal(run.status)) throw finished(run, 'resumed', 'Use rerun or retry-failed to run it again.');
  throw errors.conflict(
    'RUN_NOT_PAUSED',
    `Run ${runId} is ${run.status}, not paused; there is nothing to resume.`,
    'Pause it first with POST /api/runs/{id}/pause.',
  );
}

export interface RetryAnswer {
  run: RunRow;
  retried: number;
  message: string;
}

/**
 * retry-failed: only the failed items run again, in the same run (their
 * attempt_count goes on). Nothing failed: a clear answer, nothing changes.
 */
export async function retryFailedItems(
  db: Db,
  runId: string,
  actor: string,
  circleSlug: string,
  opts: { definition?: 'pinned' | 'latest'; role?: string } = {},
): Promise<RetryAnswer> {
  const run = await existing(db, runId);
  // Retrying starts work again: the circle's policies decide it as the action `retry`.
  await decideOnRun(db, run, 'retry', { type: 'api', source: null, actor, role: opts.role ?? 'execute' });
  if (run.kind === 'workflow') {
    if (opts.definition === 'latest')
      throw errors.invalidInput(
        'retry-failed of a workflow run keeps its pinned definition (the workflow and its step versions).',
        undefined,
        'Retry on the pinned definition (leave out definition), or trigger the workflow by name to run its latest definition.',
      );
    return retryWorkflow(db, run, actor, circleSlug);
  }
  if (opts.definition !== 'latest') return retryPinned(db, runId, actor, circleSlug);
  try {
    return await db.transaction((tx) => retryOnLatest(tx, runId, actor, circleSlug));
  } catch (e) {
    if (e instanceof NothingRetried) return { ...e.answer, run: await existing(db, runId) };
    throw e;
  }
}

/** retry-failed of a workflow: the failed tasks and those they skipped run again, in the same run. */
async function retryWorkflow(db: Db, run: RunRow, actor: string, circleSlug: string): Promise<RetryAnswer> {
  if (!isTerminal(run.status))
    throw errors.conflict(
      'RUN_NOT_FINISHED',
      `Run ${run.id} is ${run.status}; retry-failed applies to a finished run.`,
      'Wait for it to finish (or cancel it), then retry its failed tasks.',
    );
  if (run.status === 'cancelled')
    throw errors.conflict(
      'RUN_CANCELLED',
      `Run ${run.id} was cancelled; its unfinished tasks were cancelled, not failed.`,
      'Use rerun to start a new run with the same parameters and pinned definition.',
    );
  const keys = await retryableTasks(db, run.id);
  if (keys.length === 0)
    return { run, retried: 0, message: `Run ${run.id} has no failed tasks; nothing to retry.` };
  const def = await getDefinition(db, run.circle_id, run.definition_hash ?? '');
  const stepOf = (k: string) => /^(.*)\[\d+\]$/.exec(k)?.[1] ?? k;
  const all = new Set(keys);
  // A for_each step goes back to running when tasks of its own fan out again; else it starts over.
  const fanSteps = [...all].filter((k) => [...all].some((x) => x !== k && stepOf(x) === k));
  const reserve = keys
    .filter((k) => !fanSteps.includes(k))
    .reduce((sum, k) => sum + (def?.steps[stepOf(k)]?.price ?? 0), 0);
  const r = await retryWorkflowTasks(db, run.id, actor, reserve, fanSteps);
  if (!r) {
    const now = await existing(db, run.id);
    if (now.status !== run.status) return retryWorkflow(db, now, actor, circleSlug);
    throw await reservationRefused(db, { id: run.circle_id, slug: circleSlug }, reserve);
  }
  return { ...r, message: `${r.retried} task(s) queued again in run ${run.id}: ${keys.join(', ')}.` };
}

/**
 * retry-failed --latest: the run is re-pinned to its element's current
 * version (snapshot, version and definition hash, with the one it had kept in
 * `snapshot.earlier_definitions` and an audit event), then its failed items
 * run again on it. One transaction: if nothing can be retried, nothing changes.
 */
async function retryOnLatest(
  tx: Queryable,
  runId: string,
  actor: string,
  circleSlug: string,
): Promise<RetryAnswer> {
  const run = await existing(tx, runId);
  const el = run.element_id ? await getElementById(tx, run.element_id) : undefined;
  if (!el)
    throw errors.notFound(
      'ELEMENT_NOT_FOUND',
      `The element run ${runId} ran no longer exists, so there is no latest definition.`,
      'Retry on the pinned definition (leave out definition), or rerun after re-creating the element.',
    );
  const snap = await loadSnapshot(tx, run);
  const pinned = snap.element;
  if (el.definition_hash !== run.definition_hash) {
    // The new snapshot (stored content-addressed by the runs_snapshot trigger) keeps the old definition.
    const repinned = await pinElement(tx, el, typeLookup);
    const type = getType(el.element_type);
    const op = operationsOf(type).find((o) => o.name === run.operation);
    // What each retried item reserves follows the new definition (an LLM's model or max_tokens may
    // cost more now); never less than before.
    const price = Math.max(
      Number(snap.operation?.price ?? 0),
      op ? runPrice(type, op, repinned, undefined) : 0,
    );
    const next = {
      ...snap,
      element: repinned,
      operation: { ...snap.operation, price },
      earlier_definitions: [...(snap.earlier_definitions ?? []), snap.element],
    };
    await tx.query(
      `WITH u AS (
         UPDATE cairn.runs SET element_version = $2::int, definition_hash = $3,
           snapshot = $4::jsonb
         WHERE id = $1 AND status IN ('completed', 'failed') RETURNING id, circle_id)
       INSERT INTO cairn.run_events (run_id, circle_id, type, actor, data)
       SELECT u.id, u.circle_id, 'control', $5,
         jsonb_build_object('action', 'repin', 'definition', 'latest', 'from_version', $6::int, 'to_version', $2::int,
           'from_definition_hash', $7::text, 'to_definition_hash', $3::text) FROM u`,
      [
        runId,
        el.version,
        el.definition_hash,
        JSON.stringify(next),
        actor,
        pinned?.version ?? run.element_version,
        pinned?.definition_hash ?? run.definition_hash,
      ],
    );
  }
  const r = await retryPinned(tx, runId, actor, circleSlug);
  // Nothing to retry: leave the run pinned where it was (the transaction rolls back).
  if (r.retried === 0) throw new NothingRetried(r);
  return r;
}

class NothingRetried extends Error {
  constructor(readonly answer: RetryAnswer) {
    super(answer.message);
  }
}

async function retryPinned(
  db: Queryable,
  runId: string,
  actor: string,
  circleSlug: string,
): Promise<RetryAnswer> {
  const run = await existing(db, runId);
  if (!isTerminal(run.status)) {
    throw errors.conflict(
      'RUN_NOT_FINISHED',
      `Run ${runId} is ${run.status}; retry-failed applies to a finished run.`,
      'Wait for it to finish (or cancel it), then retry its failed items.',
    );
  }
  if (run.status === 'cancelled') {
    throw errors.conflict(
      'RUN_CANCELLED',
      `Run ${runId} was cancelled; its unfinished items were cancelled, not failed.`,
      'Use rerun to start a new run with the same inputs.',
    );
  }
  const { only, stillInvalid } = await remapFromRows(db, run);
  const n =
    only?.length ??
    (
      await db.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM cairn.items WHERE run_id = $1 AND status = 'failed'",
        [runId],
      )
    ).rows[0]!.n;
  if (n === 0) {
    return {
      run,
      retried: 0,
      message:
        stillInvalid > 0
          ? `None of the ${stillInvalid} failed item(s) of run ${runId} can run: their rows still do not map to a valid input. Fix the rows, then retry again.`
          : `Run ${runId} has no failed items; nothing to retry.`,
    };
  }
  const price = Number((await loadSnapshot(db, run)).operation?.price ?? 0);
  const r = await retryFailed(db, runId, actor, price, only);
  if (!r) {
    const now = await existing(db, runId);
    if (now.status !== run.status) return retryPinned(db, runId, actor, circleSlug); // raced: answer for the new state
    throw await reservationRefused(db, { id: run.circle_id, slug: circleSlug }, n * price);
  }
  if (stillInvalid > 0) {
    return {
      ...r,
      message: `${r.retried} failed item(s) queued again in run ${runId}; ${stillInvalid} stay failed (their rows still do not map to a valid input).`,
    };
  }
  return { ...r, message: `${r.retried} failed item(s) queued again in run ${runId}.` };
}

/**
 * A batch over table rows retries from the rows as they are now ("fix the
 * input, then retry-failed"): each failed item's input is mapped again from its
 * row; the ones that still do not make a valid input stay failed.
 */
async function remapFromRows(
  db: Queryable,
  run: RunRow,
): Promise<{ only: string[] | null; stillInvalid: number }> {
  const b = (await loadSnapshot(db, run)).batch as
    { mapping?: Parameters<typeof mapRow>[0]; cells?: { schema: string; table: string } | null } | undefined;
  if (!b?.cells || !b.mapping) return { only: null, stillInvalid: 0 };
  const type = getType(run.element_type ?? '');
  const op = operationsOf(type).find((o) => o.name === run.operation);
  if (!op) return { only: null, stillInvalid: 0 };
  const failed = await db.query<{ id: string; key: string }>(
    "SELECT id, key FROM cairn.items WHERE run_id = $1 AND status = 'failed'",
    [run.id],
  );
  const rows = await db.query<{ id: string; data: Record<string, unknown> }>(
    `SELECT id, data FROM ${ident(b.cells.schema)}.${ident(b.cells.table)} WHERE id = ANY($1::uuid[])`,
    [failed.rows.map((f) => f.key)],
  );
  const data = new Map(rows.rows.map((r) => [r.id, r.data]));
  const updates: { id: string; inputs: unknown }[] = [];
  for (const f of failed.rows) {
    const row = data.get(f.key);
    if (!row) continue;
    const m = mapRow(b.mapping, row);
    if (m.problem) continue;
    const parsed = op.input.safeParse(m.input);
    if (parsed.success) updates.push({ id: f.id, inputs: parsed.data });
  }
  if (updates.length > 0) {
    await db.query(
      `UPDATE cairn.items i SET inputs = x.inputs FROM jsonb_to_recordset($1::jsonb) AS x(id uuid, inputs jsonb)
       WHERE i.id = x.id AND i.status = 'failed'`,
      [JSON.stringify(updates)],
    );
  }
  return { only: updates.map((u) => u.id), stillInvalid: failed.rows.length - updates.length };
}

/**
 * rerun: a new, independent run of the same element with the same inputs (an
 * invoke's input; a batch's items, keys and settings), trigger `rerun`.
 */
export async function rerun(
  db: Db,
  runId: string,
  actor: string,
  circle: CircleRow,
  snapshotExtra: Record<string, unknown>,
  idempotencyKey?: string,
  role?: string,
): Promise<RunRow> {
  const run = await existing(db, runId);
  const element = run.element_id ? await getElementById(db, run.element_id) : undefined;
  const trigger = { type: 'rerun', source: run.id, actor, ...(role ? { role } : {}) };
  if (run.kind === 'workflow') {
    // The same parameters, on the same pinned definition (the workflow and its step versions).
    const t = await triggerWorkflow(db, {
      circle,
      // A pinned definition runs even after its workflow element was deleted.
      element: element && element.state !== 'deleted' ? element : undefined,
      parameters: (run.input as { parameters?: Record<string, unknown> } | null)?.parameters ?? {},
      definitionHash: run.definition_hash ?? undefined,
      trigger,
      idempotencyKey,
      rerunOf: run.id,
      snapshotExtra,
    });
    return t.run;
  }
  if (!element || element.state === 'deleted') {
    throw errors.conflict(
      'ELEMENT_GONE',
      `The element run ${runId} used no longer exists.`,
      'Recreate the element, then invoke it again.',
    );
  }
  const type = getType(element.element_type);
  const op = operationsOf(type).find((o) => o.name === run.operation);
  if (!op?.createsRun)
    throw errors.conflict(
      'OPERATION_GONE',
      `Operation ${run.operation} no longer exists.`,
      'Invoke another operation.',
    );
  if (run.kind !== 'batch') {
    const { run: next } = await submitRun(
      db,
      {
        circle,
        element,
        type,
        op,
        input: run.input,
        trigger,
        idempotencyKey,
        rerunOf: run.id,
        rootRunId: null,
      },
      snapshotExtra,
    );
    return next;
  }
  const s = await submitBatch(db, {
    ...(await batchAgain(db, run)),
    circle,
    target: element,
    type,
    op,
    trigger,
    snapshotExtra,
    idempotencyKey,
    rerunOf: run.id,
  });
  return s.run;
}

/**
 * A batch run's items and settings, to run them again in a new run (a rerun, a replay): the same
 * keys and inputs, a row that never mapped to an input failing again with its problem.
 */
export async function batchAgain(db: Db, run: RunRow) {
  const items = await listItems(db, run.id);
  const problem = (e: ErrorBody | null) => (e?.code === 'INVALID_INPUT' ? e.message : undefined);
  return {
    units: items.map((i) => ({
      key: i.key,
      input: i.inputs,
      problem: i.attempt_count === 0 ? problem(i.error) : undefined,
    })),
    mode: run.mode as RunMode,
    sample: run.items_total,
    concurrency: run.concurrency,
    itemMaxAttempts: run.item_max_attempts,
    budget: run.budget,
    budgetPolicy: run.budget_policy,
    input: run.input as Record<string, unknown>,
    batch: (await loadSnapshot(db, run)).batch ?? {},
  };
}

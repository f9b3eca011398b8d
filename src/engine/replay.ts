import type { PinnedElement } from '../elements/types.js';
/**
 * Replay (R-CONTROL, seed 002): a new run (trigger `replay`, `replay_of`) that re-executes the
 * original run's recorded input with the definitions of the original's snapshot — not the latest
 * ones. An invoke replays its call, a batch its items, a workflow its tasks (from `from_task` on,
 * reusing the recorded outputs of the tasks before it).
 *
 * Replay is gated by policy, because it may repeat side effects: it is the Cedar action `replay`,
 * with the original run's status, age and side effects in its context; and under `strict` a replay
 * that would repeat a side effect is refused (409 REPLAY_HAS_SIDE_EFFECTS, naming the tasks) unless
 * a policy explicitly permits it. `permissive` lets the circle's policies alone decide.
 */
import { CairnError, errors } from '../core/errors.js';
import { isTerminal } from '../core/status.js';
import type { Db } from '../db/types.js';
import { sideEffects, snapshotElement } from '../elements/pinning.js';
import { DEFAULT_POLICY_ID } from '../elements/policy/cedar.js';
import { getType, operationsOf, typeLookup } from '../elements/registry.js';
import { compilePlan } from '../elements/workflow/plan.js';
import { workflowSpec } from '../elements/workflow/spec.js';
import type { CircleRow } from '../store/circles.js';
import { getElementById, type ElementRow } from '../store/elements.js';
import { getRun, loadSnapshot, type RunRow } from '../store/runs.js';
import { getDefinition, loadTasks, type ReusedTask } from '../store/workflow.js';
import { submitBatch } from './batch-submit.js';
import { batchAgain } from './control.js';
import { decideOnRun } from './policy.js';
import { elementDisabled, submitRun } from './submit.js';
import { triggerWorkflow } from './workflow-submit.js';

export interface ReplayRequest {
  runId: string;
  policy: 'strict' | 'permissive';
  fromTask?: string;
  actor: string;
  role: string;
  circle: CircleRow;
  snapshotExtra: Record<string, unknown>;
  idempotencyKey?: string;
}

export interface Replayed {
  run: RunRow;
  /** The re-executed tasks that have side effects (allowed: permissive, or a policy permitted it). */
  side_effect_tasks: string[];
  reused_tasks: string[];
}

function notReplayable(message: string, suggestion: string, details?: unknown): CairnError {
  return new CairnError({ code: 'RUN_NOT_REPLAYABLE', class: 'conflict', message, suggestion, details });
}

/** What a replay re-executes, and which of it has side effects. */
interface ReplayPlan {
  tasks: string[];
  effects: string[];
  reuse: (ReusedTask & { key: string; ord: number })[];
}

async function planWorkflow(db: Db, run: RunRow, fromTask: string | undefined): Promise<ReplayPlan> {
  const def = await getDefinition(db, run.circle_id, run.definition_hash ?? '');
  if (!def)
    throw notReplayable(
      `The workflow definition run ${run.id} pinned is not recorded.`,
      'Trigger the workflow again by name.',
    );
  const plan = compilePlan(workflowSpec.parse(def.workflow.spec));
  const stepOf = (key: string) => key.replace(/\[\d+\]$/, '');
  let again = new Set(plan.steps.map((p) => p.step.name));
  const reuse: ReplayPlan['reuse'] = [];
  if (fromTask !== undefined) {
    const from = stepOf(fromTask);
    if (!plan.byName.has(from))
      throw errors.invalidInput(
        `from_task "${fromTask}" is not a step of this workflow.`,
        { steps: plan.steps.map((p) => p.step.name) },
        'Name one of its steps (GET /api/runs/{id}/tasks lists them).',
      );
    // The step and everything downstream of it run again; the rest is reused when it ended well.
    again = new Set([from]);
    for (const p of plan.steps) if (p.deps.some((d) => again.has(d))) again.add(p.step.name);
    const tasks = await loadTasks(db, run.id);
    const ended = new Map<string, boolean>();
    for (const t of tasks) {
      const s = stepOf(t.key);
      if (again.has(s)) continue;
      const ok = t.status === 'succeeded' || t.status === 'skipped';
      ended.set(s, (ended.get(s) ?? true) && ok);
    }
    for (const [s, ok] of ended) if (!ok) again.add(s); // a task before it that did not end well runs again
    // …and so does everything downstream of what runs again (to a fixpoint).
    for (let grew = true; grew;) {
      grew = false;
      for (const p of plan.steps)
        if (!again.has(p.step.name) && p.deps.some((d) => again.has(d))) {
          again.add(p.step.name);
          grew = true;
        }
    }
    for (const t of tasks) {
      if (again.has(stepOf(t.key))) continue;
      reuse.push({
        key: t.key,
        ord: t.ord,
        status: t.status as 'succeeded' | 'skipped',
        inputs: t.inputs,
        outputs: t.outputs,
        evidence: { ...t.evidence, reused_from: { run_id: run.id, task_id: t.id } },
        child_run_id: t.child_run_id,
        started_at: t.started_at,
        finished_at: t.finished_at,
        duration_ms: t.duration_ms,
      });
    }
  }
  const tasks = plan.steps.map((p) => p.step.name).filter((s) => again.has(s));
  const effects = tasks.filter((s) => {
    const pinned = def.steps[s];
    if (!pinned) return true;
    const type = typeLookup.get(pinned.element.element_type);
    const op = operationsOf(type).find((o) => o.name === pinned.op);
    return op ? sideEffects(op, pinned.element) : true;
  });
  return { tasks, effects, reuse };
}

/** The element as the original run's snapshot pinned it (its current row gives the rest). */
function pinnedElement(
  current: ElementRow | undefined,
  run: RunRow,
  pinned: Record<string, unknown>,
): ElementRow {
  const p = pinned as {
    id?: string;
    slug?: string;
    element_type?: string;
    version?: number;
    definition_hash?: string;
    spec?: Record<string, unknown>;
  };
  const type = getType(p.element_type ?? run.element_type ?? '');
  const base: ElementRow = current ?? {
    id: p.id ?? run.element_id ?? '',
    circle_id: run.circle_id,
    slug: p.slug ?? run.element_slug ?? '',
    element_type: type.type,
    category: type.category,
    name: p.slug ?? '',
    intention: null,
    state: 'ready',
    spec: {},
    meta: {},
    version: 0,
    definition_hash: '',
    disabled_reason: null,
    created_at: '',
    updated_at: '',
    deleted_at: null,
  };
  return {
    ...base,
    // A deleted element's pinned definition still replays; a disabled one was stopped on purpose.
    state: base.state === 'disabled' ? 'disabled' : 'ready',
    spec: p.spec ?? base.spec,
    version: p.version ?? run.element_version ?? base.version,
    definition_hash: p.definition_hash ?? run.definition_hash ?? base.definition_hash,
  };
}

export async function replay(db: Db, req: ReplayRequest): Promise<Replayed> {
  const run = await getRun(db, req.runId);
  if (!run) throw errors.notFound('RUN_NOT_FOUND', `No run ${req.runId}.`, 'Check the run id.');
  if (!isTerminal(run.status))
    throw notReplayable(
      `Run ${run.id} is ${run.status}; only a finished run can be replayed.`,
      'Wait for it to finish (or cancel it), then replay it.',
    );
  if (run.mode === 'dry_run')
    throw notReplayable(
      `Run ${run.id} is a dry run: it executed nothing to replay.`,
      'Invoke it live instead.',
    );
  if (run.parent_run_id)
    throw notReplayable(
      `Run ${run.id} is a task of workflow run ${run.parent_run_id}.`,
      `Replay the workflow run from that task: POST /api/runs/${run.parent_run_id}/replay {"from_task": "<step>"}.`,
      { parent_run_id: run.parent_run_id },
    );
  if (req.fromTask !== undefined && run.kind !== 'workflow')
    throw errors.invalidInput(
      'from_task applies to a workflow run only.',
      { kind: run.kind },
      'Leave from_task out: an invoke replays its call, a batch its items.',
    );
  const snap = await loadSnapshot(db, run);
  let plan: ReplayPlan;
  if (run.kind === 'workflow') plan = await planWorkflow(db, run, req.fromTask);
  else {
    const type = getType(run.element_type ?? '');
    const op = operationsOf(type).find((o) => o.name === run.operation);
    const effect = op
      ? sideEffects(op, { spec: (snap.element?.spec ?? {}) as Record<string, unknown> })
      : true;
    const task = `${run.element_slug}.${run.operation}`;
    plan = { tasks: [task], effects: effect ? [task] : [], reuse: [] };
  }
  const trigger = {
    type: 'replay',
    source: run.id,
    actor: req.actor,
    role: req.role,
    policy: req.policy,
    ...(req.fromTask !== undefined ? { from_task: req.fromTask } : {}),
  };
  const policyContext = {
    original_status: run.status,
    original_age_s: Math.max(
      0,
      Math.round((Date.now() - Date.parse(run.finished_at ?? run.queued_at)) / 1000),
    ),
    side_effects: plan.effects.length > 0,
    side_effect_tasks: plan.effects,
  };
  // The policy set decides first (a forbid denies either way); strict also needs an explicit permit
  // for a replay that repeats side effects.
  const decision = await decideOnRun(db, run, 'replay', trigger, policyContext);
  // "Explicitly permits": a deciding permit whose scope names the replay action — not cairn/default,
  // and not a permit of any action (written for runs, it says nothing about repeating them).
  const permitsReplay = (decision.record?.deciding ?? []).some(
    (d) => d.effect === 'permit' && d.id !== DEFAULT_POLICY_ID && d.actions?.includes('replay'),
  );
  if (req.policy === 'strict' && plan.effects.length > 0 && !permitsReplay)
    throw new CairnError({
      code: 'REPLAY_HAS_SIDE_EFFECTS',
      class: 'conflict',
      message: `A strict replay of run ${run.id} would repeat side effects: ${plan.effects.join(', ')}.`,
      details: { side_effect_tasks: plan.effects },
      suggestion:
        'Replay with --policy permissive if repeating them is safe, replay from a later task, or ask an admin for a policy that permits this replay (a permit on Cairn::Action::"replay").',
    });
  const common = {
    trigger,
    action: 'replay' as const,
    policyContext,
    replayOf: run.id,
    idempotencyKey: req.idempotencyKey,
  };
  const done = (next: RunRow): Replayed => ({
    run: next,
    side_effect_tasks: plan.effects,
    reused_tasks: [...new Set(plan.reuse.map((t) => t.key))],
  });
  if (run.kind === 'workflow') {
    // A workflow disabled on purpose is not replayed (a deleted one is: its definition is pinned).
    const wf = run.element_id ? await getElementById(db, run.element_id) : undefined;
    if (wf?.state === 'disabled') throw elementDisabled(wf);
    const t = await triggerWorkflow(db, {
      circle: req.circle,
      parameters: (run.input as { parameters?: Record<string, unknown> } | null)?.parameters ?? {},
      definitionHash: run.definition_hash ?? undefined,
      snapshotExtra: req.snapshotExtra,
      reuse: plan.reuse,
      ...common,
    });
    return done(t.run);
  }
  const current = run.element_id ? await getElementById(db, run.element_id) : undefined;
  const element = pinnedElement(current, run, (snap.element ?? {}) as Record<string, unknown>);
  const type = getType(element.element_type);
  const op = operationsOf(type).find((o) => o.name === run.operation && o.createsRun);
  if (!op)
    throw notReplayable(
      `Operation ${run.operation} of ${type.type} no longer creates runs.`,
      'Invoke another operation.',
    );
  if (run.kind === 'invoke') {
    const { run: next } = await submitRun(
      db,
      {
        circle: req.circle,
        element,
        type,
        op,
        input: run.input,
        rootRunId: null,
        // The recorded definition with the attachments and providers it pinned, not today's.
        pinned: {
          ...snapshotElement(element),
          attachments: (snap.element as PinnedElement | undefined)?.attachments,
          uses: (snap.element as PinnedElement | undefined)?.uses,
        },
        ...common,
      },
      req.snapshotExtra,
    );
    return done(next);
  }
  const s = await submitBatch(db, {
    ...(await batchAgain(db, run)),
    circle: req.circle,
    target: element,
    type,
    op,
    snapshotExtra: req.snapshotExtra,
    ...common,
  });
  return done(s.run);
}

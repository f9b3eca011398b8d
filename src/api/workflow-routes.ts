/**
 * Workflow routes (R-WORKFLOW, R-RUNS-API): a run's tasks, and the seed's
 * trigger shapes — by name and by definition hash, scoped to the token's
 * circle (`/api/workflows/…`) or to a named one (`/api/{circle}/workflows/…`).
 */
import { z } from 'zod';
import { errors } from '../core/errors.js';
import { getCircleById, type CircleRow } from '../store/circles.js';
import { getElement } from '../store/elements.js';
import { decideTask, loadTasks, type TaskRow } from '../store/workflow.js';
import { CairnError } from '../core/errors.js';
import { canonicalJson, sha256Hex } from '../core/hash.js';
import { schemaIssues, validatorOf } from '../core/json-schema.js';
import type { Role } from '../core/status.js';
import type { WorkflowTriggered } from '../elements/types.js';
import { triggerInput } from '../elements/workflow/spec.js';
import { actorOf, authorize } from './auth.js';
import { visibleRun } from './control-routes.js';
import { idempotencyKeyOf } from './idempotency.js';
import { requestTrigger } from './context.js';
import { defineRoute, type RouteCtx, type RouteDef } from './route.js';

/** A task as the API shows it (seed 001's fields). */
export function taskView(t: TaskRow) {
  const m = /^(.*)\[(\d+)\]$/.exec(t.key);
  const ev = t.evidence ?? {};
  return {
    name: t.key,
    step: m ? m[1] : t.key,
    index: m ? Number(m[2]) : null,
    status: t.status,
    attempts: t.attempt_count,
    element: ev.element ?? null,
    child_run_id: t.child_run_id,
    child_run_url: t.child_run_id ? `/api/runs/${t.child_run_id}` : null,
    inputs: t.inputs ?? null,
    outputs: t.outputs ?? null,
    error: t.error,
    credits_used: t.credits_used,
    started_at: t.started_at,
    finished_at: t.finished_at,
    duration_ms: t.duration_ms,
    retry_at: t.status === 'retrying' ? t.retry_at : null,
    // Seed 001's task evidence, the same fields for every kind of step (null where a step has none).
    command: ev.command ?? null,
    toolchain: ev.toolchain ?? null,
    toolchain_hash: ev.toolchain ? 'sha256:' + sha256Hex(canonicalJson(ev.toolchain)) : null,
    input_hashes: ev.input_hashes ?? null,
    output_hashes: ev.output_hashes ?? null,
    input_files: ev.input_files ?? [],
    output_files: ev.output_files ?? [],
    output_variables: t.status === 'succeeded' ? (t.outputs ?? null) : null,
    exit_code: ev.exit_code ?? null,
    stdout: ev.stdout ?? null,
    stderr: ev.stderr ?? null,
    timing: ev.timing ?? null,
    host: ev.host ?? null,
    // Who may decide, and until when, while the task waits for approval.
    awaiting: t.status === 'running' && ev.awaiting && !ev.decision ? ev.awaiting : null,
    decision: ev.decision ?? null,
    evidence: ev,
  };
}

function workflowRun(run: { kind: string; id: string }) {
  if (run.kind !== 'workflow')
    throw errors.notFound(
      'NOT_A_WORKFLOW_RUN',
      `Run ${run.id} is a ${run.kind} run; only workflow runs have tasks.`,
      'Its items are at GET /api/runs/{id}/items.',
    );
}

/** The circle a circle-less route acts in: the token's own. */
async function tokenCircle(ctx: RouteCtx): Promise<CircleRow> {
  const p = ctx.principal!;
  if (!p.circleId)
    throw errors.invalidInput(
      'An instance-admin token belongs to no circle, so /api/workflows/… cannot tell which circle is meant.',
      undefined,
      'Use /api/{circle}/{slug}/ops/trigger or /api/{circle}/workflows/by-hash/{hash}/trigger, or a token of the circle.',
    );
  const circle = await getCircleById(ctx.deps.db, p.circleId);
  if (!circle)
    throw errors.notFound(
      'CIRCLE_NOT_FOUND',
      'The circle of this token no longer exists.',
      'Use another token.',
    );
  return circle;
}

function answer(ctx: RouteCtx, t: WorkflowTriggered) {
  ctx.reply.code(202).header('Location', `/api/runs/${t.run.id}`);
  return {
    run_id: t.run.id,
    status: t.run.status,
    definition_hash: t.definition_hash,
    estimated_credits: t.estimated_credits,
    run_url: `/api/runs/${t.run.id}`,
  };
}

async function trigger(
  ctx: RouteCtx<z.output<typeof triggerInput>>,
  circle: CircleRow,
  by: { slug?: string; hash?: string },
) {
  authorize(ctx.principal!, circle, 'execute');
  const element = by.slug ? await getElement(ctx.deps.db, circle.id, by.slug) : undefined;
  if (by.slug && (!element || element.element_type !== 'workflow'))
    throw errors.notFound(
      'WORKFLOW_NOT_FOUND',
      `Circle "${circle.slug}" has no workflow "${by.slug}".`,
      `GET /api/${circle.slug}/elements lists its elements.`,
    );
  const t = await ctx.deps.engine.port.triggerWorkflow({
    circle,
    element,
    parameters: ctx.body.parameters,
    definitionHash: by.hash ?? ctx.body.definition_hash,
    trigger: requestTrigger(ctx.req.headers, actorOf(ctx.principal!), ctx.principal!.role),
    idempotencyKey: idempotencyKeyOf(ctx),
    snapshotExtra: ctx.deps.snapshotExtra,
  });
  return answer(ctx, t);
}

const decisionBody = z
  .object({
    comment: z.string().max(2_000).optional().describe('Why; recorded with the decision'),
    response: z
      .json()
      .optional()
      .describe("Data for the next steps (approve only), matching the task's response_schema"),
  })
  .strict();

function notAwaiting(runId: string, key: string, why: string): CairnError {
  return errors.conflict(
    'TASK_NOT_AWAITING_APPROVAL',
    `Task "${key}" of run ${runId} is not waiting for a decision: ${why}.`,
    `GET /api/runs/${runId}/tasks/${encodeURIComponent(key)} shows its status and decision.`,
  );
}

/** approve / reject: the approver's role is checked against the task's, and a task is decided once. */
function decisionRoute(decision: 'approve' | 'reject'): RouteDef {
  return defineRoute({
    method: 'POST',
    url: `/api/runs/:id/tasks/:name/${decision}`,
    auth: 'token',
    tag: 'runs',
    summary:
      decision === 'approve'
        ? 'Approve a task that awaits approval (a hitl step), with a comment and an optional response'
        : 'Reject a task that awaits approval (a hitl step), with a comment',
    body: decisionBody,
    handler: async (ctx) => {
      const { run, circle } = await visibleRun(ctx, 'read');
      const key = String(ctx.params.name);
      const [t] = await loadTasks(ctx.deps.db, run.id, [key]);
      if (!t)
        throw errors.notFound(
          'TASK_NOT_FOUND',
          `Run ${run.id} has no task "${key}".`,
          `GET /api/runs/${run.id}/tasks lists them.`,
        );
      const awaiting = t.evidence?.awaiting as { role: Role; response_schema?: unknown } | undefined;
      if (!awaiting) throw notAwaiting(run.id, key, 'it is not an approval');
      if (t.evidence?.decision) throw notAwaiting(run.id, key, 'it was already decided');
      if (t.status !== 'running') throw notAwaiting(run.id, key, `it is ${t.status}`);
      authorize(ctx.principal!, circle, awaiting.role);
      const body = ctx.body as z.output<typeof decisionBody>;
      if (decision === 'approve' && awaiting.response_schema && body.response !== undefined) {
        const v = validatorOf(awaiting.response_schema);
        if (!v(body.response))
          throw new CairnError({
            code: 'HITL_RESPONSE_INVALID',
            class: 'validation',
            message: `The response does not match the task's response_schema: ${schemaIssues(v.errors)
              .map((i) => `${i.path} ${i.message}`)
              .join('; ')}.`,
            details: schemaIssues(v.errors),
            suggestion: 'Send a response that matches awaiting.response_schema of the task.',
          });
      }
      if (decision === 'approve' && awaiting.response_schema && body.response === undefined) {
        const v = validatorOf(awaiting.response_schema);
        if (!v(null) && !v({}))
          throw new CairnError({
            code: 'HITL_RESPONSE_INVALID',
            class: 'validation',
            message: 'This approval needs a response matching its response_schema.',
            suggestion: 'Send {"response": …} matching awaiting.response_schema of the task.',
          });
      }
      const approver = actorOf(ctx.principal!);
      const ok = await decideTask(
        ctx.deps.db,
        run.id,
        key,
        {
          decision: decision === 'approve' ? 'approved' : 'rejected',
          approver,
          comment: body.comment ?? null,
          ...(body.response !== undefined ? { response: body.response } : {}),
        },
        decision === 'approve'
          ? null
          : {
              code: 'HITL_REJECTED',
              class: 'conflict',
              message: `Rejected by ${approver}${body.comment ? `: ${body.comment}` : ''}.`,
              retryable: false,
              _suggestion: 'Read the comment; change what was asked, then retry-failed or rerun the run.',
            },
      );
      // Decided meanwhile by someone else (or its timeout): the first decision stands.
      if (!ok) throw notAwaiting(run.id, key, 'it was decided meanwhile');
      const [after] = await loadTasks(ctx.deps.db, run.id, [key]);
      return { run_id: run.id, ...taskView(after!) };
    },
  });
}

const hashParam = z.string().regex(/^[0-9a-f]{64}$/, 'a definition hash is 64 lowercase hex digits');
const byHashBody = triggerInput.omit({ definition_hash: true });

export const WORKFLOW_ROUTES: RouteDef[] = [
  decisionRoute('approve'),
  decisionRoute('reject'),
  defineRoute({
    method: 'GET',
    url: '/api/runs/:id/tasks',
    auth: 'token',
    tag: 'runs',
    summary: "A workflow run's tasks (one per step; a for_each step's as name[i]) with their evidence",
    handler: async (ctx) => {
      const { run } = await visibleRun(ctx, 'read');
      workflowRun(run);
      return { run_id: run.id, tasks: (await loadTasks(ctx.deps.db, run.id)).map(taskView) };
    },
  }),
  defineRoute({
    method: 'GET',
    url: '/api/runs/:id/tasks/:name',
    auth: 'token',
    tag: 'runs',
    summary: 'One task of a workflow run',
    handler: async (ctx) => {
      const { run } = await visibleRun(ctx, 'read');
      workflowRun(run);
      const [t] = await loadTasks(ctx.deps.db, run.id, [String(ctx.params.name)]);
      if (!t)
        throw errors.notFound(
          'TASK_NOT_FOUND',
          `Run ${run.id} has no task "${ctx.params.name}".`,
          `GET /api/runs/${run.id}/tasks lists them (a for_each step's tasks are name[0], name[1] …).`,
        );
      return { run_id: run.id, ...taskView(t) };
    },
  }),
  defineRoute({
    method: 'POST',
    url: '/api/workflows/:name/trigger',
    auth: 'token',
    tag: 'workflows',
    summary: "Trigger a workflow of the token's circle by name",
    body: triggerInput,
    status: 202,
    handler: async (ctx) => trigger(ctx, await tokenCircle(ctx), { slug: String(ctx.params.name) }),
  }),
  defineRoute({
    method: 'POST',
    url: '/api/workflows/by-hash/:hash/trigger',
    auth: 'token',
    tag: 'workflows',
    summary: "Trigger exactly the pinned definition a hash names, in the token's circle",
    params: z.object({ hash: hashParam }).strict(),
    body: byHashBody,
    status: 202,
    handler: async (ctx) => trigger(ctx, await tokenCircle(ctx), { hash: String(ctx.params.hash) }),
  }),
  defineRoute({
    method: 'POST',
    url: '/api/:circle/workflows/by-hash/:hash/trigger',
    auth: 'execute',
    tag: 'workflows',
    summary: 'Trigger exactly the pinned definition a hash names',
    params: z.object({ circle: z.string(), hash: hashParam }).strict(),
    body: byHashBody,
    status: 202,
    handler: async (ctx) => trigger(ctx, ctx.circle!, { hash: String(ctx.params.hash) }),
  }),
];

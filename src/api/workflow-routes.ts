/**
 * Workflow routes (R-WORKFLOW, R-RUNS-API): a run's tasks, and the seed's
 * trigger shapes — by name and by definition hash, scoped to the token's
 * circle (`/api/workflows/…`) or to a named one (`/api/{circle}/workflows/…`).
 */
import { z } from 'zod';
import { errors } from '../core/errors.js';
import { getCircleById, type CircleRow } from '../store/circles.js';
import { getElement } from '../store/elements.js';
import { loadTasks, type TaskRow } from '../store/workflow.js';
import type { WorkflowTriggered } from '../elements/types.js';
import { triggerInput } from '../elements/workflow/spec.js';
import { actorOf, authorize } from './auth.js';
import { visibleRun } from './control-routes.js';
import { idempotencyKeyOf } from './idempotency.js';
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
    trigger: { type: 'api', source: ctx.req.headers['user-agent'] ?? null, actor: actorOf(ctx.principal!) },
    idempotencyKey: idempotencyKeyOf(ctx),
    snapshotExtra: ctx.deps.snapshotExtra,
  });
  return answer(ctx, t);
}

const hashParam = z.string().regex(/^[0-9a-f]{64}$/, 'a definition hash is 64 lowercase hex digits');
const byHashBody = triggerInput.omit({ definition_hash: true });

export const WORKFLOW_ROUTES: RouteDef[] = [
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
      const [t] = await loadTasks(ctx.deps.db, run.id, String(ctx.params.name));
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

/**
 * Lineage routes (R-LINEAGE): a run's graph of parameters, tasks, files and
 * outputs (store/lineage.ts), or the same as OpenLineage RunEvents
 * (store/openlineage.ts) with `?format=openlineage`.
 */
import { z } from 'zod';
import { exprsOf } from '../core/expr.js';
import { loadLineage, type LineagePlan } from '../store/lineage.js';
import { openLineageEvents } from '../store/openlineage.js';
import { getDefinition, type WorkflowDefinition } from '../store/workflow.js';
import { compilePlan } from '../elements/workflow/plan.js';
import { workflowSpec } from '../elements/workflow/spec.js';
import { visibleRun } from './control-routes.js';
import { defineRoute, type RouteDef } from './route.js';

/**
 * What the lineage needs of a pinned workflow definition: each step's
 * dependencies (as the orchestrator computes them: compilePlan), whether it
 * reads the parameters, its pinned element, and what the outputs read.
 * Undefined when the definition cannot be read: the graph then has no
 * dependency edges rather than failing.
 */
export function lineagePlanOf(def: WorkflowDefinition | undefined): LineagePlan | undefined {
  if (!def) return undefined;
  let plan: ReturnType<typeof compilePlan>;
  try {
    plan = compilePlan(workflowSpec.parse(def.workflow.spec));
  } catch {
    return undefined;
  }
  const outputs = exprsOf(plan.outputs);
  return {
    steps: plan.steps.map((p) => {
      const exprs = [
        ...exprsOf(p.input),
        ...(p.when ? exprsOf(p.when) : []),
        ...(p.forEach ? exprsOf(p.forEach) : []),
        ...p.files.flatMap(([, t]) => exprsOf(t)),
      ];
      const pinned = def.steps[p.step.name];
      return {
        name: p.step.name,
        deps: [...p.deps].sort(),
        reads_parameters: exprs.some((e) => e.roots.has('parameters')),
        ...(pinned
          ? {
              element: {
                slug: pinned.element.slug,
                version: pinned.element.version,
                element_type: pinned.element.element_type,
                op: pinned.op,
              },
            }
          : {}),
      };
    }),
    outputs_read: [...new Set(outputs.flatMap((e) => [...e.steps]))].sort(),
    outputs_read_parameters: outputs.some((e) => e.roots.has('parameters')),
  };
}

export const LINEAGE_ROUTES: RouteDef[] = [
  defineRoute({
    method: 'GET',
    url: '/api/runs/:id/lineage',
    auth: 'token',
    tag: 'runs',
    summary:
      "A run's lineage: parameters, tasks, the files they read and wrote (by sha256), outputs; ?format=openlineage gives OpenLineage RunEvents",
    query: z.object({ format: z.enum(['graph', 'openlineage']).optional() }).strict(),
    handler: async (ctx) => {
      const { run, circle } = await visibleRun(ctx, 'read');
      const plan =
        run.kind === 'workflow' && run.definition_hash
          ? lineagePlanOf(await getDefinition(ctx.deps.db, run.circle_id, run.definition_hash))
          : undefined;
      const graph = await loadLineage(ctx.deps.db, run, plan);
      if (ctx.query.format === 'openlineage')
        return { run_id: run.id, events: openLineageEvents(run, circle.slug, graph) };
      return graph;
    },
  }),
];

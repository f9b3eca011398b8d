/**
 * `workflow` (R-WORKFLOW): a DAG of steps, each invoking an element of the
 * circle with inputs mapped by `${{ … }}` expressions; `needs`, `when`,
 * `for_each`, per-step retry, timeout and continue_on_error. A trigger makes a
 * workflow run whose tasks are child runs (the engine orchestrates them).
 */
import { z } from 'zod';
import { CairnError } from '../../core/errors.js';
import { getElement } from '../../store/elements.js';
import { defineOp, defineType, type OpContext } from '../types.js';
import { resolveDefinition, workflowHash, estimateOf } from './definition.js';
import { snapshotElement } from '../pinning.js';
import { compilePlan } from './plan.js';
import { triggerInput, workflowSpec, type TriggerInput, type WorkflowSpec } from './spec.js';
import { validatorOf } from '../../core/json-schema.js';

function refused(code: string, message: string, suggestion: string, details?: unknown): CairnError {
  return new CairnError({ code, class: 'validation', message, suggestion, details });
}

const ERRORS = [
  [
    'WORKFLOW_CYCLE',
    'validation',
    false,
    'The steps depend on each other in a cycle.',
    'Remove one dependency of the cycle.',
  ],
  [
    'WORKFLOW_UNKNOWN_STEP',
    'validation',
    false,
    'needs or an expression names a step the workflow does not have.',
    'Fix the step name.',
  ],
  [
    'WORKFLOW_UNKNOWN_ELEMENT',
    'validation',
    false,
    'A step names an element the circle does not have.',
    'Create the element first, or fix the slug.',
  ],
  [
    'WORKFLOW_STEP_NOT_RUNNABLE',
    'validation',
    false,
    'A step names an element or op that does not create runs.',
    'Name a run-creating op (invoke) of an action or query element.',
  ],
  [
    'WORKFLOW_STEP_NOT_RUN',
    'validation',
    false,
    'A step reads a result that cannot exist when it runs (its own).',
    'Read an earlier step.',
  ],
  ['WORKFLOW_DUPLICATE_STEP', 'validation', false, 'Two steps have one name.', 'Rename one.'],
  [
    'WORKFLOW_EXPRESSION_INVALID',
    'validation',
    false,
    'An expression does not parse, or reads what it may not.',
    'Fix the ${{ … }} expression.',
  ],
  [
    'WORKFLOW_FOR_EACH_CAP',
    'validation',
    false,
    'A for_each fans out to more tasks than its cap.',
    'Raise max_items, or shorten the list.',
  ],
  [
    'WORKFLOW_PARAMETERS_SCHEMA_INVALID',
    'validation',
    false,
    'spec.parameters is not a valid JSON Schema.',
    'Fix the schema.',
  ],
  [
    'WORKFLOW_PARAMETERS_INVALID',
    'validation',
    false,
    'The trigger parameters do not match spec.parameters.',
    'Send parameters that match the schema.',
  ],
  [
    'WORKFLOW_DEFINITION_NOT_FOUND',
    'not_found',
    false,
    'No workflow definition has this hash in the circle.',
    'Use a definition_hash recorded on one of its runs.',
  ],
  [
    'WORKFLOW_STEP_UNAVAILABLE',
    'conflict',
    false,
    "A step's element is gone or disabled at trigger time.",
    'Restore it, or trigger by hash.',
  ],
  [
    'WORKFLOW_EXPRESSION_FAILED',
    'validation',
    false,
    'An expression failed while the run went (e.g. it read a skipped step).',
    'Check what the steps it reads returned.',
  ],
  [
    'WORKFLOW_FOR_EACH_NOT_A_LIST',
    'validation',
    false,
    'for_each gave something other than a list.',
    'Make it give a list.',
  ],
  [
    'WORKFLOW_FOR_EACH_FAILED',
    'validation',
    false,
    'Some tasks of a for_each step failed.',
    'Fix them, then retry-failed.',
  ],
  [
    'WORKFLOW_STEP_FAILED',
    'validation',
    false,
    'A step failed, so the run failed and its dependents were skipped.',
    'See the failed task.',
  ],
] as const;

const triggerOp = defineOp({
  name: 'trigger',
  method: 'POST',
  path: 'trigger',
  auth: 'execute',
  summary: 'Trigger a workflow run',
  description:
    'Validates the parameters against spec.parameters, pins the definition (the workflow and the current version of every step; or exactly the one `definition_hash` names), reserves its estimate and queues the run. Answers 202 with the run id and its definition hash.',
  input: triggerInput,
  status: 202,
  startsRun: true,
  handler: async (ctx: OpContext<TriggerInput>) => {
    const t = await ctx.engine.triggerWorkflow({
      circle: ctx.circle,
      element: ctx.element,
      parameters: ctx.input.parameters,
      definitionHash: ctx.input.definition_hash,
      budget: ctx.input.budget,
      budgetPolicy: ctx.input.on_budget_exceeded,
      trigger: ctx.trigger,
      idempotencyKey: ctx.idempotencyKey,
      snapshotExtra: ctx.snapshotExtra,
    });
    ctx.setHeader('Location', `/api/runs/${t.run.id}`);
    return {
      run_id: t.run.id,
      status: t.run.status,
      definition_hash: t.definition_hash,
      estimated_credits: t.estimated_credits,
      run_url: `/api/runs/${t.run.id}`,
    };
  },
});

const definitionOp = defineOp({
  name: 'definition',
  method: 'GET',
  path: 'definition',
  auth: 'read',
  summary: 'The definition a trigger would pin now',
  description:
    'Resolves every step to the current version of its element and answers the definition hash a trigger by name would run, with the steps in order, their dependencies and the estimate.',
  input: z.object({}).strict(),
  handler: async (ctx: OpContext) => {
    const def = await resolveDefinition(ctx.db, ctx.circle.id, snapshotElement(ctx.element), ctx.types);
    const plan = compilePlan(workflowSpec.parse(ctx.element.spec));
    return {
      definition_hash: workflowHash(def),
      estimated_credits: estimateOf(def),
      steps: plan.steps.map((p) => {
        const s = def.steps[p.step.name]!;
        return {
          name: p.step.name,
          needs: p.deps,
          element: {
            slug: s.element.slug,
            element_type: s.element.element_type,
            version: s.element.version,
            definition_hash: s.element.definition_hash,
          },
          op: s.op,
          for_each: p.forEach !== undefined,
          when: p.step.when ?? null,
        };
      }),
    };
  },
});

export const workflowType = defineType({
  type: 'workflow',
  category: 'flows',
  title: 'Workflow',
  description:
    'A DAG of steps; each step runs an element of the circle (go-fn, python, javascript, sql …) as a child run, with inputs mapped from the trigger parameters and earlier outputs by ${{ … }} expressions (CEL). Triggered by name or by definition hash.',
  spec: workflowSpec,
  operations: [triggerOp, definitionOp],
  errors: ERRORS.map(([code, cls, retryable, description, suggestion]) => ({
    code,
    class: cls,
    retryable,
    description,
    suggestion,
  })),
  rules: [],
  validateSpec: (spec: WorkflowSpec) => {
    try {
      validatorOf(spec.parameters);
    } catch (e) {
      throw refused(
        'WORKFLOW_PARAMETERS_SCHEMA_INVALID',
        `spec.parameters is not a valid JSON Schema: ${(e as Error).message}.`,
        'Write spec.parameters as a JSON Schema (2020-12), e.g. {type: object, properties: {n: {type: integer}}, required: [n]}.',
      );
    }
    compilePlan(spec);
  },
  validateInCircle: async (db, circle, spec: WorkflowSpec, types) => {
    for (const s of spec.steps) {
      const el = await getElement(db, circle.id, s.element);
      if (!el)
        throw refused(
          'WORKFLOW_UNKNOWN_ELEMENT',
          `Step "${s.name}" names element "${s.element}", which this circle does not have.`,
          'Create the element first (cairn apply -f …), or fix the slug in the step.',
          { step: s.name, element: s.element },
        );
      const type = types.get(el.element_type);
      const op = types.operationsOf(type).find((o) => o.name === s.op);
      // A step runs an op that creates a run, or waits for a decision (an approval type).
      if (!op || !(op.createsRun || type.approval))
        throw refused(
          'WORKFLOW_STEP_NOT_RUNNABLE',
          `Step "${s.name}": element "${s.element}" (${el.element_type}) has no run-creating operation "${s.op}".`,
          `Use one of: ${
            types
              .operationsOf(type)
              .filter((o) => o.createsRun || type.approval)
              .map((o) => o.name)
              .join(', ') || `none (a ${el.element_type} is not a step)`
          }.`,
          { step: s.name, element: s.element, op: s.op },
        );
    }
  },
  executors: {},
});

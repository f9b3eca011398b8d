/**
 * `hitl` (seed 004: "use `hitl` to pause for approval"): a step that waits
 * for a person. A workflow task of a hitl element runs no code: it waits,
 * showing its instructions and who may decide, until an approver with the
 * role approves or rejects it (POST /api/runs/{id}/tasks/{name}/approve|reject)
 * or its timeout passes. Invoked alone, it makes a one-step run that waits the same way.
 */
import { z } from 'zod';
import { CairnError } from '../../core/errors.js';
import { validatorOf } from '../../core/json-schema.js';
import { ROLES } from '../../core/status.js';
import { defineOp, defineType, type OpContext } from '../types.js';

export const hitlSpec = z
  .object({
    instructions: z.string().min(1).max(10_000).describe('What the approver is asked to check or decide'),
    approvers: z
      .object({
        role: z.enum(ROLES).default('execute').describe('The least role of a token that may decide'),
      })
      .strict()
      .default({ role: 'execute' }),
    timeout_ms: z
      .number()
      .int()
      .min(1_000)
      .max(30 * 86_400_000)
      .default(86_400_000)
      .describe('How long it waits for a decision'),
    on_timeout: z
      .enum(['reject', 'approve'])
      .default('reject')
      .describe('The decision when nobody decided in time'),
    response_schema: z
      .record(z.string(), z.json())
      .optional()
      .describe("JSON Schema (2020-12) of the approver's `response` (approve only)"),
  })
  .strict();
export type HitlSpec = z.output<typeof hitlSpec>;

const invokeOp = defineOp({
  name: 'invoke',
  method: 'POST',
  path: 'invoke',
  auth: 'execute',
  summary: 'Ask for an approval: a one-step run that waits for a decision',
  description:
    'Creates a run with one task that waits for an approver (POST /api/runs/{id}/tasks/approval/approve or /reject). Answers 202 with the run id.',
  input: z.object({}).strict(),
  status: 202,
  startsRun: true,
  sideEffects: false,
  handler: async (ctx: OpContext) => {
    const t = await ctx.engine.triggerWorkflow({
      circle: ctx.circle,
      element: ctx.element,
      parameters: {},
      oneStep: true,
      trigger: ctx.trigger,
      idempotencyKey: ctx.idempotencyKey,
      snapshotExtra: ctx.snapshotExtra,
    });
    ctx.setHeader('Location', `/api/runs/${t.run.id}`);
    return {
      run_id: t.run.id,
      status: t.run.status,
      task: 'approval',
      approve_url: `/api/runs/${t.run.id}/tasks/approval/approve`,
      reject_url: `/api/runs/${t.run.id}/tasks/approval/reject`,
      run_url: `/api/runs/${t.run.id}`,
    };
  },
});

export const hitlType = defineType({
  type: 'hitl',
  category: 'flows',
  title: 'Human in the loop',
  description:
    'A step that waits for a person: an approver with the role approves (optionally with a response matching response_schema) or rejects, with a comment; both are recorded in the audit trail and as the task output. A timeout decides by on_timeout.',
  spec: hitlSpec,
  operations: [invokeOp],
  errors: [
    {
      code: 'HITL_REJECTED',
      class: 'conflict',
      retryable: false,
      description: 'An approver rejected the task.',
      suggestion: 'Read the comment; change what was asked, then retry-failed or rerun.',
    },
    {
      code: 'HITL_TIMED_OUT',
      class: 'timeout',
      retryable: false,
      description: 'Nobody decided within timeout_ms (on_timeout: reject).',
      suggestion: 'Raise timeout_ms, or notify the approvers; then retry-failed.',
    },
    {
      code: 'TASK_NOT_AWAITING_APPROVAL',
      class: 'conflict',
      retryable: false,
      description: 'The task is not waiting for a decision (already decided, or not an approval).',
      suggestion: 'GET /api/runs/{id}/tasks shows each task and whether it awaits approval.',
    },
    {
      code: 'HITL_RESPONSE_INVALID',
      class: 'validation',
      retryable: false,
      description: "The approval's response does not match response_schema.",
      suggestion: 'Send a response that matches the schema in the task (awaiting.response_schema).',
    },
  ],
  rules: [],
  validateSpec: (spec: HitlSpec) => {
    if (!spec.response_schema) return;
    try {
      validatorOf(spec.response_schema);
    } catch (e) {
      throw new CairnError({
        code: 'INVALID_SPEC',
        class: 'validation',
        message: `spec.response_schema is not a valid JSON Schema: ${(e as Error).message}.`,
        suggestion: 'Write response_schema as a JSON Schema (2020-12) object.',
      });
    }
  },
  approval: (spec: HitlSpec) => ({
    instructions: spec.instructions,
    role: spec.approvers.role,
    timeout_ms: spec.timeout_ms,
    on_timeout: spec.on_timeout,
    ...(spec.response_schema ? { response_schema: spec.response_schema } : {}),
  }),
  executors: {},
});

/**
 * `upstream` (R-TRIGGERS): when a run of the source element ends with one of the `on` statuses,
 * run the target with the handoff payload (`${{ upstream.output }}` by default). The handoff is an
 * outbox row written by the source run's terminal transition itself (a row trigger, same
 * transaction), so a crash can neither lose nor double it; the engine's outbox loop starts the
 * target under the key upstream:<id>:<source run>. A chain deeper than max_depth fails with
 * UPSTREAM_DEPTH_EXCEEDED instead of looping.
 */
import { z } from 'zod';
import { CairnError } from '../../core/errors.js';
import { getElement } from '../../store/elements.js';
import * as store from '../../store/triggers.js';
import { checkMapping, missingTarget, resolveTarget, targetInput, targetSchema } from '../triggers/target.js';
import { defineOp, defineType, type OpContext } from '../types.js';

const DEFAULT_INPUT = '${{ upstream.output }}';

export const upstreamSpec = z
  .object({
    source: z.string().min(1).max(63).describe('The slug of the element whose runs hand off'),
    on: z
      .array(z.enum(['succeeded', 'failed', 'completed']))
      .min(1)
      .default(['succeeded'])
      .describe('Which ends hand off: succeeded, failed (or cancelled), completed (any end)'),
    target: targetSchema.optional().describe('What a handoff runs: {element, op}'),
    input: z
      .unknown()
      .optional()
      .describe(
        'The target input, a template over upstream (run_id, status, element, input, output, error, trigger)',
      ),
    max_depth: z
      .number()
      .int()
      .min(1)
      .max(64)
      .default(16)
      .describe('The longest chain of upstream runs allowed'),
  })
  .strict();
export type UpstreamSpec = z.output<typeof upstreamSpec>;

/** The statuses of the source run that hand off (`failed` includes cancelled; `completed` is any end). */
function statusesOf(on: UpstreamSpec['on']): string[] {
  const s = new Set<string>();
  for (const o of on) {
    if (o === 'succeeded') s.add('succeeded');
    if (o === 'failed') ['failed', 'cancelled'].forEach((x) => s.add(x));
    if (o === 'completed') ['succeeded', 'completed', 'failed', 'cancelled'].forEach((x) => s.add(x));
  }
  return [...s];
}

function inputOf(spec: UpstreamSpec): unknown {
  if (spec.input !== undefined && (spec.target?.input !== undefined || spec.target?.parameters !== undefined))
    throw new CairnError({
      code: 'INVALID_TARGET',
      class: 'validation',
      message: 'Give the target input once: in input, or in target.input / target.parameters.',
      suggestion: 'Keep input (a template over upstream) and drop target.input.',
    });
  return targetInput(spec.target!, spec.input ?? DEFAULT_INPUT);
}

const handoffsOp = defineOp({
  name: 'handoffs',
  method: 'GET',
  path: 'handoffs',
  auth: 'read',
  summary: 'Recent handoffs: the source run, the run it started, or why none started',
  input: z.object({ limit: z.coerce.number().int().min(1).max(1_000).default(100) }).strict(),
  handler: async (ctx: OpContext<{ limit: number }>) => ({
    handoffs: await store.listHandoffs(ctx.db, ctx.element.id, ctx.input.limit),
  }),
});

export const upstreamType = defineType({
  type: 'upstream',
  category: 'triggers',
  writeAuth: 'execute',
  title: 'Upstream',
  description:
    "Runs a target when a run of the source element ends (succeeded, failed or any end), with the source run's output as handoff payload. Written as an outbox row with the source run's end, so nothing is lost or doubled by a crash; chains are capped by max_depth.",
  spec: upstreamSpec,
  operations: [handoffsOp],
  errors: [
    {
      code: 'MISSING_TARGET',
      class: 'validation',
      retryable: false,
      description: 'The upstream names no target.',
      suggestion: 'Add target: {element, op}.',
    },
    {
      code: 'INVALID_TARGET',
      class: 'validation',
      retryable: false,
      description: 'The target element does not exist or its op starts no run.',
      suggestion: 'Target an element of the circle and an op that starts a run.',
    },
    {
      code: 'INVALID_SOURCE',
      class: 'validation',
      retryable: false,
      description: 'The source element does not exist in the circle.',
      suggestion: 'Create the source first, or fix its slug.',
    },
    {
      code: 'INVALID_MAPPING',
      class: 'validation',
      retryable: false,
      description: 'An expression of the input does not compile (it may read upstream).',
      suggestion: 'Read upstream.output, upstream.status, upstream.run_id, upstream.input.',
    },
    {
      code: 'UPSTREAM_DEPTH_EXCEEDED',
      class: 'validation',
      retryable: false,
      description:
        'The handoff would make a chain longer than max_depth (usually a loop); it started nothing.',
      suggestion: 'Break the loop (a target that is its own source), or raise max_depth.',
    },
  ],
  rules: [],
  validateSpec: (spec: UpstreamSpec) => {
    if (!spec.target) throw missingTarget('upstream');
    checkMapping(inputOf(spec), ['upstream'], 'input');
  },
  validateInCircle: async (db, circle, spec: UpstreamSpec, types) => {
    if (!(await getElement(db, circle.id, spec.source)))
      throw new CairnError({
        code: 'INVALID_SOURCE',
        class: 'validation',
        message: `The source element "${spec.source}" does not exist in this circle.`,
        details: { source: spec.source },
        suggestion: 'Create it first, or fix the slug (GET /api/{circle}/elements lists them).',
      });
    await resolveTarget(db, circle, spec.target!, types, null);
  },
  afterSave: async (tx, circle, element, _created, types) => {
    const spec = upstreamSpec.parse(element.spec);
    const source = (await getElement(tx, circle.id, spec.source))!;
    const target = await resolveTarget(tx, circle, spec.target!, types, element.slug);
    await store.upsertUpstream(tx, {
      elementId: element.id,
      circleId: circle.id,
      sourceElementId: source.id,
      statuses: statusesOf(spec.on),
      target: { ...target, input: null },
      input: inputOf(spec),
      maxDepth: spec.max_depth,
    });
  },
  executors: {},
});

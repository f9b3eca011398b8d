/**
 * `policy` (R-POLICY): Cedar policies checked before any run of the circle starts. The enabled
 * policy elements of a circle form its policy set (allow unless forbidden: Cairn adds a permit of
 * everything). A forbid that applies denies (403 POLICY_DENIED, naming it and its @reason); a
 * permit may carry an RFC 6902 patch of the run's input (`patches`, by the policy's @id), applied
 * before the run is created. Policies are validated at definition time against a Cedar schema
 * generated from the element types (GET …/ops/schema_cedar shows it).
 */
import { z } from 'zod';
import * as store from '../../store/policies.js';
import { defineOp, defineType, type OpContext } from '../types.js';
import { cedarSchema, checkPolicies } from './cedar.js';

export const policySpec = z
  .object({
    cedar: z
      .string()
      .min(1)
      .max(256 * 1024)
      .describe('Cedar policies (namespace Cairn), each with an @id("…") and optionally an @reason("…")'),
    patches: z
      .record(z.string(), z.unknown())
      .optional()
      .describe('RFC 6902 JSON Patch of the run input, by the @id of a permit policy that carries it'),
    enabled: z.boolean().default(true).describe("Disabled: not part of the circle's policy set"),
  })
  .strict();
export type PolicySpec = z.output<typeof policySpec>;

const schemaOp = defineOp({
  name: 'schema_cedar',
  method: 'GET',
  path: 'schema_cedar',
  auth: 'read',
  summary: 'The Cedar schema policies are validated against (generated from the element types)',
  input: z.object({}).strict(),
  handler: async (ctx: OpContext) => ({ schema: cedarSchema(ctx.types.list()) }),
});

export const policyType = defineType({
  type: 'policy',
  category: 'flows',
  writeAuth: 'admin',
  title: 'Policy (Cedar)',
  description:
    'Cedar policies evaluated before every run of the circle starts (invoke, trigger, batch, schedule, webhook, upstream, rerun, replay, retry-failed): allow, deny with a reason, or allow with a JSON Patch of the input. Fail closed: an evaluation error denies.',
  spec: policySpec,
  operations: [schemaOp],
  errors: [
    {
      code: 'INVALID_POLICY',
      class: 'validation',
      retryable: false,
      description: "The Cedar text does not parse or does not validate against Cairn's schema.",
      suggestion:
        'Read details.diagnostics; GET …/ops/schema_cedar shows the entity types, actions and context.',
    },
    {
      code: 'INVALID_PATCH',
      class: 'validation',
      retryable: false,
      description: 'A patch is not RFC 6902, or names no permit policy of the text.',
      suggestion: 'Key patches by the @id of a permit policy; each is a list of {op, path, value}.',
    },
    {
      code: 'POLICY_DENIED',
      class: 'permission',
      retryable: false,
      description: 'A policy of the circle forbids this run.',
      suggestion: 'Read the deciding policies and their reasons; change the request or the policy.',
    },
    {
      code: 'POLICY_ERROR',
      class: 'permission',
      retryable: false,
      description:
        'The policy set could not be evaluated (an error, or a patch that does not apply): Cairn fails closed.',
      suggestion: 'Fix the policy the details name (or its patch), then try again.',
    },
  ],
  rules: [],
  validateInCircle: async (_db, _circle, spec: PolicySpec, types) => {
    checkPolicies(spec.cedar, spec.patches, cedarSchema(types.list()));
  },
  afterSave: async (tx, circle, element) => {
    const spec = policySpec.parse(element.spec);
    await store.upsertPolicy(tx, {
      elementId: element.id,
      circleId: circle.id,
      slug: element.slug,
      version: element.version,
      cedar: spec.cedar,
      patches: spec.patches ?? {},
      enabled: spec.enabled,
    });
  },
  executors: {},
});

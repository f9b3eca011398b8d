/**
 * Triggering a workflow (R-WORKFLOW): the definition is resolved (by name:
 * the workflow as it is now and the current version of every step's element;
 * by hash: exactly what that hash pinned), content-addressed and kept; the
 * parameters are validated against the workflow's JSON Schema; the estimate of
 * its steps is reserved (402 when the wallet cannot cover it); and the run is
 * queued with one pending task per step. Nothing is written when any of that fails.
 */
import { newTraceId } from '../telemetry/tracing.js';
import { CairnError, errors, sourceGone, thrown } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { schemaIssues, validatorOf } from '../core/json-schema.js';
import { ENGINE_VERSION } from '../core/version.js';
import type { Db } from '../db/types.js';
import { typeLookup } from '../elements/registry.js';
import { estimateOf, resolveDefinition, workflowHash } from '../elements/workflow/definition.js';
import type { WorkflowTriggered, WorkflowTriggerRequest } from '../elements/types.js';
import { compilePlan } from '../elements/workflow/plan.js';
import { workflowSpec } from '../elements/workflow/spec.js';
import { reservationRefused } from '../store/ledger.js';
import { findByIdempotencyKey } from '../store/runs.js';
import { fileRefsIn, PgFileStore, SHA256_RE } from '../store/files.js';
import {
  getDefinition,
  insertWorkflowRun,
  saveDefinition,
  type WorkflowDefinition,
} from '../store/workflow.js';
import { elementDisabled, snapshotElement } from './submit.js';
import { decide } from './policy.js';

export type { WorkflowTriggered, WorkflowTriggerRequest };

export async function triggerWorkflow(db: Db, req: WorkflowTriggerRequest): Promise<WorkflowTriggered> {
  const { circle } = req;
  let def: WorkflowDefinition;
  let hash: string;
  if (req.definitionHash) {
    const pinned = await getDefinition(db, circle.id, req.definitionHash);
    if (!pinned || (req.element && pinned.workflow.id !== req.element.id))
      throw errors.notFound(
        'WORKFLOW_DEFINITION_NOT_FOUND',
        `No definition ${req.definitionHash} of ${req.element ? `workflow "${req.element.slug}"` : 'a workflow'} in circle "${circle.slug}".`,
        'A definition hash is recorded on every workflow run (definition_hash); GET …/ops/definition shows the current one.',
      );
    def = pinned;
    hash = req.definitionHash;
  } else if (req.oneStep) {
    // One element alone (an approval invoked by itself): a workflow of one step, named `approval`.
    const el = req.element!;
    if (el.state === 'disabled') throw elementDisabled(el);
    def = await resolveDefinition(
      db,
      circle.id,
      {
        ...snapshotElement(el),
        spec: {
          steps: [{ name: 'approval', element: el.slug }],
          outputs: { approval: '${{ steps.approval.output }}' },
        },
      },
      typeLookup,
    );
    hash = workflowHash(def);
  } else {
    const el = req.element!;
    if (el.state === 'disabled')
      throw errors.conflict(
        'ELEMENT_DISABLED',
        `Workflow "${el.slug}" is disabled.`,
        'Enable it, then trigger again.',
      );
    def = await resolveDefinition(db, circle.id, snapshotElement(el), typeLookup);
    hash = workflowHash(def);
  }
  const spec = workflowSpec.parse(def.workflow.spec);
  const plan = compilePlan(spec);
  const wfType = typeLookup.get(def.workflow.element_type);
  const estimate = estimateOf(def);
  // The policy decides on what the run will record as its input, {parameters}; a patch changes them
  // before they are validated.
  const pol = await decide(db, {
    circle,
    element: { ...def.workflow, category: wfType.category },
    op: { name: req.oneStep ? 'invoke' : 'trigger', price: estimate, startsRun: true },
    action: req.action ?? 'run',
    trigger: req.trigger,
    mode: 'live',
    input: { parameters: req.parameters },
    estimatedCost: estimate,
    context: req.policyContext,
  });
  const parameters = (pol.input as { parameters: Record<string, unknown> }).parameters ?? {};
  // Every step is asked too, as the run of its element it will start (by the same principal, with
  // the workflow's parameters as what is known of its input): a forbid on a step's element refuses
  // the whole workflow before anything starts. (A step's decision patches nothing.)
  if (pol.record)
    for (const [name, step] of Object.entries(def.steps)) {
      const type = typeLookup.get(step.element.element_type);
      const op = typeLookup.operationsOf(type).find((o) => o.name === step.op);
      await decide(db, {
        circle,
        element: { ...step.element, category: type.category },
        op: op ?? { name: step.op, price: step.price },
        action: req.action ?? 'run',
        trigger: req.trigger,
        mode: 'live',
        input: { parameters, step: name },
        estimatedCost: step.price,
        context: req.policyContext,
      });
    }
  const validate = validatorOf(spec.parameters);
  if (!validate(parameters))
    throw new CairnError({
      code: 'WORKFLOW_PARAMETERS_INVALID',
      class: 'validation',
      message: `The parameters do not match workflow "${def.workflow.slug}"'s schema: ${schemaIssues(
        validate.errors,
      )
        .map((i) => `${i.path} ${i.message}`)
        .join('; ')}.`,
      details: schemaIssues(validate.errors),
      suggestion: `GET /api/${circle.slug}/${def.workflow.slug}/ops/get shows spec.parameters, the schema they must match.`,
    });
  // File references in the parameters must name files of this circle (never another's).
  const refs = fileRefsIn(parameters);
  const malformed = refs.filter((r) => !SHA256_RE.test(r));
  const missing = malformed.length > 0 ? malformed : await new PgFileStore(db).missing(circle.id, refs);
  if (missing.length > 0)
    throw new CairnError({
      code: 'FILE_NOT_FOUND',
      class: 'validation',
      message: `The parameters name ${missing.length === 1 ? 'a file' : 'files'} this circle does not have: ${missing
        .slice(0, 5)
        .map((m) => (SHA256_RE.test(m) ? `sha256:${m}` : JSON.stringify(m)))
        .join(', ')}.`,
      details: { missing },
      suggestion: `Upload it first (POST /api/${circle.slug}/files answers {"$file": "sha256:<hex>"}), then trigger with that reference.`,
    });
  if (req.idempotencyKey) {
    const prior = await findByIdempotencyKey(db, circle.id, req.idempotencyKey);
    if (prior)
      return {
        run: prior,
        created: false,
        definition_hash: prior.definition_hash ?? hash,
        estimated_credits: 0,
      };
  }
  if (!req.definitionHash) await saveDefinition(db, circle.id, hash, def);
  // A budget (the trigger's, else the workflow's): stop never reserves, so never spends, past it.
  const budget = req.budget ?? spec.budget?.credits ?? null;
  const budgetPolicy = req.budgetPolicy ?? spec.budget?.on_exceeded ?? 'stop';
  const reserve = budget !== null && budgetPolicy === 'stop' ? Math.min(estimate, budget) : estimate;
  const reusedSteps = new Set((req.reuse ?? []).map((t) => t.key.replace(/\[\d+\]$/, '')));
  const id = newId();
  try {
    const run = await insertWorkflowRun(db, {
      id,
      circleId: circle.id,
      element: {
        id: def.workflow.id,
        slug: def.workflow.slug,
        type: def.workflow.element_type,
        version: def.workflow.version,
      },
      definitionHash: hash,
      trigger: req.trigger,
      input: { parameters },
      rerunOf: req.rerunOf ?? null,
      replayOf: req.replayOf ?? null,
      engineVersion: ENGINE_VERSION,
      reserve,
      budget,
      budgetPolicy,
      concurrency: spec.concurrency,
      snapshot: {
        workflow_definition: hash,
        workflow: { id: def.workflow.id, slug: def.workflow.slug, version: def.workflow.version },
        engine_version: ENGINE_VERSION,
        ...pol.snapshot,
        ...req.snapshotExtra,
      },
      policy: pol.record,
      traceId: newTraceId(req.trigger),
      idempotencyKey: req.idempotencyKey ?? null,
      // A replay from a task: the tasks before it come done, as the original run recorded them.
      tasks: [
        ...plan.steps
          .filter((p) => !reusedSteps.has(p.step.name))
          .map((p) => ({ id: newId(), key: p.step.name, ord: p.index * TASK_ORD_STRIDE })),
        ...(req.reuse ?? []).map((t) => ({ ...t, id: newId() })),
      ],
    });
    if (!run) throw await reservationRefused(db, circle, reserve);
    return { run, created: true, definition_hash: hash, estimated_credits: estimate };
  } catch (caught) {
    const e = thrown(caught);
    if (e?.code === '23505' && req.idempotencyKey) {
      const prior = await findByIdempotencyKey(db, circle.id, req.idempotencyKey);
      if (prior) return { run: prior, created: false, definition_hash: hash, estimated_credits: estimate };
    }
    if (e?.code === '23503' && /^runs_(rerun_of|replay_of|parent|root)_fk$/.test(String(e.constraint ?? '')))
      throw sourceGone();
    throw caught;
  }
}

/** A step's task is at `index * stride`; a for_each step's tasks follow it (name[i] at +i+1). */
export const TASK_ORD_STRIDE = 100_000;

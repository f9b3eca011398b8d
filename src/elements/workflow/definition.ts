/**
 * A workflow's definition as a run pins it: the workflow's spec and, for
 * every step, the exact element version it resolves to, content-addressed
 * by its definition hash (a trigger by hash runs exactly that).
 */
import { CairnError } from '../../core/errors.js';
import { canonicalJson, sha256Hex } from '../../core/hash.js';
import type { Queryable } from '../../db/types.js';
import { getElement } from '../../store/elements.js';
import type { PinnedStep, WorkflowDefinition } from '../../store/workflow.js';
import { retryOnLoss } from '../pinning.js';
import { pinElement } from '../attachments.js';
import type { PinnedElement, TypeLookup } from '../types.js';
import { workflowSpec, type WorkflowSpec } from './spec.js';

/** The definition hash: sha256 of the RFC 8785 JSON of the spec plus what every step resolved to. */
export function workflowHash(def: WorkflowDefinition): string {
  const steps: Record<string, Record<string, unknown>> = {};
  for (const [name, s] of Object.entries(def.steps)) {
    const el = s.element as PinnedElement;
    steps[name] = {
      id: el.id,
      version: el.version,
      definition_hash: el.definition_hash,
      // What it attaches and uses is part of what a hash pins (absent: the hash of before).
      ...(el.attachments ? { attachments: el.attachments } : {}),
      ...(el.uses ? { uses: el.uses } : {}),
    };
  }
  return sha256Hex(canonicalJson({ spec: def.workflow.spec, steps }));
}

function stepUnavailable(step: string, message: string, suggestion: string): CairnError {
  return new CairnError({
    code: 'WORKFLOW_STEP_UNAVAILABLE',
    class: 'conflict',
    message: `Step "${step}": ${message}`,
    suggestion,
    details: { step },
  });
}

/** The workflow as it is now: the current version of every step's element, pinned. */
export async function resolveDefinition(
  q: Queryable,
  circleId: string,
  wf: WorkflowDefinition['workflow'],
  types: TypeLookup,
): Promise<WorkflowDefinition> {
  const spec = workflowSpec.parse(wf.spec);
  const steps: Record<string, PinnedStep> = {};
  for (const s of spec.steps) {
    const el = await getElement(q, circleId, s.element);
    if (!el)
      throw stepUnavailable(
        s.name,
        `element "${s.element}" no longer exists in this circle.`,
        'Recreate it, or update the workflow to name another element; a trigger by hash runs the pinned versions.',
      );
    if (el.state === 'disabled')
      throw stepUnavailable(s.name, `element "${s.element}" is disabled.`, 'Enable it, then trigger again.');
    const type = types.get(el.element_type);
    const op = types.operationsOf(type).find((o) => o.name === s.op);
    if (!op || !(op.createsRun || type.approval))
      throw stepUnavailable(
        s.name,
        `element "${s.element}" (${el.element_type}) has no run-creating operation "${s.op}".`,
        'Fix the step, or the element.',
      );
    const retry = retryOnLoss(op, el);
    const pinned = await pinElement(q, el, types);
    steps[s.name] = {
      element: pinned,
      op: op.name,
      price: type.priceOf?.(op.name, pinned.spec, undefined, pinned.uses ?? {}) ?? op.price ?? 0,
      retry_on_loss: retry,
      max_attempts: retry ? (op.maxAttempts ?? 3) : 1,
      timeout_ms: s.timeout_ms ?? type.timeoutMs?.(el.spec) ?? 60_000,
    };
  }
  return { workflow: wf, steps };
}

/** What a run of this definition is estimated to cost: every step once (a listed for_each: per element). */
export function estimateOf(def: WorkflowDefinition): number {
  const spec = def.workflow.spec as unknown as WorkflowSpec;
  let total = 0;
  for (const s of spec.steps) {
    const price = def.steps[s.name]?.price ?? 0;
    total += price * (Array.isArray(s.for_each) ? s.for_each.length : 1);
  }
  return total;
}

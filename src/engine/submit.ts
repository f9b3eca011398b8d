import { newTraceId } from '../telemetry/tracing.js';
import { errors, CairnError, sourceGone, thrown } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { ENGINE_VERSION } from '../core/version.js';
import { parseInput } from '../core/zod.js';
import type { Db } from '../db/types.js';
import type { CircleRow } from '../store/circles.js';
import type { ElementRow } from '../store/elements.js';
import { insertDryRun, insertRun } from '../store/queue.js';
import { flagRun } from '../store/batch.js';
import { findByIdempotencyKey, type RunRow } from '../store/runs.js';
import { getWallet, reservationRefused } from '../store/ledger.js';
import type { ElementTypeDecl, OperationDecl, RunTrigger } from '../elements/types.js';
import { retryOnLoss, snapshotElement } from '../elements/pinning.js';
import { decide, type PolicyOutcome } from './policy.js';
import { pinElement } from '../elements/attachments.js';
import { typeLookup } from '../elements/registry.js';
import type { PinnedElement } from '../elements/types.js';

export { retryOnLoss, snapshotElement };

export interface SubmitRequest {
  circle: CircleRow;
  element: ElementRow;
  type: ElementTypeDecl;
  op: OperationDecl;
  input: unknown;
  trigger: RunTrigger;
  idempotencyKey?: string;
  parentRunId?: string | null;
  rootRunId?: string | null;
  rerunOf?: string | null;
  /** Insert the run already claimed by this worker, which executes it at once (a sync invoke). */
  claim?: { workerId: string; host: string; leaseMs: number };
  /** dry_run: validate, resolve and estimate; record the run; execute and charge nothing. */
  mode?: 'live' | 'dry_run';
  /** The policy action (default run; a replay asks `replay`) and what more its context holds. */
  action?: 'run' | 'replay' | 'retry';
  policyContext?: Record<string, unknown>;
  replayOf?: string | null;
  /** Skip looking the idempotency key up first (a repeat still meets its unique index and answers the first run). */
  fresh?: boolean;
  /** At most this many micro-credits: stop refuses a run whose price passes it, flag flags it. */
  budget?: number | null;
  budgetPolicy?: 'flag' | 'stop';
  /** The element as pinned already (a replay: the recorded snapshot's, its attachments' versions included). */
  pinned?: PinnedElement;
}

export interface Submitted {
  run: RunRow;
  /** False when an Idempotency-Key matched an earlier run. */
  created: boolean;
}

export function elementDisabled(el: ElementRow): CairnError {
  return errors.conflict(
    'ELEMENT_DISABLED',
    `Element "${el.slug}" is disabled${el.disabled_reason ? `: ${el.disabled_reason}` : ''}.`,
    'Enable it with POST …/ops/enable (admin), then invoke again.',
  );
}

/** The element as a run records it. */
export function elementRef(el: ElementRow) {
  return {
    id: el.id,
    slug: el.slug,
    type: el.element_type,
    version: el.version,
    definition_hash: el.definition_hash,
  };
}

/** The run's bill of materials: the exact element definition, op, engine and policies in effect. */
export function runSnapshot(
  el: PinnedElement,
  op: OperationDecl,
  retry: boolean,
  extra: Record<string, unknown>,
  policies: PolicyOutcome['snapshot'] = { policy_set_hash: null },
  price: number = op.price ?? 0,
): Record<string, unknown> {
  return {
    element: el,
    operation: { name: op.name, price, retry_on_loss: retry },
    engine_version: ENGINE_VERSION,
    ...policies,
    ...extra,
  };
}

/**
 * What one run of `op` reserves: its type's price for this spec and input (an LLM call's most it
 * can cost), else the op's fixed price.
 */
export function runPrice(
  type: ElementTypeDecl,
  op: OperationDecl,
  el: PinnedElement,
  input: unknown,
): number {
  return type.priceOf?.(op.name, el.spec, input, el.uses ?? {}) ?? op.price ?? 0;
}

/**
 * Turns a validated request into a durable queued run (run + item + audit
 * event in one statement). Nothing is written when validation fails.
 */
export async function submitRun(
  db: Db,
  req: SubmitRequest,
  snapshotExtra: Record<string, unknown>,
): Promise<Submitted> {
  const { element: el, op, type } = req;
  if (el.state === 'disabled') throw elementDisabled(el);
  let input = parseInput(
    op.input,
    req.input,
    `The input does not match ${type.type}.${op.name}`,
    `GET /api/${req.circle.slug}/${el.slug}/ops/schema shows the input schema.`,
  );
  if (req.idempotencyKey && !req.fresh) {
    const prior = await findByIdempotencyKey(db, req.circle.id, req.idempotencyKey);
    if (prior) return { run: prior, created: false };
  }
  type.checkInput?.(op.name, el.spec, input);
  const pinned = req.pinned ?? (await pinElement(db, el, typeLookup));
  let price = runPrice(type, op, pinned, input);
  const pol = await decide(db, {
    circle: req.circle,
    element: el,
    op,
    action: req.action ?? 'run',
    trigger: req.trigger,
    mode: req.mode ?? 'live',
    input,
    estimatedCost: price,
    context: req.policyContext,
  });
  if (pol.input !== input) {
    input = parseInput(
      op.input,
      pol.input,
      `The input a policy patched does not match ${type.type}.${op.name}`,
      `Fix the patch of the policy ${pol.record?.deciding.map((d) => d.id).join(', ')} so it keeps the input valid.`,
    );
    type.checkInput?.(op.name, el.spec, input);
    price = runPrice(type, op, pinned, input);
  }
  const retry = retryOnLoss(op, el);
  const id = newId();
  const budget = req.budget ?? null;
  const overBudget = budget !== null && price > budget;
  if (overBudget && (req.budgetPolicy ?? 'stop') === 'stop')
    throw new CairnError({
      code: 'BUDGET_EXCEEDED',
      class: 'payment',
      message: `${type.type}.${op.name} costs up to ${price} micro-credits; the run's budget is ${budget} (on_exceeded: stop), so it did not start.`,
      details: { budget, price },
      suggestion: 'Raise the budget, or send on_budget_exceeded=flag to run it and flag it.',
    });
  if (req.mode === 'dry_run') {
    const wallet = await getWallet(db, req.circle.id);
    const estimate = price;
    const run = await insertDryRun(db, {
      id,
      itemId: newId(),
      circleId: req.circle.id,
      element: elementRef(el),
      operation: op.name,
      trigger: req.trigger,
      input,
      output: {
        dry_run: true,
        input_valid: true,
        definition: elementRef(el),
        estimated_credits: estimate,
        wallet_available: wallet.available,
        covered: estimate <= wallet.available,
      },
      engineVersion: ENGINE_VERSION,
      snapshot: runSnapshot(pinned, op, retry, snapshotExtra, pol.snapshot, price),
      policy: pol.record,
      traceId: newTraceId(req.trigger),
      idempotencyKey: req.idempotencyKey ?? null,
      timeoutMs: type.timeoutMs?.(el.spec) ?? 60_000,
    });
    return { run, created: true };
  }
  try {
    const run = await insertRun(db, {
      id,
      itemId: newId(),
      circleId: req.circle.id,
      kind: 'invoke',
      element: elementRef(el),
      operation: op.name,
      mode: 'live',
      trigger: req.trigger,
      input,
      parentRunId: req.parentRunId ?? null,
      rootRunId: req.rootRunId ?? null,
      rerunOf: req.rerunOf ?? null,
      replayOf: req.replayOf ?? null,
      maxAttempts: retry ? (op.maxAttempts ?? 3) : 1,
      retryableOnLoss: retry,
      engineVersion: ENGINE_VERSION,
      creditsReserved: price,
      budget,
      snapshot: runSnapshot(pinned, op, retry, snapshotExtra, pol.snapshot, price),
      policy: pol.record,
      traceId: newTraceId(req.trigger),
      idempotencyKey: req.idempotencyKey ?? null,
      timeoutMs: type.timeoutMs?.(el.spec) ?? 60_000,
      claim: req.claim ?? null,
    });
    if (!run) throw await reservationRefused(db, req.circle, price);
    if (overBudget)
      await flagRun(db, run.id, 'budget_exceeded', req.trigger.actor, {
        budget,
        committed: price,
        policy: 'flag',
      });
    return { run: overBudget ? { ...run, flags: [...run.flags, 'budget_exceeded'] } : run, created: true };
  } catch (caught) {
    const e = thrown(caught);
    // Two requests with the same key raced: the loser answers with the winner's run.
    if (e?.code === '23505' && req.idempotencyKey) {
      const prior = await findByIdempotencyKey(db, req.circle.id, req.idempotencyKey);
      if (prior) return { run: prior, created: false };
    }
    // The run it reruns, replays or descends from was deleted meanwhile (retention): typed, not a 500.
    if (e?.code === '23503' && /^runs_(rerun_of|replay_of|parent|root)_fk$/.test(String(e.constraint ?? '')))
      throw sourceGone();
    throw e;
  }
}

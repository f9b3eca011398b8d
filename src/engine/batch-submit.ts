import { newTraceId } from '../telemetry/tracing.js';
import { type ErrorBody, sourceGone, thrown } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { ENGINE_VERSION } from '../core/version.js';
import { describeIssues } from '../core/zod.js';
import type { Db } from '../db/types.js';
import type { BatchRequest, BatchSubmitted, OperationDecl } from '../elements/types.js';
import { insertBatchRun, type NewBatchItem } from '../store/batch.js';
import { getWallet, reservationRefused } from '../store/ledger.js';
import { findByIdempotencyKey, type RunRow } from '../store/runs.js';
import { applyPatch } from '../core/json-patch.js';
import { decide } from './policy.js';
import { elementDisabled, elementRef, retryOnLoss, runPrice, runSnapshot } from './submit.js';
import { pinElement } from '../elements/attachments.js';
import { typeLookup } from '../elements/registry.js';

export type { BatchRequest, BatchSubmitted, BatchUnit, RunMode } from '../elements/types.js';

function invalidItem(message: string): ErrorBody {
  return {
    code: 'INVALID_INPUT',
    class: 'validation',
    message,
    retryable: false,
    _suggestion: 'Fix the row (or the column mapping), then retry-failed the run.',
  };
}

/**
 * Creates a batch run: one item per unit, each input validated against the
 * op's schema (a bad one fails its own item, the others go on), the estimate
 * reserved on the wallet (402 when it cannot be covered). A dry run validates
 * and estimates only: it is recorded, finished at once, and charges nothing.
 */
export async function submitBatch(db: Db, req: BatchRequest): Promise<BatchSubmitted> {
  const { target: el, op, type } = req;
  if (el.state === 'disabled') throw elementDisabled(el);
  if (req.idempotencyKey) {
    const prior = await findByIdempotencyKey(db, req.circle.id, req.idempotencyKey);
    if (prior) return { run: prior, created: false, ...counts(prior, op) };
  }
  const units = req.mode === 'smoke_test' ? req.units.slice(0, req.sample ?? 5) : req.units;
  // Every item reserves what the dearest one may cost (a fixed price, or an LLM call's most).
  const pinned = await pinElement(db, el, typeLookup);
  const price = units.reduce(
    (m, u) => (u.problem ? m : Math.max(m, runPrice(type, op, pinned, u.input))),
    op.price ?? 0,
  );
  // One decision for the run (its context holds what was asked and the estimate of every unit);
  // a permit's patch applies to each item's input, and a patched input that no longer validates
  // fails that item alone.
  const pol = await decide(db, {
    circle: req.circle,
    element: el,
    op,
    action: req.action ?? 'run',
    trigger: req.trigger,
    mode: req.mode,
    input: req.input,
    estimatedCost: units.length * price,
    context: req.policyContext,
  });
  const patch = pol.record?.patch ?? [];
  const items: NewBatchItem[] = units.map((u, ord) => {
    const item = { id: newId(), key: u.key, ord, inputs: u.input ?? null };
    const fail = (message: string): NewBatchItem => ({
      ...item,
      status: 'failed',
      error: invalidItem(message),
    });
    if (u.problem) return fail(u.problem);
    let unitInput = u.input;
    if (patch.length > 0) {
      try {
        unitInput = applyPatch(u.input, patch);
      } catch (e) {
        return fail(`A policy's patch does not apply to this item's input: ${(e as Error).message}`);
      }
    }
    const parsed = op.input.safeParse(unitInput);
    if (!parsed.success)
      return fail(`The input does not match ${type.type}.${op.name}: ${describeIssues(parsed.error)}`);
    try {
      type.checkInput?.(op.name, el.spec, parsed.data);
    } catch (e) {
      return fail((e as Error).message);
    }
    return {
      ...item,
      inputs: parsed.data,
      status: req.mode === 'dry_run' ? 'skipped' : 'pending',
      error: null,
    };
  });
  const invalid = items.filter((i) => i.status === 'failed').length;
  const valid = items.length - invalid;
  const estimate = valid * price;
  const dry = req.mode === 'dry_run';
  const reserve = dry
    ? 0
    : req.budgetPolicy === 'stop' && req.budget !== null
      ? Math.min(estimate, req.budget)
      : estimate;
  const wallet = dry ? await getWallet(db, req.circle.id) : undefined;
  const retry = retryOnLoss(op, el);
  const id = newId();
  try {
    const run = await insertBatchRun(db, {
      id,
      circleId: req.circle.id,
      element: elementRef(el),
      operation: op.name,
      mode: req.mode,
      status: dry ? (invalid === 0 ? 'succeeded' : valid === 0 ? 'failed' : 'completed') : 'queued',
      trigger: req.trigger,
      input: req.input,
      output: dry
        ? {
            dry_run: true,
            items: items.length,
            valid,
            invalid,
            estimated_credits: estimate,
            wallet_available: wallet!.available,
            covered: estimate <= wallet!.available,
          }
        : undefined,
      rerunOf: req.rerunOf ?? null,
      replayOf: req.replayOf ?? null,
      retryableOnLoss: retry,
      engineVersion: ENGINE_VERSION,
      reserve,
      budget: req.budget,
      budgetPolicy: req.budgetPolicy,
      concurrency: req.concurrency,
      itemMaxAttempts: req.itemMaxAttempts,
      snapshot: runSnapshot(
        pinned,
        op,
        retry,
        { batch: req.batch, ...req.snapshotExtra },
        pol.snapshot,
        price,
      ),
      policy: pol.record,
      traceId: newTraceId(req.trigger),
      idempotencyKey: req.idempotencyKey ?? null,
      timeoutMs: type.timeoutMs?.(el.spec) ?? 60_000,
      items,
    });
    if (!run) throw await reservationRefused(db, req.circle, reserve);
    return { run, created: true, valid, invalid, estimated_credits: estimate };
  } catch (caught) {
    const e = thrown(caught);
    if (e?.code === '23505' && req.idempotencyKey) {
      const prior = await findByIdempotencyKey(db, req.circle.id, req.idempotencyKey);
      if (prior) return { run: prior, created: false, ...counts(prior, op) };
    }
    // The run it reruns, replays or descends from was deleted meanwhile (retention): typed, not a 500.
    if (e?.code === '23503' && /^runs_(rerun_of|replay_of|parent|root)_fk$/.test(String(e.constraint ?? '')))
      throw sourceGone();
    throw e;
  }
}

function counts(run: RunRow, op: OperationDecl) {
  const valid = run.items_total - run.items_failed;
  return { valid, invalid: run.items_failed, estimated_credits: valid * (op.price ?? 0) };
}

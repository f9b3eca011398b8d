/**
 * The policy hook (R-POLICY): before any run starts, the circle's policy set decides whether this
 * principal may take this action on this element. Allow; deny (403 POLICY_DENIED naming the
 * deciding policies and their reasons); or allow with a patch of the input. Fail closed: an
 * evaluation error, a patch that does not apply or a broken set is 403 POLICY_ERROR, never a run.
 * The decision is recorded on the run (`policy`) and in its first audit event; the set itself
 * (hash and texts) goes into the run's snapshot.
 */
import { CairnError } from '../core/errors.js';
import { canonicalJson, sha256Hex } from '../core/hash.js';
import { applyPatch, checkPatch, type JsonPatchOp } from '../core/json-patch.js';
import type { Queryable } from '../db/types.js';
import { authorize, policySetHash, type AuthzRequest, type PolicyInput } from '../elements/policy/cedar.js';
import { sideEffects } from '../elements/pinning.js';
import type { OperationDecl, RunTrigger } from '../elements/types.js';
import type { CircleRow } from '../store/circles.js';
import type { ElementRow } from '../store/elements.js';
import { getPolicySet, policySet, policyVersion, savePolicySet } from '../store/policies.js';
import { getCircleById } from '../store/circles.js';
import { getElementById } from '../store/elements.js';
import { loadSnapshot, type RunRow } from '../store/runs.js';
import { getTypeOrUndefined, operationsOf } from '../elements/registry.js';

export interface PolicyAsk {
  circle: CircleRow;
  element: Pick<ElementRow, 'element_type' | 'slug' | 'category' | 'spec'>;
  op: Pick<OperationDecl, 'name' | 'price' | 'sideEffects' | 'createsRun' | 'startsRun'>;
  action: AuthzRequest['action'];
  trigger: RunTrigger;
  mode: string;
  input: unknown;
  estimatedCost: number;
  /** More context (a replay: the original run's status, age and side effects). */
  context?: Record<string, unknown>;
}

/** What a run records of its policy decision. */
export interface PolicyRecord {
  decision: 'allow';
  action: string;
  policy_set_hash: string;
  deciding: { id: string; effect: string; reason?: string; actions?: string[] }[];
  explicit_permit: boolean;
  patch: JsonPatchOp[];
  input_sha256_before: string;
  input_sha256_after: string;
}

export interface PolicyOutcome {
  /** The input the run is created with (patched when a permit said so). */
  input: unknown;
  /** null when the circle has no policy: nothing was evaluated. */
  record: PolicyRecord | null;
  /** What the run's snapshot pins: the set's hash and its policy elements' versions (texts by hash). */
  snapshot: { policy_set_hash: string | null };
}

const inputHash = (v: unknown) => sha256Hex(canonicalJson(v ?? null));

function policyError(message: string, details: unknown): CairnError {
  return new CairnError({
    code: 'POLICY_ERROR',
    class: 'permission',
    status: 403,
    message: `${message}; Cairn fails closed, so nothing ran.`,
    details,
    suggestion:
      'Fix the policy (or its patch) the details name, then try again; GET …/ops/get of a policy element shows its text.',
  });
}

/** A circle's compiled policy set, as of a version of it. */
interface CachedSet {
  version: number;
  set: PolicyInput[];
  hash: string;
}

/** The sets this process compiled, by circle (bounded; checked against the version before each use). */
const CACHE_SIZE = 1_000;
const cache = new Map<string, CachedSet>();

/**
 * The circle's policy set now. One primary-key read (its version) per run; the set itself is read,
 * checked, hashed and stored (content-addressed) only when it changed since this process last
 * compiled it. Reading the version first makes a cached set at most as old as that read.
 */
async function currentSet(db: Queryable, circleId: string): Promise<CachedSet | null> {
  const version = await policyVersion(db, circleId);
  if (version === null) return null;
  const hit = cache.get(circleId);
  if (hit && hit.version === version) {
    cache.delete(circleId);
    cache.set(circleId, hit);
    return hit;
  }
  const rows = await policySet(db, circleId);
  const set: PolicyInput[] = rows.map((r) => ({
    element: r.slug,
    text: r.cedar,
    patches: Object.fromEntries(Object.entries(r.patches ?? {}).map(([k, v]) => [k, checkPatch(v)])),
  }));
  const hash = policySetHash(set);
  if (rows.length > 0)
    await savePolicySet(db, hash, circleId, {
      policies: rows.map((r) => ({
        element: r.slug,
        version: r.version,
        cedar: r.cedar,
        patches: r.patches,
      })),
    });
  const entry = { version, set, hash };
  cache.set(circleId, entry);
  if (cache.size > CACHE_SIZE) cache.delete(cache.keys().next().value!);
  return entry;
}

/** Evaluates the circle's policy set for one run about to start; throws the 403 of a deny. */
export async function decide(db: Queryable, ask: PolicyAsk): Promise<PolicyOutcome> {
  let current: CachedSet | null;
  try {
    current = await currentSet(db, ask.circle.id);
  } catch (e) {
    throw policyError('The policy set could not be read', { cause: (e as Error).message });
  }
  if (!current || current.set.length === 0)
    return { input: ask.input, record: null, snapshot: { policy_set_hash: null } };
  const set = current.set;
  const t = ask.trigger;
  // A run a token asked for (api, manual, a rerun, a replay, a backfill) is decided as that token
  // with its role; one Cairn starts by itself (a schedule's clock, a webhook, an upstream) as its trigger.
  const role = typeof t.role === 'string' ? t.role : null;
  const res = authorize(
    set,
    {
      principal: role
        ? { kind: 'token', name: t.actor, role }
        : { kind: 'trigger', type: t.type, source: t.source ?? '' },
      action: ask.action,
      resource: {
        circle: ask.circle.slug,
        type: ask.element.element_type,
        slug: ask.element.slug,
        category: ask.element.category,
        price: ask.op.price ?? 0,
        side_effects: sideEffects(ask.op, ask.element),
      },
      context: {
        trigger: t.type,
        mode: ask.mode,
        operation: ask.op.name,
        estimated_cost: ask.estimatedCost,
        input: ask.input,
        ...ask.context,
      },
    },
    current.hash,
  );
  // The run's snapshot names the set by its hash: its policies (element, version, text, patches)
  // are stored once, in cairn.policy_sets, and served with the snapshot.
  const snapshot = { policy_set_hash: current.hash };
  const deciding = res.deciding.map((d) => ({
    id: d.id,
    effect: d.effect,
    ...(d.reason !== undefined ? { reason: d.reason } : {}),
    ...(d.actions ? { actions: d.actions } : {}),
  }));
  if (res.decision === 'error')
    throw policyError('The policy set could not be evaluated', {
      policy_set_hash: res.policy_set_hash,
      errors: res.errors,
      deciding,
    });
  if (res.decision === 'deny') {
    const reasons = deciding.filter((d) => d.effect === 'forbid');
    throw new CairnError({
      code: 'POLICY_DENIED',
      class: 'permission',
      status: 403,
      message:
        reasons.length > 0
          ? `Denied by ${reasons.map((d) => `${d.id}${d.reason ? ` (${d.reason})` : ''}`).join(', ')}.`
          : 'Denied: no policy permits this.',
      details: { action: ask.action, policy_set_hash: res.policy_set_hash, deciding },
      suggestion:
        'Change the request so the forbid no longer applies, or ask an admin to change the policy named in details.deciding.',
    });
  }
  let input = ask.input;
  if (res.patch.length > 0) {
    try {
      input = applyPatch(ask.input, res.patch);
    } catch (e) {
      throw policyError("A permit policy's patch does not apply to this input", {
        policy_set_hash: res.policy_set_hash,
        deciding,
        cause: (e as Error).message,
      });
    }
  }
  return {
    input,
    snapshot,
    record: {
      decision: 'allow',
      action: ask.action,
      policy_set_hash: res.policy_set_hash,
      deciding,
      explicit_permit: res.explicit_permit,
      patch: res.patch,
      input_sha256_before: inputHash(ask.input),
      input_sha256_after: inputHash(input),
    },
  };
}

/**
 * A decision about an existing run (retry-failed, replay): on its element as it is now, or as the
 * run's snapshot pinned it when the element is gone; its input as recorded.
 */
export async function decideOnRun(
  db: Queryable,
  run: RunRow,
  action: AuthzRequest['action'],
  trigger: RunTrigger,
  context: Record<string, unknown> = {},
): Promise<PolicyOutcome> {
  const circle = await getCircleById(db, run.circle_id);
  const snap = await loadSnapshot(db, run);
  const pinned = (snap.element ?? snap.workflow ?? {}) as {
    spec?: Record<string, unknown>;
  };
  const current = run.element_id ? await getElementById(db, run.element_id) : undefined;
  const elementType = run.element_type ?? 'unknown';
  const type = getTypeOrUndefined(elementType);
  const category = type?.category ?? 'actions';
  const op = type ? operationsOf(type).find((o) => o.name === run.operation) : undefined;
  return decide(db, {
    circle: circle!,
    element: {
      element_type: elementType,
      slug: run.element_slug ?? '',
      category,
      spec: current?.spec ?? pinned.spec ?? {},
    },
    op: op ?? { name: run.operation, price: 0 },
    action,
    trigger,
    mode: run.mode,
    input: run.input,
    estimatedCost: run.credits_reserved,
    context,
  });
}

/** The policy set a snapshot names, with its texts (GET /api/runs/{id}/snapshot). */
export async function pinnedPolicySet(db: Queryable, hash: string | null | undefined): Promise<unknown> {
  return hash ? ((await getPolicySet(db, hash)) ?? null) : null;
}

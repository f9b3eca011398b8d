/**
 * Cedar policies, evaluated before a run starts. A circle's policy elements
 * hold Cedar text (namespace `Cairn`); this module builds the schema they are
 * validated against, checks a policy element's text and patches at
 * definition time, and evaluates a circle's whole set for one request.
 *
 * The set is allow-unless-forbidden: Cairn adds `cairn/default`, a permit of
 * everything. Each policy is named `<element slug>/<@id>`. A permit may carry
 * an RFC 6902 patch (of the run's input, applied by the caller) that applies
 * when it is one of the deciding policies of an allow.
 *
 * Cedar forced one change to the design: its schema parser refuses records
 * with `additionalAttributes` ("experimental, the partial-validate feature is
 * not enabled"), so the context does not carry `input` as an open record but
 * `input_json` (the canonical JSON of the input, RFC 8785) and `input_keys`
 * (the input's top-level keys, when it is an object).
 */
import { Buffer } from 'node:buffer';
import * as cedar from '@cedar-policy/cedar-wasm/nodejs';
import type {
  CedarValueJson,
  Context,
  DetailedError,
  EntityJson,
  EntityUidJson,
  SchemaJson,
  TypeOfAttribute,
} from '@cedar-policy/cedar-wasm/nodejs';
import { CairnError } from '../../core/errors.js';
import { ROLES, type Role } from '../../core/status.js';
import { canonicalJson, sha256Hex } from '../../core/hash.js';
import { checkPatch, type JsonPatchOp } from '../../core/json-patch.js';

export const CEDAR_NAMESPACE = 'Cairn';
export const DEFAULT_POLICY_ID = 'cairn/default';
const DEFAULT_POLICY_TEXT = `@id("${DEFAULT_POLICY_ID}") permit(principal, action, resource);`;
const DEFAULT_ELEMENT = 'cairn';

export type CedarAction = 'run' | 'replay' | 'retry';
export const CEDAR_ACTIONS: readonly CedarAction[] = ['run', 'replay', 'retry'];

/** Context attributes that are Cedar Longs: non-integers are rounded (Math.round). */
const LONG_CONTEXT_KEYS = new Set(['estimated_cost', 'now', 'hour_utc', 'original_age_s']);

const CEDAR_IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;
const CEDAR_RESERVED = new Set(['true', 'false', 'if', 'then', 'else', 'in', 'is', 'like', 'has', '__cedar']);

// --- schema -------------------------------------------------------------------

/** The Cedar entity type of an element type: PascalCase of its name (`go-fn` → `GoFn`, `sql` → `Sql`). */
export function cedarEntityType(type: string): string {
  return type
    .split(/[^A-Za-z0-9]+/)
    .filter((w) => w !== '')
    .map((w) => w[0]!.toUpperCase() + w.slice(1))
    .join('');
}

const str = (): TypeOfAttribute<string> => ({ type: 'String' });
const long = (): TypeOfAttribute<string> => ({ type: 'Long' });
const bool = (): TypeOfAttribute<string> => ({ type: 'Boolean' });
const strSet = (): TypeOfAttribute<string> => ({ type: 'Set', element: { type: 'String' } });
const record = (attributes: Record<string, TypeOfAttribute<string>>): TypeOfAttribute<string> => ({
  type: 'Record',
  attributes,
});

function schemaInternal(message: string): CairnError {
  return new CairnError({
    code: 'POLICY_SCHEMA_INVALID',
    class: 'internal',
    message,
    suggestion:
      'This is a Cairn bug (element type names must map onto distinct Cedar identifiers); report it.',
  });
}

/**
 * The Cedar JSON schema (namespace `Cairn`) policies are validated against:
 * principals `Token` (in `Role`) and `Trigger`, one resource entity type per
 * element type (in `Circle`), and the actions `run`, `replay` and `retry`.
 */
export function cedarSchema(types: { type: string; category: string }[]): object {
  const entityTypes: SchemaJson<string>[string]['entityTypes'] = {
    Role: {},
    Token: { memberOfTypes: ['Role'], shape: record({ name: str(), role: str() }) },
    Trigger: { shape: record({ type: str(), source: str() }) },
    Circle: { shape: record({ slug: str() }) },
  };
  const resources: string[] = [];
  for (const t of types) {
    const name = cedarEntityType(t.type);
    if (!CEDAR_IDENT.test(name) || CEDAR_RESERVED.has(name)) {
      throw schemaInternal(`Element type "${t.type}" gives no valid Cedar entity type name ("${name}").`);
    }
    if (Object.hasOwn(entityTypes, name)) {
      throw schemaInternal(
        `Element type "${t.type}" maps onto the Cedar entity type "${name}", already taken.`,
      );
    }
    entityTypes[name] = {
      memberOfTypes: ['Circle'],
      shape: record({ slug: str(), type: str(), category: str(), price: long(), side_effects: bool() }),
    };
    resources.push(name);
  }
  const base = {
    trigger: str(),
    mode: str(),
    operation: str(),
    estimated_cost: long(),
    now: long(),
    hour_utc: long(),
    input_json: str(),
    input_keys: strSet(),
  };
  const appliesTo = (context: Record<string, TypeOfAttribute<string>>) => ({
    principalTypes: ['Token', 'Trigger'],
    resourceTypes: [...resources],
    context: record(context),
  });
  const schema: SchemaJson<string> = {
    [CEDAR_NAMESPACE]: {
      entityTypes,
      actions: {
        run: { appliesTo: appliesTo(base) },
        retry: { appliesTo: appliesTo(base) },
        replay: {
          appliesTo: appliesTo({
            ...base,
            original_status: str(),
            original_age_s: long(),
            side_effects: bool(),
            side_effect_tasks: strSet(),
          }),
        },
      },
    },
  };
  return schema;
}

// --- definition-time checks -----------------------------------------------------

/** One problem Cedar (or Cairn) found in a policy text; offsets are UTF-8 bytes, line and column count from 1. */
export interface PolicyDiagnostic {
  message: string;
  /** The policy's @id, when the problem is inside one policy that has one. */
  policy?: string;
  help?: string;
  label?: string;
  start?: number;
  end?: number;
  line?: number;
  column?: number;
  related?: string[];
}

function lineColumn(bytes: Buffer, offset: number): { line: number; column: number } {
  const before = bytes.subarray(0, Math.max(0, Math.min(offset, bytes.length))).toString('utf8');
  const lines = before.split('\n');
  return { line: lines.length, column: [...(lines[lines.length - 1] ?? '')].length + 1 };
}

function diagnostic(
  bytes: Buffer,
  e: DetailedError,
  policy?: string,
  rename?: (message: string) => string,
): PolicyDiagnostic {
  const r = rename ?? ((m: string) => m);
  const d: PolicyDiagnostic = { message: r(e.message) };
  if (policy !== undefined) d.policy = policy;
  if (e.help) d.help = r(e.help);
  const loc = e.sourceLocations?.[0];
  if (loc) {
    if (loc.label) d.label = loc.label;
    d.start = loc.start;
    d.end = loc.end;
    Object.assign(d, lineColumn(bytes, loc.start));
  }
  if (e.related && e.related.length > 0) d.related = e.related.map((x) => r(x.message));
  return d;
}

function invalidPolicy(message: string, diagnostics: PolicyDiagnostic[], suggestion?: string): CairnError {
  const first = diagnostics[0];
  const where = first?.line !== undefined ? ` (line ${first.line}, column ${first.column})` : '';
  return new CairnError({
    code: 'INVALID_POLICY',
    class: 'validation',
    message: first ? `${message}: ${first.message}${where}` : message,
    details: { diagnostics },
    suggestion:
      suggestion ??
      'Fix the problems listed in details.diagnostics. Policies use the namespace Cairn (principal Cairn::Token or Cairn::Trigger, actions Cairn::Action::"run", "replay" and "retry", resources by element type such as Cairn::GoFn) and each needs a unique @id("…").',
  });
}

/** Cedar numbers policies of a text policy0, policy1, … in source order. */
const cedarPolicyId = (i: number): string => `policy${i}`;

interface ParsedPolicy {
  /** Cedar's id for it in the text (policyN). */
  cedarId: string;
  text: string;
  id: string | undefined;
  effect: 'permit' | 'forbid';
  reason: string | undefined;
  /** The actions its scope names (`action == …`, `action in […]`); null: any action. */
  actions: string[] | null;
  /** Byte offset in the text, when found. */
  start: number | undefined;
}

class ParseFailure extends Error {
  constructor(readonly errors: DetailedError[]) {
    super(errors.map((e) => e.message).join('; '));
  }
}

/**
 * Splits a policy text into its static policies, in source order, with their
 * annotations. Throws ParseFailure with Cedar's errors; templates are refused.
 */
/** The action ids a policy's scope names (from Cedar's JSON form of it), or null for any action. */
function scopedActions(scope: unknown): string[] | null {
  const s = scope as { op?: string; entity?: { id?: string }; entities?: { id?: string }[] } | undefined;
  if (s?.op === '==' && s.entity?.id) return [s.entity.id];
  if (s?.op === 'in') {
    const list = s.entities ?? (s.entity ? [s.entity] : []);
    const ids = list.map((e) => e.id).filter((x): x is string => typeof x === 'string');
    return ids.length > 0 ? ids : null;
  }
  return null;
}

function parsePolicies(text: string): ParsedPolicy[] {
  const parts = cedar.policySetTextToParts(text);
  if (parts.type === 'failure') throw new ParseFailure(parts.errors);
  if (parts.policy_templates.length > 0) {
    throw new ParseFailure([
      {
        message: 'policy templates (with ?principal or ?resource slots) are not supported',
        help: 'Write static policies: name the principal or resource, or test it in a when clause.',
        code: null,
        url: null,
        severity: 'error',
      },
    ]);
  }
  // Cedar answers the parts sorted by their ids (policy0, policy1, policy10, …): put them back in source order.
  const n = parts.policies.length;
  const sortedIds = Array.from({ length: n }, (_, i) => cedarPolicyId(i)).sort();
  const bySourceOrder: string[] = new Array<string>(n);
  sortedIds.forEach((id, k) => {
    bySourceOrder[Number(id.slice('policy'.length))] = parts.policies[k] as string;
  });
  let cursor = 0;
  return bySourceOrder.map((part, i) => {
    const json = cedar.policyToJson(part);
    if (json.type === 'failure') throw new ParseFailure(json.errors);
    const at = text.indexOf(part, cursor);
    let start: number | undefined;
    if (at >= 0) {
      start = Buffer.byteLength(text.slice(0, at), 'utf8');
      cursor = at + part.length;
    }
    const annotations = json.json.annotations ?? {};
    return {
      cedarId: cedarPolicyId(i),
      text: part,
      id: annotations.id,
      effect: json.json.effect,
      reason: annotations.reason,
      actions: scopedActions(json.json.action),
      start,
    };
  });
}

export interface CheckedPolicies {
  /** The policies' @ids, in source order. */
  ids: string[];
  /** Cedar's validation warnings (e.g. a policy that can never apply); they do not refuse the text. */
  warnings: PolicyDiagnostic[];
}

/**
 * Checks a policy element's text (Cedar, strictly validated against `schema`)
 * and patches (by @id of a permit policy, each an RFC 6902 patch). Throws
 * INVALID_POLICY (details.diagnostics) or INVALID_PATCH.
 */
export function checkPolicies(
  text: string,
  patches: Record<string, unknown> | undefined,
  schema: object,
): CheckedPolicies {
  const bytes = Buffer.from(text, 'utf8');
  let policies: ParsedPolicy[];
  try {
    policies = parsePolicies(text);
  } catch (e) {
    if (e instanceof ParseFailure) {
      throw invalidPolicy(
        'The policy text does not parse',
        e.errors.map((x) => diagnostic(bytes, x)),
      );
    }
    throw e;
  }
  if (policies.length === 0) {
    throw invalidPolicy('The policy text holds no policy', [{ message: 'no policy found' }]);
  }

  const problems: PolicyDiagnostic[] = [];
  const at = (p: ParsedPolicy): Partial<PolicyDiagnostic> =>
    p.start === undefined ? {} : { start: p.start, ...lineColumn(bytes, p.start) };
  const seen = new Map<string, ParsedPolicy>();
  for (const [i, p] of policies.entries()) {
    if (p.id === undefined || p.id.trim() === '') {
      problems.push({
        message: `policy ${i + 1} (a ${p.effect}) has no @id("…") annotation`,
        help: 'Start each policy with a unique @id("…"), e.g. @id("no-night-runs").',
        ...at(p),
      });
    } else if (seen.has(p.id)) {
      problems.push({
        message: `@id("${p.id}") is used by more than one policy`,
        policy: p.id,
        help: 'Give each policy of the text its own @id.',
        ...at(p),
      });
    } else seen.set(p.id, p);
  }

  const byCedarId = new Map(policies.map((p) => [p.cedarId, p]));
  const rename = (m: string) =>
    m.replace(/`(policy\d+)`/g, (whole, cid: string) => {
      const id = byCedarId.get(cid)?.id;
      return id === undefined ? whole : `\`${id}\``;
    });
  const answer = cedar.validate({
    schema: schema as SchemaJson<string>,
    policies: { staticPolicies: text },
    validationSettings: { mode: 'strict' },
  });
  if (answer.type === 'failure') {
    // The text parsed above, so what fails here is the schema: Cairn's own.
    throw schemaInternal(
      `Cedar refused the policy schema: ${answer.errors.map((e) => e.message).join('; ')}`,
    );
  }
  for (const v of answer.validationErrors)
    problems.push(diagnostic(bytes, v.error, byCedarId.get(v.policyId)?.id, rename));
  if (problems.length > 0) throw invalidPolicy('The policy text is not valid', problems);
  const warnings = [
    ...answer.validationWarnings.map((v) =>
      diagnostic(bytes, v.error, byCedarId.get(v.policyId)?.id, rename),
    ),
    ...answer.otherWarnings.map((w) => diagnostic(bytes, w)),
  ];

  if (patches !== undefined) {
    if (typeof patches !== 'object' || patches === null || Array.isArray(patches)) {
      throw patchError("patches must be an object mapping a permit policy's @id to an RFC 6902 patch");
    }
    for (const [id, patch] of Object.entries(patches)) {
      const p = seen.get(id);
      if (p === undefined) {
        throw patchError(
          `patches names "${id}", which is not the @id of a policy of this text`,
          `Key patches by the @id of a permit policy: ${[...seen.keys()].map((k) => `"${k}"`).join(', ')}.`,
        );
      }
      if (p.effect !== 'permit') {
        throw patchError(
          `patches names "${id}", a forbid policy: only a permit may patch the input`,
          'Move the patch to a permit policy (a forbid stops the run, so there is nothing to patch).',
        );
      }
      try {
        checkPatch(patch);
      } catch (e) {
        if (e instanceof CairnError) {
          throw new CairnError({
            code: e.code,
            class: e.errorClass,
            message: `The patch of policy "${id}": ${e.message}`,
            details: { policy: id, ...(e.details as Record<string, unknown>) },
            suggestion: e.suggestion,
          });
        }
        throw e;
      }
    }
  }
  return { ids: policies.map((p) => p.id as string), warnings };
}

function patchError(message: string, suggestion?: string): CairnError {
  return new CairnError({
    code: 'INVALID_PATCH',
    class: 'validation',
    message,
    suggestion:
      suggestion ??
      'Send patches as {"<@id of a permit policy>": [{"op": "replace", "path": "/limit", "value": 10}]}.',
  });
}

// --- evaluation ---------------------------------------------------------------

export interface PolicyInput {
  /** The slug of the policy element. */
  element: string;
  text: string;
  /** By @id of a permit policy of `text`. */
  patches: Record<string, JsonPatchOp[]>;
}

export type AuthzPrincipal =
  { kind: 'token'; name: string; role: string } | { kind: 'trigger'; type: string; source: string };

export interface AuthzRequest {
  principal: AuthzPrincipal;
  action: CedarAction;
  resource: {
    circle: string;
    type: string;
    slug: string;
    category: string;
    price: number;
    side_effects: boolean;
  };
  /**
   * trigger, mode, operation, estimated_cost, now, hour_utc, input (and, for
   * replay, original_status, original_age_s, side_effects, side_effect_tasks).
   * `now` (epoch seconds) and `hour_utc` default to the clock's. `input`
   * becomes `input_json` and `input_keys`.
   */
  context: Record<string, unknown>;
}

export interface DecidingPolicy {
  /** `<element slug>/<@id>`, or `cairn/default`. */
  id: string;
  element: string;
  effect: 'permit' | 'forbid';
  /** The policy's @reason annotation. */
  reason?: string;
  /** The actions its scope names; absent: it applies to any action. */
  actions?: string[];
}

export interface AuthzResult {
  decision: 'allow' | 'deny' | 'error';
  deciding: DecidingPolicy[];
  /** The patches of the deciding permits (not cairn/default), concatenated in id order; empty unless allowed. */
  patch: JsonPatchOp[];
  /** A permit other than cairn/default decided the allow. */
  explicit_permit: boolean;
  errors: string[];
  policy_set_hash: string;
}

interface PolicyMeta {
  element: string;
  effect: 'permit' | 'forbid';
  reason?: string;
  actions?: string[];
  patch: JsonPatchOp[];
}

interface CompiledSet {
  /** The id of the preparsed policy set inside cedar-wasm. */
  slot: string;
  meta: Map<string, PolicyMeta>;
}

/** How many compiled sets stay preparsed (an LRU; evicted slots are reused, so Cedar's memory stays bounded). */
const CACHE_SIZE = 64;
const cache = new Map<string, CompiledSet>();
/** Slots not holding a cached set (freed when a preparse failed). */
const freeSlots: string[] = [];
let nextSlot = 0;

class EvalFailure extends Error {}

/** sha256 of the canonical JSON of the set (in element order) and the built-in policy. */
export function policySetHash(set: PolicyInput[]): string {
  const policies = [...set]
    .sort((a, b) => cmp(a.element, b.element) || cmp(a.text, b.text))
    .map((p) => ({ element: p.element, text: p.text, patches: p.patches }));
  return sha256Hex(canonicalJson({ builtin: DEFAULT_POLICY_TEXT, policies }));
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function compile(set: PolicyInput[], hash: string): CompiledSet {
  const hit = cache.get(hash);
  if (hit) {
    cache.delete(hash);
    cache.set(hash, hit);
    return hit;
  }
  const staticPolicies: Record<string, string> = { [DEFAULT_POLICY_ID]: DEFAULT_POLICY_TEXT };
  const meta = new Map<string, PolicyMeta>([
    [DEFAULT_POLICY_ID, { element: DEFAULT_ELEMENT, effect: 'permit', patch: [] }],
  ]);
  for (const input of set) {
    let parsed: ParsedPolicy[];
    try {
      parsed = parsePolicies(input.text);
    } catch (e) {
      if (e instanceof ParseFailure) throw new EvalFailure(`policy element "${input.element}": ${e.message}`);
      throw e;
    }
    for (const p of parsed) {
      if (p.id === undefined) throw new EvalFailure(`policy element "${input.element}": a policy has no @id`);
      const id = `${input.element}/${p.id}`;
      if (meta.has(id)) throw new EvalFailure(`policy id "${id}" appears twice in the set`);
      staticPolicies[id] = p.text;
      const m: PolicyMeta = { element: input.element, effect: p.effect, patch: input.patches[p.id] ?? [] };
      if (p.reason !== undefined) m.reason = p.reason;
      if (p.actions) m.actions = p.actions;
      meta.set(id, m);
    }
  }
  let slot = freeSlots.pop();
  if (slot === undefined) {
    if (cache.size >= CACHE_SIZE) {
      const [oldest, evicted] = cache.entries().next().value as [string, CompiledSet];
      cache.delete(oldest);
      slot = evicted.slot;
    } else slot = `cairn-policy-set-${nextSlot++}`;
  }
  // Preparsing under a slot's id replaces what it held: Cedar's cache never holds more than CACHE_SIZE sets.
  const answer = cedar.preparsePolicySet(slot, { staticPolicies });
  if (answer.type === 'failure') {
    freeSlots.push(slot);
    throw new EvalFailure(answer.errors.map((e) => e.message).join('; '));
  }
  const compiled = { slot, meta };
  cache.set(hash, compiled);
  return compiled;
}

function toLong(key: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new EvalFailure(`context.${key} must be a finite number (got ${JSON.stringify(v) ?? String(v)})`);
  }
  const n = Math.round(v);
  if (!Number.isSafeInteger(n)) throw new EvalFailure(`context.${key} is out of range (${v})`);
  return n;
}

/**
 * A JSON value as a Cedar value: safe integers are Longs, other numbers
 * (floats, huge integers) become strings, arrays become sets, objects
 * records; nulls (which Cedar has not) are dropped, and so are the record
 * keys `__entity` and `__extn` (Cedar's JSON escapes, which would turn data
 * into entity references).
 */
function toCedarValue(v: unknown): CedarValueJson | undefined {
  if (v === null || v === undefined) return undefined;
  if (typeof v === 'string' || typeof v === 'boolean') return v;
  if (typeof v === 'number') return Number.isSafeInteger(v) ? v : String(v);
  if (Array.isArray(v)) {
    return v.map(toCedarValue).filter((x): x is CedarValueJson => x !== undefined);
  }
  if (typeof v === 'object') {
    const out: Record<string, CedarValueJson> = {};
    for (const [k, x] of Object.entries(v)) {
      if (k === '__entity' || k === '__extn') continue;
      const c = toCedarValue(x);
      if (c !== undefined) out[k] = c;
    }
    return out;
  }
  return undefined;
}

function cedarContext(ctx: Record<string, unknown>): Context {
  const out: Context = {};
  for (const [k, v] of Object.entries(ctx)) {
    if (k === 'input' || k === 'input_json' || k === 'input_keys') continue;
    if (LONG_CONTEXT_KEYS.has(k)) {
      if (v !== undefined) out[k] = toLong(k, v);
      continue;
    }
    const c = toCedarValue(v);
    if (c !== undefined) out[k] = c;
  }
  if (out.now === undefined) out.now = Math.floor(Date.now() / 1000);
  if (out.hour_utc === undefined) out.hour_utc = new Date((out.now as number) * 1000).getUTCHours();
  const input = ctx.input;
  out.input_json = input === undefined ? 'null' : canonicalJson(input);
  out.input_keys =
    typeof input === 'object' && input !== null && !Array.isArray(input) ? Object.keys(input).sort() : [];
  return out;
}

const uid = (type: string, id: string): EntityUidJson => ({ type: `${CEDAR_NAMESPACE}::${type}`, id });

function requestParts(req: AuthzRequest): {
  principal: EntityUidJson;
  resource: EntityUidJson;
  entities: EntityJson[];
} {
  const entities: EntityJson[] = [];
  let principal: EntityUidJson;
  const p = req.principal;
  if (p.kind === 'token') {
    principal = uid('Token', p.name);
    // A token is in its role and every role below it: `principal in Cairn::Role::"execute"` holds
    // for execute, write… and admin tokens (roles are ordered read < write < execute < admin).
    const at = ROLES.indexOf(p.role as Role);
    const roles = (at < 0 ? [p.role] : ROLES.slice(0, at + 1)).map((r) => uid('Role', r));
    entities.push(
      { uid: principal, attrs: { name: p.name, role: p.role }, parents: roles },
      ...roles.map((role) => ({ uid: role, attrs: {}, parents: [] })),
    );
  } else {
    principal = uid('Trigger', `${p.type}:${p.source}`);
    entities.push({ uid: principal, attrs: { type: p.type, source: p.source }, parents: [] });
  }
  const r = req.resource;
  const circle = uid('Circle', r.circle);
  const resource = uid(cedarEntityType(r.type), r.slug);
  entities.push(
    {
      uid: resource,
      attrs: {
        slug: r.slug,
        type: r.type,
        category: r.category,
        price: toLong('resource.price', r.price),
        side_effects: r.side_effects,
      },
      parents: [circle],
    },
    { uid: circle, attrs: { slug: r.circle }, parents: [] },
  );
  return { principal, resource, entities };
}

/**
 * Evaluates a circle's policy set (plus cairn/default) for one request. Never
 * throws: any Cedar error, in the evaluation of a policy or of the request,
 * answers decision 'error' (fail closed: the caller denies).
 */
/** `knownHash`: the set's policySetHash, when the caller already has it (it is cached by it). */
export function authorize(set: PolicyInput[], req: AuthzRequest, knownHash?: string): AuthzResult {
  let hash = knownHash ?? '';
  const failure = (message: string): AuthzResult => ({
    decision: 'error',
    deciding: [],
    patch: [],
    explicit_permit: false,
    errors: [message],
    policy_set_hash: hash,
  });
  try {
    hash = knownHash ?? policySetHash(set);
    const compiled = compile(set, hash);
    const { principal, resource, entities } = requestParts(req);
    const answer = cedar.statefulIsAuthorized({
      principal,
      action: uid('Action', req.action),
      resource,
      context: cedarContext(req.context),
      entities,
      preparsedPolicySetId: compiled.slot,
    });
    if (answer.type === 'failure') return failure(answer.errors.map((e) => e.message).join('; '));
    const { decision, diagnostics } = answer.response;
    const deciding = [...diagnostics.reason].sort(cmp).map((id): DecidingPolicy => {
      const m = compiled.meta.get(id);
      const d: DecidingPolicy = {
        id,
        element: m?.element ?? id.split('/')[0] ?? id,
        effect: m?.effect ?? (decision === 'allow' ? 'permit' : 'forbid'),
      };
      if (m?.reason !== undefined) d.reason = m.reason;
      if (m?.actions) d.actions = m.actions;
      return d;
    });
    const errors = diagnostics.errors.map((e) => `${e.policyId}: ${e.error.message}`);
    if (errors.length > 0) {
      return {
        decision: 'error',
        deciding,
        patch: [],
        explicit_permit: false,
        errors,
        policy_set_hash: hash,
      };
    }
    const permits = decision === 'allow' ? deciding.filter((d) => d.id !== DEFAULT_POLICY_ID) : [];
    return {
      decision,
      deciding,
      patch: permits.flatMap((d) => compiled.meta.get(d.id)?.patch ?? []),
      explicit_permit: permits.some((d) => d.effect === 'permit'),
      errors: [],
      policy_set_hash: hash,
    };
  } catch (e) {
    return failure(e instanceof Error ? e.message : String(e));
  }
}

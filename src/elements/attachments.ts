/**
 * The attach model (seed 004, R-SECRETS): a secret or a variable attaches to the element that
 * uses it. `attach`/`detach`/`targets` are called on the modifier; `attachments`, `attached`,
 * `compose` and `remove-modifier` on the target. A target's type says which types it accepts
 * (`accepts`) and how an attachment is named; anything else is a typed 400.
 *
 * A run pins its element's attachments (the modifier's exact version) in its snapshot, never a
 * value; the execution opens them (a secret's box) from those versions.
 */
import { z } from 'zod';
import { CairnError, errors, thrown } from '../core/errors.js';
import { isUuid } from '../core/ids.js';
import { keyring } from '../core/sealed.js';
import type { Queryable } from '../db/types.js';
import * as att from '../store/attachments.js';
import * as store from '../store/elements.js';
import type { ElementRow } from '../store/elements.js';
import { snapshotElement } from './pinning.js';
import {
  defineOp,
  type AttachmentRef,
  type ElementTypeDecl,
  type OpContext,
  type OperationDecl,
  type PinnedElement,
  type ResolvedAttachment,
  type ResolvedUse,
  type TypeLookup,
} from './types.js';

const ENV_NAME = /^[A-Z_][A-Z0-9_]{0,127}$/;
const IDENT_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;
/** Environment names the platform sets or the loader reads: an attachment may not take them. */
const RESERVED_ENV = /^(CAIRN_.*|PATH|HOME|TMPDIR|PWD|LD_.*|PYTHON.*|NODE_.*|GO.*|SSL_CERT_.*)$/;

/** The name an attachment gets when none is given: the modifier's slug in the rule's spelling. */
function defaultName(slug: string, rule: 'env' | 'identifier'): string {
  const n = slug.replace(/-/g, '_');
  return rule === 'env' ? n.toUpperCase() : n;
}

function checkName(name: string, rule: 'env' | 'identifier', targetType: string): void {
  const ok = rule === 'env' ? ENV_NAME.test(name) && !RESERVED_ENV.test(name) : IDENT_NAME.test(name);
  if (!ok)
    throw errors.invalidInput(
      `"${name}" is not a valid attachment name for a ${targetType} element.`,
      { name, rule },
      rule === 'env'
        ? 'Name it as an environment variable: upper-case letters, digits and _ (not CAIRN_*, PATH, LD_*, PYTHON*, NODE_*, GO*).'
        : 'Name it with letters, digits and _, starting with a letter or _ (templates use ${{ secrets.<name> }}).',
    );
}

function notAccepted(target: ElementRow, targetType: ElementTypeDecl, modifierType: string): CairnError {
  const accepted = targetType.accepts?.types ?? [];
  return new CairnError({
    code: 'ATTACHMENT_NOT_ACCEPTED',
    class: 'validation',
    message: `A ${targetType.type} element ("${target.slug}") does not accept a ${modifierType} attachment.`,
    suggestion: accepted.length
      ? `A ${targetType.type} accepts: ${accepted.join(', ')}.`
      : `A ${targetType.type} accepts no attachments.`,
    details: { target_type: targetType.type, modifier_type: modifierType, accepts: accepted },
  });
}

function notAttachable(el: ElementRow): CairnError {
  return new CairnError({
    code: 'NOT_ATTACHABLE',
    class: 'validation',
    message: `A ${el.element_type} element ("${el.slug}") does not attach to other elements.`,
    suggestion:
      'Attach a secret or a variable element; call attach on it with the target_id of the element that uses it.',
  });
}

/** An element of the circle by id or slug (`slug@v3` pins a version), or ELEMENT_NOT_FOUND. */
async function findElement(
  q: Queryable,
  circleId: string,
  ref: string,
): Promise<{ el: ElementRow; version: number | null }> {
  const m = /^(.+?)(?:@v?(\d{1,9}))?$/.exec(ref.trim());
  const key = m?.[1] ?? ref;
  const el = isUuid(key) ? await store.getElementById(q, key) : await store.getElement(q, circleId, key);
  if (!el || el.circle_id !== circleId || el.state === 'deleted')
    throw errors.notFound(
      'ELEMENT_NOT_FOUND',
      `No element "${key}" in this circle.`,
      "Check the id or slug; GET /api/{circle}/elements lists the circle's elements.",
    );
  return { el, version: m?.[2] ? Number(m[2]) : null };
}

interface AttachAsk {
  name?: string;
  priority?: number;
  version?: number | null;
}

/** Validates and writes one attachment (in the caller's transaction). */
async function attachOne(
  tx: Queryable,
  ctx: Pick<OpContext, 'circle' | 'actor' | 'types'>,
  modifier: ElementRow,
  target: ElementRow,
  ask: AttachAsk,
): Promise<att.AttachmentView> {
  const mt = ctx.types.get(modifier.element_type);
  if (!mt.attachable) throw notAttachable(modifier);
  const tt = ctx.types.get(target.element_type);
  if (!tt.accepts?.types.includes(mt.type)) throw notAccepted(target, tt, mt.type);
  if (target.id === modifier.id)
    throw errors.invalidInput('An element cannot be attached to itself.', undefined, 'Pick another target.');
  const name = ask.name ?? defaultName(modifier.slug, tt.accepts.name);
  checkName(name, tt.accepts.name, tt.type);
  const pin = ask.version ?? null;
  if (pin !== null && !(await store.getVersion(tx, modifier.id, pin)))
    throw errors.notFound(
      'VERSION_NOT_FOUND',
      `Element "${modifier.slug}" has no version ${pin}.`,
      'GET …/ops/version?history=true lists its versions; omit version to follow the current one.',
    );
  let id: string;
  try {
    id = await att.insertAttachment(tx, {
      circleId: ctx.circle.id,
      targetId: target.id,
      modifierId: modifier.id,
      name,
      priority: ask.priority ?? 100,
      versionPin: pin,
      actor: ctx.actor,
    });
  } catch (caught) {
    const e = thrown(caught);
    if (e?.code === '23505')
      throw errors.conflict(
        'ATTACHMENT_EXISTS',
        /target_name/.test(String(e.constraint ?? ''))
          ? `"${target.slug}" already has an attachment named ${name}.`
          : `"${modifier.slug}" is already attached to "${target.slug}".`,
        'Detach the existing one first (detach, or remove-modifier with its attachment_id), or pick another name.',
      );
    throw e;
  }
  return (await att.getAttachment(tx, id))!;
}

function attachmentOut(a: att.AttachmentView, types: TypeLookup) {
  const mt = types.get(a.modifier_type);
  return {
    attachment_id: a.id,
    target_id: a.target_id,
    target_slug: a.target_slug,
    target_type: a.target_type,
    modifier_id: a.modifier_id,
    modifier_slug: a.modifier_slug,
    modifier_type: a.modifier_type,
    is_modifier: mt.attachable?.modifier ?? false,
    name: a.name,
    priority: a.priority,
    version_pin: a.version_pin,
    version: a.version_pin ?? a.modifier_version,
    cascade_policy: 'none',
    created_by: a.created_by,
    created_at: a.created_at,
  };
}

const priority = z.number().int().min(0).max(10_000);
const attachName = z.string().min(1).max(128);
const versionPin = z.number().int().min(1).max(2_147_483_647).nullable();

/** The attach family: on every element (a type that accepts or attaches nothing answers a typed 400). */
export const ATTACH_OPS: OperationDecl[] = [
  defineOp({
    name: 'attach',
    method: 'POST',
    path: 'attach',
    auth: 'execute',
    summary: 'Attach this element (a secret, a variable) to a target element',
    description:
      "Called on the modifier with the target's `target_id` (id or slug). `name` is what the target sees " +
      '(an environment variable for code actions, a template name for http/llm, default from the slug); ' +
      '`priority` orders evaluation (lower first); `version` pins a version (default: the current one when a run starts).',
    input: z
      .object({
        target_id: z.string().min(1).max(200),
        name: attachName.optional(),
        priority: priority.optional(),
        version: versionPin.optional(),
      })
      .strict(),
    handler: async (ctx) =>
      ctx.db.transaction(async (tx) => {
        const { el: target } = await findElement(tx, ctx.circle.id, ctx.input.target_id);
        return attachmentOut(await attachOne(tx, ctx, ctx.element, target, ctx.input), ctx.types);
      }),
    status: 201,
  }),
  defineOp({
    name: 'detach',
    method: 'POST',
    path: 'detach',
    auth: 'execute',
    summary: 'Detach this element from a target element',
    input: z.object({ target_id: z.string().min(1).max(200) }).strict(),
    handler: async (ctx) =>
      ctx.db.transaction(async (tx) => {
        const { el: target } = await findElement(tx, ctx.circle.id, ctx.input.target_id);
        const found = (await att.attachmentsOf(tx, target.id)).find((a) => a.modifier_id === ctx.element.id);
        if (!found)
          throw errors.notFound(
            'ATTACHMENT_NOT_FOUND',
            `"${ctx.element.slug}" is not attached to "${target.slug}".`,
            'GET …/ops/targets lists where it is attached.',
          );
        await att.deleteAttachment(tx, found.id);
        return { detached: attachmentOut(found, ctx.types) };
      }),
  }),
  defineOp({
    name: 'attachments',
    method: 'GET',
    path: 'attachments',
    auth: 'read',
    summary: 'Modifiers and resources attached to this element (with is_modifier)',
    input: z.object({}).strict(),
    handler: async (ctx) => ({
      accepts: ctx.type.accepts?.types ?? [],
      attachments: (await att.attachmentsOf(ctx.db, ctx.element.id)).map((a) => attachmentOut(a, ctx.types)),
    }),
  }),
  defineOp({
    name: 'attached',
    method: 'GET',
    path: 'attached',
    auth: 'read',
    summary: 'The elements attached to this element',
    input: z.object({}).strict(),
    handler: async (ctx) => {
      const list = await att.attachmentsOf(ctx.db, ctx.element.id);
      return {
        elements: list.map((a) => ({
          id: a.modifier_id,
          slug: a.modifier_slug,
          element_type: a.modifier_type,
          version: a.version_pin ?? a.modifier_version,
          definition_hash: a.modifier_definition_hash,
          attachment_id: a.id,
          name: a.name,
          priority: a.priority,
        })),
      };
    },
  }),
  defineOp({
    name: 'targets',
    method: 'GET',
    path: 'targets',
    auth: 'read',
    summary: 'The elements this element is attached to',
    input: z.object({}).strict(),
    handler: async (ctx) => ({
      targets: (await att.targetsOf(ctx.db, ctx.element.id)).map((a) => attachmentOut(a, ctx.types)),
    }),
  }),
  defineOp({
    name: 'compose',
    method: 'POST',
    path: 'compose',
    auth: 'execute',
    summary: 'Add and remove attachments of this element in one atomic call',
    description:
      '`{"add": [{"ref": "slug" | "slug@v2", "priority"?, "name"?}], "remove": [{"attachment_id"}]}`. ' +
      'Removals apply first; if any entry is refused, nothing changes.',
    input: z
      .object({
        add: z
          .array(
            z
              .object({
                ref: z.string().min(1).max(200),
                priority: priority.optional(),
                name: attachName.optional(),
              })
              .strict(),
          )
          .max(100)
          .default([]),
        remove: z
          .array(z.object({ attachment_id: z.string().min(1).max(64) }).strict())
          .max(100)
          .default([]),
      })
      .strict(),
    handler: async (ctx) =>
      ctx.db.transaction(async (tx) => {
        const removed = [];
        for (const r of ctx.input.remove) removed.push(await removeOwn(tx, ctx, r.attachment_id));
        const added = [];
        for (const a of ctx.input.add) {
          const { el: modifier, version } = await findElement(tx, ctx.circle.id, a.ref);
          added.push(
            attachmentOut(await attachOne(tx, ctx, modifier, ctx.element, { ...a, version }), ctx.types),
          );
        }
        return { added, removed };
      }),
  }),
  defineOp({
    name: 'remove-modifier',
    method: 'POST',
    path: 'remove-modifier',
    auth: 'execute',
    summary: 'Remove an attachment from this element by its attachment_id',
    input: z.object({ attachment_id: z.string().min(1).max(64) }).strict(),
    handler: async (ctx) =>
      ctx.db.transaction(async (tx) => ({ removed: await removeOwn(tx, ctx, ctx.input.attachment_id) })),
  }),
];

/** Removes one of the target's own attachments by its id (another element's is not found). */
async function removeOwn(tx: Queryable, ctx: Pick<OpContext, 'element' | 'types'>, id: string) {
  const a = isUuid(id) ? await att.getAttachment(tx, id) : undefined;
  if (!a || a.target_id !== ctx.element.id) throw attachmentNotFound(id, ctx.element.slug);
  await att.deleteAttachment(tx, a.id);
  return attachmentOut(a, ctx.types);
}

function attachmentNotFound(id: string, slug: string): CairnError {
  return errors.notFound(
    'ATTACHMENT_NOT_FOUND',
    `No attachment ${id} on "${slug}".`,
    'GET …/ops/attachments lists this element’s attachments and their ids.',
  );
}

function refOf(a: att.PinnedAttachmentRow): AttachmentRef {
  return {
    id: a.id,
    name: a.name,
    priority: a.priority,
    modifier: {
      id: a.modifier_id,
      slug: a.modifier_slug,
      element_type: a.modifier_type,
      version: a.version,
      definition_hash: a.definition_hash,
    },
  };
}

function usedMissing(el: ElementRow, slug: string, type: string): CairnError {
  return new CairnError({
    code: 'USED_ELEMENT_NOT_FOUND',
    class: 'validation',
    message: `"${el.slug}" uses "${slug}", which is not a ${type} element of this circle.`,
    suggestion: `Create the ${type} "${slug}", or change the spec of "${el.slug}" to name one that exists.`,
    details: { uses: slug },
  });
}

/**
 * The element as a run's snapshot pins it: its definition, its attachments (versions, never
 * values) and the elements its type uses, pinned the same way.
 */
export async function pinElement(q: Queryable, el: ElementRow, types: TypeLookup): Promise<PinnedElement> {
  const pinned: PinnedElement = snapshotElement(el);
  const type = types.get(el.element_type);
  const uses = type.uses?.(el.spec) ?? [];
  const used = uses.map((u) => u.slug);
  if (!type.accepts && used.length === 0) return pinned;
  // One statement, whatever it attaches and uses (the sync invoke's hot path).
  const reads = await att.pinningReads(q, el.circle_id, type.accepts ? el.id : null, used);
  const refsOf = (id: string) => reads.attachments.filter((a) => a.target_id === id).map(refOf);
  const own = type.accepts ? refsOf(el.id) : [];
  if (own.length > 0) pinned.attachments = own;
  if (used.length > 0) {
    pinned.uses = {};
    for (const { slug, type: want } of uses) {
      const u = reads.used.find((x) => x.slug === slug);
      // Only an element of the type it must be: a slug now naming another type (a secret) is not pinned.
      if (!u || u.element_type !== want) throw usedMissing(el, slug, want);
      const up: PinnedElement = {
        id: u.id,
        slug: u.slug,
        element_type: u.element_type,
        version: u.version,
        definition_hash: u.definition_hash,
        spec: u.spec,
      };
      const a = refsOf(u.id);
      if (a.length > 0) up.attachments = a;
      pinned.uses[slug] = up;
    }
  }
  return pinned;
}

/** Opens pinned attachments: each modifier's value at its pinned version (a secret unsealed). */
export async function openAttachments(
  q: Queryable,
  circleId: string,
  refs: readonly AttachmentRef[] | undefined,
  types: TypeLookup,
): Promise<ResolvedAttachment[]> {
  const out: ResolvedAttachment[] = [];
  if (!refs?.length) return out;
  // One statement for all of them; a modifier deleted since (a compromised key) opens no more.
  const rows = await store.getLiveVersions(
    q,
    refs.map((r) => ({ id: r.modifier.id, version: r.modifier.version })),
  );
  for (const r of refs) {
    const v = rows.find((x) => x.element_id === r.modifier.id && x.version === r.modifier.version);
    const type = types.get(r.modifier.element_type);
    if (!v || !type.attachable)
      throw new CairnError({
        code: 'ATTACHMENT_UNAVAILABLE',
        class: 'conflict',
        message: `The attachment ${r.name} (${r.modifier.slug} v${r.modifier.version}) is deleted or no longer stored.`,
        suggestion: 'Attach a live element again (retry-failed with definition latest, or a new run).',
      });
    const value = type.attachable.value(v.spec, (box) => keyring().open(box as never, circleId));
    out.push({
      name: r.name,
      slug: r.modifier.slug,
      element_type: r.modifier.element_type,
      version: r.modifier.version,
      secret: type.attachable.secret,
      value,
    });
  }
  return out;
}

/**
 * A pinned element's attachments and those of the elements it uses, opened together in one
 * statement (an execution's hot path), then handed back per element.
 */
export async function openPinned(
  q: Queryable,
  circleId: string,
  pinned: PinnedElement | undefined,
  types: TypeLookup,
): Promise<{ attachments: ResolvedAttachment[]; uses: Record<string, ResolvedUse> }> {
  const own = pinned?.attachments ?? [];
  const used = Object.entries(pinned?.uses ?? {});
  const all = await openAttachments(
    q,
    circleId,
    [...own, ...used.flatMap(([, u]) => u.attachments ?? [])],
    types,
  );
  const uses: Record<string, ResolvedUse> = {};
  let at = own.length;
  for (const [slug, u] of used) {
    const n = u.attachments?.length ?? 0;
    uses[slug] = { element: u, attachments: all.slice(at, at + n) };
    at += n;
  }
  return { attachments: all.slice(0, own.length), uses };
}

/** Attachments as environment variables (code actions): name → value. */
export function attachedEnv(list: readonly ResolvedAttachment[]): Record<string, string> {
  return Object.fromEntries(list.map((a) => [a.name, a.value]));
}

/** Attachments as template scopes: `secrets.<name>` and `vars.<name>`. */
export function attachedScopes(list: readonly ResolvedAttachment[]): {
  secrets: Record<string, string>;
  vars: Record<string, string>;
} {
  const secrets: Record<string, string> = {};
  const vars: Record<string, string> = {};
  for (const a of list) (a.secret ? secrets : vars)[a.name] = a.value;
  return { secrets, vars };
}

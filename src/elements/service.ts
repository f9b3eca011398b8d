import { CairnError, errors } from '../core/errors.js';
import { definitionHash } from '../core/hash.js';
import { deepMerge } from '../core/json.js';
import type { Db } from '../db/types.js';
import type { CircleRow } from '../store/circles.js';
import * as store from '../store/elements.js';
import { checkSpec } from './validate.js';
import { findSealedInput, isSealedBox, sealedInputRefused } from '../core/sealed.js';
import type { ElementTypeDecl } from './types.js';
import { toElementView, type ElementView } from './view.js';
import type { TypeLookup } from './types.js';

export const SLUG_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;

export interface ElementInput {
  element_type: string;
  slug: string;
  spec?: unknown;
  name?: string;
  intention?: string | null;
}

/**
 * A spec from a request, parsed, checked and sealed (a secret's plain value becomes a box). Only
 * Cairn writes boxes: one in the request is refused.
 */
export function specFromRequest(
  type: ElementTypeDecl,
  raw: unknown,
  merged: unknown,
  circleId: string,
): { spec: Record<string, unknown>; warnings: string[] } {
  const at = findSealedInput(raw);
  if (at) throw sealedInputRefused(at);
  const { spec, warnings } = checkSpec(type, merged);
  return { spec: type.seal ? (type.seal(spec, circleId) as Record<string, unknown>) : spec, warnings };
}

/** A deep-merge patch cannot reach inside a stored sealed value (rewrite its digest): each box of the merged spec is one stored as is. */
function assertBoxesIntact(stored: unknown, merged: unknown): void {
  const known = new Map<string, string>();
  const collect = (v: unknown): void => {
    if (isSealedBox(v)) known.set(v.$sealed, v.digest);
    else if (Array.isArray(v)) v.forEach(collect);
    else if (v && typeof v === 'object') Object.values(v).forEach(collect);
  };
  collect(stored);
  const check = (v: unknown, path: string): void => {
    if (v && typeof v === 'object' && !Array.isArray(v) && '$sealed' in v) {
      const b = v as { $sealed?: unknown; digest?: unknown };
      if (typeof b.$sealed !== 'string' || known.get(b.$sealed) !== b.digest || Object.keys(v).length !== 2)
        throw sealedInputRefused(path || '(root)');
      return;
    }
    if (Array.isArray(v)) v.forEach((x, i) => check(x, `${path}[${i}]`));
    else if (v && typeof v === 'object')
      for (const [k, x] of Object.entries(v)) check(x, path ? `${path}.${k}` : k);
  };
  check(merged, '');
}

function nameFromSlug(slug: string): string {
  return slug
    .split('-')
    .filter(Boolean)
    .map((w) => w[0]!.toUpperCase() + w.slice(1))
    .join(' ');
}

/** create: validates everything first, then writes element + version 1 in one transaction. */
export async function createElement(
  db: Db,
  circle: CircleRow,
  input: ElementInput,
  actor: string,
  types: TypeLookup,
): Promise<ElementView> {
  const type = types.get(input.element_type);
  if (!SLUG_RE.test(input.slug)) {
    throw errors.invalidInput(
      `"${input.slug}" is not a valid slug.`,
      [
        {
          path: 'slug',
          message: 'lowercase letters, digits and dashes, starting with a letter or digit, at most 63',
        },
      ],
      'Use a slug like "my-greeter".',
    );
  }
  const { spec, warnings } = specFromRequest(type, input.spec, input.spec, circle.id);
  await type.validateInCircle?.(db, circle, spec, types);
  const { el, once } = await db.transaction(async (tx) => {
    const el = await store.insertElement(tx, {
      circleId: circle.id,
      slug: input.slug,
      elementType: type.type,
      category: type.category,
      name: input.name ?? nameFromSlug(input.slug),
      intention: input.intention ?? null,
      spec,
      definitionHash: definitionHash(type.type, spec),
      actor,
    });
    return { el, once: (await type.afterSave?.(tx, circle, el, true, types)) ?? undefined };
  });
  const view = toElementView(el, circle, warnings);
  return once ? { ...view, shown_once: once } : view;
}

export interface UpdateInput {
  spec?: Record<string, unknown>;
  name?: string;
  intention?: string | null;
  deep?: boolean;
  note?: string;
}

/** update: deep merge by default (lists replace), `deep: false` replaces; always a new version. */
export async function updateElement(
  db: Db,
  circle: CircleRow,
  slug: string,
  patch: UpdateInput,
  actor: string,
  types: TypeLookup,
): Promise<ElementView> {
  return db.transaction(async (tx) => {
    const el = await store.getElement(tx, circle.id, slug, true);
    if (!el) throw elementNotFound(slug);
    const type = types.get(el.element_type);
    const merged =
      patch.spec === undefined ? el.spec : patch.deep === false ? patch.spec : deepMerge(el.spec, patch.spec);
    assertBoxesIntact(el.spec, merged);
    const { spec, warnings } = specFromRequest(type, patch.spec, merged, circle.id);
    await type.validateInCircle?.(tx, circle, spec, types);
    const next = await store.writeVersion(
      tx,
      el,
      {
        spec,
        name: patch.name ?? el.name,
        intention: patch.intention === undefined ? el.intention : patch.intention,
        definitionHash: definitionHash(type.type, spec),
      },
      patch.note ?? 'update',
      actor,
    );
    await type.afterSave?.(tx, circle, next, false, types);
    return toElementView(next, circle, warnings);
  });
}

/**
 * apply: converge to a file. Creates the element if missing, writes a new
 * version only when the definition (type, spec, name, intention) differs —
 * so applying the same file twice changes nothing.
 */
export async function applyElement(
  db: Db,
  circle: CircleRow,
  input: ElementInput,
  actor: string,
  types: TypeLookup,
): Promise<{ action: 'created' | 'updated' | 'unchanged'; element: ElementView }> {
  const existing = await store.getElement(db, circle.id, input.slug);
  if (!existing) return { action: 'created', element: await createElement(db, circle, input, actor, types) };
  if (existing.element_type !== input.element_type) {
    throw errors.conflict(
      'ELEMENT_TYPE_MISMATCH',
      `"${input.slug}" is a ${existing.element_type} element; the file declares ${input.element_type}.`,
      'An element keeps its type: delete it first, or use another slug.',
    );
  }
  const type = types.get(input.element_type);
  const { spec } = specFromRequest(type, input.spec, input.spec, circle.id);
  const same =
    definitionHash(type.type, spec) === existing.definition_hash &&
    (input.name === undefined || input.name === existing.name) &&
    (input.intention === undefined || input.intention === existing.intention);
  if (same) return { action: 'unchanged', element: toElementView(existing, circle) };
  const element = await updateElement(
    db,
    circle,
    input.slug,
    // The request's spec, not the sealed one: update seals it again (same digest, fresh IV).
    {
      spec: input.spec as Record<string, unknown>,
      deep: false,
      name: input.name,
      intention: input.intention,
      note: 'apply',
    },
    actor,
    types,
  );
  return { action: 'updated', element };
}

export function elementNotFound(slug: string): CairnError {
  return errors.notFound(
    'ELEMENT_NOT_FOUND',
    `No element "${slug}" in this circle.`,
    "Check the slug; GET /api/{circle}/elements lists the circle's elements.",
  );
}

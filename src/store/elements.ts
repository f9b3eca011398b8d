import type { Queryable } from '../db/types.js';
import { newId } from '../core/ids.js';
import { errors, thrown } from '../core/errors.js';
import { isoFields } from './rows.js';

export type ElementState = 'ready' | 'disabled' | 'deleted';

export interface ElementRow {
  id: string;
  circle_id: string;
  slug: string;
  element_type: string;
  category: string;
  name: string;
  intention: string | null;
  state: ElementState;
  spec: Record<string, unknown>;
  meta: Record<string, unknown>;
  version: number;
  definition_hash: string;
  disabled_reason: string | null;
  created_at: string;
  updated_at: string;
  deleted_at: string | null;
}

export interface VersionRow {
  element_id: string;
  version: number;
  spec: Record<string, unknown>;
  name: string;
  intention: string | null;
  definition_hash: string;
  note: string | null;
  actor: string | null;
  created_at: string;
}

const COLS = `id, circle_id, slug, element_type, category, name, intention, state, spec, meta, version,
  definition_hash, disabled_reason, created_at, updated_at, deleted_at`;
const TS = ['created_at', 'updated_at', 'deleted_at'] as const;
const VCOLS = 'element_id, version, spec, name, intention, definition_hash, note, actor, created_at';

function row(r: ElementRow | undefined): ElementRow | undefined {
  return r && isoFields(r, TS);
}

export interface NewElement {
  circleId: string;
  slug: string;
  elementType: string;
  category: string;
  name: string;
  intention: string | null;
  spec: Record<string, unknown>;
  definitionHash: string;
  actor: string;
}

/** Inserts the element and its version 1 in one transaction. */
export async function insertElement(tx: Queryable, e: NewElement): Promise<ElementRow> {
  const id = newId();
  try {
    const r = await tx.query<ElementRow>(
      `INSERT INTO cairn.elements (id, circle_id, slug, element_type, category, name, intention, spec, definition_hash)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING ${COLS}`,
      [id, e.circleId, e.slug, e.elementType, e.category, e.name, e.intention, e.spec, e.definitionHash],
    );
    await tx.query(
      `INSERT INTO cairn.element_versions (element_id, version, spec, name, intention, definition_hash, note, actor)
       VALUES ($1, 1, $2, $3, $4, $5, 'created', $6)`,
      [id, e.spec, e.name, e.intention, e.definitionHash, e.actor],
    );
    return row(r.rows[0])!;
  } catch (caught) {
    const err = thrown(caught);
    if (err?.code === '23505') {
      throw errors.conflict(
        'ELEMENT_EXISTS',
        `An element with slug "${e.slug}" already exists in this circle.`,
        'Use `update` to change it, `cairn apply` to converge to a file, or pick another slug.',
      );
    }
    throw err;
  }
}

/** Live (not deleted) element by slug. `forUpdate` locks it for a version bump. */
export async function getElement(
  q: Queryable,
  circleId: string,
  slug: string,
  forUpdate = false,
): Promise<ElementRow | undefined> {
  const r = await q.query<ElementRow>(
    `SELECT ${COLS} FROM cairn.elements WHERE circle_id = $1 AND slug = $2 AND state <> 'deleted'
     ${forUpdate ? 'FOR UPDATE' : ''}`,
    [circleId, slug],
  );
  return row(r.rows[0]);
}

export async function getElementById(q: Queryable, id: string): Promise<ElementRow | undefined> {
  const r = await q.query<ElementRow>(`SELECT ${COLS} FROM cairn.elements WHERE id = $1`, [id]);
  return row(r.rows[0]);
}

export async function listElements(q: Queryable, circleId: string): Promise<ElementRow[]> {
  const r = await q.query<ElementRow>(
    `SELECT ${COLS} FROM cairn.elements WHERE circle_id = $1 AND state <> 'deleted' ORDER BY slug`,
    [circleId],
  );
  return r.rows.map((e) => row(e)!);
}

/** Writes a new version (spec/name/intention) and records it in the history. */
export async function writeVersion(
  tx: Queryable,
  el: ElementRow,
  next: { spec: Record<string, unknown>; name: string; intention: string | null; definitionHash: string },
  note: string,
  actor: string,
): Promise<ElementRow> {
  const version = el.version + 1;
  const r = await tx.query<ElementRow>(
    `UPDATE cairn.elements SET spec = $2, name = $3, intention = $4, definition_hash = $5, version = $6,
       updated_at = clock_timestamp() WHERE id = $1 RETURNING ${COLS}`,
    [el.id, next.spec, next.name, next.intention, next.definitionHash, version],
  );
  await tx.query(
    `INSERT INTO cairn.element_versions (element_id, version, spec, name, intention, definition_hash, note, actor)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
    [el.id, version, next.spec, next.name, next.intention, next.definitionHash, note, actor],
  );
  return row(r.rows[0])!;
}

export async function mergeMeta(
  q: Queryable,
  id: string,
  patch: Record<string, unknown>,
): Promise<ElementRow> {
  const r = await q.query<ElementRow>(
    `UPDATE cairn.elements SET meta = meta || $2::jsonb, updated_at = clock_timestamp() WHERE id = $1 RETURNING ${COLS}`,
    [id, patch],
  );
  return row(r.rows[0])!;
}

export async function setState(
  q: Queryable,
  id: string,
  state: ElementState,
  reason: string | null,
): Promise<ElementRow> {
  const r = await q.query<ElementRow>(
    `UPDATE cairn.elements SET state = $2, disabled_reason = $3, updated_at = clock_timestamp(),
       deleted_at = CASE WHEN $2 = 'deleted' THEN clock_timestamp() ELSE deleted_at END
     WHERE id = $1 RETURNING ${COLS}`,
    [id, state, reason],
  );
  return row(r.rows[0])!;
}

export async function getReadme(q: Queryable, id: string): Promise<string> {
  const r = await q.query<{ readme: string }>('SELECT readme FROM cairn.elements WHERE id = $1', [id]);
  return r.rows[0]?.readme ?? '';
}

export async function setReadme(q: Queryable, id: string, content: string): Promise<void> {
  await q.query('UPDATE cairn.elements SET readme = $2, updated_at = clock_timestamp() WHERE id = $1', [
    id,
    content,
  ]);
}

export async function listVersions(q: Queryable, elementId: string, limit: number): Promise<VersionRow[]> {
  const r = await q.query<VersionRow>(
    `SELECT ${VCOLS} FROM cairn.element_versions WHERE element_id = $1 ORDER BY version DESC LIMIT $2`,
    [elementId, limit],
  );
  return r.rows.map((v) => isoFields(v, ['created_at']));
}

export async function getVersion(
  q: Queryable,
  elementId: string,
  version: number,
): Promise<VersionRow | undefined> {
  const r = await q.query<VersionRow>(
    `SELECT ${VCOLS} FROM cairn.element_versions WHERE element_id = $1 AND version = $2`,
    [elementId, version],
  );
  return r.rows[0] && isoFields(r.rows[0], ['created_at']);
}

export async function countActiveRuns(q: Queryable, elementId: string): Promise<number> {
  const r = await q.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM cairn.runs WHERE element_id = $1 AND status IN ('queued', 'running', 'paused')`,
    [elementId],
  );
  return r.rows[0]?.n ?? 0;
}

/** Several versions at once, of elements not deleted, in one statement. */
export async function getLiveVersions(
  q: Queryable,
  keys: readonly { id: string; version: number }[],
): Promise<VersionRow[]> {
  if (keys.length === 0) return [];
  const r = await q.query<VersionRow>(
    `SELECT v.element_id, v.version, v.spec, v.name, v.intention, v.definition_hash, v.note, v.actor, v.created_at
     FROM cairn.element_versions v JOIN cairn.elements e ON e.id = v.element_id AND e.state <> 'deleted'
     WHERE (v.element_id, v.version) IN (SELECT * FROM unnest($1::uuid[], $2::int[]))`,
    [keys.map((k) => k.id), keys.map((k) => k.version)],
  );
  return r.rows.map((v) => isoFields(v, ['created_at']));
}

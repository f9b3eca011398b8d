import type { Queryable } from '../db/types.js';
import { newId } from '../core/ids.js';
import { isoFields } from './rows.js';

export interface AttachmentRow {
  id: string;
  circle_id: string;
  target_id: string;
  modifier_id: string;
  name: string;
  priority: number;
  version_pin: number | null;
  created_by: string;
  created_at: string;
}

/** An attachment with both ends' slugs, types and current versions (live elements only). */
export interface AttachmentView extends AttachmentRow {
  target_slug: string;
  target_type: string;
  modifier_slug: string;
  modifier_type: string;
  modifier_version: number;
  modifier_definition_hash: string;
}

const VIEW = `SELECT a.*, t.slug AS target_slug, t.element_type AS target_type, m.slug AS modifier_slug,
    m.element_type AS modifier_type, m.version AS modifier_version, m.definition_hash AS modifier_definition_hash
  FROM cairn.attachments a
  JOIN cairn.elements t ON t.id = a.target_id AND t.state <> 'deleted'
  JOIN cairn.elements m ON m.id = a.modifier_id AND m.state <> 'deleted'`;

const view = (r: AttachmentView) => isoFields(r, ['created_at']);

export interface NewAttachment {
  circleId: string;
  targetId: string;
  modifierId: string;
  name: string;
  priority: number;
  versionPin: number | null;
  actor: string;
}

export async function insertAttachment(q: Queryable, a: NewAttachment): Promise<string> {
  const id = newId();
  await q.query(
    `INSERT INTO cairn.attachments (id, circle_id, target_id, modifier_id, name, priority, version_pin, created_by)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
    [id, a.circleId, a.targetId, a.modifierId, a.name, a.priority, a.versionPin, a.actor],
  );
  return id;
}

/** What is attached to `targetId`, in evaluation order (priority, then name). */
export async function attachmentsOf(q: Queryable, targetId: string): Promise<AttachmentView[]> {
  const r = await q.query<AttachmentView>(
    `${VIEW} WHERE a.target_id = $1 ORDER BY a.priority, a.name, a.id`,
    [targetId],
  );
  return r.rows.map(view);
}

/** Where `modifierId` is attached. */
export async function targetsOf(q: Queryable, modifierId: string): Promise<AttachmentView[]> {
  const r = await q.query<AttachmentView>(
    `${VIEW} WHERE a.modifier_id = $1 ORDER BY t.slug, a.priority, a.id`,
    [modifierId],
  );
  return r.rows.map(view);
}

export async function getAttachment(q: Queryable, id: string): Promise<AttachmentView | undefined> {
  const r = await q.query<AttachmentView>(`${VIEW} WHERE a.id = $1`, [id]);
  return r.rows[0] && view(r.rows[0]);
}

export async function deleteAttachment(q: Queryable, id: string): Promise<boolean> {
  const r = await q.query('DELETE FROM cairn.attachments WHERE id = $1', [id]);
  return (r.rowCount ?? 0) > 0;
}

/** Detaches every attachment of an element being deleted (either end). */
export async function deleteAttachmentsOf(q: Queryable, elementId: string): Promise<number> {
  const r = await q.query('DELETE FROM cairn.attachments WHERE target_id = $1 OR modifier_id = $1', [
    elementId,
  ]);
  return r.rowCount ?? 0;
}

/** A used element (an llm's provider) as pinning reads it. */
export interface UsedElement {
  id: string;
  slug: string;
  element_type: string;
  version: number;
  definition_hash: string;
  spec: Record<string, unknown>;
}

/** An attachment as a run pins it: the modifier at its pinned (or current) version and that version's hash. */
export interface PinnedAttachmentRow {
  id: string;
  target_id: string;
  name: string;
  priority: number;
  modifier_id: string;
  modifier_slug: string;
  modifier_type: string;
  version: number;
  definition_hash: string;
}

/**
 * What pinning a run's element reads, in one statement: the live elements of the circle it uses
 * (by slug), and the attachments of it and of them, each modifier at its pinned version (with that
 * version's definition hash) or its current one, in evaluation order.
 */
export async function pinningReads(
  q: Queryable,
  circleId: string,
  elementId: string | null,
  usedSlugs: readonly string[],
): Promise<{ used: UsedElement[]; attachments: PinnedAttachmentRow[] }> {
  const r = await q.query<{ k: string; j: UsedElement & PinnedAttachmentRow }>(
    `WITH u AS (
       SELECT id, slug, element_type, version, definition_hash, spec FROM cairn.elements
       WHERE circle_id = $1 AND slug = ANY($3::text[]) AND state <> 'deleted'),
     t AS (SELECT $2::uuid AS id WHERE $2::uuid IS NOT NULL UNION ALL SELECT id FROM u),
     a AS (
       SELECT a.id, a.target_id, a.name, a.priority, a.modifier_id, m.slug AS modifier_slug,
         m.element_type AS modifier_type, coalesce(a.version_pin, m.version) AS version,
         coalesce(v.definition_hash, m.definition_hash) AS definition_hash
       FROM cairn.attachments a
       JOIN cairn.elements m ON m.id = a.modifier_id AND m.state <> 'deleted'
       LEFT JOIN cairn.element_versions v ON a.version_pin IS NOT NULL AND v.element_id = a.modifier_id
         AND v.version = a.version_pin
       WHERE a.target_id IN (SELECT id FROM t))
     SELECT 'u' AS k, to_jsonb(u) AS j FROM u
     UNION ALL
     SELECT 'a', to_jsonb(a) FROM (SELECT * FROM a ORDER BY priority, name, id) a`,
    [circleId, elementId, usedSlugs],
  );
  return {
    used: r.rows.filter((x) => x.k === 'u').map((x) => x.j),
    attachments: r.rows.filter((x) => x.k === 'a').map((x) => x.j),
  };
}

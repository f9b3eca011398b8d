import type { Queryable } from '../db/types.js';
import { isSealedBox, Keyring, type SealedBox } from '../core/sealed.js';

function resealAll(v: unknown, ring: Keyring, scope: string, count: { n: number }): unknown {
  if (isSealedBox(v)) {
    if (Keyring.keyIdOfBox(v) === ring.currentId) return v;
    count.n++;
    return ring.reseal(v as SealedBox, scope);
  }
  if (Array.isArray(v)) return v.map((x) => resealAll(x, ring, scope, count));
  if (typeof v === 'object' && v !== null)
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, resealAll(x, ring, scope, count)]));
  return v;
}

/**
 * A key rotation: every sealed value of every element and version not sealed with the ring's
 * current key is opened (with an earlier key) and sealed again with the current one, in one
 * transaction. Digests (and so definition hashes) do not change. Returns how many were re-sealed.
 */
export async function resealSecrets(
  q: Queryable,
  ring: Keyring,
): Promise<{ resealed: number; rows: number }> {
  let resealed = 0;
  let rows = 0;
  for (const table of ['elements', 'element_versions'] as const) {
    const key = table === 'elements' ? 'e.id' : 'v.element_id, v.version';
    const r = await q.query<{ id: string; version?: number; circle_id: string; spec: unknown }>(
      table === 'elements'
        ? `SELECT e.id, e.circle_id, e.spec FROM cairn.elements e WHERE e.spec::text LIKE '%"$sealed"%' ORDER BY ${key} FOR UPDATE`
        : `SELECT v.element_id AS id, v.version, e.circle_id, v.spec FROM cairn.element_versions v
           JOIN cairn.elements e ON e.id = v.element_id WHERE v.spec::text LIKE '%"$sealed"%' ORDER BY ${key} FOR UPDATE OF v`,
    );
    for (const row of r.rows) {
      const count = { n: 0 };
      const spec = resealAll(row.spec, ring, row.circle_id, count);
      if (count.n === 0) continue;
      resealed += count.n;
      rows++;
      if (table === 'elements')
        await q.query('UPDATE cairn.elements SET spec = $2 WHERE id = $1', [row.id, JSON.stringify(spec)]);
      else
        await q.query('UPDATE cairn.element_versions SET spec = $3 WHERE element_id = $1 AND version = $2', [
          row.id,
          row.version,
          JSON.stringify(spec),
        ]);
    }
  }
  return { resealed, rows };
}

/**
 * The deployment's secrets key id: recorded by the first process, moved by a rotation. Returns the
 * recorded id (this process's when it is the first).
 */
export async function deploymentKeyId(q: Queryable, current: string, rotate = false): Promise<string> {
  const r = await q.query<{ value: string }>(
    `INSERT INTO cairn.instance_settings (name, value) VALUES ('secrets_key_id', $1)
     ON CONFLICT (name) DO UPDATE SET value = CASE WHEN $2::boolean THEN excluded.value ELSE cairn.instance_settings.value END,
       updated_at = CASE WHEN $2::boolean THEN clock_timestamp() ELSE cairn.instance_settings.updated_at END
     RETURNING value`,
    [current, rotate],
  );
  return r.rows[0]!.value;
}

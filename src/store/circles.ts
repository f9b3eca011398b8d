import { ident, literal, prepared, type Db, type Queryable, type CircleIdentity } from '../db/types.js';
import { newId, randomSecret } from '../core/ids.js';
import { errors, thrown } from '../core/errors.js';
import { isoFields } from './rows.js';
import { grant } from './ledger.js';

export interface Circle {
  id: string;
  slug: string;
  schema: string;
  created_at: string;
}

export interface CircleRow extends Circle {
  role_name: string;
  role_password: string;
}

const COLS = 'id, slug, schema_name AS schema, role_name, role_password, created_at';

/** Slugs that would shadow platform routes (`/api/runs/…`, `/api/circles`, …). */
export const RESERVED_SLUGS = new Set([
  'runs',
  'circles',
  'workflows',
  'ops',
  'openapi',
  'healthz',
  'metrics',
  'api',
]);

export function publicCircle(c: CircleRow): Circle {
  return { id: c.id, slug: c.slug, schema: c.schema, created_at: c.created_at };
}

export function circleIdentity(c: CircleRow): CircleIdentity {
  return { role: c.role_name, password: c.role_password, schema: c.schema };
}

/**
 * A circle is a row, a schema `circle_<uuid hex>` and a role of the same name
 * that owns that schema and nothing else — all in one transaction, so a failed
 * create leaves nothing behind.
 */
export async function createCircle(db: Db, slug: string, welcomeCredits = 0): Promise<CircleRow> {
  const id = newId();
  const name = 'circle_' + id.replace(/-/g, '');
  const password = randomSecret(24);
  try {
    return await db.transaction(async (tx) => {
      const r = await tx.query<CircleRow>(
        `INSERT INTO cairn.circles (id, slug, schema_name, role_name, role_password)
         VALUES ($1, $2, $3, $3, $4) RETURNING ${COLS}`,
        [id, slug, name, password],
      );
      const login = db.kind === 'pg' ? `LOGIN PASSWORD ${literal(password)} CONNECTION LIMIT 8` : 'NOLOGIN';
      await tx.query(
        `CREATE ROLE ${ident(name)} ${login} NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS`,
      );
      await tx.query(`CREATE SCHEMA ${ident(name)} AUTHORIZATION ${ident(name)}`);
      await tx.query(`ALTER ROLE ${ident(name)} SET search_path = ${ident(name)}`);
      await tx.query('INSERT INTO cairn.wallets (circle_id) VALUES ($1)', [id]);
      if (welcomeCredits > 0) {
        await grant(tx, {
          circleId: id,
          amount: welcomeCredits,
          category: 'promotional',
          actor: 'system',
          note: 'welcome credits',
          transferId: `welcome:${id}`,
        });
      }
      return isoFields(r.rows[0]!, ['created_at']);
    });
  } catch (caught) {
    const e = thrown(caught);
    if (e?.code === '23505') {
      throw errors.conflict(
        'CIRCLE_EXISTS',
        `A circle with slug "${slug}" already exists.`,
        'Pick another slug, or use the existing circle.',
      );
    }
    throw e;
  }
}

const BY_SLUG = prepared(`SELECT ${COLS} FROM cairn.circles WHERE slug = $1`);

export async function getCircleBySlug(q: Queryable, slug: string): Promise<CircleRow | undefined> {
  const r = await q.query<CircleRow>(BY_SLUG, [slug]);
  return r.rows[0] && isoFields(r.rows[0], ['created_at']);
}

export async function getCircleById(q: Queryable, id: string): Promise<CircleRow | undefined> {
  const r = await q.query<CircleRow>(`SELECT ${COLS} FROM cairn.circles WHERE id = $1`, [id]);
  return r.rows[0] && isoFields(r.rows[0], ['created_at']);
}

export async function listCircles(q: Queryable, onlyId?: string): Promise<CircleRow[]> {
  const r = onlyId
    ? await q.query<CircleRow>(`SELECT ${COLS} FROM cairn.circles WHERE id = $1`, [onlyId])
    : await q.query<CircleRow>(`SELECT ${COLS} FROM cairn.circles ORDER BY slug`);
  return r.rows.map((c) => isoFields(c, ['created_at']));
}

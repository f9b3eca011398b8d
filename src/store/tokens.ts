import type { Queryable } from '../db/types.js';
import { hashToken, newId, newToken } from '../core/ids.js';
import type { Role } from '../core/status.js';
import { isoFields } from './rows.js';

export interface TokenRow {
  id: string;
  circle_id: string | null;
  role: Role;
  name: string | null;
  created_at: string;
  revoked_at: string | null;
}

export interface Principal {
  tokenId: string;
  circleId: string | null;
  role: Role;
  instanceAdmin: boolean;
}

/** Creates a token and returns its secret once; only the sha256 is kept. */
export async function createToken(
  q: Queryable,
  opts: { circleId: string | null; role: Role; name?: string; secret?: string },
): Promise<{ token: string; row: TokenRow }> {
  const token = opts.secret ?? newToken();
  const r = await q.query<TokenRow>(
    `INSERT INTO cairn.tokens (id, circle_id, role, token_hash, name) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (token_hash) DO UPDATE SET revoked_at = NULL
     RETURNING id, circle_id, role, name, created_at, revoked_at`,
    [newId(), opts.circleId, opts.role, hashToken(token), opts.name ?? null],
  );
  return { token, row: isoFields(r.rows[0]!, ['created_at', 'revoked_at']) };
}

export async function findPrincipal(q: Queryable, token: string): Promise<Principal | undefined> {
  const r = await q.query<{ id: string; circle_id: string | null; role: Role }>(
    'SELECT id, circle_id, role FROM cairn.tokens WHERE token_hash = $1 AND revoked_at IS NULL',
    [hashToken(token)],
  );
  const t = r.rows[0];
  if (!t) return undefined;
  return { tokenId: t.id, circleId: t.circle_id, role: t.role, instanceAdmin: t.circle_id === null };
}

export async function listTokens(q: Queryable, circleId: string): Promise<TokenRow[]> {
  const r = await q.query<TokenRow>(
    `SELECT id, circle_id, role, name, created_at, revoked_at FROM cairn.tokens
     WHERE circle_id = $1 ORDER BY created_at`,
    [circleId],
  );
  return r.rows.map((t) => isoFields(t, ['created_at', 'revoked_at']));
}

export async function revokeToken(q: Queryable, circleId: string, tokenId: string): Promise<boolean> {
  const r = await q.query(
    'UPDATE cairn.tokens SET revoked_at = clock_timestamp() WHERE id = $1 AND circle_id = $2 AND revoked_at IS NULL',
    [tokenId, circleId],
  );
  return r.rowCount > 0;
}

export async function hasInstanceAdmin(q: Queryable): Promise<boolean> {
  const r = await q.query(
    'SELECT 1 FROM cairn.tokens WHERE circle_id IS NULL AND revoked_at IS NULL LIMIT 1',
  );
  return r.rows.length > 0;
}

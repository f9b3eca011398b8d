/** The circles' policy sets (migration 000017): written by the policy type, read before each run starts. */
import { prepared, type Queryable } from '../db/types.js';

export interface PolicyDef {
  elementId: string;
  circleId: string;
  slug: string;
  version: number;
  cedar: string;
  patches: Record<string, unknown>;
  enabled: boolean;
}

export async function upsertPolicy(q: Queryable, p: PolicyDef): Promise<void> {
  await q.query(
    `INSERT INTO cairn.policies (element_id, circle_id, slug, version, cedar, patches, enabled)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (element_id) DO UPDATE SET version = EXCLUDED.version, cedar = EXCLUDED.cedar,
       patches = EXCLUDED.patches, enabled = EXCLUDED.enabled, updated_at = clock_timestamp()`,
    [p.elementId, p.circleId, p.slug, p.version, p.cedar, JSON.stringify(p.patches), p.enabled],
  );
}

export interface PolicyRow {
  element_id: string;
  slug: string;
  version: number;
  cedar: string;
  patches: Record<string, unknown>;
}

/** The circle's policy set now: its enabled policies of ready elements, by slug. */
export async function policySet(q: Queryable, circleId: string): Promise<PolicyRow[]> {
  const r = await q.query<PolicyRow>(
    `SELECT p.element_id, p.slug, p.version, p.cedar, p.patches
       FROM cairn.policies p JOIN cairn.elements e ON e.id = p.element_id AND e.state = 'ready'
      WHERE p.circle_id = $1 AND p.enabled ORDER BY p.slug`,
    [circleId],
  );
  return r.rows;
}

const POLICY_VERSION = prepared(
  'SELECT version::float8 AS v FROM cairn.policy_versions WHERE circle_id = $1',
);

/** The version of the circle's policy set (null: it never had a policy). */
export async function policyVersion(q: Queryable, circleId: string): Promise<number | null> {
  const r = await q.query<{ v: number }>(POLICY_VERSION, [circleId]);
  return r.rows[0]?.v ?? null;
}

/** Stores a policy set once, by its hash (what the snapshots of the runs it decided name). */
export async function savePolicySet(
  q: Queryable,
  hash: string,
  circleId: string,
  body: unknown,
): Promise<void> {
  await q.query(
    `INSERT INTO cairn.policy_sets (hash, circle_id, body) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
    [hash, circleId, JSON.stringify(body)],
  );
}

export async function getPolicySet(q: Queryable, hash: string): Promise<unknown> {
  const r = await q.query<{ body: unknown }>('SELECT body FROM cairn.policy_sets WHERE hash = $1', [hash]);
  return r.rows[0]?.body;
}

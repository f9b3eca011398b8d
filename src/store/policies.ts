/** The circles' policy sets (migration 000017): written by the policy type, read before each run starts. */
import type { Queryable } from '../db/types.js';

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

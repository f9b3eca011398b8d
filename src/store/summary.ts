import type { Queryable } from '../db/types.js';
import type { ErrorBody } from '../core/errors.js';
import { isoFields } from './rows.js';

export interface ProviderSummary {
  element: string | null;
  element_type: string | null;
  runs: number;
  items: number;
  by_status: Record<string, number>;
  credits_used: number;
  errors: { code: string; count: number }[];
  duration_ms: { p50: number | null; p95: number | null; max: number | null };
}

/**
 * Per element (provider): item counts by status, cost, errors by code and
 * durations — of one run, or of a circle's runs since a time.
 */
export async function providerSummary(
  q: Queryable,
  f: { runId?: string; circleId?: string; since?: string },
): Promise<ProviderSummary[]> {
  const where = `($1::uuid IS NULL OR r.id = $1) AND ($2::uuid IS NULL OR r.circle_id = $2)
    AND ($3::timestamptz IS NULL OR r.queued_at >= $3)`;
  const params = [f.runId ?? null, f.circleId ?? null, f.since ?? null];
  const agg = await q.query<{
    element: string | null;
    element_type: string | null;
    runs: number;
    items: number;
    credits_used: number;
    p50: number | null;
    p95: number | null;
    max: number | null;
  }>(
    `SELECT r.element_slug AS element, r.element_type, count(DISTINCT r.id)::int AS runs, count(*)::int AS items,
       coalesce(sum(i.credits_used), 0)::bigint AS credits_used,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY i.duration_ms) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY i.duration_ms) AS p95, max(i.duration_ms) AS max
     FROM cairn.items i JOIN cairn.runs r ON r.id = i.run_id WHERE ${where}
     GROUP BY 1, 2 ORDER BY 1`,
    params,
  );
  // Counts by status and error code in one pass: by_status sums them, errors keeps the failures' codes.
  const counts = await q.query<{ element: string | null; status: string; code: string | null; n: number }>(
    `SELECT r.element_slug AS element, i.status, i.error ->> 'code' AS code, count(*)::int AS n
     FROM cairn.items i JOIN cairn.runs r ON r.id = i.run_id WHERE ${where}
     GROUP BY 1, 2, 3 ORDER BY 4 DESC`,
    params,
  );
  const round = (v: number | null) => (v === null ? null : Math.round(Number(v) * 1000) / 1000);
  return agg.rows.map((m) => {
    const mine = counts.rows.filter((c) => c.element === m.element);
    const byStatus: Record<string, number> = {};
    const byCode = new Map<string, number>();
    for (const c of mine) {
      byStatus[c.status] = (byStatus[c.status] ?? 0) + c.n;
      if (c.code && (c.status === 'failed' || c.status === 'retrying'))
        byCode.set(c.code, (byCode.get(c.code) ?? 0) + c.n);
    }
    return {
      element: m.element,
      element_type: m.element_type,
      runs: m.runs,
      items: m.items,
      by_status: byStatus,
      credits_used: Number(m.credits_used),
      errors: [...byCode].sort((a, b) => b[1] - a[1]).map(([code, count]) => ({ code, count })),
      duration_ms: { p50: round(m.p50), p95: round(m.p95), max: round(m.max) },
    };
  });
}

export interface FailureRow {
  run_id: string;
  run_kind: string;
  item_id: string;
  key: string;
  element: string | null;
  error: ErrorBody | null;
  attempt_count: number;
  inputs: unknown;
  finished_at: string | null;
}

/** Failed items across a circle's runs, newest first (the `failures` view). */
export async function listFailures(
  q: Queryable,
  f: { circleId: string; since?: string; element?: string; code?: string; limit: number },
): Promise<FailureRow[]> {
  const r = await q.query<FailureRow>(
    `SELECT i.run_id, r.kind AS run_kind, i.id AS item_id, i.key, r.element_slug AS element, i.error,
       i.attempt_count, i.inputs, i.finished_at
     FROM cairn.items i JOIN cairn.runs r ON r.id = i.run_id
     WHERE r.circle_id = $1 AND i.status = 'failed'
       AND ($2::timestamptz IS NULL OR i.finished_at >= $2) AND ($3::text IS NULL OR r.element_slug = $3)
       AND ($4::text IS NULL OR i.error ->> 'code' = $4)
     ORDER BY i.finished_at DESC NULLS LAST, i.id DESC LIMIT $5`,
    [f.circleId, f.since ?? null, f.element ?? null, f.code ?? null, f.limit],
  );
  return r.rows.map((x) => isoFields(x, ['finished_at']));
}

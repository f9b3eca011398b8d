import type { Queryable } from '../db/types.js';
import { isoFields } from './rows.js';

export interface ElementStats {
  runs: number;
  succeeded: number;
  failed: number;
  cancelled: number;
  active: number;
  avg_duration_ms: number | null;
  p95_duration_ms: number | null;
  credits_used: number;
  last_run_at: string | null;
}

/** Run counts and durations of one element since `since` (one aggregate query). */
export async function elementStats(q: Queryable, elementId: string, since: string): Promise<ElementStats> {
  const r = await q.query<ElementStats>(
    `SELECT count(*)::int AS runs,
       count(*) FILTER (WHERE status = 'succeeded')::int AS succeeded,
       count(*) FILTER (WHERE status IN ('failed', 'completed'))::int AS failed,
       count(*) FILTER (WHERE status = 'cancelled')::int AS cancelled,
       count(*) FILTER (WHERE status IN ('queued', 'running', 'paused'))::int AS active,
       round(avg(duration_ms)::numeric, 3)::float8 AS avg_duration_ms,
       round((percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms))::numeric, 3)::float8 AS p95_duration_ms,
       COALESCE(sum(credits_used), 0)::bigint AS credits_used,
       max(queued_at) AS last_run_at
     FROM cairn.runs WHERE element_id = $1 AND queued_at >= $2::timestamptz`,
    [elementId, since],
  );
  return isoFields(r.rows[0]!, ['last_run_at']);
}

export interface EventRow {
  id: number;
  run_id: string | null;
  name: string;
  data: Record<string, unknown>;
  at: string;
}

export async function elementEvents(
  q: Queryable,
  elementId: string,
  limit: number,
  before?: number,
): Promise<EventRow[]> {
  const r = await q.query<EventRow>(
    `SELECT id, run_id, name, data, at FROM cairn.events
     WHERE element_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3`,
    [elementId, before ?? null, limit],
  );
  return r.rows.map((e) => isoFields(e, ['at']));
}

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

/** The upper edge of a duration histogram bin (migration 000008: 4 bins per doubling of 1 + ms). */
export function binUpperMs(bin: number): number {
  return 2 ** ((bin + 1) / 4) - 1;
}

/**
 * Run counts and durations of one element since `since`, read from its
 * per-minute and hourly rollups (the window starts at the minute `since` falls in) plus
 * the deltas not folded yet: no scan of the element's runs, at any history.
 * p95 comes from the duration histogram (within 19% of the exact value).
 */
export async function elementStats(q: Queryable, elementId: string, since: string): Promise<ElementStats> {
  const m0 = new Date(Math.floor(Date.parse(since) / 60_000) * 60_000);
  const h1 = new Date(Math.floor(Date.parse(since) / 3_600_000) * 3_600_000 + 3_600_000);
  const r = await q.query<{
    runs: string;
    succeeded: string;
    failed: string;
    cancelled: string;
    duration_n: string;
    duration_sum: number | null;
    credits_used: string;
    last_run_at: string | null;
    bins: [number, number][] | null;
  }>(
    // $2's minute to the end of its hour from the minute rollups, every later hour from the hourly
    // ones: at most 60 + 169 rows for a week, however busy the element was; plus the deltas not folded.
    `WITH m AS (
       SELECT runs, succeeded, failed, cancelled, duration_n, duration_sum, credits_used, last_run_at
       FROM cairn.element_minutes WHERE element_id = $1 AND minute >= $2 AND minute < $3
       UNION ALL
       SELECT runs, succeeded, failed, cancelled, duration_n, duration_sum, credits_used, last_run_at
       FROM cairn.element_hours WHERE element_id = $1 AND hour >= $3
       UNION ALL
       SELECT runs, succeeded, failed, cancelled, duration_n, duration_sum, credits_used, last_run_at
       FROM cairn.element_stat_deltas WHERE element_id = $1 AND minute >= $2 AND bin IS NULL),
     h AS (
       SELECT bin, sum(n) AS n FROM (
         SELECT bin, n FROM cairn.element_minute_durations
         WHERE element_id = $1 AND minute >= $2 AND minute < $3
         UNION ALL
         SELECT bin, n FROM cairn.element_hour_durations WHERE element_id = $1 AND hour >= $3
         UNION ALL
         SELECT bin, runs FROM cairn.element_stat_deltas
         WHERE element_id = $1 AND minute >= $2 AND bin IS NOT NULL) x
       GROUP BY bin HAVING sum(n) > 0)
     SELECT COALESCE(sum(runs), 0)::text AS runs, COALESCE(sum(succeeded), 0)::text AS succeeded,
       COALESCE(sum(failed), 0)::text AS failed, COALESCE(sum(cancelled), 0)::text AS cancelled,
       COALESCE(sum(duration_n), 0)::text AS duration_n, sum(duration_sum) AS duration_sum,
       COALESCE(sum(credits_used), 0)::text AS credits_used, max(last_run_at) AS last_run_at,
       (SELECT json_agg(json_build_array(bin, n) ORDER BY bin) FROM h) AS bins
     FROM m`,
    [elementId, m0.toISOString(), h1.toISOString()],
  );
  const x = r.rows[0]!; // an aggregate: always one row
  const n = Number(x.duration_n);
  const [runs, succeeded, failed, cancelled] = [x.runs, x.succeeded, x.failed, x.cancelled].map(Number);
  let p95: number | null = null;
  const bins = (x.bins ?? []).map(([b, c]) => [Number(b), Number(c)] as const);
  const total = bins.reduce((a, [, c]) => a + c, 0);
  if (total > 0) {
    let seen = 0;
    for (const [b, c] of bins) {
      seen += c;
      if (seen >= 0.95 * total) {
        p95 = Math.round(binUpperMs(b) * 1000) / 1000;
        break;
      }
    }
  }
  return isoFields(
    {
      runs: runs!,
      succeeded: succeeded!,
      failed: failed!,
      cancelled: cancelled!,
      active: runs! - succeeded! - failed! - cancelled!,
      avg_duration_ms: n > 0 ? Math.round(((x.duration_sum ?? 0) / n) * 1000) / 1000 : null,
      p95_duration_ms: p95,
      credits_used: Number(x.credits_used),
      last_run_at: x.last_run_at,
    },
    ['last_run_at'],
  );
}

/** Folds the statistics deltas into the rollups (the worker does, every few seconds). */
export async function foldElementStats(q: Queryable): Promise<number> {
  const r = await q.query<{ n: number }>('SELECT cairn.fold_element_stats() AS n');
  return Number(r.rows[0]?.n ?? 0);
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

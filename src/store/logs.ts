import type { Queryable } from '../db/types.js';

export interface LogEntry {
  run_id: string;
  ts: string;
  stream: 'stdout' | 'stderr';
  line: string;
}

/**
 * Log lines of runs, oldest first: of one run, or of an element's most recent
 * runs. They live on the items' evidence (`log_lines`), written with the
 * settlement, so a run's logs are as durable as the run.
 */
export async function readLogs(
  q: Queryable,
  f: { runId?: string; elementId?: string; runs?: number; since?: string; tail?: number },
): Promise<LogEntry[]> {
  const r = await q.query<{ run_id: string; lines: [number, 'stdout' | 'stderr', string][] | null }>(
    `SELECT i.run_id, i.evidence -> 'log_lines' AS lines
     FROM cairn.items i JOIN cairn.runs r ON r.id = i.run_id
     WHERE ($1::uuid IS NULL OR r.id = $1::uuid) AND ($2::uuid IS NULL OR r.element_id = $2::uuid)
     ORDER BY r.id DESC, i.key LIMIT $3`,
    // One run: every item of it (a batch's lines are in many items); an element: its last `runs` runs' items.
    [f.runId ?? null, f.elementId ?? null, f.runId ? 100_000 : (f.runs ?? 20)],
  );
  const since = f.since ? Date.parse(f.since) : undefined;
  const out: LogEntry[] = [];
  for (const row of r.rows.reverse()) {
    for (const [ms, stream, line] of row.lines ?? []) {
      if (since !== undefined && ms < since) continue;
      out.push({ run_id: row.run_id, ts: new Date(ms).toISOString(), stream, line });
    }
  }
  return f.tail ? out.slice(-f.tail) : out;
}

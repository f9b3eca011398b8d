import { prepared, type Queryable } from '../db/types.js';

/** The live event types (R-LIVE). */
export const LIVE_TYPES = ['status', 'item', 'log', 'cost', 'audit', 'approval'] as const;
export type LiveType = (typeof LIVE_TYPES)[number];

/**
 * A stream position: the writing transaction's id, then the row's id. Positions are totally
 * ordered, and every row that becomes readable later has a larger one (see migration 000023).
 */
export interface LivePos {
  xid: bigint;
  id: bigint;
}

export const START: LivePos = { xid: 0n, id: 0n };

export function comparePos(a: LivePos, b: LivePos): number {
  if (a.xid !== b.xid) return a.xid < b.xid ? -1 : 1;
  return a.id === b.id ? 0 : a.id < b.id ? -1 : 1;
}

/** The SSE id of a position: `<xid>-<id>`. */
export function formatPos(p: LivePos): string {
  return `${p.xid}-${p.id}`;
}

/** Parses an SSE id; undefined if it is not one of ours. */
export function parsePos(s: string): LivePos | undefined {
  const m = /^(\d{1,20})-(\d{1,20})$/.exec(s.trim());
  if (!m) return undefined;
  const xid = BigInt(m[1]!);
  const id = BigInt(m[2]!);
  if (xid >= 1n << 64n || id >= 1n << 63n) return undefined;
  return { xid, id };
}

export interface LiveRow {
  pos: LivePos;
  type: LiveType;
  circle_id: string;
  run_id: string | null;
  kind: string | null;
  element_id: string | null;
  element_slug: string | null;
  run_status: string | null;
  data: Record<string, unknown>;
  at: string;
}

/** A row as read: its position as text (`x`, `n`), and whether its transaction is over. */
type RawRow = Omit<LiveRow, 'pos'> & { x: string; n: string; ready: boolean };

// Output names differ from the columns: ORDER BY must sort by the columns, not their text.
const COLS = `e.xid::text AS x, e.id::text AS n, type, circle_id, run_id, kind, element_id, element_slug,
  run_status, data, to_char(e.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS at`;

const AFTER_IN_CIRCLE = prepared(
  `WITH w AS (SELECT cairn.live_watermark() AS wm)
   SELECT ${COLS}, e.xid < w.wm AS ready FROM cairn.live_events e, w
   WHERE circle_id = $1 AND (xid, id) > ($2::text::xid8, $3::bigint)
   ORDER BY e.xid, e.id LIMIT $4`,
);

const AFTER_IN_RUN = prepared(
  `WITH w AS (SELECT cairn.live_watermark() AS wm)
   SELECT ${COLS}, e.xid < w.wm AS ready FROM cairn.live_events e, w
   WHERE run_id = $1 AND (xid, id) > ($2::text::xid8, $3::bigint)
   ORDER BY e.xid, e.id LIMIT $4`,
);

export interface LiveBatch {
  /** Rows of finished transactions, in position order. */
  rows: LiveRow[];
  /** Rows after them exist but their transactions are not all over yet: read again soon. */
  heldBack: boolean;
  /** The read stopped at its limit: there may be more ready rows. */
  full: boolean;
}

/**
 * The readable rows after `after`, of a circle or of one run, at most `limit`. Rows of a
 * transaction still running elsewhere are held back (with every row after them), so a later
 * read from the last delivered position can never skip one.
 */
export async function readLive(
  q: Queryable,
  scope: { circleId: string } | { runId: string },
  after: LivePos,
  limit: number,
): Promise<LiveBatch> {
  const sql = 'circleId' in scope ? AFTER_IN_CIRCLE : AFTER_IN_RUN;
  const key = 'circleId' in scope ? scope.circleId : scope.runId;
  const r = await q.query<RawRow>(sql, [key, after.xid.toString(), after.id.toString(), limit]);
  const rows: LiveRow[] = [];
  let heldBack = false;
  for (const raw of r.rows) {
    if (!raw.ready) {
      heldBack = true;
      break;
    }
    const { x, n, ready: _ready, ...row } = raw;
    rows.push({ pos: { xid: BigInt(x), id: BigInt(n) }, ...row });
  }
  return { rows, heldBack, full: !heldBack && r.rows.length >= limit };
}

/** The position of a circle's newest readable row (START when it has none). */
export async function livePosHead(q: Queryable, circleId: string): Promise<LivePos> {
  const r = await q.query<{ x: string; n: string }>(
    prepared(
      `SELECT e.xid::text AS x, e.id::text AS n FROM cairn.live_events e
       WHERE e.circle_id = $1 AND e.xid < cairn.live_watermark() ORDER BY e.xid DESC, e.id DESC LIMIT 1`,
    ),
    [circleId],
  );
  const row = r.rows[0];
  return row ? { xid: BigInt(row.x), id: BigInt(row.n) } : START;
}

/** Deletes stream rows older than `hours` (the stream is a window; the records are elsewhere). */
export async function pruneLive(q: Queryable, hours: number): Promise<number> {
  const r = await q.query(
    `DELETE FROM cairn.live_events WHERE at < clock_timestamp() - make_interval(hours => $1)`,
    [hours],
  );
  return r.rowCount;
}

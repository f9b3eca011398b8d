/**
 * The trigger tables (migration 000016): schedules and their occurrences, webhooks and their
 * secrets and deliveries, upstream links and the run outbox. SQL only; the scheduler, the hook
 * route and the outbox dispatcher decide.
 */
import { prepared, type Queryable } from '../db/types.js';
import { newId } from '../core/ids.js';
import { isoFields } from './rows.js';
import type { CircleRow } from './circles.js';

/** A timestamptz as exact milliseconds in ISO form (what the scheduler compares and writes back). */
const MS = (col: string) => `to_char(${col} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;
const TERMINAL = `('succeeded', 'completed', 'failed', 'cancelled')`;

export interface TargetRow {
  element: string;
  op: string;
  input: unknown;
}

// ---- schedules ----------------------------------------------------------------------------------

export interface ScheduleRow {
  element_id: string;
  circle_id: string;
  slug: string;
  cron: string;
  timezone: string;
  overlap: 'skip' | 'buffer_one' | 'allow_all' | 'cancel_previous';
  catchup_window_ms: number;
  paused: boolean;
  target: TargetRow;
  next_at: string | null;
}

export interface ScheduleDef {
  elementId: string;
  circleId: string;
  cron: string;
  timezone: string;
  overlap: ScheduleRow['overlap'];
  catchupWindowMs: number;
  paused: boolean;
  target: TargetRow;
  /** The next fire time from now (kept when the clock, cron and timezone, did not change). */
  nextAt: string | null;
}

export async function upsertSchedule(q: Queryable, d: ScheduleDef): Promise<void> {
  await q.query(
    `INSERT INTO cairn.schedules (element_id, circle_id, cron, timezone, overlap, catchup_window_ms, paused, target, next_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
     ON CONFLICT (element_id) DO UPDATE SET
       next_at = CASE WHEN schedules.cron = EXCLUDED.cron AND schedules.timezone = EXCLUDED.timezone
                       AND schedules.next_at IS NOT NULL
                      THEN schedules.next_at ELSE EXCLUDED.next_at END,
       cron = EXCLUDED.cron, timezone = EXCLUDED.timezone, overlap = EXCLUDED.overlap,
       catchup_window_ms = EXCLUDED.catchup_window_ms, paused = EXCLUDED.paused,
       target = EXCLUDED.target, updated_at = clock_timestamp()`,
    [
      d.elementId,
      d.circleId,
      d.cron,
      d.timezone,
      d.overlap,
      d.catchupWindowMs,
      d.paused,
      JSON.stringify(d.target),
      d.nextAt,
    ],
  );
}

const SCHEDULE_COLS = `s.element_id, s.circle_id, e.slug, s.cron, s.timezone, s.overlap,
  s.catchup_window_ms::float8 AS catchup_window_ms, s.paused, s.target, ${MS('s.next_at')} AS next_at`;

/**
 * Schedules whose next time has come (ready elements only), oldest first, with the database's
 * clock (`db_now`, epoch ms): the one every process compares nominal times with.
 */
export async function dueSchedules(
  q: Queryable,
  limit: number,
): Promise<(ScheduleRow & { db_now: number })[]> {
  const r = await q.query<ScheduleRow & { db_now: number }>(
    `SELECT ${SCHEDULE_COLS}, (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS db_now
       FROM cairn.schedules s JOIN cairn.elements e ON e.id = s.element_id AND e.state = 'ready'
      WHERE s.next_at <= clock_timestamp() ORDER BY s.next_at LIMIT $1`,
    [limit],
  );
  return r.rows;
}

export async function getSchedule(q: Queryable, elementId: string): Promise<ScheduleRow | undefined> {
  const r = await q.query<ScheduleRow>(
    `SELECT ${SCHEDULE_COLS} FROM cairn.schedules s JOIN cairn.elements e ON e.id = s.element_id WHERE s.element_id = $1`,
    [elementId],
  );
  return r.rows[0];
}

/** Milliseconds until the soonest schedule is due (negative: overdue), or null when none is set. */
export async function msToNextSchedule(q: Queryable): Promise<number | null> {
  const r = await q.query<{ ms: number | null }>(
    `SELECT (extract(epoch FROM min(s.next_at) - clock_timestamp()) * 1000)::float8 AS ms
       FROM cairn.schedules s JOIN cairn.elements e ON e.id = s.element_id AND e.state = 'ready'
      WHERE s.next_at IS NOT NULL`,
  );
  return r.rows[0]?.ms ?? null;
}

export interface OccurrencePlan {
  nominal: string;
  status: 'firing' | 'buffered' | 'skipped_overlap' | 'skipped_paused' | 'missed';
}

/**
 * Advances a schedule's clock from `from` to `to` (compare-and-set: only the process that read
 * `from` and gets here first wins) and records the occurrences it passed, in one statement.
 * Answers the occurrences it recorded: none when another process won, or had recorded them.
 */
export async function advanceSchedule(
  q: Queryable,
  s: ScheduleRow,
  to: string | null,
  plan: OccurrencePlan[],
): Promise<OccurrencePlan[]> {
  const r = await q.query<{ nominal: string; status: OccurrencePlan['status'] }>(
    `WITH adv AS (
       UPDATE cairn.schedules SET next_at = $3::timestamptz, updated_at = clock_timestamp()
        WHERE element_id = $1 AND next_at = $2::timestamptz RETURNING element_id, circle_id)
     INSERT INTO cairn.schedule_occurrences (schedule_id, circle_id, nominal_at, status)
     SELECT adv.element_id, adv.circle_id, o.t, o.s FROM adv, unnest($4::timestamptz[], $5::text[]) AS o (t, s)
     ON CONFLICT DO NOTHING
     RETURNING ${MS('nominal_at')} AS nominal, status`,
    [s.element_id, s.next_at, to, plan.map((p) => p.nominal), plan.map((p) => p.status)],
  );
  return r.rows;
}

/** Records backfilled occurrences (those not recorded yet), to be fired. */
export async function insertBackfill(
  q: Queryable,
  scheduleId: string,
  circleId: string,
  nominals: string[],
): Promise<string[]> {
  const r = await q.query<{ nominal: string }>(
    `INSERT INTO cairn.schedule_occurrences (schedule_id, circle_id, nominal_at, status, backfill)
     SELECT $1, $2, t, 'firing', true FROM unnest($3::timestamptz[]) AS t
     ON CONFLICT DO NOTHING RETURNING ${MS('nominal_at')} AS nominal`,
    [scheduleId, circleId, nominals],
  );
  return r.rows.map((x) => x.nominal);
}

/** The run an occurrence started: fired on time, or caught up when recorded more than 1 s late. */
export async function markFired(
  q: Queryable,
  scheduleId: string,
  nominal: string,
  runId: string,
): Promise<void> {
  await q.query(
    `UPDATE cairn.schedule_occurrences
        SET status = CASE WHEN clock_timestamp() - nominal_at > interval '1 second' AND NOT backfill
                          THEN 'caught_up' ELSE 'fired' END,
            run_id = $3, fired_at = clock_timestamp()
      WHERE schedule_id = $1 AND nominal_at = $2::timestamptz AND status IN ('firing', 'failed')`,
    [scheduleId, nominal, runId],
  );
}

export async function markFailed(
  q: Queryable,
  scheduleId: string,
  nominal: string,
  error: unknown,
): Promise<void> {
  await q.query(
    `UPDATE cairn.schedule_occurrences SET status = 'failed', error = $3, fired_at = clock_timestamp()
      WHERE schedule_id = $1 AND nominal_at = $2::timestamptz AND status = 'firing'`,
    [scheduleId, nominal, JSON.stringify(error)],
  );
}

/** Is a run this schedule started still going (or one being started), and is one buffered? */
export async function activeScheduledRun(
  q: Queryable,
  scheduleId: string,
): Promise<{ busy: boolean; run_id: string | null; buffered: boolean }> {
  const r = await q.query<{
    run_id: string | null;
    status: string | null;
    occ: string | null;
    buffered: boolean;
  }>(
    `SELECT l.run_id, r.status, l.occ,
            EXISTS (SELECT 1 FROM cairn.schedule_occurrences b WHERE b.schedule_id = $1 AND b.status = 'buffered') AS buffered
       FROM (SELECT 1) one
       LEFT JOIN LATERAL (
         SELECT o.run_id, o.status AS occ FROM cairn.schedule_occurrences o
          WHERE o.schedule_id = $1 AND (o.status = 'firing' OR o.run_id IS NOT NULL)
          ORDER BY o.nominal_at DESC LIMIT 1) l ON true
       LEFT JOIN cairn.runs r ON r.id = l.run_id`,
    [scheduleId],
  );
  const x = r.rows[0]!;
  if (x.occ === 'firing') return { busy: true, run_id: null, buffered: x.buffered };
  const busy = x.status !== null && !TERMINAL.includes(`'${x.status}'`);
  return { busy, run_id: busy ? x.run_id : null, buffered: x.buffered };
}

/** Buffered occurrences (buffer_one) whose schedule has no run going any more: claimed to fire. */
export async function claimBuffered(q: Queryable): Promise<{ schedule_id: string; nominal: string }[]> {
  const r = await q.query<{ schedule_id: string; nominal: string }>(
    `UPDATE cairn.schedule_occurrences o SET status = 'firing', recorded_at = clock_timestamp()
      WHERE o.status = 'buffered'
        AND NOT EXISTS (
          SELECT 1 FROM cairn.schedule_occurrences p LEFT JOIN cairn.runs r ON r.id = p.run_id
           WHERE p.schedule_id = o.schedule_id AND p.nominal_at <> o.nominal_at
             AND (p.status = 'firing' OR (p.run_id IS NOT NULL AND r.status NOT IN ${TERMINAL})))
     RETURNING o.schedule_id, ${MS('o.nominal_at')} AS nominal`,
  );
  return r.rows;
}

/**
 * Occurrences left `firing` by a process that died before it recorded their run, taken for another
 * try (their recorded_at moves on, so one that keeps failing does not hold back the others).
 */
export async function staleFiring(
  q: Queryable,
  olderThanMs: number,
): Promise<{ schedule_id: string; nominal: string; backfill: boolean }[]> {
  const r = await q.query<{ schedule_id: string; nominal: string; backfill: boolean }>(
    `WITH s AS (
       SELECT schedule_id, nominal_at FROM cairn.schedule_occurrences
        WHERE status = 'firing' AND recorded_at < clock_timestamp() - make_interval(secs => $1 / 1000.0)
        ORDER BY recorded_at LIMIT 100 FOR UPDATE SKIP LOCKED)
     UPDATE cairn.schedule_occurrences o SET recorded_at = clock_timestamp()
       FROM s WHERE o.schedule_id = s.schedule_id AND o.nominal_at = s.nominal_at
     RETURNING o.schedule_id, ${MS('o.nominal_at')} AS nominal, o.backfill`,
    [olderThanMs],
  );
  return r.rows;
}

export interface OccurrenceRow {
  nominal_time: string;
  status: string;
  backfill: boolean;
  run_id: string | null;
  recorded_at: string;
  fired_at: string | null;
  error: unknown;
}

export async function listOccurrences(
  q: Queryable,
  scheduleId: string,
  limit: number,
  before: string | null,
  status: string | null,
): Promise<OccurrenceRow[]> {
  const r = await q.query<OccurrenceRow>(
    `SELECT ${MS('nominal_at')} AS nominal_time, status, backfill, run_id, recorded_at, fired_at, error
       FROM cairn.schedule_occurrences
      WHERE schedule_id = $1 AND ($2::timestamptz IS NULL OR nominal_at < $2::timestamptz)
        AND ($3::text IS NULL OR status = $3)
      ORDER BY nominal_at DESC LIMIT $4`,
    [scheduleId, before, status, limit],
  );
  return r.rows.map((x) => isoFields(x, ['recorded_at', 'fired_at']));
}

// ---- webhooks ------------------------------------------------------------------------------------

export interface WebhookRow {
  element_id: string;
  circle_id: string;
  slug: string;
  signing: 'standard' | 'github' | 'none';
  max_body_bytes: number;
  target: TargetRow;
  input: unknown;
}

export async function upsertWebhook(q: Queryable, w: WebhookRow): Promise<void> {
  await q.query(
    `INSERT INTO cairn.webhooks (element_id, circle_id, slug, signing, max_body_bytes, target, input)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (element_id) DO UPDATE SET signing = EXCLUDED.signing, max_body_bytes = EXCLUDED.max_body_bytes,
       target = EXCLUDED.target, input = EXCLUDED.input, updated_at = clock_timestamp()`,
    [
      w.element_id,
      w.circle_id,
      w.slug,
      w.signing,
      w.max_body_bytes,
      JSON.stringify(w.target),
      JSON.stringify(w.input),
    ],
  );
}

// Prepared (planned once per connection): the partial index elements_circle_slug (WHERE state <>
// 'deleted') stays usable, the state being a literal of the text, not a parameter.
const FIND_WEBHOOK = prepared(`
SELECT w.element_id, w.circle_id, e.slug, w.signing, w.max_body_bytes, w.target, w.input,
       coalesce((SELECT array_agg(x.secret ORDER BY x.created_at DESC) FROM (
          SELECT s.secret, s.created_at FROM cairn.webhook_secrets s
           WHERE s.element_id = w.element_id AND (s.expires_at IS NULL OR s.expires_at > clock_timestamp())
           ORDER BY s.created_at DESC LIMIT 8) x), '{}') AS secrets,
       jsonb_build_object('id', c.id, 'slug', c.slug, 'schema', c.schema_name, 'role_name', c.role_name,
         'role_password', c.role_password, 'created_at', c.created_at) AS circle,
       d.delivery_id AS recorded_delivery, d.run_id AS recorded_run
  FROM cairn.circles c
  JOIN cairn.elements e ON e.circle_id = c.id AND e.slug = $2 AND e.state = 'ready' AND e.element_type = 'webhook'
  JOIN cairn.webhooks w ON w.element_id = e.id
  LEFT JOIN cairn.webhook_deliveries d ON d.element_id = w.element_id
   AND d.delivery_id = CASE w.signing WHEN 'github' THEN $4 WHEN 'none' THEN coalesce($3, $5) ELSE $3 END
 WHERE c.slug = $1`);

export interface FoundWebhook extends WebhookRow {
  /** The secrets valid now, newest first. */
  secrets: string[];
  circle: CircleRow;
  /** The delivery the request names (its id header), when it was recorded already, and its run. */
  recorded_delivery: string | null;
  recorded_run: string | null;
}

/**
 * The hook at /hooks/{circle}/{slug} when its element is ready, with its circle, the secrets
 * valid now, and the record of the delivery the request's id header names (a replay), in one
 * statement; nothing for an unknown circle or hook alike. By the element's slug: a slug is unique
 * among a circle's live elements, and a deleted webhook's slug may be taken again. The ids are
 * only read here: the caller trusts a recorded delivery only once the signature verified.
 */
export async function findWebhook(
  q: Queryable,
  circleSlug: string,
  slug: string,
  ids: { webhookId: string | null; githubDelivery: string | null; bodyId: string },
): Promise<FoundWebhook | undefined> {
  const r = await q.query<FoundWebhook>(FIND_WEBHOOK, [
    circleSlug,
    slug,
    ids.webhookId,
    ids.githubDelivery,
    ids.bodyId,
  ]);
  const row = r.rows[0];
  return row && { ...row, circle: isoFields(row.circle, ['created_at']) };
}

/** Adds a secret; the ones before it stay valid for `overlapMs` (0: they end now). */
export async function addWebhookSecret(
  q: Queryable,
  elementId: string,
  secret: string,
  overlapMs: number,
): Promise<{ previous_valid_until: string | null }> {
  const r = await q.query<{ until: string | null }>(
    `WITH old AS (
       UPDATE cairn.webhook_secrets SET expires_at = LEAST(coalesce(expires_at, 'infinity'),
              clock_timestamp() + make_interval(secs => $3 / 1000.0))
        WHERE element_id = $1 AND (expires_at IS NULL OR expires_at > clock_timestamp())
        RETURNING expires_at),
     ins AS (INSERT INTO cairn.webhook_secrets (id, element_id, secret) VALUES ($4, $1, $2))
     SELECT max(expires_at) AS until FROM old`,
    [elementId, secret, overlapMs, newId()],
  );
  const until = r.rows[0]?.until ?? null;
  return { previous_valid_until: until === null ? null : new Date(until).toISOString() };
}

/**
 * Records a delivery and the run it started: true for the first record of its id, false for a
 * replay (the run is the same: its idempotency key made it once).
 */
export async function recordDelivery(
  q: Queryable,
  elementId: string,
  circleId: string,
  deliveryId: string,
  bodySha256: string,
  runId: string,
): Promise<boolean> {
  const r = await q.query(RECORD_DELIVERY, [elementId, deliveryId, circleId, bodySha256, runId]);
  return r.rowCount === 1;
}
const RECORD_DELIVERY =
  prepared(`INSERT INTO cairn.webhook_deliveries (element_id, delivery_id, circle_id, body_sha256, run_id)
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`);

export async function listDeliveries(q: Queryable, elementId: string, limit: number) {
  const r = await q.query<{
    delivery_id: string;
    run_id: string | null;
    body_sha256: string;
    received_at: string;
  }>(
    `SELECT delivery_id, run_id, body_sha256, received_at FROM cairn.webhook_deliveries
      WHERE element_id = $1 ORDER BY received_at DESC LIMIT $2`,
    [elementId, limit],
  );
  return r.rows.map((x) => isoFields(x, ['received_at']));
}

// ---- upstream ------------------------------------------------------------------------------------

export interface UpstreamDef {
  elementId: string;
  circleId: string;
  sourceElementId: string;
  statuses: string[];
  target: TargetRow;
  input: unknown;
  maxDepth: number;
}

export async function upsertUpstream(q: Queryable, u: UpstreamDef): Promise<void> {
  await q.query(
    `INSERT INTO cairn.upstreams (element_id, circle_id, source_element_id, statuses, target, input, max_depth)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (element_id) DO UPDATE SET source_element_id = EXCLUDED.source_element_id,
       statuses = EXCLUDED.statuses, target = EXCLUDED.target, input = EXCLUDED.input,
       max_depth = EXCLUDED.max_depth, updated_at = clock_timestamp()`,
    [
      u.elementId,
      u.circleId,
      u.sourceElementId,
      u.statuses,
      JSON.stringify(u.target),
      JSON.stringify(u.input),
      u.maxDepth,
    ],
  );
}

export interface HandoffRow {
  id: string;
  upstream_id: string;
  upstream_slug: string;
  source_run_id: string;
  circle_id: string;
  source_status: string;
  target: TargetRow;
  input: unknown;
  max_depth: number;
}

/** Claims open outbox rows (a claim lapses after `leaseMs`, so a dead claimer's rows come back). */
export async function claimHandoffs(q: Queryable, limit: number, leaseMs: number): Promise<HandoffRow[]> {
  const r = await q.query<HandoffRow>(
    `WITH c AS (
       SELECT id FROM cairn.run_outbox
        WHERE done_at IS NULL AND (claimed_until IS NULL OR claimed_until < clock_timestamp())
        ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED),
     upd AS (
       UPDATE cairn.run_outbox o SET claimed_until = clock_timestamp() + make_interval(secs => $2 / 1000.0)
         FROM c WHERE o.id = c.id RETURNING o.*)
     SELECT upd.id::text AS id, upd.upstream_id, e.slug AS upstream_slug, upd.source_run_id, upd.circle_id,
            upd.source_status, u.target, u.input, u.max_depth
       FROM upd JOIN cairn.upstreams u ON u.element_id = upd.upstream_id
       JOIN cairn.elements e ON e.id = upd.upstream_id
      ORDER BY upd.id`,
    [limit, leaseMs],
  );
  return r.rows;
}

export async function finishHandoff(
  q: Queryable,
  id: string,
  runId: string | null,
  error: unknown,
): Promise<void> {
  await q.query(
    `UPDATE cairn.run_outbox SET done_at = clock_timestamp(), run_id = $2, error = $3 WHERE id = $1::bigint`,
    [id, runId, error === null ? null : JSON.stringify(error)],
  );
}

/** Gives a claimed outbox row back, to be claimed again after `afterMs`. */
export async function releaseHandoff(q: Queryable, id: string, afterMs: number): Promise<void> {
  await q.query(
    `UPDATE cairn.run_outbox SET claimed_until = clock_timestamp() + make_interval(secs => $2 / 1000.0)
      WHERE id = $1::bigint AND done_at IS NULL`,
    [id, afterMs],
  );
}

export async function listHandoffs(q: Queryable, upstreamId: string, limit: number) {
  const r = await q.query<{
    source_run_id: string;
    source_status: string;
    run_id: string | null;
    error: unknown;
    created_at: string;
    done_at: string | null;
  }>(
    `SELECT source_run_id, source_status, run_id, error, created_at, done_at FROM cairn.run_outbox
      WHERE upstream_id = $1 ORDER BY id DESC LIMIT $2`,
    [upstreamId, limit],
  );
  return r.rows.map((x) => isoFields(x, ['created_at', 'done_at']));
}

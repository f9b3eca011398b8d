/**
 * Run retention (issue 11): each circle's policy, what it keeps, and the
 * collector's batch — expired runs deleted with their items, audit trail,
 * element events, holds and idempotency answers, in one short transaction
 * that takes its runs FOR UPDATE SKIP LOCKED (any number of collectors may
 * run at once on one database: each takes other runs, none waits), and that
 * records what it deleted in cairn.retention_log. The ledger is kept forever.
 */
import type { Db, Queryable } from '../db/types.js';
import { RETENTION_MAX_DAYS, RETENTION_MIN_DAYS, type RetentionPolicy } from '../core/retention.js';
import { isoFields } from './rows.js';

export interface RetentionPolicyRow extends RetentionPolicy {
  circle_id: string;
  updated_at: string;
  updated_by: string;
}

export async function getRetentionPolicy(
  q: Queryable,
  circleId: string,
): Promise<RetentionPolicyRow | undefined> {
  const r = await q.query<RetentionPolicyRow>(
    `SELECT circle_id, days, failed_days, updated_at, updated_by FROM cairn.retention_policies
     WHERE circle_id = $1`,
    [circleId],
  );
  return r.rows[0] && isoFields(r.rows[0], ['updated_at']);
}

/** Replaces the circle's policy (the bounds are checked by the caller and again by the table's CHECK). */
export async function setRetentionPolicy(
  q: Queryable,
  circleId: string,
  policy: RetentionPolicy,
  actor: string,
): Promise<RetentionPolicyRow> {
  const r = await q.query<RetentionPolicyRow>(
    `INSERT INTO cairn.retention_policies (circle_id, days, failed_days, updated_by) VALUES ($1, $2, $3, $4)
     ON CONFLICT (circle_id) DO UPDATE SET days = $2, failed_days = $3, updated_by = $4,
       updated_at = clock_timestamp()
     RETURNING circle_id, days, failed_days, updated_at, updated_by`,
    [circleId, policy.days, policy.failed_days, actor],
  );
  return isoFields(r.rows[0]!, ['updated_at']);
}

/** Runs past the circle's retention: how many the collector will delete, and how many stay, and why. */
export interface RetentionStanding {
  /** Final runs past the policy that the collector deletes. */
  expired: number;
  kept: {
    /** Pinned (POST /api/runs/{id}/pin). */
    pinned: number;
    /** Pointed at (replay_of, rerun_of, parent_run_id, root_run_id) by a run that stays. */
    referenced: number;
  };
}

/**
 * What the policy means for the circle's runs now. A run past the policy stays when it
 * is pinned, or when a run that stays points at it (a run not past the policy, a
 * pinned one, or one that stays itself: the closure is followed).
 */
export async function retentionStanding(
  q: Queryable,
  circleId: string,
  instanceDefault: number,
): Promise<RetentionStanding> {
  const r = await q.query<{ past: number; pinned: number; referenced: number }>(
    `WITH RECURSIVE pol AS (
       SELECT p.days, p.failed_days FROM (SELECT 1) one
       LEFT JOIN cairn.retention_policies p ON p.circle_id = $1),
     past AS MATERIALIZED (
       SELECT r.id, r.pinned, r.replay_of, r.rerun_of, r.parent_run_id, nullif(r.root_run_id, r.id) AS root
       FROM cairn.runs r, pol
       WHERE r.circle_id = $1 AND r.status IN ('succeeded', 'completed', 'failed', 'cancelled')
         AND coalesce(r.finished_at, r.queued_at)
           < now() - make_interval(days => cairn.retention_days(r.status, pol.days, pol.failed_days, $2::int))),
     kept AS (
       SELECT t.id FROM past t
       WHERE NOT t.pinned AND (
         EXISTS (SELECT 1 FROM cairn.runs x WHERE x.replay_of = t.id AND x.id <> t.id
           AND (x.pinned OR NOT EXISTS (SELECT 1 FROM past y WHERE y.id = x.id)))
         OR EXISTS (SELECT 1 FROM cairn.runs x WHERE x.rerun_of = t.id AND x.id <> t.id
           AND (x.pinned OR NOT EXISTS (SELECT 1 FROM past y WHERE y.id = x.id)))
         OR EXISTS (SELECT 1 FROM cairn.runs x WHERE x.parent_run_id = t.id AND x.id <> t.id
           AND (x.pinned OR NOT EXISTS (SELECT 1 FROM past y WHERE y.id = x.id)))
         OR EXISTS (SELECT 1 FROM cairn.runs x WHERE x.root_run_id = t.id AND x.root_run_id <> x.id
           AND x.id <> t.id AND (x.pinned OR NOT EXISTS (SELECT 1 FROM past y WHERE y.id = x.id))))
       UNION
       SELECT t.id FROM kept k JOIN past s ON s.id = k.id
       JOIN past t ON t.id IN (s.replay_of, s.rerun_of, s.parent_run_id, s.root)
       WHERE NOT t.pinned)
     SELECT (SELECT count(*) FROM past)::int AS past,
       (SELECT count(*) FROM past WHERE pinned)::int AS pinned,
       (SELECT count(*) FROM kept)::int AS referenced`,
    [circleId, instanceDefault],
  );
  const row = r.rows[0]!;
  return {
    expired: row.past - row.pinned - row.referenced,
    kept: { pinned: row.pinned, referenced: row.referenced },
  };
}

/** What one batch deleted, in all and per circle. */
export interface RetentionCounts {
  runs: number;
  items: number;
  run_events: number;
  events: number;
  holds: number;
  idempotency: number;
}

/** What the collector deleted in a circle on a day (UTC). */
export interface RetentionLogRow extends RetentionCounts {
  day: string;
  batches: number;
  first_at: string;
  at: string;
}

export async function retentionHistory(
  q: Queryable,
  circleId: string,
  limit = 30,
): Promise<RetentionLogRow[]> {
  const r = await q.query<RetentionLogRow>(
    `SELECT day::text AS day, runs::float8 AS runs, items::float8 AS items, run_events::float8 AS run_events,
       events::float8 AS events, holds::float8 AS holds, idempotency::float8 AS idempotency, batches, first_at, at
     FROM cairn.retention_log WHERE circle_id = $1 ORDER BY day DESC LIMIT $2`,
    [circleId, limit],
  );
  return r.rows.map((x) => isoFields(x, ['first_at', 'at']));
}

export interface RetentionBatch extends RetentionCounts {
  /** Per circle id. */
  circles: Map<string, RetentionCounts>;
}

const COUNT_KEYS = ['runs', 'items', 'run_events', 'events', 'holds', 'idempotency'] as const;

function zero(): RetentionCounts {
  return { runs: 0, items: 0, run_events: 0, events: 0, holds: 0, idempotency: 0 };
}

/**
 * Expired runs, oldest first per circle and final status, locked for this
 * transaction; runs another transaction holds (a cancel, a pin, another
 * collector) are skipped, never waited for. A run is taken only when it is
 * final, not pinned, past its circle's policy, holds no credit and no run
 * points at it: a chain (a rerun of a rerun) goes from its newest end, one
 * batch per link. `now()` is the transaction's start, as for the trigger that
 * checks each deleted audit row (cairn.run_expired). The checks are one
 * NOT (… OR …) of subqueries that each compare with the candidate by more than
 * one equality, so the planner probes them per candidate (index lookups) in the
 * index's order and stops at the limit, instead of anti-joining or hashing
 * whole tables (and JIT is off: the estimate is high, the work small).
 */
const TAKE_EXPIRED = `
SELECT r.id, r.circle_id FROM cairn.circles c
LEFT JOIN cairn.retention_policies p ON p.circle_id = c.id
CROSS JOIN (VALUES ('succeeded'), ('completed'), ('failed'), ('cancelled')) AS s (status)
CROSS JOIN LATERAL (
  SELECT r.id, r.circle_id FROM cairn.runs r
  WHERE r.circle_id = c.id AND r.status = s.status
    AND r.status IN ('succeeded', 'completed', 'failed', 'cancelled') AND NOT r.pinned
    AND coalesce(r.finished_at, r.queued_at)
      < now() - make_interval(days => cairn.retention_days(s.status, p.days, p.failed_days, $1::int))
    AND NOT (EXISTS (SELECT 1 FROM cairn.runs x WHERE x.replay_of = r.id AND x.id <> r.id)
      OR EXISTS (SELECT 1 FROM cairn.runs x WHERE x.rerun_of = r.id AND x.id <> r.id)
      OR EXISTS (SELECT 1 FROM cairn.runs x WHERE x.parent_run_id = r.id AND x.id <> r.id)
      OR EXISTS (SELECT 1 FROM cairn.runs x WHERE x.root_run_id = r.id AND x.root_run_id <> x.id AND x.id <> r.id)
      OR coalesce((SELECT h.held FROM cairn.run_holds h WHERE h.run_id = r.id), 0) > 0)
  ORDER BY coalesce(r.finished_at, r.queued_at)
  LIMIT $2
  FOR UPDATE OF r SKIP LOCKED) r
LIMIT $2`;

/** Deletes from `table` the rows of the runs `$1`, counted per circle. */
const deleteOf = (table: string, column = 'run_id') => `
WITH d AS (DELETE FROM cairn.${table} WHERE ${column} = ANY($1::uuid[]) RETURNING circle_id)
SELECT circle_id, count(*)::int AS n FROM d GROUP BY circle_id`;

/** Stored answers of state-changing requests about the runs (an invoke's, a rerun's, a retry's). */
const DELETE_IDEMPOTENCY = `
WITH d AS (
  DELETE FROM cairn.idempotency WHERE circle_id = ANY($2::uuid[])
    AND (answer ->> 'run_id' = ANY($1::text[]) OR answer -> 'run' ->> 'id' = ANY($1::text[])
      OR (answer ? 'run_url' AND answer ->> 'id' = ANY($1::text[])))
  RETURNING circle_id)
SELECT circle_id, count(*)::int AS n FROM d GROUP BY circle_id`;

const LOG = `
INSERT INTO cairn.retention_log AS l (circle_id, day, runs, items, run_events, events, holds, idempotency, batches)
VALUES ($1, (now() AT TIME ZONE 'UTC')::date, $2, $3, $4, $5, $6, $7, 1)
ON CONFLICT (circle_id, day) DO UPDATE SET runs = l.runs + $2, items = l.items + $3,
  run_events = l.run_events + $4, events = l.events + $5, holds = l.holds + $6,
  idempotency = l.idempotency + $7, batches = l.batches + 1, at = clock_timestamp()`;

/**
 * One batch of the collector: takes up to `limit` expired runs and deletes
 * them with everything recorded about them but their ledger transfers, in one
 * transaction. The audit trail's trigger lets these DELETEs through only
 * because the transaction turns retention on and each run is final and
 * expired. The log rows are written last, in circle order, so two collectors
 * finishing at once queue on them briefly instead of deadlocking.
 */
export async function collectExpired(
  db: Db,
  opts: { defaultDays: number; limit: number },
): Promise<RetentionBatch> {
  const days = Math.trunc(opts.defaultDays);
  if (!(days >= RETENTION_MIN_DAYS && days <= RETENTION_MAX_DAYS))
    throw new RangeError(`retention default ${opts.defaultDays} days is out of bounds`);
  return db.transaction(async (tx) => {
    // JIT would compile this plan on every batch (its estimated cost is high, its real cost an index range).
    await tx.query(`SET LOCAL jit = off`);
    await tx.query(`SET LOCAL cairn.retention = 'on'`);
    await tx.query(`SET LOCAL cairn.retention_default_days = ${days}`);
    const taken = await tx.query<{ id: string; circle_id: string }>(TAKE_EXPIRED, [days, opts.limit]);
    const batch: RetentionBatch = { ...zero(), circles: new Map() };
    if (taken.rows.length === 0) return batch;
    const ids = taken.rows.map((r) => r.id);
    const circleIds = [...new Set(taken.rows.map((r) => r.circle_id))].sort();
    const add = (key: (typeof COUNT_KEYS)[number], rows: { circle_id: string; n: number }[]) => {
      for (const { circle_id, n } of rows) {
        let c = batch.circles.get(circle_id);
        if (!c) batch.circles.set(circle_id, (c = zero()));
        c[key] += n;
        batch[key] += n;
      }
    };
    // Children first (the foreign keys point at the run), the run last.
    add('events', (await tx.query<{ circle_id: string; n: number }>(deleteOf('events'), [ids])).rows);
    add('run_events', (await tx.query<{ circle_id: string; n: number }>(deleteOf('run_events'), [ids])).rows);
    add('items', (await tx.query<{ circle_id: string; n: number }>(deleteOf('items'), [ids])).rows);
    add('holds', (await tx.query<{ circle_id: string; n: number }>(deleteOf('run_holds'), [ids])).rows);
    add(
      'idempotency',
      (await tx.query<{ circle_id: string; n: number }>(DELETE_IDEMPOTENCY, [ids, circleIds])).rows,
    );
    const hashes = (
      await tx.query<{ h: string }>(
        `SELECT DISTINCT snapshot_hash AS h FROM cairn.runs WHERE id = ANY($1::uuid[]) AND snapshot_hash IS NOT NULL`,
        [ids],
      )
    ).rows.map((x) => x.h);
    add('runs', (await tx.query<{ circle_id: string; n: number }>(deleteOf('runs', 'id'), [ids])).rows);
    // Snapshots no run refers to any more go too. A run being created with one of them right now
    // holds it (its foreign key), so that delete fails alone (a savepoint) and the snapshot stays.
    if (hashes.length > 0) {
      await tx.query('SAVEPOINT snapshots');
      try {
        await tx.query(
          `DELETE FROM cairn.snapshots s WHERE s.hash = ANY($1::text[])
             AND NOT EXISTS (SELECT 1 FROM cairn.runs r WHERE r.snapshot_hash = s.hash)`,
          [hashes],
        );
        await tx.query('RELEASE SAVEPOINT snapshots');
      } catch {
        await tx.query('ROLLBACK TO SAVEPOINT snapshots');
      }
    }
    for (const id of [...batch.circles.keys()].sort()) {
      const c = batch.circles.get(id)!;
      await tx.query(LOG, [id, ...COUNT_KEYS.map((k) => c[k])]);
    }
    return batch;
  });
}

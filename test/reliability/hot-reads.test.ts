import { afterAll, beforeAll, expect, it } from 'vitest';
import type { Db, Queryable, QueryResult } from '../../src/db/types.js';
import { describeEachDriver } from '../helpers/db.js';
import { createCircle } from '../../src/store/circles.js';
import { getRun, listItems, listRuns, runEvents } from '../../src/store/runs.js';
import { elementEvents, elementStats, foldElementStats } from '../../src/store/stats.js';
import { claimRuns, recoverExpired } from '../../src/store/queue.js';

/** Records the statement a store function sends, instead of running it. */
function capture(): { q: Queryable; sent: { sql: string; params: unknown[] }[] } {
  const sent: { sql: string; params: unknown[] }[] = [];
  const q: Queryable = {
    query: async <T>(sql: string, params: unknown[] = []) => {
      sent.push({ sql, params });
      return { rows: [], rowCount: 0 } as unknown as QueryResult<T>;
    },
    exec: async () => undefined,
  };
  return { q, sent };
}

interface PlanNode {
  'Node Type': string;
  'Relation Name'?: string;
  'Index Name'?: string;
  Plans?: PlanNode[];
}

function nodes(p: PlanNode): PlanNode[] {
  return [p, ...(p.Plans ?? []).flatMap(nodes)];
}

async function plan(db: Db, sql: string, params: unknown[]): Promise<PlanNode> {
  const r = await db.query<{ 'QUERY PLAN': [{ Plan: PlanNode }] | string }>(
    `EXPLAIN (FORMAT JSON) ${sql}`,
    params,
  );
  const raw = r.rows[0]!['QUERY PLAN'];
  return (typeof raw === 'string' ? JSON.parse(raw) : raw)[0].Plan;
}

const RUN_TABLES = ['runs', 'items', 'run_events', 'events'];

/** A read that is an index range scan stopping at its limit: Limit on top, no Sort, no Seq Scan of a run table. */
function expectRangeScan(p: PlanNode, what: string): void {
  const all = nodes(p);
  const text = JSON.stringify(all.map((n) => [n['Node Type'], n['Relation Name'], n['Index Name']]));
  expect(p['Node Type'], `${what}: ${text}`).toBe('Limit');
  expect(
    all.filter((n) => n['Node Type'] === 'Sort' || n['Node Type'] === 'Incremental Sort'),
    `${what} sorts: ${text}`,
  ).toEqual([]);
  expect(
    all.filter((n) => n['Node Type'] === 'Seq Scan' && RUN_TABLES.includes(n['Relation Name'] ?? '')),
    `${what} scans a table: ${text}`,
  ).toEqual([]);
}

/**
 * Issue 11, step 1: the reads the API serves stay flat as history grows. With
 * a history of 20,000 runs (a few of them failed, two elements, items, audit
 * and element events) and fresh statistics, every hot read is an index range
 * scan that stops at its limit, and `stats` never reads the runs at all.
 */
describeEachDriver('hot reads at scale', ({ db }) => {
  let circleId: string;
  let elementA: string;
  let runId: string;
  let batchRun: string;

  beforeAll(async () => {
    const c = await createCircle(db(), 'hot');
    circleId = c.id;
    const ids = await db().query<{ id: string }>(
      `INSERT INTO cairn.elements (id, circle_id, slug, element_type, category, name, spec, version, definition_hash)
       SELECT gen_random_uuid(), $1, s, 'sql', 'data', s, '{"query": "select 1"}', 1, 'h'
       FROM unnest(ARRAY['a', 'b']) AS s RETURNING id`,
      [circleId],
    );
    elementA = ids.rows[0]!.id;
    const elementB = ids.rows[1]!.id;
    // 20,000 finished runs over the last week, 1 in 500 failed, one item and three audit events each.
    await db().query(
      `INSERT INTO cairn.runs (id, circle_id, kind, element_id, element_slug, element_type, operation, status,
         trigger, engine_version, trace_id, queued_at, started_at, finished_at, duration_ms, items_total,
         items_succeeded, items_failed)
       SELECT gen_random_uuid(), $1, 'invoke', CASE WHEN g % 4 = 0 THEN $3::uuid ELSE $2::uuid END,
         CASE WHEN g % 4 = 0 THEN 'b' ELSE 'a' END, 'sql', 'invoke',
         CASE WHEN g % 500 = 0 THEN 'failed' ELSE 'succeeded' END, '{"type": "api"}', 'test', 't' || g,
         now() - make_interval(secs => (20000 - g) * 30), now() - make_interval(secs => (20000 - g) * 30),
         now() - make_interval(secs => (20000 - g) * 30) + interval '3 ms', 3 + g % 7, 1,
         CASE WHEN g % 500 = 0 THEN 0 ELSE 1 END, CASE WHEN g % 500 = 0 THEN 1 ELSE 0 END
       FROM generate_series(1, 20000) AS g`,
      [circleId, elementA, elementB],
    );
    await db().query(
      `INSERT INTO cairn.items (id, run_id, circle_id, key, status)
       SELECT gen_random_uuid(), id, circle_id, 'invoke', status FROM cairn.runs WHERE circle_id = $1`,
      [circleId],
    );
    await db().query(
      `INSERT INTO cairn.run_events (run_id, circle_id, type, from_status, to_status, actor)
       SELECT r.id, r.circle_id, 'status', t.f, t.t, 'test' FROM cairn.runs r,
         (VALUES (NULL, 'queued'), ('queued', 'running'), ('running', 'succeeded')) AS t (f, t)
       WHERE r.circle_id = $1`,
      [circleId],
    );
    await db().query(
      `INSERT INTO cairn.events (circle_id, run_id, element_id, name)
       SELECT circle_id, id, element_id, 'sql.completed' FROM cairn.runs WHERE circle_id = $1`,
      [circleId],
    );
    runId = (
      await db().query<{ id: string }>('SELECT id FROM cairn.runs WHERE circle_id = $1 LIMIT 1', [circleId])
    ).rows[0]!.id;
    // One batch run with 5,000 items, a third of them failed: its item pages read in row order.
    batchRun = (
      await db().query<{ id: string }>(
        `INSERT INTO cairn.runs (id, circle_id, kind, element_id, element_slug, element_type, operation, status,
           trigger, engine_version, trace_id, items_total)
         VALUES (gen_random_uuid(), $1, 'batch', $2, 'a', 'sql', 'run', 'running', '{}', 'test', 'b', 5000)
         RETURNING id`,
        [circleId, elementA],
      )
    ).rows[0]!.id;
    await db().query(
      `INSERT INTO cairn.items (id, run_id, circle_id, key, ord, status)
       SELECT gen_random_uuid(), $1, $2, 'row-' || g, g, CASE WHEN g % 3 = 0 THEN 'failed' ELSE 'succeeded' END
       FROM generate_series(1, 5000) AS g`,
      [batchRun, circleId],
    );
    await db().exec('ANALYZE');
  }, 120_000);

  afterAll(() => undefined);

  it('the runs list, by status, by element, and its next pages, stop at their limit', async () => {
    const { q, sent } = capture();
    const before = '0190e2a4-0000-7000-8000-000000000000';
    await listRuns(q, { circleId, limit: 50 });
    await listRuns(q, { circleId, statuses: ['succeeded'], limit: 50 });
    await listRuns(q, { circleId, statuses: ['failed'], limit: 50 });
    await listRuns(q, { circleId, elementSlug: 'b', limit: 50 });
    await listRuns(q, { circleId, elementId: elementA, limit: 50 });
    await listRuns(q, { circleId, before, limit: 50 });
    await listRuns(q, { circleId, statuses: ['failed'], before, limit: 50 });
    for (const s of sent) expectRangeScan(await plan(db(), s.sql, s.params), s.sql);
  });

  it("a run's items, audit trail and an element's events are index reads", async () => {
    const { q, sent } = capture();
    await listItems(q, batchRun, { limit: 100 });
    await listItems(q, batchRun, { status: 'failed', limit: 100 });
    await listItems(q, batchRun, { afterOrd: 4000, limit: 100 });
    await elementEvents(q, elementA, 50);
    await elementEvents(q, elementA, 50, 1_000);
    for (const s of sent) expectRangeScan(await plan(db(), s.sql, s.params), s.sql);
    const single = capture();
    await getRun(single.q, runId);
    await runEvents(single.q, runId);
    for (const s of single.sent) {
      const all = nodes(await plan(db(), s.sql, s.params));
      expect(
        all.some((n) => n['Node Type'] === 'Seq Scan'),
        s.sql,
      ).toBe(false);
    }
  });

  it('stats reads the rollups, never the runs, and counts what the runs hold', async () => {
    const { q, sent } = capture();
    const since = new Date(Date.now() - 7 * 86_400_000).toISOString();
    // The capture answers no rows; only the statement it sent is wanted here.
    await elementStats(q, elementA, since).catch(() => undefined);
    const all = nodes(await plan(db(), sent[0]!.sql, sent[0]!.params));
    expect(all.filter((n) => n['Relation Name'] === 'runs')).toEqual([]);
    // The same figures as an aggregate over the runs themselves (the window at minute resolution).
    const s = await elementStats(db(), elementA, since);
    const exact = (
      await db().query<{ runs: number; failed: number; succeeded: number }>(
        `SELECT count(*)::int AS runs, count(*) FILTER (WHERE status = 'failed')::int AS failed,
           count(*) FILTER (WHERE status = 'succeeded')::int AS succeeded
         FROM cairn.runs WHERE element_id = $1 AND queued_at >= date_trunc('minute', $2::timestamptz)`,
        [elementA, since],
      )
    ).rows[0]!;
    expect({ runs: s.runs, failed: s.failed, succeeded: s.succeeded }).toEqual(exact);
    expect(s.active).toBe(1); // the running batch
    expect(s.avg_duration_ms).toBeGreaterThan(3);
    expect(s.avg_duration_ms).toBeLessThan(10);
    expect(s.p95_duration_ms).toBeGreaterThanOrEqual(9 / 1.19);
    expect(s.p95_duration_ms).toBeLessThanOrEqual(9 * 1.19);
    // Folding (two workers at once) moves every delta into the rollups exactly once: same figures after.
    const folded = await Promise.all([foldElementStats(db()), foldElementStats(db())]);
    expect(folded[0]! + folded[1]!).toBeGreaterThan(0);
    const left = await db().query<{ n: number }>('SELECT count(*)::int AS n FROM cairn.element_stat_deltas');
    expect(left.rows[0]!.n).toBe(0);
    expect(await elementStats(db(), elementA, since)).toEqual(s);
  });

  it("the worker's sweeps (claim, recovery) are index reads", async () => {
    const { q, sent } = capture();
    await claimRuns(q, 'w', 'h', 8, 30_000);
    await recoverExpired(q, 'reaper');
    for (const s of sent) {
      const all = nodes(await plan(db(), s.sql, s.params));
      const scans = all.filter(
        (n) => n['Node Type'] === 'Seq Scan' && RUN_TABLES.includes(n['Relation Name'] ?? ''),
      );
      expect(scans, s.sql.slice(0, 200)).toEqual([]);
    }
  });
});

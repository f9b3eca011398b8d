import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeEachDriver, freshDb } from '../helpers/db.js';
import { expectTypedError, testApp, type TestApp } from '../helpers/app.js';
import { cairn, cliAgainst, ensureBuilt, until, type Proc } from '../helpers/bin.js';
import { loadConfig } from '../../src/config.js';
import { PgDb } from '../../src/db/pg.js';
import type { Db, Queryable } from '../../src/db/types.js';
import { RetentionSystem } from '../../src/engine/retention.js';
import { submitRun } from '../../src/engine/submit.js';
import { getType, operationsOf } from '../../src/elements/registry.js';
import { getElement } from '../../src/store/elements.js';
import pg from 'pg';
import { WorkerHealth } from '../../src/engine/health.js';
import { Worker } from '../../src/engine/worker.js';
import { Sandbox, sandboxOptions } from '../../src/sandbox/runner.js';
import { claimRuns, settleRuns, type Settlement } from '../../src/store/queue.js';
import { circleIdentity, getCircleBySlug } from '../../src/store/circles.js';
import { getWallet, listGrants } from '../../src/store/ledger.js';
import { silentLogger } from '../../src/telemetry/log.js';

/**
 * Issue 11, step 5: run retention. Expired runs go with their items, audit
 * trail, element events and holds; pinned, referenced and unfinished runs stay;
 * the ledger stays and still balances; the collector's log says what it
 * deleted; the audit trail stays append-only for live runs; two collectors on
 * one PostgreSQL delete each run exactly once.
 */
type C = Awaited<ReturnType<TestApp['circle']>>;

const W = 'w-retention';

const settlement = (id: string, ok: boolean): Settlement => ({
  id,
  status: ok ? 'succeeded' : 'failed',
  output: ok ? { n: 1 } : null,
  error: ok ? null : { code: 'X', class: 'internal', message: 'x', retryable: false, _suggestion: 'x' },
  credits: ok ? 1000 : 0,
  evidence: {},
  events: [['test.settled', Date.now(), { ok }]],
});

/** Moves runs back in time, as if they had ended `days` days ago. */
async function age(q: Queryable, ids: string[], days: number): Promise<void> {
  await q.query(
    `UPDATE cairn.runs SET queued_at = queued_at - make_interval(days => $2),
       run_after = run_after - make_interval(days => $2),
       started_at = started_at - make_interval(days => $2), finished_at = finished_at - make_interval(days => $2)
     WHERE id = ANY($1::uuid[])`,
    [ids, days],
  );
}

async function count(q: Queryable, sql: string, params: unknown[]): Promise<number> {
  return Number((await q.query<{ n: number }>(sql, params)).rows[0]!.n);
}

/** Everything recorded about these runs, table by table. */
async function recorded(q: Queryable, ids: string[]) {
  const n = (table: string, col = 'run_id') =>
    count(q, `SELECT count(*)::int AS n FROM cairn.${table} WHERE ${col} = ANY($1::uuid[])`, [ids]);
  return {
    runs: await n('runs', 'id'),
    items: await n('items'),
    run_events: await n('run_events'),
    events: await n('events'),
    holds: await n('run_holds'),
    transfers: await n('ledger_transfers'),
  };
}

/** The wallet agrees with its ledger: what was granted, captured, expired and is still held. */
async function expectBalanced(q: Queryable, circleId: string): Promise<void> {
  const w = await getWallet(q, circleId);
  const sum = (where: string, expr = 'amount') =>
    count(
      q,
      `SELECT coalesce(sum(${expr}), 0)::float8 AS n FROM cairn.ledger_transfers WHERE circle_id = $1 AND ${where}`,
      [circleId],
    );
  expect(w.credits_posted).toBe(await sum(`kind = 'grant'`));
  expect(w.debits_posted).toBe((await sum(`kind = 'capture'`)) + (await sum(`kind = 'expire'`)));
  expect(w.debits_pending).toBe(
    (await sum(`kind = 'reserve'`)) -
      (await sum(`kind = 'capture'`, `(data ->> 'from_hold')::bigint`)) -
      (await sum(`kind = 'release'`)),
  );
  expect(w.debits_pending).toBe(
    await count(q, 'SELECT coalesce(sum(held), 0)::float8 AS n FROM cairn.run_holds WHERE circle_id = $1', [
      circleId,
    ]),
  );
  expect((await listGrants(q, circleId)).reduce((s, g) => s + g.remaining, 0)).toBe(w.balance);
}

describeEachDriver('run retention', ({ db, url, driver }) => {
  let t: TestApp;
  let keep: C;
  let fail: C;
  let short: C;
  const collector = (batchSize = 500) =>
    new RetentionSystem(
      { db: db(), log: silentLogger, health: new WorkerHealth() },
      { defaultDays: 30, batchSize, maxBatches: 50 },
    );

  /** Queued invokes of the circle's `one` element (no worker runs here: the test settles them). */
  async function invoke(c: C, n: number): Promise<string[]> {
    const ids: string[] = [];
    for (let i = 0; i < n; i++) {
      const r = await t.call('POST', `/api/${c.slug}/one/ops/invoke?async=1`, {}, c.tokens.execute);
      expect(r.status, JSON.stringify(r.body)).toBe(202);
      ids.push(r.body.run_id);
    }
    return ids;
  }

  /** Claims every queued run and settles those listed (ok or failed); the others stay running. */
  async function finish(ok: string[], failed: string[] = []): Promise<void> {
    await claimRuns(db(), W, 'h', 500, 600_000);
    await settleRuns(db(), W, [
      ...ok.map((id) => settlement(id, true)),
      ...failed.map((id) => settlement(id, false)),
    ]);
  }

  beforeAll(async () => {
    t = await testApp(db(), { worker: false });
    keep = await t.circle('keep');
    fail = await t.circle('fail');
    short = await t.circle('short');
    for (const c of [keep, fail, short])
      expect(
        (
          await t.call(
            'POST',
            `/api/${c.slug}/ops/create`,
            { element_type: 'sql', slug: 'one', spec: { query: 'select 1 as n' } },
            c.tokens.write,
          )
        ).status,
      ).toBe(201);
  });
  afterAll(() => t.close());

  it('a rerun created while its source is collected holds the source, and one of a deleted run fails typed', async () => {
    const d = db();
    // Its own circle: the other cases count what the collector deleted in theirs.
    const race = await t.call('POST', '/api/circles', { slug: 'rerun-race' });
    expect(race.status).toBe(201);
    const rc = { ...keep, id: race.body.id as string, slug: 'rerun-race' };
    rc.tokens = { ...keep.tokens };
    for (const role of ['read', 'write', 'execute', 'admin'] as const)
      rc.tokens[role] = (await t.call('POST', '/api/rerun-race/tokens', { role })).body.token;
    expect(
      (
        await t.call(
          'POST',
          '/api/rerun-race/ops/create',
          { element_type: 'sql', slug: 'one', spec: { query: 'select 1 as n' } },
          rc.tokens.write,
        )
      ).status,
    ).toBe(201);
    const [src, gone] = await invoke(rc, 2);
    await finish([src!, gone!]);
    await age(d, [src!, gone!], 40);
    const exists = async (id: string) =>
      count(d, 'SELECT count(*)::int AS n FROM cairn.runs WHERE id = $1', [id]);
    if (driver === 'pg') {
      // A rerun being created (not committed yet): its foreign key holds the source (FOR KEY SHARE),
      // which the collector's FOR UPDATE SKIP LOCKED passes by; once committed it references the source.
      const other = new pg.Client({ connectionString: url()! });
      await other.connect();
      try {
        await other.query('BEGIN');
        await other.query(
          `INSERT INTO cairn.runs (id, circle_id, kind, element_id, element_slug, element_type, operation, status,
             trigger, engine_version, trace_id, rerun_of)
           SELECT gen_random_uuid(), circle_id, kind, element_id, element_slug, element_type, operation, 'queued',
             trigger, engine_version, trace_id, id FROM cairn.runs WHERE id = $1`,
          [src],
        );
        await collector().collect();
        expect(await exists(src!)).toBe(1);
        await other.query('COMMIT');
      } finally {
        await other.end();
      }
      await collector().collect();
      expect(await exists(src!)).toBe(1); // referenced now
    }
    await collector().collect();
    expect(await exists(gone!)).toBe(0);
    // The API checks the run first (404); a submit that raced the collector meets the foreign key: typed.
    const c = (await getCircleBySlug(d, 'rerun-race'))!;
    const element = (await getElement(d, c.id, 'one'))!;
    const type = getType('sql');
    const op = operationsOf(type).find((o) => o.name === 'invoke')!;
    const trigger = { type: 'api', source: null, actor: 'test' };
    await expect(
      submitRun(d, { circle: c, element, type, op, input: {}, trigger, rerunOf: gone! }, {}),
    ).rejects.toMatchObject({
      code: 'RUN_NOT_FOUND',
      status: 404,
    });
  });

  it('deletes expired runs with their items, audit trail and events; pinned, referenced, unfinished and recent runs stay; the ledger stays', async () => {
    const d = db();
    const keepId = (await getCircleBySlug(d, 'keep'))!.id;
    // keep: the instance default (30 days).
    // gone1 is created with an Idempotency-Key: its stored answer goes with it.
    const keyed = { 'idempotency-key': 'k-gone' };
    const gone1 = (
      await t.call('POST', `/api/${keep.slug}/one/ops/invoke?async=1`, {}, keep.tokens.execute, keyed)
    ).body.run_id as string;
    const [gone2, pinned, referenced, chainA, recent, running] = await invoke(keep, 6);
    await finish([gone1, gone2!, pinned!, referenced!, chainA!, recent!]);
    // `running` is left running (claimed, never settled): not final.
    // A rerun of `referenced` that stays (recent), and a chain chainA ← chainB, both expired.
    const rerun = await t.call('POST', `/api/runs/${referenced}/rerun`, {}, keep.tokens.execute);
    expect(rerun.status).toBe(201);
    const chain = await t.call('POST', `/api/runs/${chainA}/rerun`, {}, keep.tokens.execute, {
      'idempotency-key': 'k-chain',
    });
    expect(chain.status).toBe(201);
    const chainB = chain.body.id as string;
    await finish([rerun.body.id, chainB]);
    // Queued after the last claim: it stays queued.
    const [queued] = await invoke(keep, 1);
    expect(
      (await t.call('POST', `/api/runs/${pinned}/pin`, { reason: 'evidence' }, keep.tokens.execute)).body
        .pinned,
    ).toBe(true);

    const expired = [gone1, gone2!, chainA!, chainB];
    const old = [...expired, pinned!, referenced!, running!, queued!];
    await age(d, old, 40);
    const before = await recorded(d, expired);
    expect(before.runs).toBe(4);
    expect(before.items).toBe(4);
    expect(before.events).toBe(4);
    expect(before.run_events).toBeGreaterThanOrEqual(4 * 3);
    expect(before.transfers).toBeGreaterThanOrEqual(4 * 2); // reserve, capture (and a release)
    await expectBalanced(d, keepId);

    // The policy endpoint tells what the collector will delete and what stays, and why.
    const view = await t.call('GET', `/api/${keep.slug}/retention`, undefined, keep.tokens.admin);
    expect(view.status).toBe(200);
    expect(view.body).toMatchObject({
      circle: 'keep',
      days: 30,
      failed_days: 30,
      inherited: true,
      policy: null,
      expired: 4,
      kept: { pinned: 1, referenced: 1 },
    });

    expect(
      await count(
        d,
        `SELECT count(*)::int AS n FROM cairn.idempotency WHERE key IN ('k-gone', 'k-chain')`,
        [],
      ),
    ).toBe(2);
    const pass = await collector().collect();
    expect(pass.runs).toBe(4);
    expect(pass.batches).toBe(2); // chainB first, then chainA, which nothing points at any more
    expect(pass.idempotency).toBe(2); // the invoke's 202 answer and the rerun's 201 answer
    expect(
      await count(
        d,
        `SELECT count(*)::int AS n FROM cairn.idempotency WHERE key IN ('k-gone', 'k-chain')`,
        [],
      ),
    ).toBe(0);

    const after = await recorded(d, expired);
    expect(after).toEqual({
      runs: 0,
      items: 0,
      run_events: 0,
      events: 0,
      holds: 0,
      transfers: before.transfers,
    });
    const stay = [pinned!, referenced!, running!, queued!, recent!, rerun.body.id];
    expect((await recorded(d, stay)).runs).toBe(stay.length);
    await expectBalanced(d, keepId);

    const log = await d.query<{
      runs: number;
      items: number;
      run_events: number;
      events: number;
      day: string;
    }>(
      `SELECT runs::int, items::int, run_events::int, events::int, day::text FROM cairn.retention_log
       WHERE circle_id = $1`,
      [keepId],
    );
    expect(log.rows).toEqual([
      {
        runs: 4,
        items: 4,
        run_events: before.run_events,
        events: 4,
        day: new Date().toISOString().slice(0, 10),
      },
    ]);
    const again = await t.call('GET', `/api/${keep.slug}/retention`, undefined, keep.tokens.admin);
    expect(again.body.expired).toBe(0);
    expect(again.body.kept).toEqual({ pinned: 1, referenced: 1 });
    expect(again.body.history[0]).toMatchObject({ runs: 4, items: 4, events: 4 });

    // Nothing more to do; unpinned, the pinned run goes at the next pass.
    expect((await collector().collect()).runs).toBe(0);
    expect((await t.call('POST', `/api/runs/${pinned}/unpin`, {}, keep.tokens.execute)).body.pinned).toBe(
      false,
    );
    expect((await collector().collect()).runs).toBe(1);
    expect((await recorded(d, [pinned!])).runs).toBe(0);
    await expectBalanced(d, keepId);
  });

  it('keeps failed runs failed_days, and a circle policy overrides the instance default', async () => {
    const d = db();
    const set = await t.call(
      'PUT',
      `/api/${fail.slug}/retention`,
      { days: 30, failed_days: 90 },
      fail.tokens.admin,
    );
    expect(set.status).toBe(200);
    expect(set.body).toMatchObject({
      days: 30,
      failed_days: 90,
      inherited: false,
      policy: { days: 30, failed_days: 90 },
    });
    const [ok40, failed40, failed100, ok10] = await invoke(fail, 4);
    await finish([ok40!, ok10!], [failed40!, failed100!]);
    await age(d, [ok40!, failed40!], 40);
    await age(d, [failed100!], 100);
    await age(d, [ok10!], 10);

    expect((await t.call('PUT', `/api/${short.slug}/retention`, { days: 7 }, t.admin)).body).toMatchObject({
      days: 7,
      failed_days: 7,
    });
    const [s10, s3] = await invoke(short, 2);
    await finish([s10!, s3!]);
    await age(d, [s10!], 10);
    await age(d, [s3!], 3);

    await collector().collect();
    const exists = async (id: string) => (await recorded(d, [id])).runs === 1;
    expect(await exists(ok40!)).toBe(false);
    expect(await exists(failed40!)).toBe(true); // failed: kept 90 days
    expect(await exists(failed100!)).toBe(false);
    expect(await exists(ok10!)).toBe(true);
    expect(await exists(s10!)).toBe(false); // short: 7 days
    expect(await exists(s3!)).toBe(true);
    await expectBalanced(d, (await getCircleBySlug(d, 'fail'))!.id);
    await expectBalanced(d, (await getCircleBySlug(d, 'short'))!.id);
  });

  it('the audit trail stays append-only for live runs: UPDATE never, DELETE only by retention of expired runs', async () => {
    const d = db();
    const [live, recentDone, oldPinned] = await invoke(keep, 3);
    await finish([recentDone!, oldPinned!]);
    await age(d, [oldPinned!], 40);
    await t.call('POST', `/api/runs/${oldPinned}/pin`, {}, keep.tokens.execute);
    // The live run has no element event yet (they come with the settle): give it one.
    await d.query(
      `INSERT INTO cairn.events (circle_id, run_id, name) SELECT circle_id, id, 'test.live' FROM cairn.runs WHERE id = $1`,
      [live],
    );
    const refused = (p: Promise<unknown>) =>
      p.then(
        () => 'ok',
        (e: { message: string }) => e.message,
      );
    // Outside the collector: refused, for any run.
    for (const id of [live!, recentDone!]) {
      expect(
        await refused(d.query(`UPDATE cairn.run_events SET actor = 'forged' WHERE run_id = $1`, [id])),
      ).toMatch(/append-only/);
      expect(await refused(d.query('DELETE FROM cairn.run_events WHERE run_id = $1', [id]))).toMatch(
        /append-only/,
      );
      expect(await refused(d.query('DELETE FROM cairn.events WHERE run_id = $1', [id]))).toMatch(
        /append-only/,
      );
    }
    // With retention on: DELETE still refused for a live run, a recent one and a pinned one; UPDATE,
    // TRUNCATE and the ledger are refused always.
    const inRetention = (sql: string, params: unknown[] = []) =>
      refused(
        d.transaction(async (tx) => {
          await tx.query(`SET LOCAL cairn.retention = 'on'`);
          await tx.query(sql, params);
        }),
      );
    for (const id of [live!, recentDone!, oldPinned!]) {
      expect(await inRetention('DELETE FROM cairn.run_events WHERE run_id = $1', [id])).toMatch(
        /append-only: run .* is not final and past its retention/,
      );
      expect(await inRetention('DELETE FROM cairn.events WHERE run_id = $1', [id])).toMatch(/append-only/);
      expect(
        await inRetention(`UPDATE cairn.run_events SET actor = 'forged' WHERE run_id = $1`, [id]),
      ).toMatch(/append-only/);
    }
    expect(await inRetention('TRUNCATE cairn.run_events')).toMatch(/append-only/);
    expect(await inRetention('TRUNCATE cairn.events')).toMatch(/append-only/);
    expect(await inRetention('DELETE FROM cairn.ledger_transfers WHERE run_id = $1', [oldPinned])).toMatch(
      /append-only/,
    );
    expect((await recorded(d, [live!, recentDone!, oldPinned!])).run_events).toBeGreaterThanOrEqual(3 * 2);

    // A circle's role has no privilege on the platform's tables at all (guard bypassed, as if it had a hole).
    const circle = (await getCircleBySlug(d, 'keep'))!;
    const code = await d
      .asCircle(circleIdentity(circle), async (s) => {
        await s.query(`SET LOCAL cairn.retention = 'on'`);
        await s.query('DELETE FROM cairn.run_events');
      })
      .then(
        () => 'ok',
        (e: { code: string }) => e.code,
      );
    expect(code).toBe('42501');
  });

  it('refuses a retention out of bounds with a typed 400; only a circle admin or the instance admin sets it', async () => {
    for (const body of [
      { days: 0 },
      { days: 4000 },
      { days: 1.5 },
      { days: '30' },
      { days: 30, failed_days: 0 },
      { days: 30, failed_days: 3651 },
      {},
      { days: 30, extra: 1 },
    ]) {
      const r = await t.call('PUT', `/api/${keep.slug}/retention`, body, keep.tokens.admin);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expectTypedError(r.body);
      expect(r.body.error.code).toBe('INVALID_INPUT');
      expect(r.body.error._suggestion).toMatch(/from 1 to 3650/);
    }
    for (const role of ['read', 'write', 'execute'] as const) {
      expect((await t.call('GET', `/api/${keep.slug}/retention`, undefined, keep.tokens[role])).status).toBe(
        403,
      );
      expect(
        (await t.call('PUT', `/api/${keep.slug}/retention`, { days: 5 }, keep.tokens[role])).status,
      ).toBe(403);
    }
    // Another circle's admin learns nothing (404, like a circle that does not exist).
    expect((await t.call('GET', `/api/${keep.slug}/retention`, undefined, fail.tokens.admin)).status).toBe(
      404,
    );
    const back = await t.call('PUT', `/api/${keep.slug}/retention`, { days: null }, keep.tokens.admin);
    expect(back.status).toBe(200);
    expect(back.body).toMatchObject({ days: 30, inherited: true, policy: { days: null, failed_days: null } });
    const edge = await t.call('PUT', `/api/${keep.slug}/retention`, { days: 3650, failed_days: 1 }, t.admin);
    expect(edge.body).toMatchObject({ days: 3650, failed_days: 1 });
    await t.call('PUT', `/api/${keep.slug}/retention`, { days: null }, t.admin);
    // The instance default has the same bounds, checked at start.
    for (const v of ['0', '3651', '1.5', 'month'])
      expect(() => loadConfig({}, { CAIRN_RETENTION_DAYS: v })).toThrow(/CAIRN_RETENTION_DAYS|retentionDays/);
    expect(loadConfig({}, { CAIRN_RETENTION_DAYS: '3650' }).retentionDays).toBe(3650);
    expect(loadConfig({}, {}).retentionDays).toBe(30);
    // The OpenAPI document carries the bounds and every status the routes answer.
    const doc = (await t.call('GET', '/openapi.json', undefined, '')).body;
    const put = doc.paths['/api/{circle}/retention'].put;
    const daysSchema = JSON.stringify(put.requestBody.content['application/json'].schema.properties.days);
    expect(daysSchema).toContain('"minimum":1');
    expect(daysSchema).toContain('"maximum":3650');
    for (const s of ['200', '400', '401', '403', '404', '409', '422'])
      expect(put.responses[s], s).toBeDefined();
    expect(doc.paths['/api/{circle}/retention'].get['x-cairn-auth']).toBe('admin');
    expect(doc.paths['/api/runs/{id}/pin'].post).toBeDefined();
    // The database holds the bounds too.
    await expect(
      db().query('UPDATE cairn.retention_policies SET days = 0 WHERE circle_id = $1', [
        (await getCircleBySlug(db(), 'keep'))!.id,
      ]),
    ).rejects.toThrow(/check constraint/);
  });

  it('a worker collects on its timer (CAIRN_RETENTION_INTERVAL_MS), with the instance default it was given', async () => {
    const d = db();
    const [a, b] = await invoke(short, 2);
    await finish([a!, b!]);
    // short keeps 7 days; keep (no policy) follows the worker's default, 5 days here.
    const [c] = await invoke(keep, 1);
    await finish([c!]);
    await age(d, [a!, c!], 8);
    await age(d, [b!], 3);
    const sandbox = new Sandbox({ ...sandboxOptions(), disabled: true });
    const worker = new Worker({
      db: d,
      sandbox,
      retentionMs: 50,
      retentionDays: 5,
      pollMs: 100,
      concurrency: 1,
    });
    await worker.start();
    try {
      await until(async () => (await recorded(d, [a!, c!])).runs === 0, 20_000, 'the worker to collect');
      expect((await recorded(d, [b!])).runs).toBe(1);
    } finally {
      await worker.stop(1_000);
      sandbox.close();
    }
  });

  if (driver === 'pg') {
    it('two collectors on separate pools racing over the same expired runs delete each exactly once', async () => {
      const d = db();
      await collector().collect(); // nothing of the other cases is left to count
      const race = await t.circle('race');
      const circleId = race.id;
      const N = 1200;
      // Expired runs made directly (the engine's path is covered above): an item, two audit events, an element event each.
      await d.query(
        `WITH r AS (
           INSERT INTO cairn.runs (id, circle_id, kind, operation, status, trigger, engine_version, trace_id,
             queued_at, finished_at, items_total)
           SELECT gen_random_uuid(), $1, 'invoke', 'invoke', CASE WHEN g % 3 = 0 THEN 'failed' ELSE 'succeeded' END,
             '{"type": "api", "source": null, "actor": "t"}', 'test', 'x',
             now() - interval '40 days', now() - interval '40 days' + make_interval(secs => g), 1
           FROM generate_series(1, $2::int) g RETURNING id, circle_id),
         i AS (INSERT INTO cairn.items (id, run_id, circle_id, key, status)
           SELECT gen_random_uuid(), id, circle_id, 'call', 'succeeded' FROM r),
         e AS (INSERT INTO cairn.run_events (run_id, circle_id, type, from_status, to_status, actor)
           SELECT id, circle_id, 'status', NULL, 'queued', 't' FROM r
           UNION ALL SELECT id, circle_id, 'status', 'queued', 'succeeded', 't' FROM r)
         INSERT INTO cairn.events (circle_id, run_id, name) SELECT circle_id, id, 'test.made' FROM r`,
        [circleId, N],
      );
      const pools = [new PgDb(url()!, { max: 2 }), new PgDb(url()!, { max: 2 })];
      try {
        const gcs = pools.map(
          (p: Db) =>
            new RetentionSystem(
              { db: p, log: silentLogger, health: new WorkerHealth() },
              { defaultDays: 30, batchSize: 50, maxBatches: 1000 },
            ),
        );
        const passes = await Promise.all([...gcs, ...gcs].map((g) => g.collect()));
        expect(passes.map((p) => p.error)).toEqual([null, null, null, null]); // none failed (no deadlock, no conflict)
        expect(passes.filter((p) => p.runs > 0).length).toBeGreaterThan(1); // they did race
        const total = passes.reduce((s, p) => s + p.runs, 0);
        expect(total).toBe(N);
        expect(passes.reduce((s, p) => s + p.items, 0)).toBe(N);
        expect(passes.reduce((s, p) => s + p.run_events, 0)).toBe(2 * N);
        expect(passes.reduce((s, p) => s + p.events, 0)).toBe(N);
        expect(
          await count(d, 'SELECT count(*)::int AS n FROM cairn.runs WHERE circle_id = $1', [circleId]),
        ).toBe(0);
        const log = await d.query<{
          runs: number;
          items: number;
          run_events: number;
          events: number;
          batches: number;
        }>(
          `SELECT sum(runs)::int AS runs, sum(items)::int AS items, sum(run_events)::int AS run_events,
             sum(events)::int AS events, sum(batches)::int AS batches
           FROM cairn.retention_log WHERE circle_id = $1`,
          [circleId],
        );
        expect(log.rows[0]).toEqual({
          runs: N,
          items: N,
          run_events: 2 * N,
          events: N,
          batches: passes.reduce((s, p) => s + p.batches, 0),
        });
      } finally {
        await Promise.all(pools.map((p) => p.close()));
      }
    }, 120_000);
  }
});

/** Black box: `cairn circles retention` against the real bin/cairn serve (on a PostgreSQL server). */
describe('cairn circles retention', () => {
  const TOKEN = 'cairn_retention_bootstrap_token_0123456789';
  let handle: Awaited<ReturnType<typeof freshDb>>;
  let dir: string;
  let server: Proc;
  let url: string;

  const cli = cliAgainst(() => url, TOKEN);

  beforeAll(async () => {
    ensureBuilt();
    handle = await freshDb('pg');
    dir = mkdtempSync(join(tmpdir(), 'cairn-retention-'));
    server = cairn(['serve', '--port', '0', '--data', dir, '--no-worker'], {
      CAIRN_BOOTSTRAP_TOKEN: TOKEN,
      DATABASE_URL: handle.url,
      CAIRN_LOG_LEVEL: 'warn',
      CAIRN_PREWARM: '0',
    });
    url = await until(
      async () => /serving on (http:\/\/\S+)/.exec(server.output())?.[1],
      60_000,
      'cairn serve to start\n' + server.output(),
    );
  }, 120_000);
  afterAll(async () => {
    server?.child.kill('SIGTERM');
    await server?.exited;
    await handle?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('shows and sets a circle’s retention, human and --json, and refuses a bad value with exit 2', async () => {
    expect((await cli(['circles', 'create', 'ret'])).code).toBe(0);
    const shown = await cli(['circles', 'retention', '--circle', 'ret']);
    expect(shown.code).toBe(0);
    expect(shown.out).toMatch(/runs are kept 30 days \(the instance default\)/);

    const set = await cli(['circles', 'retention', '--circle', 'ret', '--days', '7', '--failed-days', '90']);
    expect(set.code).toBe(0);
    expect(set.out).toMatch(/runs are kept 7 days, failed runs 90 days/);
    const json = await cli(['circles', 'retention', '--circle', 'ret', '--json']);
    expect(JSON.parse(json.out)).toMatchObject({
      circle: 'ret',
      days: 7,
      failed_days: 90,
      kept: { pinned: 0, referenced: 0 },
    });
    // Only --failed-days: days stay as they are.
    const failedOnly = await cli([
      'circles',
      'retention',
      '--circle',
      'ret',
      '--failed-days',
      '120',
      '--json',
    ]);
    expect(JSON.parse(failedOnly.out)).toMatchObject({ days: 7, failed_days: 120 });

    for (const bad of ['0', '4000', '1.5', 'ten']) {
      const r = await cli(['circles', 'retention', '--circle', 'ret', '--days', bad]);
      expect(r.code, bad).toBe(2);
      expect(r.err).toMatch(/error INVALID_INPUT/);
      expect(r.err).toMatch(/from 1 to 3650/);
    }
    // Only --days: failed_days stay as they are; `default` goes back to the instance default.
    const daysOnly = await cli(['circles', 'retention', '--circle', 'ret', '--days', 'default', '--json']);
    expect(JSON.parse(daysOnly.out)).toMatchObject({ days: 30, failed_days: 120, inherited: true });
    const reset = await cli([
      'circles',
      'retention',
      '--circle',
      'ret',
      '--failed-days',
      'default',
      '--json',
    ]);
    expect(JSON.parse(reset.out)).toMatchObject({
      days: 30,
      failed_days: 30,
      policy: { days: null, failed_days: null },
    });
  }, 60_000);
});

it('a failing retention batch is counted in the worker health, and the next pass retries', async () => {
  const health = new WorkerHealth();
  const broken = {
    kind: 'pg',
    query: () => Promise.reject(new Error('connection refused')),
    exec: () => Promise.reject(new Error('connection refused')),
    transaction: () => Promise.reject(new Error('connection refused')),
  } as unknown as Db;
  const gc = new RetentionSystem({ db: broken, log: silentLogger, health }, { defaultDays: 30 });
  for (let i = 0; i < 3; i++) expect((await gc.collect()).error).toBe('connection refused');
  expect(health.statements.retention.state()).toMatchObject({
    consecutive_failures: 3,
    last_error: 'connection refused',
  });
  expect(health.degraded).toBe(true);
  const h = await freshDb('pglite');
  try {
    const ok = new RetentionSystem({ db: h.db, log: silentLogger, health }, { defaultDays: 30 });
    expect((await ok.collect()).error).toBeNull();
    expect(health.statements.retention.state().consecutive_failures).toBe(0);
  } finally {
    await h.drop();
  }
});

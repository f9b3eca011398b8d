import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, expectTypedError, type TestApp, waitRun } from '../helpers/app.js';

/**
 * schedule elements (issue 13): bad definitions are typed 400s that create nothing; an
 * every-second schedule fires real runs recorded with their trigger and nominal time, on time;
 * pause records skipped_paused, skip records skipped_overlap, an outage is caught up inside the
 * window and recorded as missed outside it, backfill fires what was never recorded (once).
 */
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describeEachDriver('schedule element', ({ db, driver }) => {
  let t: TestApp;
  let A: string;
  const slug = `sched-${driver}`;
  const post = (path: string, body: unknown) => t.call('POST', `/api/${slug}/${path}`, body, A);
  const get = (path: string) => t.call('GET', `/api/${slug}/${path}`, undefined, A);
  const occurrences = async (el: string, q = '') =>
    (await get(`${el}/ops/occurrences?limit=1000${q}`)).body.occurrences;

  beforeAll(async () => {
    t = await testApp(db());
    A = (await t.circle(slug)).tokens.admin;
    expect(
      (await post('ops/create', { element_type: 'sql', slug: 'tick', spec: { query: "select 'tick' as v" } }))
        .status,
    ).toBe(201);
    const slow = {
      source: { code: 'import time\ndef handler(d):\n    time.sleep(2.5)\n    return {}\n' },
      timeout_ms: 20_000,
    };
    expect((await post('ops/create', { element_type: 'python', slug: 'slow', spec: slow })).status).toBe(201);
  });
  afterAll(() => t?.close());

  it('refuses bad definitions with typed errors and creates nothing', async () => {
    const cases: [unknown, string][] = [
      [{ cron: '61 * * * *', target: { element: 'tick' } }, 'INVALID_CRON'],
      [{ cron: '* * *', target: { element: 'tick' } }, 'INVALID_CRON'],
      [{ cron: '* * * * *', timezone: 'Mars/Olympus', target: { element: 'tick' } }, 'INVALID_TIMEZONE'],
      [{ cron: '* * * * *' }, 'MISSING_TARGET'],
      [{ cron: '* * * * *', target: { element: 'nope' } }, 'INVALID_TARGET'],
      [{ cron: '* * * * *', target: { element: 'tick', op: 'get' } }, 'INVALID_TARGET'],
      [{ cron: '* * * * *', target: { element: 'tick', input: { x: '${{ body.x }}' } } }, 'INVALID_MAPPING'],
    ];
    for (const [spec, code] of cases) {
      const r = await post('ops/create', { element_type: 'schedule', slug: 'bad', spec });
      expect(r.status, JSON.stringify(r.body)).toBe(400);
      expectTypedError(r.body);
      expect(r.body.error.code, JSON.stringify(spec)).toBe(code);
    }
    expect((await get('bad/ops/get')).status).toBe(404);
  });

  it('fires an every-second schedule on time, once per nominal time, as schedule runs', async () => {
    const r = await post('ops/create', {
      element_type: 'schedule',
      slug: 'every-second',
      spec: { cron: '* * * * * *', timezone: 'Europe/Berlin', target: { element: 'tick', op: 'invoke' } },
    });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const next = (await get('every-second/ops/next?count=3')).body.next.map((x: string) => Date.parse(x));
    expect(next[1] - next[0]).toBe(1000);
    expect(next[2] - next[1]).toBe(1000);
    await sleep(3_500);
    await post('every-second/ops/pause', {});
    const occ = await occurrences('every-second');
    const fired = occ.filter((o: any) => o.status === 'fired');
    expect(fired.length).toBeGreaterThanOrEqual(2);
    expect(new Set(occ.map((o: any) => o.nominal_time)).size).toBe(occ.length);
    for (const o of fired) {
      expect(Date.parse(o.fired_at) - Date.parse(o.nominal_time)).toBeLessThan(1_000);
      const run = await waitRun(t, o.run_id, A);
      expect(run.status).toBe('succeeded');
      expect(run.trigger).toMatchObject({
        type: 'schedule',
        source: 'every-second',
        nominal_time: o.nominal_time,
      });
    }
    // Paused: occurrences keep being recorded, as skipped_paused, and start no run.
    await sleep(2_200);
    const after = await occurrences('every-second');
    const paused = after.filter((o: any) => o.status === 'skipped_paused');
    expect(paused.length).toBeGreaterThanOrEqual(1);
    expect(paused.every((o: any) => o.run_id === null)).toBe(true);
    const runs = (await get('tick/ops/runs?limit=100')).body;
    const scheduled = (runs.runs ?? runs.items ?? runs).filter(
      (x: any) => x.trigger?.source === 'every-second',
    );
    expect(scheduled.length).toBe(after.filter((o: any) => o.run_id).length);
  });

  it('skips an occurrence while the run of the one before is still going (overlap: skip)', async () => {
    const r = await post('ops/create', {
      element_type: 'schedule',
      slug: 'overlapping',
      spec: { cron: '* * * * * *', overlap: 'skip', target: { element: 'slow' } },
    });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    await sleep(3_300);
    await post('overlapping/ops/pause', {});
    const occ = await occurrences('overlapping');
    expect(occ.filter((o: any) => o.status === 'fired').length).toBeGreaterThanOrEqual(1);
    expect(occ.filter((o: any) => o.status === 'skipped_overlap').length).toBeGreaterThanOrEqual(1);
  });

  it('catches up an outage inside the window and records the older occurrences as missed', async () => {
    const r = await post('ops/create', {
      element_type: 'schedule',
      slug: 'outage',
      spec: {
        cron: '*/10 * * * * *',
        overlap: 'allow_all',
        catchup_window_ms: 35_000,
        target: { element: 'tick' },
      },
    });
    expect(r.status).toBe(201);
    const id = r.body.id;
    // As if every process had been down for 80 s: the clock is 80 s behind.
    await db().query(
      `UPDATE cairn.schedules SET next_at = date_trunc('minute', now()) - interval '2 minutes' WHERE element_id = $1`,
      [id],
    );
    const behindFrom = Date.now();
    await sleep(1_500);
    await post('outage/ops/pause', {});
    const occ = await occurrences('outage');
    const missed = occ.filter((o: any) => o.status === 'missed');
    const caught = occ.filter((o: any) => o.status === 'caught_up');
    expect(caught.length).toBeGreaterThanOrEqual(3);
    expect(missed.length).toBeGreaterThanOrEqual(6);
    for (const o of missed) expect(behindFrom - Date.parse(o.nominal_time)).toBeGreaterThan(30_000);
    for (const o of caught) {
      expect(behindFrom - Date.parse(o.nominal_time)).toBeLessThanOrEqual(36_500);
      expect((await waitRun(t, o.run_id, A)).status).toBe('succeeded');
    }
  });

  it('records an occurrence whose mapping fails on what it got as failed, and goes on', async () => {
    const r = await post('ops/create', {
      element_type: 'schedule',
      slug: 'bad-mapping',
      spec: {
        cron: '* * * * * *',
        overlap: 'skip',
        target: { element: 'tick', input: { params: ['${{ schedule.nope.x }}'] } },
      },
    });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    await sleep(2_500);
    await post('bad-mapping/ops/pause', {});
    const occ = await occurrences('bad-mapping');
    const failed = occ.filter((o: any) => o.status === 'failed');
    // Each second is its own failed occurrence (none left firing, none skipped behind a stuck one).
    expect(failed.length).toBeGreaterThanOrEqual(2);
    expect(occ.some((o: any) => o.status === 'firing' || o.status === 'skipped_overlap')).toBe(false);
    expect(failed[0].error.code).toBe('TRIGGER_MAPPING_FAILED');
  });

  it("refuses a caller's Idempotency-Key in the namespace Cairn keeps for its triggers", async () => {
    const r = await t.call('POST', `/api/${slug}/tick/ops/invoke`, {}, A, {
      'idempotency-key': 'schedule:x:y',
    });
    expect(r.status).toBe(400);
    expectTypedError(r.body);
  });

  it('backfills the never-recorded occurrences of a past range, once', async () => {
    const r = await post('ops/create', {
      element_type: 'schedule',
      slug: 'daily',
      spec: { cron: '0 0 6 * * *', timezone: 'America/New_York', paused: true, target: { element: 'tick' } },
    });
    expect(r.status).toBe(201);
    const to = new Date(Date.now() - 3_600_000).toISOString();
    const from = new Date(Date.now() - 5 * 86_400_000).toISOString();
    const b = await post('daily/ops/backfill', { from, to });
    expect(b.status, JSON.stringify(b.body)).toBe(200);
    expect(b.body.fired.length).toBeGreaterThanOrEqual(4);
    expect(b.body.fired.length).toBeLessThanOrEqual(5);
    for (const f of b.body.fired) {
      // 06:00 in New York is 10:00 or 11:00 UTC depending on DST.
      expect(['10', '11']).toContain(f.nominal_time.slice(11, 13));
      const run = await waitRun(t, f.run_id, A);
      expect(run.trigger).toMatchObject({ type: 'schedule', backfill: true, nominal_time: f.nominal_time });
    }
    const again = await post('daily/ops/backfill', { from, to });
    expect(again.body.fired).toEqual([]);
    expect(again.body.already_recorded).toBe(b.body.fired.length);
    const bad = await post('daily/ops/backfill', { from: to, to: from });
    expect(bad.status).toBe(400);
    expectTypedError(bad.body);
  });
});

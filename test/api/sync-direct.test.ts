import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, type TestApp } from '../helpers/app.js';
import { busyFor } from '../helpers/slow-sql.js';

/**
 * A sync invoke that finds a free slot in this process's worker is created
 * already claimed and executed at once; others go through the queue. Either
 * way the run is the same durable record, and the worker's concurrency holds.
 */
describeEachDriver('sync invokes and the worker slots', ({ db }) => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  beforeAll(async () => {
    t = await testApp(db(), { concurrency: 1, syncWaitMs: 400 });
    c = await t.circle('direct');
    for (const [slug, query] of [
      ['nap', `select true as slept from ${busyFor(db().kind, 0.03)}`],
      ['long', `select 'done' as s from ${busyFor(db().kind, 1)}`],
    ])
      expect(
        (
          await t.call(
            'POST',
            `/api/${c.slug}/ops/create`,
            { element_type: 'sql', slug, spec: { query } },
            c.tokens.write,
          )
        ).status,
      ).toBe(201);
  });
  afterAll(() => t.close());

  /** The run once it is no longer queued or running (up to 5 s). */
  async function finished(id: string) {
    let run;
    for (let i = 0; i < 100; i++) {
      run = (await t.call('GET', `/api/runs/${id}`, undefined, c.tokens.read)).body;
      if (run.status !== 'queued' && run.status !== 'running') break;
      await new Promise((r) => setTimeout(r, 50));
    }
    return run;
  }

  it('concurrent sync invokes beyond the free slots go through the queue, and all answer', async () => {
    const answers = await Promise.all(
      Array.from({ length: 5 }, () => t.call('POST', `/api/${c.slug}/nap/ops/invoke`, {}, c.tokens.execute)),
    );
    for (const a of answers) expect(a.status === 200 || a.status === 202).toBe(true);
    const runs = [];
    for (const a of answers) {
      const run = await finished(a.body.run_id);
      expect(run.status).toBe('succeeded');
      const audit = (await t.call('GET', `/api/runs/${run.id}/audit`, undefined, c.tokens.read)).body.events;
      expect(audit.filter((e: any) => e.type === 'status').map((e: any) => e.to_status)).toEqual([
        'queued',
        'running',
        'succeeded',
      ]);
      runs.push(run);
    }
  });

  it('a direct slot counts toward the worker concurrency until its run is done or it is released', () => {
    const w = t.worker!;
    const first = w.directSlot();
    expect(first).toBeDefined();
    expect(w.directSlot()).toBeUndefined(); // concurrency 1: taken
    first!.release();
    first!.release(); // twice is once
    const again = w.directSlot();
    expect(again).toBeDefined();
    expect(w.directSlot()).toBeUndefined();
    again!.release();
  });

  it('a run that outlasts the sync wait is answered 202 and still finishes', async () => {
    const a = await t.call('POST', `/api/${c.slug}/long/ops/invoke`, {}, c.tokens.execute);
    expect(a.status).toBe(202);
    expect(a.headers.location).toBe(`/api/runs/${a.body.run_id}`);
    const run = await finished(a.body.run_id);
    expect(run.status).toBe('succeeded');
    expect(run.output).toEqual({ rows: [{ s: 'done' }], row_count: 1 });
  });
});

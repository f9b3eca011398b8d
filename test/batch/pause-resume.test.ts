import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, waitRun, type TestApp } from '../helpers/app.js';
import { until } from '../helpers/bin.js';

/**
 * A pause lets the running items finish (R-CONTROL), also when a resume follows at once and the
 * same worker claims the run again while its earlier loop still waits for those items.
 */
describeEachDriver('pause, then resume at once', ({ db }) => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  beforeAll(async () => {
    t = await testApp(db());
    c = await t.circle('pause-resume');
    const mk = async (body: unknown) =>
      expect((await t.call('POST', `/api/${c.slug}/ops/create`, body, c.tokens.admin)).status).toBe(201);
    await mk({
      element_type: 'python',
      slug: 'slow',
      spec: {
        source: {
          code: 'import time\ndef handler(d):\n    time.sleep(d["ms"] / 1000)\n    return {"n": d["n"]}\n',
        },
      },
    });
    await mk({
      element_type: 'table',
      slug: 'jobs',
      spec: {
        fields: { n: { type: 'integer', required: true }, ms: { type: 'integer' } },
        columns: { out: { element: 'slow', input: { n: 'n', ms: 'ms' }, concurrency: 1 } },
      },
    });
  });
  afterAll(() => t.close());

  it('the item running at the pause finishes and succeeds; the rest run after the resume', async () => {
    const rows = Array.from({ length: 3 }, (_, n) => ({ n, ms: 1_500 }));
    expect(
      (await t.call('POST', `/api/${c.slug}/jobs/ops/rows`, { rows }, c.tokens.admin)).status,
    ).toBeLessThan(300);
    const run = await t.call('POST', `/api/${c.slug}/jobs/ops/columns/out/run`, {}, c.tokens.admin);
    expect(run.status).toBe(202);
    const id = run.body.run_id;
    await until(
      async () =>
        (await t.call('GET', `/api/runs/${id}/items?status=running`, undefined, c.tokens.read)).body.items
          .length > 0,
      30_000,
      'an item to run',
    );
    expect((await t.call('POST', `/api/runs/${id}/pause`, {}, c.tokens.execute)).body.status).toBe('paused');
    expect((await t.call('POST', `/api/runs/${id}/resume`, {}, c.tokens.execute)).body.status).toBe('queued');
    const end = await waitRun(t, id, c.tokens.admin, { ms: 60_000 });
    const items = (await t.call('GET', `/api/runs/${id}/items`, undefined, c.tokens.read)).body.items;
    expect(
      items.map((i: any) => [i.status, i.error?.code ?? null]),
      JSON.stringify(items.map((i: any) => i.error)),
    ).toEqual([
      ['succeeded', null],
      ['succeeded', null],
      ['succeeded', null],
    ]);
    expect(end).toMatchObject({ status: 'succeeded', items_succeeded: 3, items_failed: 0 });
    expect(items.every((i: any) => i.attempt_count === 1)).toBe(true);
  }, 120_000);
});

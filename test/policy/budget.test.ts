import fc from 'fast-check';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { z } from 'zod';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, expectTypedError, type TestApp, waitRun } from '../helpers/app.js';
import { registerInvokeType } from '../helpers/types.js';

/**
 * Budgets and the spending limit (issue 13, R-LEDGER): a workflow under on_exceeded: stop never
 * captures more than its budget at any concurrency (a property), and stops mid-flight — its running
 * sandboxes killed, the rest skipped; an invoke past its budget does not start (stop) or is flagged;
 * a circle's daily spending limit answers 402 SPEND_LIMIT_REACHED. (The batch property is in
 * test/batch/budget.test.ts.)
 */
const PRICES = [1_000, 3_000];
for (const price of PRICES)
  registerInvokeType({
    type: `test-wf-priced-${price}`,
    title: `Priced ${price}`,
    input: z.object({ k: z.number() }).strict(),
    price,
    invoke: async (ctx) => {
      await new Promise((r) => setTimeout(r, 2 + Math.random() * 10));
      return { output: { k: ctx.input.k }, evidence: { command: ['priced'] } };
    },
  });

describeEachDriver('budgets', ({ db, driver }) => {
  let t: TestApp;
  let A: string;
  const slug = `budget-${driver}`;
  const post = (path: string, body: unknown) => t.call('POST', `/api/${slug}/${path}`, body, A);
  let n = 0;

  beforeAll(async () => {
    t = await testApp(db(), { concurrency: 4 });
    A = (await t.circle(slug)).tokens.admin;
    for (const price of PRICES)
      expect(
        (await post('ops/create', { element_type: `test-wf-priced-${price}`, slug: `p${price}`, spec: {} }))
          .status,
      ).toBe(201);
    expect(
      (await post('ops/create', { element_type: 'sql', slug: 'q', spec: { query: 'select 1 as n' } })).status,
    ).toBe(201);
  });
  afterAll(() => t?.close());

  it('a workflow under stop never captures more than its budget, at any concurrency', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...PRICES),
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: 1, max: 10 }),
        fc.integer({ min: 0, max: 20_000 }),
        async (price, concurrency, items, budget) => {
          const wf = `wf${n++}`;
          const made = await post('ops/create', {
            element_type: 'workflow',
            slug: wf,
            spec: {
              concurrency,
              steps: [
                {
                  name: 'each',
                  element: `p${price}`,
                  for_each: '${{ parameters.ks }}',
                  input: { k: '${{ item }}' },
                },
              ],
            },
          });
          expect(made.status, JSON.stringify(made.body)).toBe(201);
          const tr = await post(`${wf}/ops/trigger`, {
            parameters: { ks: Array.from({ length: items }, (_, i) => i) },
            budget,
            on_budget_exceeded: 'stop',
          });
          expect(tr.status, JSON.stringify(tr.body)).toBe(202);
          const run = await waitRun(t, tr.body.run_id, A, { ms: 30_000 });
          // What the ledger captured for the run and its task runs, and what they still hold.
          const money = (
            await db().query<{ captured: string; held: string }>(
              `SELECT (SELECT coalesce(sum(amount), 0) FROM cairn.ledger_transfers
                        WHERE kind = 'capture' AND run_id IN (SELECT id FROM cairn.runs WHERE root_run_id = $1))::text AS captured,
                      (SELECT coalesce(sum(held), 0) FROM cairn.run_holds
                        WHERE run_id IN (SELECT id FROM cairn.runs WHERE root_run_id = $1))::text AS held`,
              [run.id],
            )
          ).rows[0]!;
          const captured = Number(money.captured);
          expect(run.credits_used).toBeLessThanOrEqual(budget);
          expect(captured).toBeLessThanOrEqual(budget);
          if (items * price <= budget) {
            expect(run.status).toBe('succeeded');
            expect(run.credits_used).toBe(items * price);
          } else {
            expect(run.status).toBe('failed');
            expect(run.error.code).toBe('BUDGET_EXCEEDED');
            // As many as the budget admits, never more.
            expect(run.credits_used).toBeLessThanOrEqual(Math.floor(budget / price) * price);
          }
          // Nothing stays reserved once it ended.
          expect(Number(money.held)).toBe(0);
          expect(captured).toBe(run.credits_used);
        },
      ),
      { numRuns: driver === 'pg' ? 25 : 15 },
    );
  }, 240_000);

  it('stops mid-flight: the running sandbox is killed and what waits is skipped', async () => {
    expect(
      (
        await post('ops/create', {
          element_type: 'python',
          slug: 'sleeper',
          spec: {
            source: { code: 'import time\ndef handler(d):\n    time.sleep(30)\n    return {}\n' },
            timeout_ms: 60_000,
          },
        })
      ).status,
    ).toBe(201);
    expect(
      (
        await post('ops/create', {
          element_type: 'workflow',
          slug: 'two-sleepers',
          spec: {
            budget: { credits: 15_000, on_exceeded: 'stop' },
            steps: [
              { name: 'first', element: 'sleeper' },
              { name: 'second', element: 'sleeper', needs: [] },
              { name: 'after', element: 'q', needs: ['first', 'second'] },
            ],
          },
        })
      ).status,
    ).toBe(201);
    const started = Date.now();
    const tr = await post('two-sleepers/ops/trigger', { parameters: {} });
    expect(tr.status).toBe(202);
    const run = await waitRun(t, tr.body.run_id, A, { ms: 20_000 });
    expect(Date.now() - started).toBeLessThan(15_000); // the 30 s sleeper was killed, not waited for
    expect(run.status).toBe('failed');
    expect(run.error.code).toBe('BUDGET_EXCEEDED');
    expect(run.credits_used).toBeLessThanOrEqual(15_000);
    const tasks = (await t.call('GET', `/api/runs/${run.id}/tasks`, undefined, A)).body.tasks;
    const byName = Object.fromEntries(tasks.map((x: any) => [x.name, x.status]));
    expect(byName.after).toBe('skipped');
    expect([byName.first, byName.second].sort()).toEqual(['cancelled', 'skipped']);
  }, 60_000);

  it('an invoke past its budget does not start (stop), or runs flagged (flag)', async () => {
    const before = (await t.call('GET', `/api/${slug}/q/ops/runs?limit=100`, undefined, A)).body.runs.length;
    const stop = await post('q/ops/invoke?budget=500', {});
    expect(stop.status).toBe(402);
    expectTypedError(stop.body);
    expect(stop.body.error.code).toBe('BUDGET_EXCEEDED');
    expect((await t.call('GET', `/api/${slug}/q/ops/runs?limit=100`, undefined, A)).body.runs.length).toBe(
      before,
    );
    const flag = await post('q/ops/invoke?budget=500&on_budget_exceeded=flag', {});
    expect(flag.status).toBe(200);
    const run = (await t.call('GET', `/api/runs/${flag.body.run_id}`, undefined, A)).body;
    expect(run.flags).toContain('budget_exceeded');
    expect(run.budget).toBe(500);
    const bad = await post('q/ops/invoke?budget=-3', {});
    expect(bad.status).toBe(400);
    expectTypedError(bad.body);
  });

  it("answers 402 SPEND_LIMIT_REACHED past the circle's daily limit", async () => {
    const w = (await t.call('GET', `/api/${slug}/wallet`, undefined, A)).body;
    const spentToday = w.debits_posted; // every capture of this young circle happened today
    const set = await t.call(
      'PUT',
      `/api/${slug}/wallet/spend-limit`,
      { period: 'day', credits: spentToday + 2_500 },
      A,
    );
    expect(set.status, JSON.stringify(set.body)).toBe(200);
    expect(set.body.spend_limit).toMatchObject({ period: 'day', credits: spentToday + 2_500 });
    expect((await post('q/ops/invoke', {})).status).toBe(200);
    expect((await post('q/ops/invoke', {})).status).toBe(200);
    const over = await post('q/ops/invoke', {});
    expect(over.status).toBe(402);
    expectTypedError(over.body);
    expect(over.body.error.code).toBe('SPEND_LIMIT_REACHED');
    expect(over.body.error.details).toMatchObject({ period: 'day', limit: spentToday + 2_500 });
    const off = await t.call('PUT', `/api/${slug}/wallet/spend-limit`, { credits: null }, A);
    expect(off.body.spend_limit).toBeNull();
    expect((await post('q/ops/invoke', {})).status).toBe(200);
  });

  it('holds the spending limit when many runs reserve and capture at once', async () => {
    const spent = (await t.call('GET', `/api/${slug}/wallet`, undefined, A)).body.debits_posted;
    const limit = spent + 5 * 1_000; // room for five 1,000 runs
    await t.call('PUT', `/api/${slug}/wallet/spend-limit`, { period: 'day', credits: limit }, A);
    const answers = await Promise.all(Array.from({ length: 24 }, () => post('q/ops/invoke', {})));
    const ok = answers.filter((a) => a.status === 200);
    for (const a of answers.filter((x) => x.status !== 200))
      expect(a.body.error.code).toBe('SPEND_LIMIT_REACHED');
    expect(ok.length).toBeLessThanOrEqual(5);
    expect(ok.length).toBeGreaterThanOrEqual(1);
    const w = (await t.call('GET', `/api/${slug}/wallet`, undefined, A)).body;
    expect(w.debits_posted + w.debits_pending).toBeLessThanOrEqual(limit);
    await t.call('PUT', `/api/${slug}/wallet/spend-limit`, { credits: null }, A);
  });
});

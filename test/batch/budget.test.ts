import fc from 'fast-check';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { z } from 'zod';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, type TestApp } from '../helpers/app.js';
import { registerInvokeType } from '../helpers/types.js';

/**
 * Issue 10: `columns run … --budget B --on-budget-exceeded stop` must never
 * capture more than B, at any concurrency (it captured 4000 of a 2000 budget at
 * the default concurrency of 4). A property over concurrency, prices and
 * budgets, on both drivers; items take a little time so several are in flight.
 */
const PRICES = [1_000, 2_500, 7_000];
for (const price of PRICES)
  registerInvokeType({
    type: `test-priced-${price}`,
    title: `Priced ${price}`,
    input: z.object({ k: z.number() }).strict(),
    price,
    invoke: async (ctx) => {
      await new Promise((r) => setTimeout(r, 2 + Math.random() * 8));
      return { output: { k: ctx.input.k }, evidence: { command: ['priced'] } };
    },
  });

describeEachDriver('budget stop', ({ db }) => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  let n = 0;

  beforeAll(async () => {
    t = await testApp(db(), { concurrency: 4 });
    c = await t.circle('budgeted');
    for (const price of PRICES) {
      const r = await t.call(
        'POST',
        `/api/${c.slug}/ops/create`,
        { element_type: `test-priced-${price}`, slug: `p${price}`, spec: {} },
        c.tokens.write,
      );
      expect(r.status).toBe(201);
    }
  });
  afterAll(() => t.close());

  it('never captures more than the budget, at any concurrency', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...PRICES),
        fc.integer({ min: 1, max: 8 }),
        fc.integer({ min: 1, max: 12 }),
        fc.integer({ min: 0, max: 30_000 }),
        async (price, concurrency, rows, budget) => {
          const table = `t${n++}`;
          const made = await t.call(
            'POST',
            `/api/${c.slug}/ops/create`,
            {
              element_type: 'table',
              slug: table,
              spec: {
                fields: { k: { type: 'integer', required: true } },
                columns: { out: { element: `p${price}`, input: { k: 'k' }, concurrency } },
              },
            },
            c.tokens.write,
          );
          expect(made.status, JSON.stringify(made.body)).toBe(201);
          const ins = await t.call(
            'POST',
            `/api/${c.slug}/${table}/ops/rows`,
            { rows: Array.from({ length: rows }, (_, k) => ({ k })) },
            c.tokens.write,
          );
          expect(ins.status).toBe(201);
          const started = await t.call(
            'POST',
            `/api/${c.slug}/${table}/ops/columns/out/run`,
            { budget, on_budget_exceeded: 'stop' },
            c.tokens.execute,
          );
          expect(started.status, JSON.stringify(started.body)).toBe(202);
          let run: any;
          for (let i = 0; i < 400; i++) {
            run = (await t.call('GET', `/api/runs/${started.body.run_id}`, undefined, c.tokens.read)).body;
            if (['succeeded', 'completed', 'failed', 'cancelled'].includes(run.status)) break;
            await new Promise((r) => setTimeout(r, 25));
          }
          expect(['succeeded', 'completed', 'failed']).toContain(run.status);
          expect(run.credits_used).toBeLessThanOrEqual(budget);
          expect(run.credits_used).toBe(run.items_succeeded * price);
          // As many items ran as the budget allowed (no item was skipped while there was room for it).
          expect(run.items_succeeded).toBe(Math.min(rows, Math.floor(budget / price)));
          const ledger = (await t.call('GET', `/api/runs/${run.id}/ledger`, undefined, c.tokens.read)).body
            .totals;
          expect(ledger.captured).toBeLessThanOrEqual(budget);
        },
      ),
      { numRuns: 30 },
    );
  }, 120_000);
});

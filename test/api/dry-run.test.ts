import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { expectTypedError, testApp, type TestApp } from '../helpers/app.js';

/**
 * Issue 10: `?mode=dry_run` on an invoke was ignored and the run was charged.
 * Now every run-creating op validates, resolves the definition and answers the
 * estimate, executes nothing and charges nothing, and records a dry run; an
 * unknown mode is a typed 400.
 */
describeEachDriver('dry runs', ({ db }) => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  const wallet = async () => (await t.call('GET', `/api/${c.slug}/wallet`, undefined, c.tokens.read)).body;
  const runCount = async () =>
    (await t.call('GET', `/api/${c.slug}/runs?limit=500`, undefined, c.tokens.read)).body.runs.length;

  beforeAll(async () => {
    t = await testApp(db());
    c = await t.circle('dry');
    for (const [element_type, slug, spec] of [
      ['sql', 'add-one', { query: 'select $1::int + 1 as n' }],
      ['sql', 'writes', { query: 'create table should_not_exist (x int)' }],
      [
        'table',
        'people',
        { fields: { name: { type: 'string', required: true } }, columns: { n: { element: 'add-one' } } },
      ],
    ] as const) {
      const r = await t.call(
        'POST',
        `/api/${c.slug}/ops/create`,
        { element_type, slug, spec },
        c.tokens.write,
      );
      expect(r.status, JSON.stringify(r.body)).toBe(201);
    }
  });
  afterAll(() => t.close());

  it('an invoke dry run validates, estimates, records — and executes and charges nothing', async () => {
    const before = await wallet();
    const r = await t.call('POST', `/api/${c.slug}/writes/ops/invoke?mode=dry_run`, {}, c.tokens.execute);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.status).toBe('succeeded');
    expect(r.body.credits_used).toBe(0);
    expect(r.body.output).toMatchObject({
      dry_run: true,
      input_valid: true,
      estimated_credits: 1000,
      covered: true,
      definition: { slug: 'writes', version: 1 },
    });
    const run = (await t.call('GET', `/api/runs/${r.body.run_id}`, undefined, c.tokens.read)).body;
    expect(run.mode).toBe('dry_run');
    expect(run.credits_reserved).toBe(0);
    const items = (await t.call('GET', `/api/runs/${run.id}/items`, undefined, c.tokens.read)).body.items;
    expect(items.map((i: any) => i.status)).toEqual(['skipped']);
    const audit = (await t.call('GET', `/api/runs/${run.id}/audit`, undefined, c.tokens.read)).body.events;
    expect(audit.map((e: any) => [e.from_status, e.to_status])).toEqual([
      [null, 'queued'],
      ['queued', 'succeeded'],
    ]);
    expect(audit.some((e: any) => e.type === 'ledger')).toBe(false);
    expect(await wallet()).toEqual(before);
    // Nothing executed: the statement's table does not exist.
    const probe = await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: 'sql', slug: 'probe', spec: { query: "select to_regclass('should_not_exist') as t" } },
      c.tokens.write,
    );
    expect(probe.status).toBe(201);
    expect(
      (await t.call('POST', `/api/${c.slug}/probe/ops/invoke`, {}, c.tokens.execute)).body.output.rows,
    ).toEqual([{ t: null }]);
  });

  it('a dry run with bad input is the same typed 400 as a live one, and records nothing', async () => {
    const n = await runCount();
    const r = await t.call(
      'POST',
      `/api/${c.slug}/add-one/ops/invoke?mode=dry_run`,
      { params: 'x' },
      c.tokens.execute,
    );
    expect(r.status).toBe(400);
    expectTypedError(r.body);
    expect(await runCount()).toBe(n);
  });

  it('an unknown mode is a typed 400 on every op, never ignored, and charges nothing', async () => {
    const before = await wallet();
    const n = await runCount();
    for (const url of [
      `/api/${c.slug}/add-one/ops/invoke?mode=bogus`,
      `/api/${c.slug}/add-one/ops/invoke?mode=smoke_test`,
      `/api/${c.slug}/people/ops/columns/n/run?mode=dryrun`,
    ]) {
      const r = await t.call('POST', url, {}, c.tokens.execute);
      expect(r.status, url).toBe(400);
      expect(r.body.error.code).toBe('INVALID_MODE');
      expectTypedError(r.body);
    }
    expect(await runCount()).toBe(n);
    expect(await wallet()).toEqual(before);
  });

  it('?mode=dry_run reaches a column run too', async () => {
    const rows = await t.call(
      'POST',
      `/api/${c.slug}/people/ops/rows`,
      { rows: [{ name: 'a' }] },
      c.tokens.write,
    );
    expect(rows.status).toBe(201);
    const before = await wallet();
    const r = await t.call(
      'POST',
      `/api/${c.slug}/people/ops/columns/n/run?mode=dry_run`,
      {},
      c.tokens.execute,
    );
    expect(r.status, JSON.stringify(r.body)).toBeLessThan(300);
    const run = (await t.call('GET', `/api/runs/${r.body.run_id}`, undefined, c.tokens.read)).body;
    expect(run.mode).toBe('dry_run');
    expect(await wallet()).toEqual(before);
  });
});

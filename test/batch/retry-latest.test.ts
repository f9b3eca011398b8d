import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, type TestApp } from '../helpers/app.js';

/**
 * Issue 10: retry-failed after fixing the handler failed again, because runs
 * pin their definition (right by default). `{"definition": "latest"}` (CLI
 * `--latest`) re-resolves the element to its current version for the retried
 * items, recorded in the audit trail and the snapshot.
 */
describeEachDriver('retry-failed on the latest definition', ({ db }) => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  const finished = async (id: string) => {
    for (let i = 0; i < 200; i++) {
      const run = (await t.call('GET', `/api/runs/${id}`, undefined, c.tokens.read)).body;
      if (['succeeded', 'completed', 'failed', 'cancelled'].includes(run.status)) return run;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('not finished');
  };

  beforeAll(async () => {
    t = await testApp(db());
    c = await t.circle('fixer');
    const mk = async (element_type: string, slug: string, spec: unknown) =>
      expect(
        (await t.call('POST', `/api/${c.slug}/ops/create`, { element_type, slug, spec }, c.tokens.write))
          .status,
      ).toBe(201);
    // The bug: every odd k divides by zero.
    await mk('sql', 'inv', { query: 'select 100 / (1 - $1::int % 2) as r' });
    await mk('table', 'nums', {
      fields: { k: { type: 'integer', required: true } },
      columns: { r: { element: 'inv', input: { params: ['k'] } } },
    });
    const rows = Array.from({ length: 6 }, (_, k) => ({ k }));
    expect((await t.call('POST', `/api/${c.slug}/nums/ops/rows`, { rows }, c.tokens.write)).status).toBe(201);
  });
  afterAll(() => t.close());

  it('pinned retries fail again; latest re-pins the run, in the audit trail and the snapshot, and succeeds', async () => {
    const started = await t.call('POST', `/api/${c.slug}/nums/ops/columns/r/run`, {}, c.tokens.execute);
    const first = await finished(started.body.run_id);
    expect(first.status).toBe('completed');
    expect(first.items_failed).toBe(3);
    const v1 = first.element.definition_hash;

    // Fix the handler: a new version of the element.
    const fix = await t.call(
      'PATCH',
      `/api/${c.slug}/inv/ops/update`,
      { spec: { query: 'select 100 / ($1::int + 1) as r' } },
      c.tokens.write,
    );
    expect(fix.status, JSON.stringify(fix.body)).toBe(200);

    const pinned = await t.call('POST', `/api/runs/${first.id}/retry-failed`, {}, c.tokens.execute);
    expect(pinned.body.retried).toBe(3);
    const again = await finished(first.id);
    expect(again.items_failed).toBe(3); // the pinned definition still divides by zero
    expect(again.element.definition_hash).toBe(v1);

    const latest = await t.call(
      'POST',
      `/api/runs/${first.id}/retry-failed`,
      { definition: 'latest' },
      c.tokens.execute,
    );
    expect(latest.status, JSON.stringify(latest.body)).toBe(200);
    expect(latest.body.retried).toBe(3);
    const fixed = await finished(first.id);
    expect(fixed.status).toBe('succeeded');
    expect(fixed.items_failed).toBe(0);
    expect(fixed.element.version).toBe(2);
    expect(fixed.element.definition_hash).not.toBe(v1);
    const snap = (await t.call('GET', `/api/runs/${first.id}`, undefined, c.tokens.read)).body.snapshot;
    expect(snap.element.version).toBe(2);
    expect(snap.earlier_definitions.map((d: any) => d.version)).toEqual([1]);
    const audit = (await t.call('GET', `/api/runs/${first.id}/audit`, undefined, c.tokens.read)).body.events;
    const repin = audit.find((e: any) => e.data?.action === 'repin');
    expect(repin.data).toMatchObject({
      definition: 'latest',
      from_version: 1,
      to_version: 2,
      from_definition_hash: v1,
    });
  });

  it('latest on a run with nothing failed changes nothing; a bad definition value is a typed 400', async () => {
    const started = await t.call('POST', `/api/${c.slug}/nums/ops/columns/r/run`, {}, c.tokens.execute);
    const run = await finished(started.body.run_id);
    expect(run.status).toBe('succeeded');
    const r = await t.call(
      'POST',
      `/api/runs/${run.id}/retry-failed`,
      { definition: 'latest' },
      c.tokens.execute,
    );
    expect(r.body.retried).toBe(0);
    const bad = await t.call(
      'POST',
      `/api/runs/${run.id}/retry-failed`,
      { definition: 'newest' },
      c.tokens.execute,
    );
    expect(bad.status).toBe(400);
    expect(bad.body.error._suggestion).toBeTruthy();
  });
});

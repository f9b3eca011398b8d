import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, type TestApp, waitRun } from '../helpers/app.js';

/**
 * The run's bill of materials (issue 13): stored content-addressed (identical snapshots once),
 * served at GET /api/runs/{id}/snapshot with the definitions, policy set, toolchains, engine
 * version and price table in effect, and still complete after the elements are updated or deleted.
 */
describeEachDriver('run snapshots', ({ db, driver }) => {
  let t: TestApp;
  let A: string;
  const slug = `snap-${driver}`;
  const post = (path: string, body: unknown) => t.call('POST', `/api/${slug}/${path}`, body, A);

  beforeAll(async () => {
    t = await testApp(db());
    A = (await t.circle(slug)).tokens.admin;
    expect(
      (await post('ops/create', { element_type: 'sql', slug: 'q', spec: { query: 'select 1 as n' } })).status,
    ).toBe(201);
  });
  afterAll(() => t?.close());

  it('stores identical snapshots once and keeps them complete after the element changes and goes', async () => {
    const a = await post('q/ops/invoke', {});
    const b = await post('q/ops/invoke', {});
    const ra = (await t.call('GET', `/api/runs/${a.body.run_id}/snapshot`, undefined, A)).body;
    const rb = (await t.call('GET', `/api/runs/${b.body.run_id}/snapshot`, undefined, A)).body;
    expect(ra.snapshot_hash).toMatch(/^[0-9a-f]{64}$/);
    expect(rb.snapshot_hash).toBe(ra.snapshot_hash);
    const rows = await db().query<{ n: number; inline: string }>(
      `SELECT (SELECT count(*)::int FROM cairn.snapshots WHERE hash = $1) AS n,
              (SELECT snapshot::text FROM cairn.runs WHERE id = $2) AS inline`,
      [ra.snapshot_hash, a.body.run_id],
    );
    expect(rows.rows[0]).toEqual({ n: 1, inline: '{}' });
    expect(ra.snapshot).toMatchObject({
      element: { slug: 'q', version: 1, spec: { query: 'select 1 as n' } },
      operation: { name: 'invoke', price: 1000 },
      engine_version: expect.any(String),
      policy_set_hash: null,
      price_table: expect.objectContaining({ 'sql.invoke': 1000, 'go-fn.invoke': 10000 }),
      toolchains: expect.objectContaining({
        database: expect.any(Object),
        node: { version: process.version },
      }),
    });
    if (ra.snapshot.toolchains.go) expect(ra.snapshot.toolchains.go.binary_sha256).toMatch(/^[0-9a-f]{64}$/);

    // Updated, then deleted: the run's bill of materials still names exactly what it ran.
    expect(
      (await t.call('PATCH', `/api/${slug}/q/ops/update`, { spec: { query: 'select 2 as n' } }, A)).status,
    ).toBe(200);
    const c = await post('q/ops/invoke', {});
    const rc = (await t.call('GET', `/api/runs/${c.body.run_id}/snapshot`, undefined, A)).body;
    expect(rc.snapshot_hash).not.toBe(ra.snapshot_hash);
    expect((await t.call('DELETE', `/api/${slug}/q/ops/delete?confirm=true`, undefined, A)).status).toBe(200);
    const again = (await t.call('GET', `/api/runs/${a.body.run_id}/snapshot`, undefined, A)).body;
    expect(again.snapshot.element.spec).toMatchObject({ query: 'select 1 as n' });
    const view = (await t.call('GET', `/api/runs/${a.body.run_id}`, undefined, A)).body;
    expect(view.snapshot).toEqual(again.snapshot);
    expect(view.snapshot_hash).toBe(ra.snapshot_hash);
  });

  it("pins every step of a workflow run, whatever happens to the steps' elements", async () => {
    await post('ops/create', { element_type: 'sql', slug: 'one', spec: { query: 'select 1 as n' } });
    await post('ops/create', {
      element_type: 'workflow',
      slug: 'wf',
      spec: { steps: [{ name: 's', element: 'one' }], outputs: { n: '${{ steps.s.output.rows[0].n }}' } },
    });
    const tr = await post('wf/ops/trigger', { parameters: {} });
    expect(tr.status).toBe(202);
    expect((await waitRun(t, tr.body.run_id, A)).status).toBe('succeeded');
    expect(
      (await t.call('PATCH', `/api/${slug}/one/ops/update`, { spec: { query: 'select 9 as n' } }, A)).status,
    ).toBe(200);
    const s = (await t.call('GET', `/api/runs/${tr.body.run_id}/snapshot`, undefined, A)).body;
    expect(s.workflow_definition.hash).toBe(tr.body.definition_hash);
    expect(JSON.stringify(s.workflow_definition)).toContain('select 1 as n');
    expect(JSON.stringify(s.workflow_definition)).not.toContain('select 9 as n');
  });
});

import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, expectTypedError, type TestApp, waitRun } from '../helpers/app.js';

/**
 * upstream elements (issue 13): a run of the source that ends with a listed status starts the
 * target with the handoff payload, recorded as an upstream run; other ends hand nothing off; a
 * loop stops at max_depth with UPSTREAM_DEPTH_EXCEEDED; bad definitions are typed 400s.
 */
async function until<T>(f: () => Promise<T | undefined>, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 50));
  }
}

describeEachDriver('upstream element', ({ db, driver }) => {
  let t: TestApp;
  let A: string;
  const slug = `up-${driver}`;
  const post = (path: string, body: unknown) => t.call('POST', `/api/${slug}/${path}`, body, A);
  const handoffs = async (el: string) =>
    (await t.call('GET', `/api/${slug}/${el}/ops/handoffs`, undefined, A)).body.handoffs;

  beforeAll(async () => {
    t = await testApp(db());
    A = (await t.circle(slug)).tokens.admin;
    for (const [s, query] of [
      ['produce', 'select $1::int * 2 as n'],
      ['consume', 'select $1::int + 1 as n'],
      ['ping', 'select 1 as n'],
    ])
      expect((await post('ops/create', { element_type: 'sql', slug: s, spec: { query } })).status).toBe(201);
  });
  afterAll(() => t?.close());

  it('refuses bad definitions with typed errors', async () => {
    const cases: [unknown, string][] = [
      [{ source: 'produce' }, 'MISSING_TARGET'],
      [{ source: 'nope', target: { element: 'consume' } }, 'INVALID_SOURCE'],
      [{ source: 'produce', target: { element: 'nope' } }, 'INVALID_TARGET'],
      [{ source: 'produce', target: { element: 'consume' }, input: '${{ body }}' }, 'INVALID_MAPPING'],
    ];
    for (const [spec, code] of cases) {
      const r = await post('ops/create', { element_type: 'upstream', slug: 'bad', spec });
      expect(r.status, JSON.stringify(r.body)).toBe(400);
      expectTypedError(r.body);
      expect(r.body.error.code).toBe(code);
    }
  });

  it('starts the target with the handoff payload when a source run succeeds, and only then', async () => {
    const u = await post('ops/create', {
      element_type: 'upstream',
      slug: 'then-consume',
      spec: {
        source: 'produce',
        on: ['succeeded'],
        target: { element: 'consume' },
        input: { params: ['${{ upstream.output.rows[0].n }}'] },
      },
    });
    expect(u.status, JSON.stringify(u.body)).toBe(201);
    const src = await post('produce/ops/invoke', { params: [5] });
    expect(src.body.status).toBe('succeeded');
    const h = await until(async () => (await handoffs('then-consume')).find((x: any) => x.run_id));
    expect(h.source_run_id).toBe(src.body.run_id);
    const run = await waitRun(t, h.run_id, A);
    expect(run.status).toBe('succeeded');
    expect(run.output.rows[0].n).toBe(11);
    expect(run.trigger).toMatchObject({
      type: 'upstream',
      source: 'then-consume',
      upstream_run_id: src.body.run_id,
      depth: 1,
    });
    // A failed source run hands nothing off (on: succeeded).
    const failed = await post('produce/ops/invoke', { params: ['x'] });
    expect(failed.body.status).toBe('failed');
    await new Promise((r) => setTimeout(r, 600));
    expect((await handoffs('then-consume')).some((x: any) => x.source_run_id === failed.body.run_id)).toBe(
      false,
    );
    const outbox = await db().query(`SELECT 1 FROM cairn.run_outbox WHERE source_run_id = $1`, [
      failed.body.run_id,
    ]);
    expect(outbox.rows.length).toBe(0);
  });

  it('stops a loop at max_depth with UPSTREAM_DEPTH_EXCEEDED', async () => {
    const u = await post('ops/create', {
      element_type: 'upstream',
      slug: 'loop',
      spec: { source: 'ping', on: ['completed'], target: { element: 'ping' }, input: {}, max_depth: 3 },
    });
    expect(u.status, JSON.stringify(u.body)).toBe(201);
    await post('ping/ops/invoke', {});
    const stopped = await until(async () => (await handoffs('loop')).find((x: any) => x.error));
    expect(stopped.error.code).toBe('UPSTREAM_DEPTH_EXCEEDED');
    expect(stopped.run_id).toBeNull();
    const all = await handoffs('loop');
    expect(all.filter((x: any) => x.run_id).length).toBe(3);
  });
});

import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { expectTypedError, testApp, type TestApp } from '../helpers/app.js';
import { ENGINE_VERSION } from '../../src/core/version.js';

const ISO_US = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/;

describeEachDriver('runs', ({ db }) => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  beforeAll(async () => {
    t = await testApp(db());
    c = await t.circle('runs-circle');
    const r = await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: 'sql', slug: 'add-one', spec: { query: 'select $1::int + 1 as n' } },
      c.tokens.write,
    );
    expect(r.status).toBe(201);
  });
  afterAll(() => t.close());

  it('sync invoke answers the SPEC §7 shape and records every R-RUN field', async () => {
    const r = await t.call('POST', `/api/${c.slug}/add-one/ops/invoke`, { params: [41] }, c.tokens.execute);
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({
      status: 'succeeded',
      output: { rows: [{ n: 42 }], row_count: 1 },
      error: null,
      credits_used: 1000,
    });
    expect(r.body.run_url).toBe(`/api/runs/${r.body.run_id}`);
    expect(r.body.web_url).toMatch(new RegExp(`/runs/${r.body.run_id}$`));
    expect(typeof r.body.duration_ms).toBe('number');

    const run = (await t.call('GET', `/api/runs/${r.body.run_id}`, undefined, c.tokens.read)).body;
    expect(run.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-/); // UUIDv7
    expect(run).toMatchObject({
      circle: { id: c.id, slug: c.slug },
      kind: 'invoke',
      operation: 'invoke',
      status: 'succeeded',
      mode: 'live',
      input: { params: [41] },
      output: { rows: [{ n: 42 }], row_count: 1 },
      error: null,
      attempt: 1,
      engine_version: ENGINE_VERSION,
      items_total: 1,
      items_succeeded: 1,
      items_failed: 0,
      items_pending: 0,
      credits_reserved: 1000,
      credits_used: 1000,
      flags: [],
      parent_run_id: null,
      root_run_id: run.id,
    });
    expect(run.element).toMatchObject({ slug: 'add-one', type: 'sql', version: 1 });
    expect(run.element.definition_hash).toMatch(/^[0-9a-f]{64}$/);
    expect(run.trigger).toMatchObject({ type: 'api' });
    expect(run.trigger.actor).toMatch(/^token:/);
    for (const f of ['queued_at', 'started_at', 'finished_at']) expect(run[f]).toMatch(ISO_US);
    expect(Date.parse(run.started_at)).toBeGreaterThanOrEqual(Date.parse(run.queued_at));
    expect(Date.parse(run.finished_at)).toBeGreaterThanOrEqual(Date.parse(run.started_at));
    expect(run.host).toBeTruthy();
    expect(run.worker).toBe(t.worker!.id);
    expect(run.trace_id).toMatch(/^[0-9a-f]{32}$/);
    expect(run.snapshot.element.spec).toEqual({
      query: 'select $1::int + 1 as n',
      timeout_ms: 5000,
      max_rows: 1000,
    });
    expect(run.snapshot.element.definition_hash).toBe(run.element.definition_hash);
    expect(run.snapshot.toolchains.database.version).toMatch(/PostgreSQL/);

    const audit = (await t.call('GET', `/api/runs/${run.id}/audit`, undefined, c.tokens.read)).body.events;
    expect(
      audit.filter((e: any) => e.type === 'status').map((e: any) => [e.from_status, e.to_status]),
    ).toEqual([
      [null, 'queued'],
      ['queued', 'running'],
      ['running', 'succeeded'],
    ]);
    // Every ledger movement is in the trail: reserved at submit, captured at settle (sql query: 1000).
    expect(
      audit.filter((e: any) => e.type === 'ledger').map((e: any) => [e.data.movement, e.data.amount]),
    ).toEqual([
      ['reserve', 1000],
      ['capture', 1000],
    ]);
    for (const e of audit) expect(e.at).toMatch(ISO_US);

    const items = (await t.call('GET', `/api/runs/${run.id}/items`, undefined, c.tokens.read)).body.items;
    expect(items).toHaveLength(1);
    expect(items[0]).toMatchObject({
      status: 'succeeded',
      attempt_count: 1,
      inputs: { params: [41] },
      outputs: run.output,
      credits_used: 1000,
    });
    const ev = items[0].evidence;
    expect(ev.command).toEqual(['sql', 'SelectStmt']);
    expect(ev.query_hash).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(ev.input_hashes.params).toMatch(/^sha256:/);
    expect(ev.output_hashes.output).toMatch(/^sha256:/);
    expect(ev.exit_code).toBe(0);
    expect(ev.host).toBe(run.host);
  });

  it('a caller may say a run is manual, never that it is a webhook, schedule or replay', async () => {
    const manual = await t.call(
      'POST',
      `/api/${c.slug}/add-one/ops/invoke`,
      { params: [1] },
      c.tokens.execute,
      {
        'x-cairn-trigger': 'manual',
      },
    );
    expect(manual.status).toBe(200);
    const run = (await t.call('GET', `/api/runs/${manual.body.run_id}`, undefined, c.tokens.read)).body;
    expect(run.trigger).toMatchObject({ type: 'manual', actor: expect.stringMatching(/^token:/) });
    for (const forged of ['schedule', 'webhook', 'replay', 'upstream']) {
      const r = await t.call('POST', `/api/${c.slug}/add-one/ops/invoke`, { params: [1] }, c.tokens.execute, {
        'x-cairn-trigger': forged,
      });
      expect(r.status, forged).toBe(400);
      expectTypedError(r.body);
    }
  });

  it('async invoke answers 202 with Location; the run completes later', async () => {
    const r = await t.call('POST', `/api/${c.slug}/add-one/ops/invoke`, { params: [1] }, c.tokens.execute, {
      prefer: 'respond-async',
    });
    expect(r.status).toBe(202);
    expect(r.body).toEqual({
      run_id: r.body.run_id,
      status: 'queued',
      run_url: `/api/runs/${r.body.run_id}`,
    });
    expect(r.headers.location).toBe(`/api/runs/${r.body.run_id}`);
    let run: any;
    for (let i = 0; i < 100; i++) {
      run = (await t.call('GET', r.headers.location, undefined, c.tokens.read)).body;
      if (run.status === 'succeeded') break;
      await new Promise((res) => setTimeout(res, 50));
    }
    expect(run.status).toBe('succeeded');
    expect(run.output.rows[0].n).toBe(2);
  });

  it('envelope keys are unwrapped', async () => {
    for (const key of ['payload', 'data', 'input']) {
      const r = await t.call(
        'POST',
        `/api/${c.slug}/add-one/ops/invoke`,
        { [key]: { params: [9] }, _meta: { a: 1 } },
        c.tokens.execute,
      );
      expect(r.body.output.rows[0].n).toBe(10);
    }
  });

  it('a failed run carries a typed error with its suggestion', async () => {
    const r = await t.call('POST', `/api/${c.slug}/add-one/ops/invoke`, { params: ['x'] }, c.tokens.execute);
    expect(r.status).toBe(200);
    expect(r.body.status).toBe('failed');
    expect(r.body.error).toMatchObject({ code: 'SQL_DATA_ERROR', class: 'validation', retryable: false });
    expect(r.body.error._suggestion.length).toBeGreaterThan(10);
    expect(r.body.credits_used).toBe(0);
    const run = (await t.call('GET', `/api/runs/${r.body.run_id}`, undefined, c.tokens.read)).body;
    expect(run).toMatchObject({ items_failed: 1, items_succeeded: 0 });
  });

  it('input that does not match the op schema creates no run', async () => {
    const before = (await t.call('GET', `/api/${c.slug}/runs?limit=500`, undefined, c.tokens.read)).body.runs
      .length;
    for (const body of [{ params: 'x' }, { parms: [1] }, [1, 2], 'null']) {
      const r = await t.call('POST', `/api/${c.slug}/add-one/ops/invoke`, body, c.tokens.execute);
      expect(r.status).toBe(400);
      expectTypedError(r.body);
    }
    const after = (await t.call('GET', `/api/${c.slug}/runs?limit=500`, undefined, c.tokens.read)).body.runs
      .length;
    expect(after).toBe(before);
  });

  it('an Idempotency-Key replays to the same run', async () => {
    const h = { 'idempotency-key': 'order-77' };
    const a = await t.call('POST', `/api/${c.slug}/add-one/ops/invoke`, { params: [5] }, c.tokens.execute, h);
    const b = await t.call('POST', `/api/${c.slug}/add-one/ops/invoke`, { params: [5] }, c.tokens.execute, h);
    expect(b.body.run_id).toBe(a.body.run_id);
    const runs = (await t.call('GET', `/api/${c.slug}/runs?limit=500`, undefined, c.tokens.read)).body.runs;
    expect(runs.filter((x: any) => x.idempotency_key === 'order-77')).toHaveLength(1);
  });

  it('lists with filters (incl. the seeds’ synonyms) and cursor paging', async () => {
    const all = (await t.call('GET', `/api/${c.slug}/runs?limit=500`, undefined, c.tokens.read)).body.runs;
    expect(all.length).toBeGreaterThanOrEqual(6);
    const ids = all.map((r: any) => r.id);
    expect([...ids].sort().reverse()).toEqual(ids); // newest first
    const failed = (await t.call('GET', `/api/${c.slug}/runs?status=failed`, undefined, c.tokens.read)).body
      .runs;
    expect(failed.length).toBeGreaterThan(0);
    expect(failed.every((r: any) => r.status === 'failed')).toBe(true);
    const success = (
      await t.call('GET', `/api/${c.slug}/runs?status=success&limit=500`, undefined, c.tokens.read)
    ).body.runs;
    expect(success.length).toBe(all.filter((r: any) => r.status === 'succeeded').length);
    expect(
      (
        await t.call(
          'GET',
          `/api/${c.slug}/runs?kind=invoke&trigger=api,manual&element=add-one&limit=500`,
          undefined,
          c.tokens.read,
        )
      ).body.runs.length,
    ).toBe(all.length);
    expect(
      (await t.call('GET', `/api/${c.slug}/runs?trigger=schedule`, undefined, c.tokens.read)).body.runs,
    ).toEqual([]);
    const future = new Date(Date.now() + 3600_000).toISOString();
    expect(
      (await t.call('GET', `/api/${c.slug}/runs?since=${future}`, undefined, c.tokens.read)).body.runs,
    ).toEqual([]);
    // paging
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const page: any = (
        await t.call(
          'GET',
          `/api/${c.slug}/runs?limit=2${cursor ? `&cursor=${cursor}` : ''}`,
          undefined,
          c.tokens.read,
        )
      ).body;
      seen.push(...page.runs.map((r: any) => r.id));
      cursor = page.next_cursor;
    } while (cursor);
    expect(seen).toEqual(ids);
    for (const q of ['status=bogus', 'kind=x', 'since=yesterday', 'cursor=zzz', 'limit=0', 'what=1']) {
      const r = await t.call('GET', `/api/${c.slug}/runs?${q}`, undefined, c.tokens.read);
      expect(r.status, q).toBe(400);
      expectTypedError(r.body);
    }
    const el = (await t.call('GET', `/api/${c.slug}/add-one/ops/runs?limit=500`, undefined, c.tokens.read))
      .body.runs;
    expect(el.length).toBe(all.length);
    const one = await t.call('GET', `/api/${c.slug}/add-one/ops/runs/${ids[0]}`, undefined, c.tokens.read);
    expect(one.body.id).toBe(ids[0]);
  });
});

describeEachDriver('cancel', ({ db }) => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  beforeAll(async () => {
    // No worker: runs stay queued until we cancel them.
    t = await testApp(db(), { worker: false, syncWaitMs: 200 });
    c = await t.circle('cancel-circle');
    await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: 'sql', slug: 'one', spec: { query: 'select 1 as x' } },
      c.tokens.write,
    );
  });
  afterAll(() => t.close());

  it('a sync invoke that outlives the wait cap answers 202', async () => {
    const r = await t.call('POST', `/api/${c.slug}/one/ops/invoke`, {}, c.tokens.execute);
    expect(r.status).toBe(202);
    expect(r.body.status).toBe('queued');
  });

  it('cancels a queued run, records it, and refuses a second cancel with 409', async () => {
    const r = await t.call('POST', `/api/${c.slug}/one/ops/invoke?async=1`, {}, c.tokens.execute);
    const id = r.body.run_id;
    expect(
      (await t.call('POST', `/api/runs/${id}/cancel`, { reason: 'changed my mind' }, c.tokens.read)).status,
    ).toBe(403);
    const x = await t.call(
      'POST',
      `/api/${c.slug}/one/ops/runs/${id}/cancel`,
      { reason: 'changed my mind' },
      c.tokens.execute,
    );
    expect(x.status).toBe(200);
    expect(x.body.status).toBe('cancelled');
    expect(x.body.error.code).toBe('RUN_CANCELLED');
    const again = await t.call('POST', `/api/runs/${id}/cancel`, {}, c.tokens.execute);
    expect(again.status).toBe(409);
    expect(again.body.error.code).toBe('RUN_ALREADY_FINISHED');
    expectTypedError(again.body);
    const audit = (await t.call('GET', `/api/runs/${id}/audit`, undefined, c.tokens.read)).body.events;
    expect(audit.at(-1)).toMatchObject({
      type: 'control',
      from_status: 'queued',
      to_status: 'cancelled',
      data: { action: 'cancel', reason: 'changed my mind' },
    });
    const items = (await t.call('GET', `/api/runs/${id}/items`, undefined, c.tokens.read)).body.items;
    expect(items[0].status).toBe('cancelled');
  });
});

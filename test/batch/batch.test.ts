import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, expectTypedError, type TestApp } from '../helpers/app.js';
import { busyFor } from '../helpers/slow-sql.js';

/**
 * Batch (column) runs over table rows, run control and the ledger, through
 * the real API on both drivers. The column's element is a real sql element:
 * `100 / divisor`, where the divisor of every 20th row is 0 until a fix row
 * exists — so 5 % of the rows fail until the data is fixed.
 */

const PRICE = 1_000; // sql invoke, micro-credits
const TERMINAL = ['succeeded', 'completed', 'failed', 'cancelled'];

async function setup(t: TestApp, slug: string) {
  const c = await t.circle(slug);
  const A = c.tokens.admin;
  const mk = async (body: unknown) => {
    const r = await t.call('POST', `/api/${slug}/ops/create`, body, A);
    if (r.status !== 201) throw new Error(JSON.stringify(r.body));
  };
  await mk({ element_type: 'sql', slug: 'ddl', spec: { query: 'create table fixes (k int primary key)' } });
  expect((await t.call('POST', `/api/${slug}/ddl/ops/invoke`, {}, A)).body.status).toBe('succeeded');
  await mk({
    element_type: 'sql',
    slug: 'div',
    spec: {
      query:
        'select 100 / (case when $1::int % 20 = 0 and not exists (select 1 from fixes where k = $1::int) then 0 else 1 end) as r',
    },
  });
  await mk({
    element_type: 'sql',
    slug: 'fix',
    spec: { query: 'insert into fixes select k from generate_series(0, $1::int, 20) as k' },
  });
  await mk({
    element_type: 'table',
    slug: 'nums',
    spec: {
      fields: { k: { type: 'integer', required: true }, args: { type: 'array' } },
      columns: { r: { element: 'div', input: { params: 'args' }, concurrency: 8 } },
    },
  });
  return { c, A };
}

async function insertRows(t: TestApp, slug: string, A: string, n: number, start = 0) {
  const rows = Array.from({ length: n }, (_, i) => ({ k: start + i, args: [start + i] }));
  const r = await t.call('POST', `/api/${slug}/nums/ops/rows`, { rows }, A);
  expect(r.status).toBe(201);
  return r.body.ids as string[];
}

async function waitFor(t: TestApp, id: string, A: string, done: (run: any) => boolean, ms = 240_000) {
  const until = Date.now() + ms;
  for (;;) {
    const run = (await t.call('GET', `/api/runs/${id}`, undefined, A)).body;
    if (done(run)) return run;
    if (Date.now() > until) throw new Error(`timed out; run is ${JSON.stringify(run).slice(0, 400)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function wallet(t: TestApp, slug: string, A: string) {
  return (await t.call('GET', `/api/${slug}/wallet`, undefined, A)).body;
}

async function ledgerOf(t: TestApp, id: string, A: string) {
  return (await t.call('GET', `/api/runs/${id}/ledger`, undefined, A)).body.totals;
}

describeEachDriver('batch runs', ({ db, driver }) => {
  let t: TestApp;
  beforeAll(async () => {
    t = await testApp(db(), { concurrency: 4 });
  });
  afterAll(async () => {
    await t.close();
  });

  it('10,000 rows, 5 % failing: pause, resume, finish, retry-failed to success; the ledger balances', async () => {
    const { A } = await setup(t, 'big');
    const N = 10_000;
    await insertRows(t, 'big', A, N);
    const before = await wallet(t, 'big', A);

    const started = await t.call('POST', '/api/big/nums/ops/columns/r/run', {}, A);
    expect(started.status).toBe(202);
    expect(started.body).toMatchObject({ items_total: N, items_valid: N, credits_reserved: N * PRICE });
    const id = started.body.run_id;
    expect((await wallet(t, 'big', A)).debits_pending).toBe(before.debits_pending + N * PRICE);

    // Pause once work has started (the embedded database runs this batch in seconds): no new
    // item starts; running ones finish.
    await waitFor(t, id, A, (r) => r.items_succeeded + r.items_failed >= 1);
    const paused = await t.call('POST', `/api/runs/${id}/pause`, {}, A, {
      'idempotency-key': `pause-${driver}`,
    });
    expect(paused.status, JSON.stringify(paused.body)).toBe(200);
    expect(paused.body.status).toBe('paused');
    // The same request replayed answers the same, with no second effect.
    const replay = await t.call('POST', `/api/runs/${id}/pause`, {}, A, {
      'idempotency-key': `pause-${driver}`,
    });
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(replay.body.status).toBe('paused');
    // Pausing again without the key is a typed 409.
    const again = await t.call('POST', `/api/runs/${id}/pause`, {}, A);
    expect(again.status).toBe(409);
    expect(again.body.error.code).toBe('RUN_ALREADY_PAUSED');

    const settled = await waitFor(t, id, A, (r) => r.worker === null);
    const items = (await t.call('GET', `/api/runs/${id}/items?status=running`, undefined, A)).body.items;
    expect(items).toHaveLength(0);
    await new Promise((r) => setTimeout(r, 400));
    const still = (await t.call('GET', `/api/runs/${id}`, undefined, A)).body;
    expect(still.status).toBe('paused');
    expect(still.items_succeeded + still.items_failed).toBe(settled.items_succeeded + settled.items_failed);
    expect(still.items_pending).toBeGreaterThan(0);
    expect(still.items_succeeded + still.items_failed + still.items_pending).toBe(N);

    const resumed = await t.call('POST', `/api/runs/${id}/resume`, {}, A);
    expect(resumed.body.status).toBe('queued');
    const done = await waitFor(t, id, A, (r) => TERMINAL.includes(r.status));
    expect(done).toMatchObject({
      status: 'completed',
      items_total: N,
      items_succeeded: N - N / 20,
      items_failed: N / 20,
      items_pending: 0,
      credits_used: (N - N / 20) * PRICE,
    });
    expect(await ledgerOf(t, id, A)).toEqual({
      reserved: N * PRICE,
      captured: (N - N / 20) * PRICE,
      released: (N / 20) * PRICE,
      held: 0,
    });
    const failed = (await t.call('GET', `/api/runs/${id}/items?status=failed`, undefined, A)).body.items;
    expect(failed).toHaveLength(N / 20);
    expect(failed.every((i: any) => i.error.code === 'SQL_DATA_ERROR' && i.attempt_count === 1)).toBe(true);
    const summary = (await t.call('GET', `/api/runs/${id}/summary`, undefined, A)).body.providers[0];
    expect(summary).toMatchObject({
      element: 'div',
      items: N,
      by_status: { succeeded: N - N / 20, failed: N / 20 },
      credits_used: (N - N / 20) * PRICE,
      errors: [{ code: 'SQL_DATA_ERROR', count: N / 20 }],
    });

    // The audit trail has the control actions, in order.
    const audit = (await t.call('GET', `/api/runs/${id}/audit`, undefined, A)).body.events;
    expect(audit.filter((e: any) => e.type === 'control').map((e: any) => e.data.action)).toEqual([
      'pause',
      'resume',
    ]);

    // Fix the data, then retry only the failed items, in the same run.
    expect((await t.call('POST', '/api/big/fix/ops/invoke', { params: [N] }, A)).body.status).toBe(
      'succeeded',
    );
    const retry = await t.call('POST', `/api/runs/${id}/retry-failed`, {}, A);
    expect(retry.status).toBe(200);
    expect(retry.body.retried).toBe(N / 20);
    const final = await waitFor(t, id, A, (r) => TERMINAL.includes(r.status));
    expect(final).toMatchObject({
      status: 'succeeded',
      items_succeeded: N,
      items_failed: 0,
      credits_used: N * PRICE,
    });
    const retried = (
      await t.call('GET', `/api/runs/${id}/items?limit=10000`, undefined, A)
    ).body.items.filter((i: any) => i.attempt_count === 2);
    expect(retried).toHaveLength(N / 20);
    expect(await ledgerOf(t, id, A)).toEqual({
      reserved: N * PRICE + (N / 20) * PRICE,
      captured: N * PRICE,
      released: (N / 20) * PRICE,
      held: 0,
    });
    const after = await wallet(t, 'big', A);
    // The wallet moved by exactly the batch plus the one fix invoke.
    expect(before.balance - after.balance).toBe(N * PRICE + PRICE);
    expect(after.debits_pending).toBe(0);

    // Every row's cell holds its output and item; a once-failed row shows its two attempts.
    const row0 = (await t.call('GET', '/api/big/nums/ops/rows?limit=1', undefined, A)).body.rows[0];
    const cell = await t.call('GET', `/api/big/nums/ops/rows/${row0.id}/cells/r`, undefined, A);
    expect(cell.body.cell).toMatchObject({ status: 'succeeded', value: { rows: [{ r: 100 }] }, attempts: 2 });
    expect(cell.body.item).toMatchObject({ key: row0.id, attempt_count: 2, inputs: { params: [0] } });

    // Nothing failed any more: retry-failed says so and changes nothing.
    const nothing = await t.call('POST', `/api/runs/${id}/retry-failed`, {}, A);
    expect(nothing.status).toBe(200);
    expect(nothing.body).toMatchObject({ retried: 0 });
    expect(nothing.body.message).toMatch(/no failed items/);
    expect((await t.call('GET', `/api/runs/${id}`, undefined, A)).body.status).toBe('succeeded');
    // Pausing a finished run is a typed 409.
    const late = await t.call('POST', `/api/runs/${id}/pause`, {}, A);
    expect(late.status).toBe(409);
    expectTypedError(late.body);
    expect(late.body.error.code).toBe('RUN_ALREADY_FINISHED');
  }, 600_000);

  it('dry_run validates and estimates without charging; smoke_test runs a sample; a bad row fails alone', async () => {
    const { A } = await setup(t, 'modes');
    await insertRows(t, 'modes', A, 30, 1);
    // A row without the mapped field: its item fails with INVALID_INPUT, the others go on.
    // Sent twice with one Idempotency-Key: inserted once, the replay answers the same ids.
    const k1 = await t.call('POST', '/api/modes/nums/ops/rows', { rows: [{ k: 999 }] }, A, {
      'idempotency-key': 'row-999',
    });
    const k2 = await t.call('POST', '/api/modes/nums/ops/rows', { rows: [{ k: 999 }] }, A, {
      'idempotency-key': 'row-999',
    });
    expect(k1.status).toBe(201);
    expect(k2.status).toBe(201);
    expect(k2.headers['idempotent-replayed']).toBe('true');
    expect(k2.body.ids).toEqual(k1.body.ids);
    expect((await t.call('GET', '/api/modes/nums/ops/rows?limit=1000', undefined, A)).body.rows).toHaveLength(
      31,
    );
    const w0 = await wallet(t, 'modes', A);

    const dry = await t.call('POST', '/api/modes/nums/ops/columns/r/run', { mode: 'dry_run' }, A);
    expect(dry.status).toBe(200);
    expect(dry.body).toMatchObject({
      status: 'completed',
      mode: 'dry_run',
      items_total: 31,
      items_valid: 30,
      items_invalid: 1,
      estimated_credits: 30 * PRICE,
      credits_reserved: 0,
      output: { dry_run: true, covered: true },
    });
    const dryItems = (await t.call('GET', `/api/runs/${dry.body.run_id}/items`, undefined, A)).body.items;
    expect(dryItems.filter((i: any) => i.status === 'skipped')).toHaveLength(30);
    expect(dryItems.find((i: any) => i.status === 'failed').error).toMatchObject({
      code: 'INVALID_INPUT',
      message: expect.stringMatching(/no value for mapped field args/),
    });
    expect(await wallet(t, 'modes', A)).toMatchObject({ balance: w0.balance, debits_pending: 0 });

    const smoke = await t.call(
      'POST',
      '/api/modes/nums/ops/columns/r/run',
      { mode: 'smoke_test', sample: 3 },
      A,
    );
    expect(smoke.status).toBe(202);
    const s = await waitFor(t, smoke.body.run_id, A, (r) => TERMINAL.includes(r.status));
    expect(s).toMatchObject({
      status: 'succeeded',
      mode: 'smoke_test',
      items_total: 3,
      credits_used: 3 * PRICE,
    });
    expect((await wallet(t, 'modes', A)).balance).toBe(w0.balance - 3 * PRICE);

    const live = await t.call('POST', '/api/modes/nums/ops/columns/r/run', { rows: 'empty' }, A);
    const l = await waitFor(t, live.body.run_id, A, (r) => TERMINAL.includes(r.status));
    // Rows 1..30 and 999: 20 fails (k % 20 = 0) and 999 has no args; 3 already had a cell.
    expect(l).toMatchObject({ status: 'completed', items_total: 28, items_failed: 2, items_succeeded: 26 });
    const failures = (await t.call('GET', '/api/modes/failures?element=div', undefined, A)).body.failures;
    expect(failures.map((f: any) => f.error.code).sort()).toEqual([
      'INVALID_INPUT',
      'INVALID_INPUT',
      'SQL_DATA_ERROR',
    ]);
  }, 120_000);

  it('cancel releases the whole reservation; a budget stop skips what has not started', async () => {
    const { A } = await setup(t, 'money');
    await insertRows(t, 'money', A, 2_000, 1);
    const w0 = await wallet(t, 'money', A);
    const r = await t.call('POST', '/api/money/nums/ops/columns/r/run', { concurrency: 2 }, A);
    await waitFor(t, r.body.run_id, A, (x) => x.items_succeeded >= 1);
    const c = await t.call('POST', `/api/runs/${r.body.run_id}/cancel`, {}, A);
    expect(c.body.status, JSON.stringify(c.body)).toBe('cancelled');
    await new Promise((res) => setTimeout(res, 300)); // late item results must not count
    const run = (await t.call('GET', `/api/runs/${r.body.run_id}`, undefined, A)).body;
    const l = await ledgerOf(t, r.body.run_id, A);
    expect(l.held).toBe(0);
    expect(l.reserved).toBe(2_000 * PRICE);
    expect(l.captured + l.released).toBe(l.reserved);
    expect(l.captured).toBe(run.credits_used);
    const w1 = await wallet(t, 'money', A);
    expect(w1.debits_pending).toBe(0);
    expect(w0.balance - w1.balance).toBe(run.credits_used);
    const cancelledAgain = await t.call('POST', `/api/runs/${r.body.run_id}/cancel`, {}, A);
    expect(cancelledAgain.status).toBe(409);

    // Budget of 10 items with policy stop: the rest is skipped, nothing beyond the budget is charged.
    const b = await t.call(
      'POST',
      '/api/money/nums/ops/columns/r/run',
      { budget: 10 * PRICE, on_budget_exceeded: 'stop', concurrency: 1, rows: 'empty' },
      A,
    );
    expect(b.body.credits_reserved).toBe(10 * PRICE);
    const br = await waitFor(t, b.body.run_id, A, (x) => TERMINAL.includes(x.status));
    expect(br.status).toBe('failed');
    expect(br.error.code).toBe('BUDGET_EXCEEDED');
    expect(br.flags).toContain('budget_exceeded');
    expect(br.credits_used).toBeLessThanOrEqual(10 * PRICE);
    expect(br.output.items_skipped).toBeGreaterThan(0);
    expect((await ledgerOf(t, b.body.run_id, A)).held).toBe(0);
  }, 120_000);

  it('retries retryable item errors automatically with backoff; rerun makes a new run with the same items', async () => {
    const { A } = await setup(t, 'flaky');
    const mk = (body: unknown) => t.call('POST', '/api/flaky/ops/create', body, A);
    await mk({ element_type: 'sql', slug: 'seq', spec: { query: 'create sequence s' } });
    expect((await t.call('POST', '/api/flaky/seq/ops/invoke', {}, A)).body.status).toBe('succeeded');
    // The first three calls outlast their 200 ms timeout (SQL_TIMEOUT is retryable); later ones are quick.
    await mk({
      element_type: 'sql',
      slug: 'slow-first',
      spec: {
        query: `select true as x from ${busyFor(driver, "case when nextval('s') <= 3 then 0.6 else 0 end")}`,
        timeout_ms: 200,
      },
    });
    await mk({
      element_type: 'table',
      slug: 'jobs',
      spec: {
        fields: { n: { type: 'integer' } },
        columns: { out: { element: 'slow-first', concurrency: 1, max_attempts: 3 } },
      },
    });
    await t.call('POST', '/api/flaky/jobs/ops/rows', { rows: [{ n: 1 }, { n: 2 }, { n: 3 }] }, A);
    const r = await t.call('POST', '/api/flaky/jobs/ops/columns/out/run', {}, A);
    const done = await waitFor(t, r.body.run_id, A, (x) => TERMINAL.includes(x.status), 60_000);
    expect(done).toMatchObject({
      status: 'succeeded',
      items_succeeded: 3,
      items_failed: 0,
      credits_used: 3 * PRICE,
    });
    const items = (await t.call('GET', `/api/runs/${r.body.run_id}/items`, undefined, A)).body.items;
    // Three attempts timed out and were retried after a backoff; every row then succeeded.
    expect(items.reduce((n: number, i: any) => n + i.attempt_count, 0)).toBe(6);
    expect(items.every((i: any) => i.status === 'succeeded' && i.attempt_count <= 3)).toBe(true);

    const again = await t.call('POST', `/api/runs/${r.body.run_id}/rerun`, {}, A, {
      'idempotency-key': 'rerun-1',
    });
    expect(again.status).toBe(201);
    expect(again.body).toMatchObject({ kind: 'batch', rerun_of: r.body.run_id, items_total: 3 });
    expect(again.body.trigger).toMatchObject({ type: 'rerun', source: r.body.run_id });
    const replay = await t.call('POST', `/api/runs/${r.body.run_id}/rerun`, {}, A, {
      'idempotency-key': 'rerun-1',
    });
    expect(replay.body.id).toBe(again.body.id);
    const second = await waitFor(t, again.body.id, A, (x) => TERMINAL.includes(x.status), 60_000);
    expect(second).toMatchObject({ status: 'succeeded', items_succeeded: 3 });
    const keys = (rows: any[]) => rows.map((i) => i.key).sort();
    expect(keys((await t.call('GET', `/api/runs/${again.body.id}/items`, undefined, A)).body.items)).toEqual(
      keys(items),
    );
  }, 120_000);

  it('a running invoke cannot be paused (its one item has started); a queued one can', async () => {
    const c = await t.circle(`inv-pause`);
    const A = c.tokens.admin;
    await t.call(
      'POST',
      '/api/inv-pause/ops/create',
      { element_type: 'sql', slug: 'nap', spec: { query: `select true as x from ${busyFor(driver, 0.8)}` } },
      A,
    );
    const r = await t.call('POST', '/api/inv-pause/nap/ops/invoke?async=1', {}, A);
    await waitFor(t, r.body.run_id, A, (x) => x.status !== 'queued');
    const p = await t.call('POST', `/api/runs/${r.body.run_id}/pause`, {}, A);
    expect(p.status).toBe(409);
    // On the embedded database the request waits behind the statement, so the run may have finished.
    expect(['RUN_NOT_PAUSABLE', 'RUN_ALREADY_FINISHED']).toContain(p.body.error.code);
    if (driver === 'pg') expect(p.body.error.code).toBe('RUN_NOT_PAUSABLE');
    expect((await waitFor(t, r.body.run_id, A, (x) => TERMINAL.includes(x.status))).status).toBe('succeeded');
  }, 60_000);
});

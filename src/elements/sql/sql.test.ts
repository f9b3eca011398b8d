import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../../../test/helpers/db.js';
import { testApp, type TestApp } from '../../../test/helpers/app.js';
import { busyFor } from '../../../test/helpers/slow-sql.js';
import { SQL_ERRORS } from './errors.js';

describeEachDriver('sql element', ({ db, driver }) => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  let n = 0;
  const run = async (spec: Record<string, unknown>, body: unknown = {}) => {
    const slug = `q${n++}`;
    const cr = await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: 'sql', slug, spec },
      c.tokens.write,
    );
    if (cr.status !== 201) return { status: cr.status, error: cr.body.error, phase: 'create' as const };
    const r = await t.call('POST', `/api/${c.slug}/${slug}/ops/invoke`, body, c.tokens.execute);
    return { ...r.body, phase: 'invoke' as const };
  };
  beforeAll(async () => {
    t = await testApp(db());
    c = await t.circle('sqlc');
  });
  afterAll(() => t.close());

  it('answers the issue example: add-one with [41] → 42', async () => {
    const r = await run({ query: 'select $1::int + 1 as n' }, { params: [41] });
    expect(r.output).toEqual({ rows: [{ n: 42 }], row_count: 1 });
  });

  it('runs DDL and DML inside the circle schema', async () => {
    expect(
      (await run({ query: 'create table items (id serial primary key, name text unique, doc jsonb)' }))
        .status,
    ).toBe('succeeded');
    const ins = await run(
      { query: 'insert into items (name, doc) values ($1, $2::jsonb) returning id, name, doc' },
      { params: ['a', { k: [1, 2] }] },
    );
    expect(ins.output).toEqual({ rows: [{ id: 1, name: 'a', doc: { k: [1, 2] } }], row_count: 1 });
    const upd = await run({ query: "update items set name = name || '!'" });
    expect(upd.output).toEqual({ rows: [], row_count: 1 });
    const sel = await run({ query: 'select name from items' });
    expect(sel.output.rows).toEqual([{ name: 'a!' }]);
    expect((await run({ query: 'create index items_doc on items using gin (doc)' })).status).toBe(
      'succeeded',
    );
    expect((await run({ query: 'create view v_items as select name from items' })).status).toBe('succeeded');
    expect((await run({ query: 'select * from v_items' })).output.rows).toEqual([{ name: 'a!' }]);
    expect((await run({ query: 'drop view v_items' })).status).toBe('succeeded');
  });

  const failing: [string, Record<string, unknown>, unknown][] = [
    ['SQL_UNDEFINED_OBJECT', { query: 'select * from no_such_table' }, {}],
    ['SQL_UNDEFINED_OBJECT', { query: 'select no_such_column from items' }, {}],
    ['SQL_DUPLICATE_OBJECT', { query: 'create table items (x int)' }, {}],
    ['SQL_DATA_ERROR', { query: 'select 1 / 0 as x' }, {}],
    ['SQL_DATA_ERROR', { query: 'select $1::int as x' }, { params: ['abc'] }],
    ['SQL_CONSTRAINT_VIOLATION', { query: "insert into items (name) values ('a!')" }, {}],
    ['SQL_PARAMS_MISMATCH', { query: 'select $1::int + $2::int as x' }, { params: [1] }],
    ['SQL_TOO_MANY_ROWS', { query: 'select g from generate_series(1, 50) g', max_rows: 10 }, {}],
    ['SQL_PERMISSION_DENIED', { query: 'select * from cairn.circles' }, {}],
  ];
  for (const [code, spec, body] of failing) {
    it(`${code}: ${spec.query}`, async () => {
      const r = await run(spec, body);
      expect(r.status).toBe('failed');
      const decl = SQL_ERRORS.find((e) => e.code === code)!;
      expect(r.error, JSON.stringify(r)).toMatchObject({
        code,
        class: decl.class,
        retryable: decl.retryable,
        _suggestion: decl.suggestion,
      });
      expect(r.error.message.length).toBeGreaterThan(5);
    });
  }

  it('SQL_SYNTAX_ERROR, SQL_MULTIPLE_STATEMENTS and SQL_STATEMENT_NOT_ALLOWED refuse the definition', async () => {
    for (const [code, query] of [
      ['SQL_SYNTAX_ERROR', 'selec 1'],
      ['SQL_MULTIPLE_STATEMENTS', 'select 1; select 2'],
      ['SQL_STATEMENT_NOT_ALLOWED', 'vacuum'],
    ] as const) {
      const r = await run({ query });
      expect(r.phase).toBe('create');
      expect(r.error.code).toBe(code);
    }
    const syntax = await run({ query: 'select * frm items' });
    expect(syntax.error.message).toMatch(/syntax error at or near "frm" \(at character 10\)/);
  });

  it('a refused row cap leaves no writes behind', async () => {
    const r = await run({
      query: "insert into items (name) select 'n' || g from generate_series(1, 20) g returning id",
      max_rows: 5,
    });
    expect(r.error.code).toBe('SQL_TOO_MANY_ROWS');
    expect((await run({ query: 'select count(*)::int as n from items' })).output.rows[0].n).toBe(1);
  });

  it('SQL_TIMEOUT: the statement is stopped (pg) or its overrun rolled back (PGlite)', async () => {
    const started = Date.now();
    const r = await run({
      query: `insert into items (name) select 'slow' from ${busyFor(driver, 1.5)}`,
      timeout_ms: 300,
    });
    expect(r.status).toBe('failed');
    expect(r.error).toMatchObject({ code: 'SQL_TIMEOUT', class: 'timeout', retryable: true });
    const took = Date.now() - started;
    if (driver === 'pg') expect(took).toBeLessThan(1400); // interrupted, not waited out
    expect(
      (await run({ query: "select count(*)::int as n from items where name = 'slow'" })).output.rows[0].n,
    ).toBe(0);
  });

  it('a read-only query is retryable after a lost worker; a write is not', async () => {
    await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: 'sql', slug: 'ro', spec: { query: 'select 1 as x' } },
      c.tokens.write,
    );
    await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      {
        element_type: 'sql',
        slug: 'rw',
        spec: { query: "insert into items (name) values ('z') returning id" },
      },
      c.tokens.write,
    );
    const ro = await t.call('POST', `/api/${c.slug}/ro/ops/invoke`, {}, c.tokens.execute);
    const rw = await t.call('POST', `/api/${c.slug}/rw/ops/invoke`, {}, c.tokens.execute);
    const a = (await t.call('GET', `/api/runs/${ro.body.run_id}`, undefined, c.tokens.read)).body;
    const b = (await t.call('GET', `/api/runs/${rw.body.run_id}`, undefined, c.tokens.read)).body;
    expect(a.snapshot.operation.retry_on_loss).toBe(true);
    expect(a.max_attempts).toBe(3);
    expect(b.snapshot.operation.retry_on_loss).toBe(false);
    expect(b.max_attempts).toBe(1);
  });

  it('cancelling a running run records it and interrupts the statement (PostgreSQL)', async () => {
    // PGlite is one session: a cancel waits behind the running statement (docs/architecture.md).
    if (driver !== 'pg') return;
    await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      {
        element_type: 'sql',
        slug: 'sleepy',
        spec: { query: 'select 1 as x from pg_sleep(5)', timeout_ms: 20000 },
      },
      c.tokens.write,
    );
    const r = await t.call('POST', `/api/${c.slug}/sleepy/ops/invoke?async=1`, {}, c.tokens.execute);
    const id = r.body.run_id;
    for (let i = 0; i < 100; i++) {
      if ((await t.call('GET', `/api/runs/${id}`, undefined, c.tokens.read)).body.status === 'running') break;
      await new Promise((res) => setTimeout(res, 20));
    }
    const started = Date.now();
    const x = await t.call('POST', `/api/runs/${id}/cancel`, {}, c.tokens.execute);
    expect(x.body.status).toBe('cancelled');
    if (driver === 'pg') {
      while (t.worker!.inFlight > 0 && Date.now() - started < 4000)
        await new Promise((res) => setTimeout(res, 20));
      expect(t.worker!.inFlight).toBe(0);
      expect(Date.now() - started).toBeLessThan(2000); // well before pg_sleep(5) would end
    }
    await t.worker!.idle();
    const run = (await t.call('GET', `/api/runs/${id}`, undefined, c.tokens.read)).body;
    expect(run.status).toBe('cancelled'); // the worker's late settle does not overwrite it
    const audit = (await t.call('GET', `/api/runs/${id}/audit`, undefined, c.tokens.read)).body.events;
    expect(audit.filter((e: any) => e.type !== 'ledger').map((e: any) => e.to_status)).toEqual([
      'queued',
      'running',
      'cancelled',
    ]);
    // A cancelled run releases its whole reservation.
    expect(
      audit.filter((e: any) => e.type === 'ledger').map((e: any) => [e.data.movement, e.data.amount]),
    ).toEqual([
      ['reserve', 1000],
      ['release', 1000],
    ]);
  });
});

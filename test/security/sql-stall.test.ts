import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { expectTypedError, testApp, type TestApp } from '../helpers/app.js';
import { definitionHash } from '../../src/core/hash.js';
import { SQL_ERRORS } from '../../src/elements/sql/errors.js';
import { getElement, writeVersion } from '../../src/store/elements.js';

type C = Awaited<ReturnType<TestApp['circle']>>;

const UNINTERRUPTIBLE = SQL_ERRORS.find((e) => e.code === 'SQL_UNINTERRUPTIBLE')!;

/**
 * Finding: on the embedded database (PGlite: one session, WebAssembly, in the
 * server's process) `select pg_sleep(8)` with timeout_ms 5000 held /healthz —
 * and every other circle — for 6.8 s, because nothing can interrupt a statement
 * there. What can only stall is now refused before it runs: at create/update
 * with a typed 400, and again when a run executes.
 */
describeEachDriver('SQL that can only stall', ({ db, driver }) => {
  let t: TestApp;
  let c: C;
  let n = 0;
  const create = (query: string, extra: Record<string, unknown> = {}) =>
    t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: 'sql', slug: `s${n++}`, spec: { query, ...extra } },
      c.tokens.write,
    );
  const slugs = async () =>
    (await t.call('GET', `/api/${c.slug}/elements`, undefined, c.tokens.read)).body.elements.map(
      (e: any) => e.slug,
    );
  const timed = async <T>(f: () => Promise<T>): Promise<{ r: T; ms: number }> => {
    const s = performance.now();
    const r = await f();
    return { r, ms: performance.now() - s };
  };

  beforeAll(async () => {
    t = await testApp(db());
    c = await t.circle('stall');
  });
  afterAll(() => t.close());

  it('the finding: select pg_sleep(8) with timeout_ms 5000 is refused at create on PGlite, typed, and nothing is created', async () => {
    const before = await slugs();
    const slug = `s${n}`;
    const r = await create('select pg_sleep(8)', { timeout_ms: 5000 });
    if (driver === 'pglite') {
      expect(r.status).toBe(400);
      expectTypedError(r.body);
      expect(r.body.error).toMatchObject({
        code: 'SQL_UNINTERRUPTIBLE',
        class: 'validation',
        retryable: false,
        _suggestion: UNINTERRUPTIBLE.suggestion,
      });
      expect(r.body.error.message).toMatch(/pg_sleep\(\) only waits.*cannot interrupt/);
      expect(r.body.error._suggestion).toMatch(/DATABASE_URL/);
      expect(await slugs()).toEqual(before);
      const get = await t.call('GET', `/api/${c.slug}/${slug}/ops/get`, undefined, c.tokens.read);
      expect(get.body.error.code).toBe('ELEMENT_NOT_FOUND');
    } else {
      // PostgreSQL interrupts it: statement_timeout (and a cancel) stop pg_sleep, so it stays allowed.
      expect(r.status).toBe(201);
    }
  });

  it('every spelling of pg_sleep, pg_sleep_for and pg_sleep_until, anywhere in the statement, is refused on PGlite', async () => {
    const queries = [
      'select pg_catalog.PG_SLEEP(1)',
      'SELECT PG_SLEEP(1)',
      'select "pg_sleep"(1)',
      "select pg_sleep_for('1s')",
      "select pg_catalog.pg_sleep_for(interval '1 second')",
      "select pg_sleep_until(now() + interval '1 second')",
      'select 1 as x from pg_sleep(1)',
      'select g from generate_series(1, 3) g where pg_sleep(0.1) is not null',
      'select (select 1 from pg_sleep(1)) as x',
      'with w as (select pg_sleep(1)) select * from w',
      'insert into nap_t select 1 from pg_sleep(1)',
      'update nap_t set x = 1 where pg_sleep(1) is not null',
      'explain analyze select pg_sleep(1)',
      'create view nap_v as select pg_sleep(1)',
      'create table nap_d (x text default pg_sleep(1)::text)',
      'alter table nap_t add column y text default pg_sleep(1)::text',
    ];
    for (const q of queries) {
      const r = await create(q);
      if (driver === 'pglite') {
        expect(r.status, q).toBe(400);
        expect(r.body.error.code, q).toBe('SQL_UNINTERRUPTIBLE');
        expect(r.body.error._suggestion, q).toBe(UNINTERRUPTIBLE.suggestion);
      } else expect(r.status, q).toBe(201);
    }
  });

  it('functions that run SQL text of their own cannot smuggle a statement past the guard (both drivers)', async () => {
    for (const q of [
      "select query_to_xml('select pg_sleep(8)', true, true, '')",
      "select pg_catalog.query_to_xml_and_xmlschema('select pg_sleep(8)', true, true, '')",
      "select query_to_xmlschema('select 1', true, true, '')",
      "select * from ts_stat('select to_tsvector(pg_sleep(8)::text)')",
      "select ts_rewrite('a & b'::tsquery, 'select ''a''::tsquery, ''c''::tsquery from pg_sleep(8)')",
      "select query_to_xml('select pg_advisory_lock(1)', true, true, '')",
    ]) {
      const r = await create(q);
      expect(r.status, q).toBe(403);
      expectTypedError(r.body);
      expect(r.body.error.code, q).toBe('SQL_STATEMENT_NOT_ALLOWED');
    }
    // ts_rewrite's three-argument form runs no SQL and stays available.
    const ok = await create("select ts_rewrite('a & b'::tsquery, 'a'::tsquery, 'c'::tsquery)::text as q");
    expect(ok.status).toBe(201);
    const run = await t.call('POST', `/api/${c.slug}/${ok.body.slug}/ops/invoke`, {}, c.tokens.execute);
    expect(run.body.status).toBe('succeeded');
  });

  it('advisory locks (session, xact, shared, try, any case or schema) and LOCK TABLE are refused (both drivers)', async () => {
    const fns = [
      'pg_advisory_lock(1)',
      'pg_advisory_lock(1, 2)',
      'pg_advisory_lock_shared(1)',
      'pg_advisory_xact_lock(1)',
      'pg_advisory_xact_lock_shared(1)',
      'pg_try_advisory_lock(1)',
      'pg_try_advisory_lock_shared(1)',
      'pg_try_advisory_xact_lock(1)',
      'pg_try_advisory_xact_lock_shared(1)',
      'pg_advisory_unlock(1)',
      'pg_advisory_unlock_all()',
      'pg_catalog.PG_ADVISORY_XACT_LOCK(1)',
    ];
    for (const f of [...fns.map((x) => `select ${x}`), 'select 1 as x from pg_advisory_lock(1)']) {
      const r = await create(f);
      expect(r.status, f).toBe(403);
      expectTypedError(r.body);
      expect(r.body.error.code, f).toBe('SQL_STATEMENT_NOT_ALLOWED');
      expect(r.body.error.message, f).toMatch(/advisory.*is not available to circle SQL/i);
    }
    for (const q of [
      'lock table locked',
      'lock locked',
      'LOCK TABLE locked IN ACCESS EXCLUSIVE MODE NOWAIT',
      'lock table only locked in share mode',
    ]) {
      const r = await create(q);
      expect(r.status, q).toBe(403);
      expect(r.body.error).toMatchObject({ code: 'SQL_STATEMENT_NOT_ALLOWED' });
      expect(r.body.error.message, q).toBe('Lock statements are not allowed in a sql element.');
    }
  });

  it('WITH RECURSIVE is refused on PGlite (no bound to check) and runs on PostgreSQL; bounded generate_series works on both', async () => {
    const recursive = [
      'with recursive t(n) as (select 1 union all select n + 1 from t where n < 5) select count(*)::int as n from t',
      'WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT n FROM t LIMIT 3',
      'select * from (with recursive t(n) as (select 1 union all select n + 1 from t where n < 5) select n from t) s',
      'insert into rec_t with recursive t(n) as (select 1 union all select n + 1 from t where n < 5) select n from t',
      'create recursive view rec_v(n) as select 1 union all select n + 1 from rec_v where n < 5',
      'create view rec_w as with recursive t(n) as (select 1 union all select n + 1 from t where n < 5) select n from t',
    ];
    const created: string[] = [];
    for (const q of recursive) {
      const r = await create(q);
      if (r.status === 201) created.push(r.body.slug);
      if (driver === 'pglite') {
        expect(r.status, q).toBe(400);
        expectTypedError(r.body);
        expect(r.body.error.code, q).toBe('SQL_UNINTERRUPTIBLE');
        expect(r.body.error.message, q).toMatch(/WITH RECURSIVE is refused on the embedded database/);
        expect(r.body.error._suggestion, q).toMatch(/generate_series with constant bounds/);
      } else expect(r.status, q).toBe(201);
    }
    if (driver === 'pg') {
      const run = await t.call('POST', `/api/${c.slug}/${created[0]}/ops/invoke`, {}, c.tokens.execute);
      expect(run.body.output).toEqual({ rows: [{ n: 5 }], row_count: 1 });
    }
    // Not recursive: a plain CTE and a generate_series with constant bounds run on both drivers.
    const plain = await create(
      'with t as (select g from generate_series(1, 5) g) select count(*)::int as n from t',
    );
    expect(plain.status).toBe(201);
    const run = await t.call('POST', `/api/${c.slug}/${plain.body.slug}/ops/invoke`, {}, c.tokens.execute);
    expect(run.body.output).toEqual({ rows: [{ n: 5 }], row_count: 1 });
  });

  it('an update cannot bring pg_sleep or WITH RECURSIVE in on PGlite either', async () => {
    const r = await create('select 1 as x');
    expect(r.status).toBe(201);
    for (const query of [
      'select pg_sleep(8)',
      'with recursive t(n) as (select 1 union all select n + 1 from t) select n from t',
    ]) {
      const u = await t.call(
        'PATCH',
        `/api/${c.slug}/${r.body.slug}/ops/update`,
        { spec: { query } },
        c.tokens.write,
      );
      if (driver === 'pglite') {
        expect(u.status, query).toBe(400);
        expect(u.body.error.code, query).toBe('SQL_UNINTERRUPTIBLE');
      } else expect(u.status, query).toBe(200);
    }
    const get = await t.call('GET', `/api/${c.slug}/${r.body.slug}/ops/get`, undefined, c.tokens.read);
    expect(get.body.version).toBe(driver === 'pglite' ? 1 : 3);
  });

  it('a stalling statement that got into a spec anyway is refused when it runs (PGlite): the run fails typed and /healthz answers at once', async () => {
    const r = await create('select 1 as x', { timeout_ms: 5000 });
    expect(r.status).toBe(201);
    // Write the finding's spec straight into the store, past the definition-time check.
    const el = (await getElement(db(), c.id, r.body.slug))!;
    const spec = { query: 'select pg_sleep(8)', timeout_ms: driver === 'pg' ? 1000 : 5000, max_rows: 1000 };
    await writeVersion(
      db(),
      el,
      { spec, name: el.name, intention: el.intention, definitionHash: definitionHash('sql', spec) },
      'planted',
      'test',
    );
    const url = `/api/${c.slug}/${r.body.slug}/ops/invoke`;
    if (driver === 'pglite') {
      const [inv, hz] = await Promise.all([
        timed(() => t.call('POST', url, {}, c.tokens.execute)),
        timed(() => t.call('GET', '/healthz', undefined, '')),
      ]);
      expect(inv.r.body.status).toBe('failed');
      expect(inv.r.body.error).toMatchObject({ code: 'SQL_UNINTERRUPTIBLE', retryable: false });
      expect(hz.r.status).toBe(200);
      // The statement never started: both answer in far less than the 8 s it would hold the process.
      expect(inv.ms).toBeLessThan(3000);
      expect(hz.ms).toBeLessThan(3000);
    } else {
      // PostgreSQL: the statement runs on its own connection and statement_timeout stops it.
      const a = await t.call('POST', `${url}?async=1`, {}, c.tokens.execute);
      for (let i = 0; i < 100; i++) {
        const s = (await t.call('GET', `/api/runs/${a.body.run_id}`, undefined, c.tokens.read)).body.status;
        if (s !== 'queued') break;
        await new Promise((res) => setTimeout(res, 20));
      }
      const hz = await timed(() => t.call('GET', '/healthz', undefined, ''));
      expect(hz.r.status).toBe(200);
      expect(hz.ms).toBeLessThan(3000);
      let run;
      for (let i = 0; i < 200; i++) {
        run = (await t.call('GET', `/api/runs/${a.body.run_id}`, undefined, c.tokens.read)).body;
        if (run.status !== 'queued' && run.status !== 'running') break;
        await new Promise((res) => setTimeout(res, 25));
      }
      expect(run.status).toBe('failed');
      expect(run.error.code).toBe('SQL_TIMEOUT');
      expect(run.duration_ms).toBeLessThan(7000); // interrupted, not waited out
    }
  });
});

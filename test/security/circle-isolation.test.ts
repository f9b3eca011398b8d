import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { expectTypedError, testApp, type TestApp } from '../helpers/app.js';
import { getCircleBySlug, circleIdentity } from '../../src/store/circles.js';

type C = Awaited<ReturnType<TestApp['circle']>>;

describeEachDriver('circle isolation', ({ db, driver }) => {
  let t: TestApp;
  let a: C;
  let b: C;
  let bRun: string;
  let bSchema: string;

  const sql = async (circle: C, slug: string, query: string) => {
    const create = await t.call(
      'POST',
      `/api/${circle.slug}/ops/create`,
      { element_type: 'sql', slug, spec: { query } },
      circle.tokens.write,
    );
    if (create.status !== 201) return { created: create };
    return {
      created: create,
      run: await t.call('POST', `/api/${circle.slug}/${slug}/ops/invoke`, {}, circle.tokens.execute),
    };
  };

  beforeAll(async () => {
    t = await testApp(db());
    a = await t.circle('alpha');
    b = await t.circle('beta');
    bSchema = (await getCircleBySlug(db(), 'beta'))!.schema;
    expect((await sql(b, 'mk', 'create table secrets (v text)')).run!.body.status).toBe('succeeded');
    expect((await sql(b, 'put', "insert into secrets values ('b-secret')")).run!.body.status).toBe(
      'succeeded',
    );
    const r = (await sql(b, 'read', 'select v from secrets')).run!;
    expect(r.body.output.rows).toEqual([{ v: 'b-secret' }]);
    bRun = r.body.run_id;
  });
  afterAll(() => t.close());

  it("a circle's token cannot see or touch another circle's elements, runs or tokens", async () => {
    const tokA = a.tokens.admin;
    const probes: [string, string, unknown?][] = [
      ['GET', `/api/beta/read/ops/get`],
      ['GET', `/api/beta/nonexistent/ops/get`],
      ['POST', `/api/beta/read/ops/invoke`, {}],
      ['GET', `/api/beta/read/ops/runs`],
      ['GET', `/api/beta/runs`],
      ['GET', `/api/beta/elements`],
      ['GET', `/api/beta/tokens`],
      ['POST', `/api/beta/tokens`, { role: 'admin' }],
      ['POST', `/api/beta/ops/create`, { element_type: 'sql', slug: 'evil', spec: { query: 'select 1' } }],
      ['PATCH', `/api/beta/read/ops/update`, { spec: { query: 'select 2' } }],
    ];
    // Another circle answers like a missing one (test/security/circle-enumeration.test.ts).
    for (const [m, url, body] of probes) {
      const r = await t.call(m, url, body, tokA);
      expect(r.status, `${m} ${url}`).toBe(404);
      expectTypedError(r.body);
      expect(r.body.error.code, `${m} ${url}`).toBe('CIRCLE_NOT_FOUND');
    }
    // An existing and a missing element answer alike: existence does not leak.
    const e1 = await t.call('GET', `/api/beta/read/ops/get`, undefined, tokA);
    const e2 = await t.call('GET', `/api/beta/nonexistent/ops/get`, undefined, tokA);
    expect(e1.body).toEqual(e2.body);
    // Another circle's run is "not found", exactly like a run that does not exist.
    for (const suffix of ['', '/audit', '/items']) {
      const r = await t.call('GET', `/api/runs/${bRun}${suffix}`, undefined, tokA);
      expect(r.status).toBe(404);
      expect(r.body.error.code).toBe('RUN_NOT_FOUND');
    }
    expect((await t.call('POST', `/api/runs/${bRun}/cancel`, {}, tokA)).status).toBe(404);
    const ghost = await t.call('GET', `/api/runs/00000000-0000-7000-8000-000000000000`, undefined, tokA);
    expect(ghost.body).toEqual({ error: { ...ghost.body.error } });
    expect(ghost.body.error.code).toBe('RUN_NOT_FOUND');
    // The circle list shows only its own circle.
    const list = await t.call('GET', '/api/circles', undefined, tokA);
    expect(list.body.circles.map((c: any) => c.slug)).toEqual(['alpha']);
    // Circle tokens cannot create circles.
    expect((await t.call('POST', '/api/circles', { slug: 'gamma' }, tokA)).status).toBe(403);
  });

  it('roles are ordered read < write < execute < admin', async () => {
    const matrix: [string, string, unknown, keyof C['tokens']][] = [
      ['GET', `/api/alpha/runs`, undefined, 'read'],
      [
        'POST',
        `/api/alpha/ops/create`,
        { element_type: 'sql', slug: 'r1', spec: { query: 'select 1' } },
        'write',
      ],
      ['POST', `/api/alpha/r1/ops/invoke`, {}, 'execute'],
      ['POST', `/api/alpha/r1/ops/disable`, {}, 'admin'],
    ];
    const order = ['read', 'write', 'execute', 'admin'] as const;
    for (const [m, url, body, need] of matrix) {
      for (const role of order) {
        const r = await t.call(m, url, body, a.tokens[role]);
        const allowed = order.indexOf(role) >= order.indexOf(need);
        if (allowed) expect(r.status, `${role} ${m} ${url}`).toBeLessThan(400);
        else expect(r.status, `${role} ${m} ${url}`).toBe(403);
        if (allowed && m === 'POST' && url.endsWith('create')) break; // created once
      }
    }
  });

  it('missing and invalid tokens are 401', async () => {
    expect((await t.call('GET', '/api/alpha/runs', undefined, '')).status).toBe(401);
    expect((await t.call('GET', '/api/alpha/runs', undefined, 'cairn_nope')).status).toBe(401);
    const r = await t.call('GET', '/api/alpha/runs', undefined, '', { authorization: 'Basic Zm9vOmJhcg==' });
    expect(r.status).toBe(401);
    expectTypedError(r.body);
  });

  it("SQL cannot reach another circle's schema or the platform tables", async () => {
    const attacks = [
      `select * from ${bSchema}.secrets`,
      `insert into ${bSchema}.secrets values ('x')`,
      `create table ${bSchema}.planted (x int)`,
      'select token_hash from cairn.tokens',
      'select role_password from cairn.circles',
      'select * from cairn.runs',
      'update cairn.runs set status = $$cancelled$$',
      'delete from cairn.run_events',
      'create table public.planted (x int)',
    ];
    for (const [i, q] of attacks.entries()) {
      const { created, run } = await sql(a, `atk-${i}`, q);
      expect(created.status, q).toBe(201);
      expect(run!.body.status, q).toBe('failed');
      expect(run!.body.error.code, q).toBe('SQL_PERMISSION_DENIED');
    }
    // b's data is intact
    const again = await t.call('POST', `/api/beta/read/ops/invoke`, {}, b.tokens.execute);
    expect(again.body.output.rows).toEqual([{ v: 'b-secret' }]);
  });

  it('SQL cannot change its identity: set role, reset role, session authorization, set_config, transaction control', async () => {
    const attacks = [
      'reset role',
      'set role postgres',
      'set role cairn',
      `set role ${bSchema}`,
      'set session authorization postgres',
      'reset session authorization',
      'set search_path = cairn',
      'reset all',
      'discard all',
      'commit',
      'rollback',
      'begin',
      "select set_config('role', 'postgres', false)",
      "select pg_catalog.set_config('search_path', 'cairn', true)",
      "select pg_notify('cairn_run_queued', 'x')",
      'select pg_advisory_lock(7202611)',
      "do $$ begin execute 'reset role'; end $$",
      "create function f() returns int language sql as 'select 1'",
      'grant usage on schema public to public',
      'copy (select 1) to stdout',
      'prepare p as select 1',
      'select 1; reset role',
    ];
    for (const q of attacks) {
      const r = await t.call(
        'POST',
        `/api/alpha/ops/create`,
        { element_type: 'sql', slug: 'idn', spec: { query: q } },
        a.tokens.write,
      );
      expect(r.status, q).toBeGreaterThanOrEqual(400);
      expect(['SQL_STATEMENT_NOT_ALLOWED', 'SQL_MULTIPLE_STATEMENTS'], q).toContain(r.body.error.code);
    }
  });

  it("with the guard bypassed, the database itself still holds the boundary (pg: the circle's own login)", async () => {
    // This drives the circle session directly, as if the guard had a hole.
    const circle = (await getCircleBySlug(db(), 'alpha'))!;
    const attempt = (q: string) =>
      db()
        .asCircle(circleIdentity(circle), (s) => s.query(q))
        .then(
          () => 'ok',
          (e: any) => e.code as string,
        );
    if (driver === 'pg') {
      // The session logs in as the circle's role: RESET ROLE returns to that same role.
      expect(await attempt('reset role')).toBe('ok');
      const who = await db().asCircle(circleIdentity(circle), async (s) => {
        await s.query('reset role');
        return (await s.query<{ u: string; s: string }>('select current_user as u, session_user as s'))
          .rows[0]!;
      });
      expect(who).toEqual({ u: circle.role_name, s: circle.role_name });
      expect(await attempt('set role cairn')).toBe('42501');
      expect(await attempt('set session authorization cairn')).toBe('42501');
      expect(await attempt(`select * from ${bSchema}.secrets`)).toBe('42501');
      expect(await attempt("select set_config('role', 'cairn', false)")).toBe('42501');
    } else {
      // PGlite has one superuser session, so only privileges on functions back the guard up.
      expect(await attempt("select set_config('role', 'postgres', false)")).toBe('42501');
      expect(await attempt(`select * from ${bSchema}.secrets`)).toBe('42501');
      expect(await attempt('select * from cairn.tokens')).toBe('42501');
    }
  });

  it('the audit trail is append-only, even for the platform', async () => {
    const upd = await db()
      .query('UPDATE cairn.run_events SET actor = $1', ['forged'])
      .then(
        () => 'ok',
        (e: any) => e.message,
      );
    expect(upd).toMatch(/append-only/);
    const del = await db()
      .query('DELETE FROM cairn.run_events')
      .then(
        () => 'ok',
        (e: any) => e.message,
      );
    expect(del).toMatch(/append-only/);
  });
});

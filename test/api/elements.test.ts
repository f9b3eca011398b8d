import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { expectTypedError, testApp, type TestApp } from '../helpers/app.js';
import { busyFor } from '../helpers/slow-sql.js';
import { definitionHash } from '../../src/core/hash.js';

describeEachDriver('element operations', ({ db }) => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  const base = () => `/api/${c.slug}`;
  beforeAll(async () => {
    t = await testApp(db());
    c = await t.circle('acme');
  });
  afterAll(() => t.close());

  it('creates an element with defaults applied, version 1 and its definition hash', async () => {
    const r = await t.call(
      'POST',
      `${base()}/ops/create`,
      { element_type: 'sql', slug: 'add-one', spec: { query: 'select $1::int + 1 as n' } },
      c.tokens.write,
    );
    expect(r.status).toBe(201);
    expect(r.body).toMatchObject({
      slug: 'add-one',
      element_type: 'sql',
      category: 'data',
      name: 'Add One',
      state: 'ready',
      version: 1,
    });
    expect(r.body.spec).toEqual({ query: 'select $1::int + 1 as n', timeout_ms: 5000, max_rows: 1000 });
    expect(r.body.definition_hash).toBe(definitionHash('sql', r.body.spec));
    const dup = await t.call(
      'POST',
      `${base()}/ops/create`,
      { element_type: 'sql', slug: 'add-one', spec: { query: 'select 1' } },
      c.tokens.write,
    );
    expect(dup.status).toBe(409);
    expect(dup.body.error.code).toBe('ELEMENT_EXISTS');
  });

  it('refuses a bad definition before writing anything', async () => {
    const cases = [
      [{ element_type: 'nope', slug: 'x', spec: {} }, 'INVALID_INPUT'],
      [{ element_type: 'sql', slug: 'Bad Slug', spec: { query: 'select 1' } }, 'INVALID_INPUT'],
      [{ element_type: 'sql', slug: 'x1', spec: {} }, 'INVALID_SPEC'],
      [{ element_type: 'sql', slug: 'x2', spec: { query: 'selec 1' } }, 'SQL_SYNTAX_ERROR'],
      [{ element_type: 'sql', slug: 'x3', spec: { query: 'reset role' } }, 'SQL_STATEMENT_NOT_ALLOWED'],
      [{ element_type: 'sql', slug: 'x4', spec: { query: 'select 1; select 2' } }, 'SQL_MULTIPLE_STATEMENTS'],
      [{ element_type: 'sql', slug: 'x5', spec: { query: 'select 1', timeout_ms: 5 } }, 'INVALID_SPEC'],
      [{ element_type: 'sql', slug: 'x6', spec: { query: 'select 1', bogus: 1 } }, 'INVALID_SPEC'],
    ] as const;
    for (const [body, code] of cases) {
      const r = await t.call('POST', `${base()}/ops/create`, body, c.tokens.write);
      expect(r.status, JSON.stringify(body)).toBe(code === 'SQL_STATEMENT_NOT_ALLOWED' ? 403 : 400);
      expectTypedError(r.body);
      expect(r.body.error.code).toBe(code);
    }
    const list = await t.call('GET', `${base()}/elements`, undefined, c.tokens.read);
    expect(list.body.elements.map((e: any) => e.slug)).toEqual(['add-one']);
  });

  it('get, update (deep merge, replace, lists replace) and version history', async () => {
    await t.call(
      'POST',
      `${base()}/ops/create`,
      { element_type: 'sql', slug: 'q', spec: { query: 'select 1', params: [1, 2] } },
      c.tokens.write,
    );
    const g = await t.call('GET', `${base()}/q/ops/get`, undefined, c.tokens.read);
    expect(g.status).toBe(200);
    expect(g.body.version).toBe(1);

    const u1 = await t.call(
      'PATCH',
      `${base()}/q/ops/update`,
      { spec: { max_rows: 10, params: [3] } },
      c.tokens.write,
    );
    expect(u1.status).toBe(200);
    expect(u1.body.version).toBe(2);
    expect(u1.body.spec).toMatchObject({ query: 'select 1', max_rows: 10, params: [3] });

    const u2 = await t.call('PATCH', `${base()}/q/ops/update`, { spec: {} }, c.tokens.write);
    expect(u2.body.version).toBe(3);
    expect(u2.body.spec).toEqual(u1.body.spec);

    const u3 = await t.call(
      'PATCH',
      `${base()}/q/ops/update`,
      { spec: { query: 'select 2' }, deep: false },
      c.tokens.write,
    );
    expect(u3.body.spec).toEqual({ query: 'select 2', timeout_ms: 5000, max_rows: 1000 });

    const bad = await t.call(
      'PATCH',
      `${base()}/q/ops/update`,
      { spec: { query: 'drop role x' } },
      c.tokens.write,
    );
    expect(bad.status).toBe(403);
    expect(bad.body.error.code).toBe('SQL_STATEMENT_NOT_ALLOWED');

    const h = await t.call('GET', `${base()}/q/ops/version?history=true&limit=2`, undefined, c.tokens.read);
    expect(h.body.versions.map((v: any) => v.version)).toEqual([4, 3]);
    const cur = await t.call('GET', `${base()}/q/ops/version`, undefined, c.tokens.read);
    expect(cur.body.version).toBe(4);
    expect(cur.body.current.spec.query).toBe('select 2');
  });

  it('restore snapshots the current version first', async () => {
    const r = await t.call('POST', `${base()}/q/ops/restore`, { version: 1 }, c.tokens.admin);
    expect(r.status).toBe(200);
    expect(r.body.version).toBe(6);
    expect(r.body.spec.query).toBe('select 1');
    const h = await t.call('GET', `${base()}/q/ops/version?history=true`, undefined, c.tokens.read);
    expect(h.body.versions[0].note).toBe('Restored from v1');
    expect(h.body.versions[1].note).toBe('Before restore to v1');
    expect(h.body.versions[1].spec.query).toBe('select 2');
    const denied = await t.call('POST', `${base()}/q/ops/restore`, { version: 1 }, c.tokens.write);
    expect(denied.status).toBe(403);
    const missing = await t.call('POST', `${base()}/q/ops/restore`, { version: 99 }, c.tokens.admin);
    expect(missing.body.error.code).toBe('VERSION_NOT_FOUND');
  });

  it('update_meta merges shallowly without a version bump', async () => {
    await t.call('PATCH', `${base()}/q/ops/update_meta`, { meta: { x: 1, pos: { a: 1 } } }, c.tokens.write);
    const r = await t.call('PATCH', `${base()}/q/ops/update_meta`, { pos: { b: 2 } }, c.tokens.write);
    expect(r.body.meta).toEqual({ x: 1, pos: { b: 2 } });
    expect(r.body.version).toBe(6);
  });

  it('enable/disable are idempotent; a disabled element cannot be invoked', async () => {
    for (let i = 0; i < 2; i++) {
      const d = await t.call(
        'POST',
        `${base()}/add-one/ops/disable`,
        { reason: 'maintenance' },
        c.tokens.admin,
      );
      expect(d.body.state).toBe('disabled');
    }
    const inv = await t.call('POST', `${base()}/add-one/ops/invoke`, { params: [1] }, c.tokens.execute);
    expect(inv.status).toBe(409);
    expect(inv.body.error.code).toBe('ELEMENT_DISABLED');
    expect(inv.body.error.message).toContain('maintenance');
    for (let i = 0; i < 2; i++) {
      const e = await t.call('POST', `${base()}/add-one/ops/enable`, {}, c.tokens.admin);
      expect(e.body.state).toBe('ready');
    }
  });

  it('readme and schema (MCP tools/list shape)', async () => {
    expect((await t.call('GET', `${base()}/q/ops/readme`, undefined, c.tokens.read)).body.content).toBe('');
    await t.call('POST', `${base()}/q/ops/readme_update`, { content: '# Q\nReturns one.' }, c.tokens.write);
    expect((await t.call('GET', `${base()}/q/ops/readme`, undefined, c.tokens.read)).body).toEqual({
      content: '# Q\nReturns one.',
      format: 'markdown',
    });
    const s = await t.call('GET', `${base()}/q/ops/schema`, undefined, c.tokens.read);
    expect(s.body.tools[0].name).toBe('q.invoke');
    expect(s.body.tools[0].inputSchema.properties.params.type).toBe('array');
    expect(s.body.output_schema.properties.row_count).toBeDefined();
  });

  it('delete is admin-only, needs confirmation, and is refused while runs are active', async () => {
    expect(
      (await t.call('DELETE', `${base()}/q/ops/delete?confirm=true`, undefined, c.tokens.write)).status,
    ).toBe(403);
    expect(
      (await t.call('DELETE', `${base()}/q/ops/delete`, undefined, c.tokens.admin)).body.error.code,
    ).toBe('INVALID_INPUT');
    const slow = await t.call(
      'POST',
      `${base()}/ops/create`,
      { element_type: 'sql', slug: 'slow', spec: { query: `select 1 as x from ${busyFor(db().kind, 1)}` } },
      c.tokens.write,
    );
    expect(slow.status).toBe(201);
    const inv = await t.call('POST', `${base()}/slow/ops/invoke?async=1`, {}, c.tokens.execute);
    expect(inv.status).toBe(202);
    const refused = await t.call(
      'DELETE',
      `${base()}/slow/ops/delete?confirm=true`,
      undefined,
      c.tokens.admin,
    );
    expect(refused.status).toBe(409);
    expect(refused.body.error.code).toBe('ELEMENT_HAS_ACTIVE_RUNS');
    const d = await t.call('DELETE', `${base()}/q/ops/delete?confirm=true`, undefined, c.tokens.admin);
    expect(d.body.state).toBe('deleted');
    expect((await t.call('GET', `${base()}/q/ops/get`, undefined, c.tokens.read)).body.error.code).toBe(
      'ELEMENT_NOT_FOUND',
    );
    // the slug is free again
    expect(
      (
        await t.call(
          'POST',
          `${base()}/ops/create`,
          { element_type: 'sql', slug: 'q', spec: { query: 'select 3' } },
          c.tokens.write,
        )
      ).status,
    ).toBe(201);
  });

  it('apply is idempotent: same file, no new version', async () => {
    const def = { element_type: 'sql', slug: 'applied', spec: { query: 'select 1 as one' } };
    const a = await t.call('POST', `${base()}/ops/apply`, def, c.tokens.write);
    expect(a.body.action).toBe('created');
    const b = await t.call('POST', `${base()}/ops/apply`, def, c.tokens.write);
    expect(b.body.action).toBe('unchanged');
    expect(b.body.element.version).toBe(1);
    const d = await t.call(
      'POST',
      `${base()}/ops/apply`,
      { ...def, spec: { query: 'select 2 as two' } },
      c.tokens.write,
    );
    expect(d.body.action).toBe('updated');
    expect(d.body.element.version).toBe(2);
    expect(d.body.element.spec).toEqual({ query: 'select 2 as two', timeout_ms: 5000, max_rows: 1000 });
  });

  it('a malformed run id answers RUN_NOT_FOUND, never a database error', async () => {
    for (const id of ['-'.repeat(36), 'nope', '01a1ffc6-ad8f-7366-8b8b-89ab46a53ce4']) {
      for (const [m, path] of [
        ['GET', `runs/${id}`],
        ['POST', `runs/${id}/cancel`],
      ] as const) {
        const r = await t.call(
          m,
          `${base()}/add-one/ops/${path}`,
          m === 'POST' ? {} : undefined,
          c.tokens.admin,
        );
        expect(r.status, `${m} ${path}`).toBe(404);
        expect(r.body.error.code).toBe('RUN_NOT_FOUND');
      }
    }
  });

  it('unknown ops and wrong methods are typed', async () => {
    const r = await t.call('POST', `${base()}/add-one/ops/teleport`, {}, c.tokens.admin);
    expect(r.status).toBe(404);
    expect(r.body.error.code).toBe('OPERATION_NOT_FOUND');
    const m = await t.call('GET', `${base()}/add-one/ops/invoke`, undefined, c.tokens.admin);
    expect(m.status).toBe(405);
    expect(m.body.error.code).toBe('METHOD_NOT_ALLOWED');
  });
});

import { Validator } from '@seriousme/openapi-schema-validator';
import { Ajv2020 } from 'ajv/dist/2020.js';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshDb } from '../helpers/db.js';
import { testApp, type TestApp } from '../helpers/app.js';

/**
 * Issue 10: the OpenAPI document is the contract. It validates as OpenAPI 3.1,
 * no reference dangles, it carries the request schemas' constraints and every
 * status a route answers; a known path with another method is 405 with Allow;
 * and requests generated from the document itself get only answers the
 * document declares.
 */
describe('the OpenAPI document', () => {
  let handle: Awaited<ReturnType<typeof freshDb>>;
  let t: TestApp;
  let doc: any;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  let runId: string;

  beforeAll(async () => {
    handle = await freshDb('pglite');
    t = await testApp(handle.db);
    doc = (await t.call('GET', '/openapi.json', undefined, '')).body;
    c = await t.circle('contract');
    await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: 'sql', slug: 'one', spec: { query: 'select 1 as n' } },
      c.tokens.write,
    );
    runId = (await t.call('POST', `/api/${c.slug}/one/ops/invoke`, {}, c.tokens.execute)).body.run_id;
  }, 60_000);
  afterAll(async () => {
    await t?.close();
    await handle?.drop();
  });

  it('validates as OpenAPI 3.1 with a standard validator', async () => {
    const v = new Validator();
    const res = await v.validate(doc);
    expect(res.errors ?? [], JSON.stringify(res.errors ?? []).slice(0, 2000)).toEqual([]);
    expect(res.valid).toBe(true);
    expect(v.version).toBe('3.1');
  });

  it('has no dangling $ref', () => {
    const refs: string[] = [];
    const walk = (v: unknown) => {
      if (Array.isArray(v)) v.forEach(walk);
      else if (v && typeof v === 'object')
        for (const [k, x] of Object.entries(v)) {
          if (k === '$ref' && typeof x === 'string') refs.push(x);
          else walk(x);
        }
    };
    walk(doc);
    expect(refs.length).toBeGreaterThan(10);
    for (const ref of refs) {
      expect(ref.startsWith('#/'), ref).toBe(true);
      const target = ref
        .slice(2)
        .split('/')
        .reduce((o: any, k) => o?.[k.replace(/~1/g, '/').replace(/~0/g, '~')], doc);
      expect(target, `${ref} resolves`).toBeDefined();
    }
    // The two the issue found dangling.
    expect(JSON.stringify(doc.paths['/api/{circle}/{slug}/ops/invoke'])).not.toContain('#/$defs/');
    expect(JSON.stringify(doc.paths['/api/{circle}/{slug}/ops/rows'])).not.toContain('#/$defs/');
  });

  it('carries the constraints of the schemas that validate requests, bearer auth and every status', () => {
    const circles = doc.paths['/api/circles'].post;
    expect(circles.requestBody.content['application/json'].schema.properties.slug.pattern).toBeTruthy();
    const list = doc.paths['/api/{circle}/runs'].get.parameters.find((p: any) => p.name === 'limit');
    expect(list.schema.maximum).toBe(500);
    const invoke = doc.paths['/api/{circle}/{slug}/ops/invoke'].post;
    for (const s of ['200', '202', '400', '401', '402', '403', '404', '405', '409', '413', '415', '422'])
      expect(invoke.responses[s], s).toBeDefined();
    expect(invoke.security).toEqual([{ bearer: [] }]);
    expect(doc.paths['/healthz'].get.security).toEqual([]);
    expect(doc.paths['/healthz'].get.responses['503']).toBeDefined();
  });

  it('answers 405 with an Allow header for a known path and another method', async () => {
    const h = await t.app.inject({ method: 'DELETE', url: '/healthz' });
    expect(h.statusCode).toBe(405);
    expect(h.headers.allow).toBe('GET');
    expect(JSON.parse(h.body).error.code).toBe('METHOD_NOT_ALLOWED');
    const op = await t.call('PATCH', `/api/${c.slug}/one/ops/invoke`, {}, c.tokens.execute);
    expect(op.status).toBe(405);
    expect(op.headers.allow).toBe('POST');
    expect((await t.call('GET', '/api/nothing-here/at/all/really', undefined, '')).status).toBe(404);
  });

  it('every answer to a request generated from the document is one the document declares', async () => {
    const ajv = new Ajv2020({ strict: false, allErrors: false });
    ajv.addSchema({ $id: 'doc', components: doc.components });
    const errorSchema = ajv.compile({ $ref: 'doc#/components/schemas/Error' });
    const ops: { path: string; method: string; op: any }[] = [];
    for (const [path, item] of Object.entries<any>(doc.paths))
      for (const [method, op] of Object.entries<any>(item))
        // An event stream stays open by design (test/api/live.test.ts covers its answers).
        if (!op.responses['200']?.content?.['text/event-stream']) ops.push({ path, method, op });
    const tokens = { admin: t.admin, reader: c.tokens.read, executor: c.tokens.execute, none: '' };
    const paramValue = (name: string) =>
      fc.oneof(
        fc.constant(
          ({ circle: c.slug, slug: 'one', id: runId, run_id: runId } as Record<string, string>)[name] ?? 'x',
        ),
        fc.constantFrom('nope', '00000000-0000-0000-0000-000000000000', '%20', 'Upper'),
        fc.string({ minLength: 1, maxLength: 12 }).map(encodeURIComponent),
      );
    const body = fc.oneof(fc.constant({}), fc.jsonValue({ maxDepth: 2 }), fc.constant('not json'));
    const seen = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...ops),
        fc.constantFrom(...(Object.keys(tokens) as (keyof typeof tokens)[])),
        fc.dictionary(
          fc.constantFrom('circle', 'slug', 'id', 'run_id', 'column', 'row_id', 'version'),
          fc.string(),
        ),
        body,
        fc.nat(1000),
        async ({ path, method, op }, who, _seed, b, n) => {
          let url = path;
          for (const m of path.matchAll(/\{([a-z_]+)\}/g))
            url = url.replace(m[0], fc.sample(paramValue(m[1]!), { numRuns: 1, seed: n })[0]!);
          url = url.replace(/\{[^}]+\}/g, 'x');
          const query = (op.parameters ?? []).filter((p: any) => p.in === 'query' && n % 2 === 0);
          if (query.length) url += '?' + query.map((p: any) => `${p.name}=${n % 7}`).join('&');
          const headers: Record<string, string> = {};
          if (tokens[who]) headers.authorization = `Bearer ${tokens[who]}`;
          const hasBody = method !== 'get' && method !== 'delete';
          if (hasBody) headers['content-type'] = 'application/json';
          const res = await t.app.inject({
            method: method.toUpperCase() as any,
            url,
            headers,
            payload: hasBody ? (typeof b === 'string' ? b : JSON.stringify(b)) : undefined,
          });
          seen.set(res.statusCode, (seen.get(res.statusCode) ?? 0) + 1);
          const declared = Object.keys(op.responses);
          expect(
            declared,
            `${method.toUpperCase()} ${url} answered ${res.statusCode}: ${res.body.slice(0, 300)}`,
          ).toContain(String(res.statusCode));
          if (res.statusCode >= 400) {
            const parsed = JSON.parse(res.body);
            expect(errorSchema(parsed), `${method} ${url}: ${res.body.slice(0, 300)}`).toBe(true);
          }
        },
      ),
      { numRuns: 400 },
    );
    // The generated requests reached the routes, not only their refusals.
    for (const status of [200, 400, 401, 404])
      expect(seen.get(status) ?? 0, `answers ${status}`).toBeGreaterThan(0);
  }, 120_000);
});

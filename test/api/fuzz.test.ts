import fc from 'fast-check';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, type TestApp } from '../helpers/app.js';

/**
 * Property: whatever arrives — any method, path, query string, header or
 * body — the answer is never a 5xx, every 4xx is a typed error, and the
 * server keeps serving. Nothing half-written is left behind.
 */
describeEachDriver('fuzzed requests', ({ db }) => {
  let t: TestApp;
  let tokens: Record<string, string>;
  beforeAll(async () => {
    t = await testApp(db(), { syncWaitMs: 2_000 });
    const c = await t.circle('fz');
    tokens = c.tokens;
    await t.call(
      'POST',
      '/api/fz/ops/create',
      { element_type: 'sql', slug: 'add-one', spec: { query: 'select $1::int + 1 as n' } },
      tokens.write,
    );
  });
  afterAll(() => t.close());

  const segment = fc.oneof(
    fc.constantFrom(
      'api',
      'fz',
      'runs',
      'ops',
      'add-one',
      'invoke',
      'get',
      'update',
      'circles',
      'tokens',
      'elements',
      'audit',
      'items',
      'cancel',
      'version',
      'schema',
      'nope',
      '..',
      '.',
      '%2e%2e',
      '%zz',
      '%00',
      '01a1ffc6-ad8f-7366-8b8b-89ab46a53ce4',
      'runs%2F1',
      '-'.repeat(36),
    ),
    fc.string({ maxLength: 12 }).map((s) => encodeURIComponent(s)),
  );
  const path = fc.array(segment, { minLength: 1, maxLength: 7 }).map((segs) => '/' + segs.join('/'));
  const apiPath = fc.oneof(
    path,
    fc.constantFrom(
      '/api/fz/add-one/ops/invoke',
      '/api/fz/add-one/ops/update',
      '/api/fz/add-one/ops/update_meta',
      '/api/fz/add-one/ops/version',
      '/api/fz/add-one/ops/restore',
      '/api/fz/add-one/ops/runs',
      '/api/fz/add-one/ops/runs/xyz/cancel',
      '/api/fz/ops/create',
      '/api/fz/ops/apply',
      '/api/fz/runs',
      '/api/fz/tokens',
      '/api/circles',
    ),
  );
  const query = fc.oneof(
    fc.constant(''),
    fc
      .dictionary(
        fc.constantFrom('status', 'limit', 'cursor', 'since', 'history', 'async', 'kind', 'x', 'confirm'),
        fc.string({ maxLength: 20 }),
        { maxKeys: 3 },
      )
      .map((d) => '?' + new URLSearchParams(d).toString()),
    fc.string({ maxLength: 30 }).map((s) => '?' + s),
  );
  const jsonish = fc.oneof(
    fc.jsonValue().map((v) => JSON.stringify(v)),
    fc.record({ params: fc.array(fc.jsonValue(), { maxLength: 3 }) }).map((v) => JSON.stringify(v)),
    fc
      .record(
        { spec: fc.jsonValue(), deep: fc.jsonValue(), element_type: fc.string(), slug: fc.string() },
        { requiredKeys: [] },
      )
      .map((v) => JSON.stringify(v)),
    fc.string({ maxLength: 60 }),
    fc.constantFrom(
      '{',
      '{"__proto__": {"x": 1}}',
      '{"constructor": {"prototype": {}}}',
      '[]',
      'null',
      '""',
      '{"params": [1e400]}',
      '\u0000',
      '{"a":' + '['.repeat(200),
    ),
  );
  const method = fc.constantFrom('GET', 'POST', 'PATCH', 'DELETE', 'PUT', 'HEAD', 'OPTIONS');
  const token = fc.constantFrom<string | undefined>(
    'read',
    'write',
    'execute',
    'admin',
    'admin-instance',
    'bogus',
    undefined,
  );
  const contentType = fc.constantFrom(
    'application/json',
    'text/plain',
    'application/x-www-form-urlencoded',
    'application/merge-patch+json',
    'multipart/form-data; boundary=x',
    undefined,
  );

  it('never answers 5xx, always types its 4xx, keeps serving', async () => {
    await fc.assert(
      fc.asyncProperty(
        method,
        apiPath,
        query,
        jsonish,
        token,
        contentType,
        async (m, p, q, body, tok, ct) => {
          const auth =
            tok === undefined
              ? undefined
              : tok === 'admin-instance'
                ? t.admin
                : tok === 'bogus'
                  ? 'cairn_bogus'
                  : tokens[tok];
          const res = await t.app.inject({
            method: m as any,
            url: p + q,
            headers: {
              ...(auth ? { authorization: `Bearer ${auth}` } : {}),
              ...(ct ? { 'content-type': ct } : {}),
            },
            payload: m === 'GET' || m === 'HEAD' ? undefined : body,
          });
          expect(res.statusCode, `${m} ${p}${q} ${body}`).toBeLessThan(500);
          if (res.statusCode >= 400 && m !== 'HEAD') {
            const b = JSON.parse(res.body);
            expect(typeof b.error.code).toBe('string');
            expect(typeof b.error.class).toBe('string');
            expect(typeof b.error.message).toBe('string');
            expect(typeof b.error.retryable).toBe('boolean');
            expect(typeof b.error._suggestion).toBe('string');
          }
        },
      ),
      { numRuns: 400, seed: Number(process.env.FUZZ_SEED ?? 20261121) },
    );
    const ok = await t.call('GET', '/healthz', undefined, '');
    expect(ok.status).toBe(200);
    // Elements created by the fuzzer, if any, are whole: each has version 1 in its history.
    const els = (await t.call('GET', '/api/fz/elements', undefined, tokens.read)).body.elements;
    for (const e of els) {
      const v = await t.call('GET', `/api/fz/${e.slug}/ops/version?history=true`, undefined, tokens.read);
      expect(v.body.versions.at(-1).version).toBe(1);
    }
  });

  it('malformed headers and bodies get the specific typed errors', async () => {
    const big = JSON.stringify({ params: ['x'.repeat(1_100_000)] });
    const cases: [Record<string, string>, string | undefined, number, string][] = [
      [{ 'content-type': 'text/plain' }, 'hello', 415, 'UNSUPPORTED_MEDIA_TYPE'],
      [{ 'content-type': 'application/json' }, '{"params": [1', 400, 'INVALID_JSON'],
      [{ 'content-type': 'application/json' }, '{"__proto__": {"admin": true}}', 400, 'INVALID_JSON'],
      [{ 'content-type': 'application/json' }, big, 413, 'PAYLOAD_TOO_LARGE'],
      [
        { 'content-type': 'application/json', 'idempotency-key': 'x'.repeat(300) },
        '{}',
        400,
        'INVALID_INPUT',
      ],
    ];
    for (const [headers, payload, status, code] of cases) {
      const res = await t.app.inject({
        method: 'POST',
        url: '/api/fz/add-one/ops/invoke',
        headers: { authorization: `Bearer ${tokens.execute}`, ...headers },
        payload,
      });
      expect(res.statusCode, code).toBe(status);
      expect(JSON.parse(res.body).error.code).toBe(code);
    }
    const nf = await t.call('GET', '/no/such/route', undefined, '');
    expect(nf.status).toBe(404);
    expect(nf.body.error.code).toBe('ROUTE_NOT_FOUND');
  });
});

import { createHash } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { freshDb } from '../helpers/db.js';
import { expectTypedError, testApp, waitRun, type TestApp } from '../helpers/app.js';
import { loopbackGuard } from '../helpers/loopback-guard.js';

/**
 * The `http` element end to end (R-HTTP), through the API: create, invoke, the run, its item's
 * evidence, replay. THE RULE: no packet leaves loopback. Every socket connect of this file goes
 * through a guard that records its target and throws (before the SYN) for anything outside
 * 127.0.0.0/8 and ::1, and DNS for names is blocked; real requests go only to the node:http server
 * started here on 127.0.0.1. Every refusal is shown to have made no connect to what it refused.
 *
 * One driver (PGlite): what is tested is the element and its client (request, guard, evidence,
 * scrubbing), none of which depends on the database driver; the run machinery underneath is
 * covered on both drivers by test/api and test/security. PGlite also opens no socket, so every
 * connect the guard records is the element's own.
 */

// ---------------------------------------------------------------------------------------------
// The guard: every connect recorded, anything but loopback thrown before it happens

const guard = loopbackGuard();
const { connects } = guard;

beforeAll(() => guard.on());
afterAll(() => guard.off());

// ---------------------------------------------------------------------------------------------
// The loopback server: one, with a route per behaviour

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}
const seen: Seen[] = [];
/** The exact bytes of the last answer of each path, for the evidence's hashes. */
const sent = new Map<string, Buffer>();
const hanging: ServerResponse[] = [];
let flaky = 0;

const sha256 = (b: Buffer | string) => 'sha256:' + createHash('sha256').update(b).digest('hex');
const SEARCH_BODY = Buffer.from(JSON.stringify({ ok: true, items: [1, 2, 3], note: 'héllo' }));

const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (d: Buffer) => chunks.push(d));
  req.on('end', () => {
    const s: Seen = {
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      body: Buffer.concat(chunks).toString('utf8'),
    };
    seen.push(s);
    const path = new URL(s.url, 'http://x').pathname;
    const json = (status: number, v: unknown, headers: Record<string, string> = {}) => {
      const b = Buffer.from(JSON.stringify(v));
      sent.set(path, b);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': b.length, ...headers });
      res.end(b);
    };
    if (path.startsWith('/search/')) {
      sent.set(path, SEARCH_BODY);
      res.writeHead(200, {
        'content-type': 'application/json; charset=utf-8',
        'x-served-by': 'loopback',
        'set-cookie': 'session=server-side-cookie',
      });
      res.end(SEARCH_BODY);
    } else if (path.startsWith('/echo-auth/')) {
      // Echoes the credential it received, in its body and in a header.
      const auth = String(s.headers.authorization ?? '');
      json(Number(path.split('/')[2]), { auth, token: auth.replace(/^Bearer /, '') }, { 'x-echo': auth });
    } else if (path === '/echo-query')
      json(200, { url: s.url, key: new URL(s.url, 'http://x').searchParams.get('key') });
    else if (path === '/echo')
      json(200, { method: s.method, content_type: s.headers['content-type'] ?? null, body: s.body });
    else if (path === '/status/404') json(404, { error: 'no such thing' });
    else if (path === '/flaky') {
      flaky++;
      if (flaky <= 2) json(503, { try: 'again' });
      else json(200, { served_on: flaky });
    } else if (path === '/hang') hanging.push(res);
    else if (path === '/big') {
      const b = Buffer.alloc(4096, 'x');
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': b.length });
      res.end(b);
    } else if (path === '/big-chunked') {
      // No content-length: the limit has to be enforced while reading.
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write(Buffer.alloc(800, 'y'));
      setTimeout(() => res.end(Buffer.alloc(800, 'y')), 10);
    } else if (path === '/to-metadata') {
      res.writeHead(302, { location: 'http://169.254.169.254/latest/meta-data/' });
      res.end();
    } else if (path === '/to-same') {
      res.writeHead(302, { location: '/landing?from=to-same' });
      res.end();
    } else if (path === '/landing') json(200, { landed: true });
    else json(500, { unknown: path });
  });
});

let origin = '';
let port = 0;

// ---------------------------------------------------------------------------------------------

describe('the http element, end to end [pglite]', () => {
  let handle: Awaited<ReturnType<typeof freshDb>>;
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  const SECRET = 'sk-cairn-http-7c41d9e2b0aa';

  const create = (slug: string, spec: Record<string, unknown>, type = 'http') =>
    t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: type, slug, spec },
      type === 'secret' ? c.tokens.admin : c.tokens.write,
    );
  const op = (slug: string, name: string) => `/api/${c.slug}/${slug}/ops/${name}`;
  const invoke = (slug: string, input: Record<string, unknown> = {}) =>
    t.call('POST', op(slug, 'invoke'), input, c.tokens.execute);
  const get = (path: string) => t.call('GET', path, undefined, c.tokens.read);
  const runCount = async () =>
    (
      await handle.db.query<{ n: number }>(`SELECT count(*)::int AS n FROM cairn.runs WHERE circle_id = $1`, [
        c.id,
      ])
    ).rows[0]!.n;
  const itemOf = async (runId: string) => {
    const r = await get(`/api/runs/${runId}/items`);
    expect(r.status).toBe(200);
    expect(r.body.items).toHaveLength(1);
    return r.body.items[0];
  };
  const hosts = () => connects.filter((x) => x.path === undefined).map((x) => `${x.host}:${x.port}`);
  const local = () => `127.0.0.1:${port}`;

  beforeAll(async () => {
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as net.AddressInfo).port;
    origin = `http://127.0.0.1:${port}`;
    handle = await freshDb('pglite');
    t = await testApp(handle.db);
    c = await t.circle('http-e2e');
  }, 60_000);

  afterAll(async () => {
    for (const r of hanging.splice(0)) r.destroy();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    await t?.close();
    await handle?.drop();
  });

  beforeEach(() => {
    connects.length = 0;
    seen.length = 0;
  });

  it('the guard itself throws before a connect to anything but loopback', () => {
    expect(() => net.connect({ host: '10.255.255.1', port: 9 })).toThrow(/TEST GUARD/);
    expect(() => net.connect(80, '169.254.169.254')).toThrow(/TEST GUARD/);
    expect(hosts()).toEqual(['10.255.255.1:9', '169.254.169.254:80']);
  });

  // -------------------------------------------------------------------------------------------
  describe('allow-listing loopback', () => {
    it('a loopback URL without an allow entry is refused at create, with no connect', async () => {
      const before = await runCount();
      const r = await create('no-allow', { url: `${origin}/search/x` });
      expect(r.status).toBe(403);
      expectTypedError(r.body);
      expect(r.body.error.code).toBe('HTTP_ADDRESS_REFUSED');
      expect(r.body.error.message).toMatch(/loopback/);
      // A host-name entry never unlocks a loopback address; only an IP or CIDR does.
      const named = await create('no-allow', { url: `${origin}/search/x`, allow: ['localhost'] });
      expect(named.status).toBe(403);
      expect(named.body.error.code).toBe('HTTP_ADDRESS_REFUSED');
      expect((await get(op('no-allow', 'get'))).status).toBe(404);
      expect(await runCount()).toBe(before);
      expect(connects).toEqual([]);
    });

    it('a templated loopback URL without an allow entry is refused at invoke: no run, no connect', async () => {
      expect((await create('tpl-no-allow', { url: 'http://${{ input.host }}/search/x' })).status).toBe(201);
      const before = await runCount();
      const r = await invoke('tpl-no-allow', { host: local() });
      expect(r.status).toBe(403);
      expectTypedError(r.body);
      expect(r.body.error.code).toBe('HTTP_ADDRESS_REFUSED');
      expect(await runCount()).toBe(before);
      expect(connects).toEqual([]);
      expect(seen).toEqual([]);
    });

    it('a CIDR entry covering 127.0.0.1 lets the request through', async () => {
      expect((await create('cidr', { url: `${origin}/landing`, allow: ['127.0.0.0/8'] })).status).toBe(201);
      const r = await invoke('cidr');
      expect(r.status).toBe(200);
      expect(r.body.status).toBe('succeeded');
      expect(r.body.output.body).toEqual({ landed: true });
      expect(hosts()).toEqual([local()]);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('a GET with templates', () => {
    it('sends the rendered path, query and headers; answers {status, headers, body, url}; records evidence', async () => {
      expect(
        (await create('api-region', { value: 'eu-north-1' }, 'variable')).status,
        'variable created',
      ).toBe(201);
      const made = await create('search', {
        url: origin + '/search/${{ input.kind }}',
        query: { q: '${{ input.q }}', region: '${{ vars.api_region }}', n: '${{ input.n + 1 }}' },
        headers: { 'X-Trace': 'trace-${{ input.q }}', Accept: 'application/json' },
        allow: ['127.0.0.1'],
      });
      expect(made.status).toBe(201);
      // Attached under its default name: the slug with - → _.
      const a = await t.call('POST', op('api-region', 'attach'), { target_id: 'search' }, c.tokens.execute);
      expect(a.status).toBe(201);
      expect(a.body.name).toBe('api_region');

      const before = await runCount();
      const r = await invoke('search', { kind: 'books', q: 'a b&c', n: 41 });
      expect(r.status).toBe(200);
      expect(r.body.status).toBe('succeeded');
      expect(await runCount()).toBe(before + 1);

      // What the server saw.
      expect(seen).toHaveLength(1);
      const s = seen[0]!;
      expect(s.method).toBe('GET');
      // The spec is stored canonically (keys sorted): the query is in key order.
      expect(s.url).toBe('/search/books?n=42&q=a+b%26c&region=eu-north-1');
      const q = new URL(s.url, 'http://x').searchParams;
      expect([q.get('q'), q.get('region'), q.get('n')]).toEqual(['a b&c', 'eu-north-1', '42']);
      expect(s.headers['x-trace']).toBe('trace-a b&c');
      expect(s.headers.accept).toBe('application/json');
      expect(s.headers.host).toBe(local());
      expect(hosts()).toEqual([local()]);

      // The answer.
      const url = `${origin}/search/books?n=42&q=a+b%26c&region=eu-north-1`;
      expect(Object.keys(r.body.output).sort()).toEqual(['body', 'headers', 'status', 'url']);
      expect(r.body.output.status).toBe(200);
      expect(r.body.output.url).toBe(url);
      expect(r.body.output.body).toEqual({ ok: true, items: [1, 2, 3], note: 'héllo' });
      expect(r.body.output.headers).toMatchObject({
        'content-type': 'application/json; charset=utf-8',
        'x-served-by': 'loopback',
        // A credential header of the response is not shown either.
        'set-cookie': '[redacted]',
      });

      // The run and its item's evidence.
      const run = await get(`/api/runs/${r.body.run_id}`);
      expect(run.body).toMatchObject({
        status: 'succeeded',
        kind: 'invoke',
        operation: 'invoke',
        element: { slug: 'search', type: 'http' },
        input: { kind: 'books', q: 'a b&c', n: 41 },
      });
      expect(run.body.output).toEqual(r.body.output);
      const item = await itemOf(r.body.run_id);
      expect(item.status).toBe('succeeded');
      const ev = item.evidence;
      expect(ev).toMatchObject({
        method: 'GET',
        url,
        final_url: url,
        status: 200,
        address: '127.0.0.1',
        redirects: [],
      });
      expect(ev.request.headers).toEqual({ 'x-trace': 'trace-a b&c', accept: 'application/json' });
      expect(ev.request.body).toEqual({ bytes: 0, sha256: sha256('') });
      expect(ev.response.headers).toMatchObject({
        'content-type': 'application/json; charset=utf-8',
        'x-served-by': 'loopback',
        'set-cookie': '[redacted]',
      });
      expect(ev.response.body).toEqual({ bytes: SEARCH_BODY.length, sha256: sha256(SEARCH_BODY) });
      for (const k of ['dns_ms', 'connect_ms', 'ttfb_ms', 'total_ms']) {
        expect(typeof ev.timings[k], k).toBe('number');
        expect(ev.timings[k], k).toBeGreaterThanOrEqual(0);
      }
      expect(ev.timings.total_ms).toBeGreaterThanOrEqual(ev.timings.ttfb_ms);
      expect(ev.timings.tls_ms).toBeNull();
      expect(ev.attempts).toBeUndefined();
    });

    it('an input template the input does not satisfy is HTTP_TEMPLATE_FAILED before any run', async () => {
      const before = await runCount();
      const r = await invoke('search', { q: 'x', n: 1 }); // no kind
      expect(r.status).toBe(400);
      expectTypedError(r.body);
      expect(r.body.error.code).toBe('HTTP_TEMPLATE_FAILED');
      expect(await runCount()).toBe(before);
      expect(connects).toEqual([]);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('an attached secret', () => {
    const leaks = (v: unknown) => JSON.stringify(v).includes(SECRET);

    it('reaches the server and nothing else: answers, run, items, audit, logs, snapshot, element, attachments', async () => {
      expect((await create('api-token', { value: SECRET }, 'secret')).status).toBe(201);
      const made = await create('authed', {
        url: origin + '/echo-auth/${{ input.status }}',
        headers: { Authorization: 'Bearer ${{ secrets.token }}', 'X-Caller': 'cairn' },
        expect: [200],
        allow: ['127.0.0.1'],
      });
      expect(made.status).toBe(201);
      const a = await t.call(
        'POST',
        op('api-token', 'attach'),
        { target_id: 'authed', name: 'token' },
        c.tokens.execute,
      );
      expect(a.status).toBe(201);
      expect(leaks(a.body)).toBe(false);

      const ok = await invoke('authed', { status: 200 });
      expect(ok.status).toBe(200);
      expect(ok.body.status).toBe('succeeded');
      // The server received the real value.
      expect(seen.map((s) => s.headers.authorization)).toEqual([`Bearer ${SECRET}`]);
      expect(seen[0]!.headers['x-caller']).toBe('cairn');
      // It echoed it back; the run records the scrubbed form.
      expect(ok.body.output.body).toEqual({ auth: 'Bearer [secret:api-token]', token: '[secret:api-token]' });
      expect(ok.body.output.headers['x-echo']).toBe('Bearer [secret:api-token]');
      const item = await itemOf(ok.body.run_id);
      expect(item.evidence.request.headers).toEqual({ authorization: '[redacted]', 'x-caller': 'cairn' });
      expect(item.evidence.response.headers['x-echo']).toBe('Bearer [secret:api-token]');

      // A failed run (the server answers 500 with the echo) is scrubbed as well.
      const bad = await invoke('authed', { status: 500 });
      expect(bad.body.status).toBe('failed');
      expect(bad.body.error.code).toBe('HTTP_UNEXPECTED_STATUS');
      expect(JSON.stringify(bad.body.error)).toContain('[secret:api-token]');
      expect(seen.map((s) => s.headers.authorization)).toEqual([`Bearer ${SECRET}`, `Bearer ${SECRET}`]);

      for (const answer of [ok.body, bad.body]) {
        expect(leaks(answer)).toBe(false);
        const id = answer.run_id;
        for (const path of [
          `/api/runs/${id}`,
          `/api/runs/${id}/items`,
          `/api/runs/${id}/audit`,
          `/api/runs/${id}/logs`,
          `/api/runs/${id}/snapshot`,
        ]) {
          const r = await get(path);
          expect(r.status, path).toBe(200);
          expect(leaks(r.body), path).toBe(false);
        }
      }
      // The snapshot pins the attachment (name, version), never the value.
      const snap = await get(`/api/runs/${ok.body.run_id}/snapshot`);
      expect(snap.body.snapshot.element.attachments).toEqual([
        expect.objectContaining({
          name: 'token',
          modifier: expect.objectContaining({ slug: 'api-token', element_type: 'secret', version: 1 }),
        }),
      ]);
      // The element, its history, its attachments and the secret itself.
      for (const path of [
        op('authed', 'get'),
        `${op('authed', 'version')}?history=true`,
        op('authed', 'attachments'),
        op('authed', 'attached'),
        op('api-token', 'get'),
        `${op('api-token', 'version')}?history=true`,
        op('api-token', 'targets'),
        `/api/${c.slug}/elements`,
        `/api/${c.slug}/runs`,
      ]) {
        const r = await get(path);
        expect(r.status, path).toBe(200);
        expect(leaks(r.body), path).toBe(false);
      }
      const list = await get(op('authed', 'attachments'));
      expect(list.body.attachments).toEqual([
        expect.objectContaining({ name: 'token', modifier_slug: 'api-token', modifier_type: 'secret' }),
      ]);
      const el = await get(op('authed', 'get'));
      expect(el.body.spec.headers.Authorization).toBe('Bearer ${{ secrets.token }}');
      // Nor does any row the runs wrote.
      const rows = await handle.db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM (
           SELECT r::text AS t FROM cairn.runs r UNION ALL SELECT i::text FROM cairn.items i
           UNION ALL SELECT e::text FROM cairn.run_events e UNION ALL SELECT l::text FROM cairn.live_events l
           UNION ALL SELECT s::text FROM cairn.snapshots s) x WHERE t LIKE '%' || $1 || '%'`,
        [SECRET],
      );
      expect(rows.rows[0]!.n).toBe(0);
      expect(hosts()).toEqual([local(), local()]);
    });

    it('with a literal URL too (nothing to check before the run)', async () => {
      expect(
        (
          await create('authed-literal', {
            url: `${origin}/echo-auth/200`,
            headers: { Authorization: 'Bearer ${{ secrets.token }}' },
            allow: ['127.0.0.1'],
          })
        ).status,
      ).toBe(201);
      await t.call(
        'POST',
        op('api-token', 'attach'),
        { target_id: 'authed-literal', name: 'token' },
        c.tokens.execute,
      );
      const r = await invoke('authed-literal');
      expect(r.body.status).toBe('succeeded');
      expect(seen.map((s) => s.headers.authorization)).toEqual([`Bearer ${SECRET}`]);
      expect(r.body.output.body.token).toBe('[secret:api-token]');
    });

    it('in the query: the server gets it, and its URL-encoded form is scrubbed from what the run records', async () => {
      const KEY = 'p@ss/w+rd=1 x&y#z';
      const forms = [KEY, encodeURIComponent(KEY), new URLSearchParams({ v: KEY }).toString().slice(2)];
      expect(forms[2]).toBe('p%40ss%2Fw%2Brd%3D1+x%26y%23z');
      expect((await create('query-key', { value: KEY }, 'secret')).status).toBe(201);
      expect(
        (
          await create('keyed', {
            url: origin + '/${{ input.path }}',
            query: { key: '${{ secrets.query_key }}' },
            allow: ['127.0.0.1'],
          })
        ).status,
      ).toBe(201);
      expect(
        (await t.call('POST', op('query-key', 'attach'), { target_id: 'keyed' }, c.tokens.execute)).status,
      ).toBe(201);
      const ok = await invoke('keyed', { path: 'echo-query' });
      expect(ok.body.status).toBe('succeeded');
      expect(seen.map((s) => new URL(s.url, 'http://x').searchParams.get('key'))).toEqual([KEY]);
      expect(seen[0]!.url).toBe(`/echo-query?key=${forms[2]}`);
      const shown = `${origin}/echo-query?key=[secret:query-key]`;
      expect(ok.body.output.url).toBe(shown);
      expect(ok.body.output.body).toEqual({
        url: '/echo-query?key=[secret:query-key]',
        key: '[secret:query-key]',
      });
      const ev = (await itemOf(ok.body.run_id)).evidence;
      expect([ev.url, ev.final_url]).toEqual([shown, shown]);
      // A failure's message names the URL: scrubbed too.
      const bad = await invoke('keyed', { path: 'status/404' });
      expect(bad.body.status).toBe('failed');
      expect(bad.body.error.code).toBe('HTTP_UNEXPECTED_STATUS');
      expect(bad.body.error.message).toContain(`${origin}/status/404?key=[secret:query-key]`);
      for (const id of [ok.body.run_id, bad.body.run_id])
        for (const path of [`/api/runs/${id}`, `/api/runs/${id}/items`, `/api/runs/${id}/audit`]) {
          const text = JSON.stringify((await get(path)).body);
          for (const f of forms) expect(text, `${path} holds ${f}`).not.toContain(f);
        }
      for (const f of forms) expect(JSON.stringify([ok.body, bad.body])).not.toContain(f);
    });

    it('a credential header with a literal value is HTTP_SECRET_INLINE at create', async () => {
      const before = await runCount();
      for (const headers of [
        { Authorization: 'Bearer abc' },
        { 'x-api-key': 'abc123' },
        { Cookie: 'session=${{ input.s }}' },
        { 'Proxy-Authorization': 'Basic ${{ vars.api_region }}' },
      ]) {
        const r = await create('inline', { url: `${origin}/echo`, headers, allow: ['127.0.0.1'] });
        expect(r.status, JSON.stringify(headers)).toBe(400);
        expectTypedError(r.body);
        expect(r.body.error.code, JSON.stringify(headers)).toBe('HTTP_SECRET_INLINE');
        expect(JSON.stringify(r.body)).not.toContain('abc123');
      }
      expect((await get(op('inline', 'get'))).status).toBe(404);
      expect(await runCount()).toBe(before);
      expect(connects).toEqual([]);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('definitions refused at create: no element, no run, no connect', () => {
    it.each([
      ['http://10.0.0.1/', [], 403, 'HTTP_ADDRESS_REFUSED', /private/],
      ['http://10.0.0.1/', ['127.0.0.1'], 403, 'HTTP_ADDRESS_REFUSED', /private/],
      ['http://10.0.0.1/', ['example.com'], 403, 'HTTP_ADDRESS_REFUSED', /private/],
      ['http://169.254.169.254/latest/meta-data/', [], 403, 'HTTP_ADDRESS_REFUSED', /metadata/],
      ['http://169.254.169.254/latest/meta-data/', ['127.0.0.1'], 403, 'HTTP_ADDRESS_REFUSED', /metadata/],
      ['http://2130706433/', [], 403, 'HTTP_ADDRESS_REFUSED', /loopback/],
      ['http://0x7f.1/', [], 403, 'HTTP_ADDRESS_REFUSED', /loopback/],
      ['http://[::ffff:127.0.0.1]/', [], 403, 'HTTP_ADDRESS_REFUSED', /loopback/],
      ['http://[::1]/', [], 403, 'HTTP_ADDRESS_REFUSED', /loopback/],
      ['http://localhost/', [], 403, 'HTTP_ADDRESS_REFUSED', /loopback/],
      ['http://metadata.google.internal/', [], 403, 'HTTP_ADDRESS_REFUSED', /metadata/],
      ['http://api.example.com/', ['other.example.com'], 403, 'HTTP_HOST_NOT_ALLOWED', /allow/],
      ['file:///etc/passwd', [], 400, 'HTTP_URL_REFUSED', /./],
      ['ftp://x', [], 400, 'HTTP_URL_REFUSED', /./],
      ['http://user:pw@127.0.0.1/', ['127.0.0.1'], 400, 'HTTP_URL_REFUSED', /./],
      ['not a url', [], 400, 'HTTP_URL_REFUSED', /./],
    ] as const)('%s (allow %j) → %i %s', async (url, allow, status, code, words) => {
      const before = await runCount();
      const r = await create('refused', { url, allow });
      expect(r.status).toBe(status);
      expectTypedError(r.body);
      expect(r.body.error.code).toBe(code);
      expect(r.body.error.message).toMatch(words);
      expect(r.body.error.retryable).toBe(false);
      expect((await get(op('refused', 'get'))).status).toBe(404);
      expect(await runCount()).toBe(before);
      expect(connects).toEqual([]);
    });

    it.each([
      ['${{ input. }}', 'url'],
      ['http://127.0.0.1/${{ input.x', 'url'],
      ['http://127.0.0.1/${{ }}', 'url'],
      ['http://127.0.0.1/${{ env.HOME }}', 'url'],
    ])('the template %s does not parse → INVALID_TEMPLATE', async (url, where) => {
      const before = await runCount();
      const r = await create('bad-template', { url, allow: ['127.0.0.1'] });
      expect(r.status).toBe(400);
      expectTypedError(r.body);
      expect(r.body.error.code).toBe('INVALID_TEMPLATE');
      expect(r.body.error.details.where).toBe(where);
      expect((await get(op('bad-template', 'get'))).status).toBe(404);
      expect(await runCount()).toBe(before);
    });

    it('a template of a header, the query or the body that does not parse is INVALID_TEMPLATE too', async () => {
      for (const [spec, where] of [
        [{ headers: { 'X-A': '${{ input. }}' } }, 'headers.X-A'],
        [{ query: { q: '${{ input.( }}' } }, 'query.q'],
        [{ method: 'POST', body: { a: ['${{ input. }}'] } }, 'body'],
      ] as const) {
        const r = await create('bad-template', { url: `${origin}/echo`, allow: ['127.0.0.1'], ...spec });
        expect(r.status, where).toBe(400);
        expect(r.body.error.code, where).toBe('INVALID_TEMPLATE');
        expect(r.body.error.details.where, where).toBe(where);
      }
    });

    it('rules: retry needs an idempotent method, GET carries no body, allow entries are hosts/IPs/CIDRs', async () => {
      const before = await runCount();
      const post = await create('bad-rule', {
        method: 'POST',
        url: `${origin}/echo`,
        allow: ['127.0.0.1'],
        retry: { attempts: 3 },
      });
      expect(post.status).toBe(400);
      expectTypedError(post.body);
      expect(post.body.error.code).toBe('INVALID_SPEC');
      expect(post.body.error.message).toMatch(/idempotent/);
      const getBody = await create('bad-rule', {
        url: `${origin}/echo`,
        allow: ['127.0.0.1'],
        body: { a: 1 },
      });
      expect(getBody.status).toBe(400);
      expect(getBody.body.error.message).toMatch(/no body/);
      const badAllow = await create('bad-rule', { url: `${origin}/echo`, allow: ['http://127.0.0.1'] });
      expect(badAllow.status).toBe(400);
      expectTypedError(badAllow.body);
      expect(badAllow.body.error.code).toBe('INVALID_ALLOW_ENTRY');
      // PUT (idempotent) may retry.
      const put = await create('put-retry', {
        method: 'PUT',
        url: `${origin}/echo`,
        allow: ['127.0.0.1'],
        retry: { attempts: 3 },
      });
      expect(put.status).toBe(201);
      expect((await get(op('bad-rule', 'get'))).status).toBe(404);
      expect(await runCount()).toBe(before);
      expect(connects).toEqual([]);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('a URL templated from input, refused at invoke: 4xx, no run, no connect', () => {
    beforeAll(async () => {
      const r = await create('by-host', { url: 'http://${{ input.host }}/landing', allow: ['127.0.0.1'] });
      expect(r.status).toBe(201);
    });

    it.each([
      ['10.0.0.1', 403, 'HTTP_ADDRESS_REFUSED'],
      ['169.254.169.254', 403, 'HTTP_ADDRESS_REFUSED'],
      ['[fd00:ec2::254]', 403, 'HTTP_ADDRESS_REFUSED'],
      ['2852039166', 403, 'HTTP_ADDRESS_REFUSED'], // 169.254.169.254 as one number
      ['[::ffff:a9fe:a9fe]', 403, 'HTTP_ADDRESS_REFUSED'], // 169.254.169.254, IPv4-mapped
      ['127.0.0.1@10.0.0.1', 400, 'HTTP_URL_REFUSED'], // credentials, and the host is 10.0.0.1
      ['a b', 400, 'HTTP_URL_REFUSED'], // not a URL once rendered
    ] as const)('host %s → %i %s', async (host, status, code) => {
      const before = await runCount();
      const r = await invoke('by-host', { host });
      expect(r.status).toBe(status);
      expectTypedError(r.body);
      expect(r.body.error.code).toBe(code);
      expect(await runCount()).toBe(before);
      expect(connects).toEqual([]);
      expect(seen).toEqual([]);
    });

    it('the allowed loopback host from the same template goes through', async () => {
      const r = await invoke('by-host', { host: local() });
      expect(r.body.status).toBe('succeeded');
      expect(r.body.output.body).toEqual({ landed: true });
      expect(hosts()).toEqual([local()]);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('redirects: each hop checked again', () => {
    it('a redirect to the metadata address fails the run with HTTP_ADDRESS_REFUSED and no connect to it', async () => {
      expect((await create('to-meta', { url: `${origin}/to-metadata`, allow: ['127.0.0.1'] })).status).toBe(
        201,
      );
      const r = await invoke('to-meta');
      expect(r.status).toBe(200);
      expect(r.body.status).toBe('failed');
      expectTypedError(r.body);
      expect(r.body.error.code).toBe('HTTP_ADDRESS_REFUSED');
      expect(r.body.error.retryable).toBe(false);
      expect(r.body.error.message).toMatch(/169\.254\.169\.254/);
      expect(r.body.error.message).toMatch(/redirect/);
      expect(r.body.error.details.redirects).toEqual([{ url: `${origin}/to-metadata`, status: 302 }]);
      // One connect: the allowed server's. None to the metadata address.
      expect(hosts()).toEqual([local()]);
      expect(seen.map((s) => s.url)).toEqual(['/to-metadata']);
      const item = await itemOf(r.body.run_id);
      expect(item.status).toBe('failed');
      expect(item.evidence).toMatchObject({ method: 'GET', url: `${origin}/to-metadata` });
      expect(item.evidence.attempts).toEqual([
        expect.objectContaining({ attempt: 1, error: 'HTTP_ADDRESS_REFUSED' }),
      ]);
    });

    it('a redirect to another path of the same server is followed; final_url and redirects show it', async () => {
      expect((await create('to-same', { url: `${origin}/to-same`, allow: ['127.0.0.1'] })).status).toBe(201);
      const r = await invoke('to-same');
      expect(r.body.status).toBe('succeeded');
      const landing = `${origin}/landing?from=to-same`;
      expect(r.body.output).toMatchObject({ status: 200, url: landing, body: { landed: true } });
      expect(seen.map((s) => `${s.method} ${s.url}`)).toEqual(['GET /to-same', 'GET /landing?from=to-same']);
      const ev = (await itemOf(r.body.run_id)).evidence;
      expect(ev.url).toBe(`${origin}/to-same`);
      expect(ev.final_url).toBe(landing);
      expect(ev.redirects).toEqual([{ url: `${origin}/to-same`, status: 302 }]);
      expect(ev.response.body.sha256).toBe(sha256(sent.get('/landing')!));
      expect(hosts()).toEqual([local(), local()]);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('statuses', () => {
    it('a 404 fails the run with HTTP_UNEXPECTED_STATUS (not retryable) and keeps the evidence', async () => {
      expect((await create('missing', { url: `${origin}/status/404`, allow: ['127.0.0.1'] })).status).toBe(
        201,
      );
      const r = await invoke('missing');
      expect(r.status).toBe(200);
      expect(r.body.status).toBe('failed');
      expectTypedError(r.body);
      expect(r.body.error).toMatchObject({ code: 'HTTP_UNEXPECTED_STATUS', retryable: false });
      expect(r.body.error.details).toMatchObject({ status: 404 });
      expect(JSON.parse(r.body.error.details.body)).toEqual({ error: 'no such thing' });
      const run = await get(`/api/runs/${r.body.run_id}`);
      expect(run.body.status).toBe('failed');
      expect(run.body.error.code).toBe('HTTP_UNEXPECTED_STATUS');
      const item = await itemOf(r.body.run_id);
      expect(item.status).toBe('failed');
      expect(item.evidence).toMatchObject({
        method: 'GET',
        status: 404,
        final_url: `${origin}/status/404`,
        address: '127.0.0.1',
        response: {
          body: { bytes: sent.get('/status/404')!.length, sha256: sha256(sent.get('/status/404')!) },
        },
      });
      expect(seen).toHaveLength(1);
    });

    it('expect: [404] makes the 404 an answer', async () => {
      expect(
        (await create('missing-ok', { url: `${origin}/status/404`, expect: [404], allow: ['127.0.0.1'] }))
          .status,
      ).toBe(201);
      const r = await invoke('missing-ok');
      expect(r.body.status).toBe('succeeded');
      expect(r.body.output).toMatchObject({ status: 404, body: { error: 'no such thing' } });
    });

    it('503 twice then 200, with retry on a GET: succeeds on the third request, evidence lists the attempts', async () => {
      flaky = 0;
      expect(
        (
          await create('flaky', {
            url: `${origin}/flaky`,
            retry: { attempts: 3, backoff_ms: 10 },
            allow: ['127.0.0.1'],
          })
        ).status,
      ).toBe(201);
      const r = await invoke('flaky');
      expect(r.body.status).toBe('succeeded');
      expect(r.body.output.body).toEqual({ served_on: 3 });
      expect(seen.map((s) => s.url)).toEqual(['/flaky', '/flaky', '/flaky']);
      expect(hosts()).toHaveLength(3);
      const ev = (await itemOf(r.body.run_id)).evidence;
      expect(ev.status).toBe(200);
      expect(ev.attempts).toEqual([
        expect.objectContaining({ attempt: 1, status: 503 }),
        expect.objectContaining({ attempt: 2, status: 503 }),
        { attempt: 3, status: 200 },
      ]);
      // Two attempts are not enough: the 503 fails the run, retryable.
      flaky = 0;
      await t.call('PATCH', op('flaky', 'update'), { spec: { retry: { attempts: 2 } } }, c.tokens.write);
      const two = await invoke('flaky');
      expect(two.body.status).toBe('failed');
      expect(two.body.error).toMatchObject({ code: 'HTTP_UNEXPECTED_STATUS', retryable: true });
      expect((await itemOf(two.body.run_id)).evidence.attempts).toEqual([
        expect.objectContaining({ attempt: 1, status: 503 }),
        { attempt: 2, status: 503 },
      ]);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('limits', () => {
    it('a server that never answers → HTTP_TIMEOUT after timeout_ms, retryable', async () => {
      expect(
        (await create('hang', { url: `${origin}/hang`, timeout_ms: 300, allow: ['127.0.0.1'] })).status,
      ).toBe(201);
      const t0 = Date.now();
      const r = await invoke('hang');
      const took = Date.now() - t0;
      expect(r.body.status).toBe('failed');
      expectTypedError(r.body);
      expect(r.body.error).toMatchObject({ code: 'HTTP_TIMEOUT', class: 'timeout', retryable: true });
      expect(took).toBeGreaterThanOrEqual(290);
      expect(took).toBeLessThan(10_000);
      expect(seen.map((s) => s.url)).toEqual(['/hang']);
      const item = await itemOf(r.body.run_id);
      expect(item.evidence.attempts).toEqual([
        expect.objectContaining({ attempt: 1, error: 'HTTP_TIMEOUT' }),
      ]);
    });

    it.each(['/big', '/big-chunked'])(
      'a response larger than max_response_bytes (%s) → HTTP_RESPONSE_TOO_LARGE',
      async (path) => {
        const slug = `too-big${path.replace('/big', '')}`;
        expect(
          (await create(slug, { url: origin + path, max_response_bytes: 1024, allow: ['127.0.0.1'] })).status,
        ).toBe(201);
        const r = await invoke(slug);
        expect(r.body.status).toBe('failed');
        expectTypedError(r.body);
        expect(r.body.error).toMatchObject({ code: 'HTTP_RESPONSE_TOO_LARGE', retryable: false });
        expect(r.body.output).toBeNull();
        // Under the limit it is an answer.
        await t.call('PATCH', op(slug, 'update'), { spec: { max_response_bytes: 8192 } }, c.tokens.write);
        const ok = await invoke(slug);
        expect(ok.body.status).toBe('succeeded');
        expect(ok.body.output.body).toMatch(/^(x{4096}|y{1600})$/);
      },
    );
  });

  // -------------------------------------------------------------------------------------------
  describe('a POST with a JSON body', () => {
    it('sends the rendered JSON as application/json', async () => {
      const made = await create('poster', {
        method: 'POST',
        url: `${origin}/echo`,
        body: {
          name: '${{ input.name }}',
          n: '${{ input.n * 2 }}',
          tags: ['fixed', '${{ input.tag }}'],
          nested: { greeting: 'hello ${{ input.name }}', region: '${{ vars.api_region }}' },
        },
        allow: ['127.0.0.1'],
      });
      expect(made.status).toBe(201);
      expect(
        (await t.call('POST', op('api-region', 'attach'), { target_id: 'poster' }, c.tokens.execute)).status,
      ).toBe(201);
      const r = await invoke('poster', { name: 'Ada "quoted"', n: 21, tag: 't1' });
      expect(r.body.status).toBe('succeeded');
      expect(seen).toHaveLength(1);
      const s = seen[0]!;
      expect(s.method).toBe('POST');
      expect(s.headers['content-type']).toBe('application/json');
      const expected = {
        name: 'Ada "quoted"',
        n: 42,
        tags: ['fixed', 't1'],
        nested: { greeting: 'hello Ada "quoted"', region: 'eu-north-1' },
      };
      expect(JSON.parse(s.body)).toEqual(expected);
      expect(s.headers['content-length']).toBe(String(Buffer.byteLength(s.body)));
      const ev = (await itemOf(r.body.run_id)).evidence;
      expect(ev.method).toBe('POST');
      expect(ev.request.headers['content-type']).toBe('application/json');
      expect(ev.request.body).toEqual({ bytes: Buffer.byteLength(s.body), sha256: sha256(s.body) });
      expect(r.body.output.body).toEqual({ method: 'POST', content_type: 'application/json', body: s.body });
    });

    it('a string body is sent as is, with the content-type the spec gives', async () => {
      const made = await create('poster-text', {
        method: 'PUT',
        url: `${origin}/echo`,
        headers: { 'Content-Type': 'text/plain' },
        body: 'id=${{ input.id }}',
        allow: ['127.0.0.1'],
      });
      expect(made.status).toBe(201);
      const r = await invoke('poster-text', { id: 7 });
      expect(r.body.status).toBe('succeeded');
      expect(seen.map((s) => [s.method, s.headers['content-type'], s.body])).toEqual([
        ['PUT', 'text/plain', 'id=7'],
      ]);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('side effects: replay', () => {
    const replay = (id: string, policy: 'strict' | 'permissive') =>
      t.call('POST', `/api/runs/${id}/replay`, { policy }, c.tokens.execute);

    it('a GET run replays strictly (and makes the request again); a POST run does not', async () => {
      const getRun = await invoke('cidr');
      expect(getRun.body.status).toBe('succeeded');
      const again = await replay(getRun.body.run_id, 'strict');
      expect(again.status).toBe(202);
      expect(again.body.side_effect_tasks).toEqual([]);
      const done = await waitRun(t, again.body.run_id, c.tokens.read);
      expect(done).toMatchObject({ status: 'succeeded', replay_of: getRun.body.run_id });
      expect(done.output.body).toEqual({ landed: true });
      expect(seen.map((s) => s.url)).toEqual(['/landing', '/landing']);

      const postRun = await invoke('poster', { name: 'x', n: 1, tag: 'y' });
      expect(postRun.body.status).toBe('succeeded');
      expect(seen).toHaveLength(3);
      const before = await runCount();
      const refused = await replay(postRun.body.run_id, 'strict');
      expect(refused.status).toBe(409);
      expectTypedError(refused.body);
      expect(refused.body.error.code).toBe('REPLAY_HAS_SIDE_EFFECTS');
      expect(refused.body.error.details.side_effect_tasks).toEqual(['poster.invoke']);
      expect(await runCount()).toBe(before);
      // The PUT is a side effect too (idempotent, but not free of effects).
      const putRun = await invoke('poster-text', { id: 1 });
      expect((await replay(putRun.body.run_id, 'strict')).status).toBe(409);
      expect(seen).toHaveLength(4);
      // Permissive: the circle's policies alone decide, and the POST is made again.
      const permissive = await replay(postRun.body.run_id, 'permissive');
      expect(permissive.status).toBe(202);
      expect(permissive.body.side_effect_tasks).toEqual(['poster.invoke']);
      expect((await waitRun(t, permissive.body.run_id, c.tokens.read)).status).toBe('succeeded');
      expect(seen.map((s) => s.method)).toEqual(['GET', 'GET', 'POST', 'PUT', 'POST']);
    });
  });
});

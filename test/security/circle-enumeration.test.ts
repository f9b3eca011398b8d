import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { expectTypedError, testApp, type TestApp } from '../helpers/app.js';
import { ROUTES } from '../../src/api/routes.js';

type C = Awaited<ReturnType<TestApp['circle']>>;

const GHOST_ID = '00000000-0000-7000-8000-000000000000';

/**
 * Finding: `GET /api/victim/elements` with another circle's token answered
 * `403 FORBIDDEN` ("This token belongs to another circle") while a circle that
 * does not exist answered `404 CIRCLE_NOT_FOUND` — so any token could probe
 * which circle names exist. Now a circle token gets the same 404 for both, on
 * every circle-scoped route.
 */
describeEachDriver('circle names cannot be enumerated', ({ db }) => {
  let t: TestApp;
  let victim: C;
  let attacker: C;
  let victimRun: string;

  beforeAll(async () => {
    t = await testApp(db());
    victim = await t.circle('victim');
    attacker = await t.circle('attacker');
    const mk = (body: unknown) => t.call('POST', '/api/victim/ops/create', body, victim.tokens.write);
    expect((await mk({ element_type: 'sql', slug: 'read', spec: { query: 'select 1 as one' } })).status).toBe(
      201,
    );
    expect(
      (
        await mk({
          element_type: 'table',
          slug: 'jobs',
          spec: { fields: { n: { type: 'integer' } } },
        })
      ).status,
    ).toBe(201);
    const r = await t.call('POST', '/api/victim/read/ops/invoke', {}, victim.tokens.execute);
    expect(r.body.status).toBe('succeeded');
    victimRun = r.body.run_id;
  });
  afterAll(() => t.close());

  /** Every circle-scoped platform route (from the route table itself) and a spread of element op routes. */
  function probes(circle: string): [string, string, unknown?][] {
    // The public routes (a webhook's address) take no token: they are checked on their own below.
    const platform = ROUTES.filter((r) => r.url.includes(':circle') && r.auth !== 'none').map(
      (r) =>
        [
          r.method,
          r.url.replace(':circle', circle).replace(/:[a-z_]+/g, GHOST_ID),
          r.method === 'GET' ? undefined : {},
        ] as [string, string, unknown?],
    );
    const ops: [string, string, unknown?][] = [
      ['GET', `/api/${circle}/read/ops/get`],
      ['GET', `/api/${circle}/nonexistent/ops/get`],
      ['POST', `/api/${circle}/read/ops/invoke`, {}],
      ['POST', `/api/${circle}/read/ops/invoke?async=1`, { params: [] }],
      ['GET', `/api/${circle}/read/ops/runs`],
      ['GET', `/api/${circle}/read/ops/runs/${victimRun}`],
      ['POST', `/api/${circle}/read/ops/runs/${victimRun}/cancel`, {}],
      ['GET', `/api/${circle}/read/ops/schema`],
      ['GET', `/api/${circle}/read/ops/no-such-op`],
      ['PATCH', `/api/${circle}/read/ops/update`, { spec: { query: 'select 2' } }],
      ['DELETE', `/api/${circle}/read/ops/delete?confirm=true`],
      ['GET', `/api/${circle}/jobs/ops/rows`],
      ['POST', `/api/${circle}/jobs/ops/rows`, { rows: [{ n: 1 }] }],
    ];
    return [...platform, ...ops];
  }

  it('another circle, a missing circle and a differently-cased name answer alike: 404 CIRCLE_NOT_FOUND, same body', async () => {
    const list = probes('victim');
    expect(list.length).toBeGreaterThan(20);
    for (const token of [attacker.tokens.read, attacker.tokens.admin]) {
      for (const [i, [m, url]] of list.entries()) {
        const answers = [];
        for (const name of ['victim', 'Victim', 'no-such-circle', 'VICTIM', 'victim-']) {
          const [, u, body] = probes(name)[i]!;
          const r = await t.call(m, u, body, token);
          answers.push({ status: r.status, body: r.body });
        }
        expect(answers[0]!.status, `${m} ${url}`).toBe(404);
        expectTypedError(answers[0]!.body);
        expect(answers[0]!.body.error.code, `${m} ${url}`).toBe('CIRCLE_NOT_FOUND');
        expect(answers[0]!.body.error.message).not.toMatch(/victim/i);
        for (const a of answers.slice(1)) expect(a, `${m} ${url}`).toEqual(answers[0]);
      }
    }
    // A webhook's public address: an existing circle without that hook, a missing circle and any
    // casing answer the same 404, byte for byte.
    const hook = [];
    for (const name of ['victim', 'Victim', 'no-such-circle', 'VICTIM', 'victim-']) {
      const r = await t.call('POST', `/hooks/${name}/read`, '{}', '', { 'content-type': 'application/json' });
      hook.push({ status: r.status, body: r.body });
    }
    expect(hook[0]!.status).toBe(404);
    expectTypedError(hook[0]!.body);
    expect(hook[0]!.body.error.message).not.toMatch(/victim/i);
    for (const a of hook.slice(1)) expect(a).toEqual(hook[0]);
    // Nothing was done to the victim's circle by any of those requests.
    const els = (await t.call('GET', '/api/victim/elements', undefined, victim.tokens.read)).body.elements;
    expect(els.map((e: any) => [e.slug, e.version]).sort()).toEqual([
      ['jobs', 1],
      ['read', 1],
    ]);
    const runs = (await t.call('GET', '/api/victim/runs', undefined, victim.tokens.read)).body.runs;
    expect(runs.map((r: any) => [r.id, r.status])).toEqual([[victimRun, 'succeeded']]);
  });

  it('a run of another circle looks exactly like a missing run, on every run route', async () => {
    const get = ['', '/audit', '/logs', '/items', '/summary', '/ledger'];
    const post = ['/cancel', '/pause', '/resume', '/retry-failed', '/rerun'];
    const strip = (b: any, id: string) => JSON.parse(JSON.stringify(b).replaceAll(id, '<id>'));
    const routes = [...get.map((s) => ['GET', s] as const), ...post.map((s) => ['POST', s] as const)];
    for (const [m, suffix] of routes) {
      const body = m === 'POST' ? {} : undefined;
      const theirs = await t.call(m, `/api/runs/${victimRun}${suffix}`, body, attacker.tokens.admin);
      const ghost = await t.call(m, `/api/runs/${GHOST_ID}${suffix}`, body, attacker.tokens.admin);
      expect(theirs.status, `${m} ${suffix}`).toBe(404);
      expect(theirs.body.error.code, `${m} ${suffix}`).toBe('RUN_NOT_FOUND');
      expect(strip(theirs.body, victimRun), `${m} ${suffix}`).toEqual(strip(ghost.body, GHOST_ID));
    }
    const own = await t.call('GET', `/api/runs/${victimRun}`, undefined, victim.tokens.read);
    expect(own.body).toMatchObject({ id: victimRun, status: 'succeeded' });
  });

  it('a token of the right circle with too low a role still gets 403; the circle itself is visible to it', async () => {
    const cases: [string, string, unknown, string][] = [
      ['GET', '/api/attacker/tokens', undefined, attacker.tokens.execute],
      ['POST', '/api/attacker/tokens', { role: 'read' }, attacker.tokens.write],
      [
        'POST',
        '/api/attacker/ops/create',
        { element_type: 'sql', slug: 'x', spec: { query: 'select 1' } },
        attacker.tokens.read,
      ],
      ['POST', '/api/attacker/wallet/grants', { amount: 5 }, attacker.tokens.admin],
      ['POST', '/api/victim/read/ops/invoke', {}, victim.tokens.write],
      ['DELETE', '/api/victim/read/ops/delete?confirm=true', undefined, victim.tokens.execute],
    ];
    for (const [m, url, body, token] of cases) {
      const r = await t.call(m, url, body, token);
      expect(r.status, `${m} ${url}`).toBe(403);
      expectTypedError(r.body);
      expect(r.body.error.code).toBe('FORBIDDEN');
    }
    expect((await t.call('GET', '/api/attacker/elements', undefined, attacker.tokens.read)).status).toBe(200);
  });

  it('the instance admin still sees every circle; a missing one is 404 to it too', async () => {
    const r = await t.call('GET', '/api/victim/elements', undefined, t.admin);
    expect(r.status).toBe(200);
    expect(r.body.elements.map((e: any) => e.slug).sort()).toEqual(['jobs', 'read']);
    expect((await t.call('GET', '/api/victim/read/ops/get', undefined, t.admin)).status).toBe(200);
    expect((await t.call('GET', `/api/runs/${victimRun}`, undefined, t.admin)).status).toBe(200);
    const ghost = await t.call('GET', '/api/no-such-circle/elements', undefined, t.admin);
    expect(ghost.status).toBe(404);
    expect(ghost.body.error.code).toBe('CIRCLE_NOT_FOUND');
  });

  it('without a valid token the answer is 401 whether the circle exists or not', async () => {
    for (const token of ['', 'cairn_nope']) {
      const answers = [];
      for (const url of [
        '/api/victim/elements',
        '/api/no-such-circle/elements',
        '/api/victim/read/ops/get',
      ]) {
        const r = await t.call('GET', url, undefined, token);
        answers.push({ status: r.status, body: r.body });
      }
      expect(answers[0]!.status).toBe(401);
      expectTypedError(answers[0]!.body);
      for (const a of answers.slice(1)) expect(a).toEqual(answers[0]);
    }
  });
});

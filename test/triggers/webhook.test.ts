import { createHash, createHmac, randomUUID } from 'node:crypto';
import { Webhook } from 'standardwebhooks';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, expectTypedError, type TestApp, waitRun } from '../helpers/app.js';

/**
 * webhook elements (R-TRIGGERS item 2): the secret is shown once; a delivery signed the Standard
 * Webhooks way (or GitHub's) is answered 202 at once and starts one run of the target with the
 * mapped input, recorded with its trigger (signature headers redacted); every refused delivery
 * is a typed error that starts nothing; a delivery id starts one run however often, and however
 * concurrently, it is sent; rotation keeps the old secret for its overlap only.
 */
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

describeEachDriver('webhook element', ({ db, driver }) => {
  let t: TestApp;
  let A: string;
  let W: string;
  const slug = `hooks-${driver}`;
  const secrets: Record<string, string> = {};
  const post = (path: string, body: unknown) => t.call('POST', `/api/${slug}/${path}`, body, A);
  const get = (path: string) => t.call('GET', `/api/${slug}/${path}`, undefined, A);

  /** A POST to the public hook, with no token. */
  const deliver = (hook: string, payload: string, headers: Record<string, string> = {}, circle = slug) =>
    t.call('POST', `/hooks/${circle}/${hook}`, payload, '', headers);

  /** Standard Webhooks headers for `payload`, signed with `secret` at `at` (default now). */
  const standard = (secret: string, payload: string, id = `msg_${randomUUID()}`, at = new Date()) => ({
    'webhook-id': id,
    'webhook-timestamp': String(Math.floor(at.getTime() / 1000)),
    'webhook-signature': new Webhook(secret).sign(id, at, payload),
  });

  /** The runs a webhook started (by its trigger's source), newest first. */
  const runsBy = async (hook: string, target = 'add') => {
    const r = await get(`${target}/ops/runs?limit=500`);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    return r.body.runs.filter((x: any) => x.trigger?.type === 'webhook' && x.trigger?.source === hook);
  };

  const createHook = async (hookSlug: string, spec: Record<string, unknown>) => {
    const r = await post('ops/create', { element_type: 'webhook', slug: hookSlug, spec });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    secrets[hookSlug] = r.body.shown_once.secret;
    return r.body;
  };

  beforeAll(async () => {
    t = await testApp(db());
    const c = await t.circle(slug);
    A = c.tokens.admin;
    W = c.tokens.write;
    for (const s of ['add', 'add2']) {
      const r = await post('ops/create', {
        element_type: 'sql',
        slug: s,
        spec: { query: 'select $1::int + 1 as n' },
      });
      expect(r.status, JSON.stringify(r.body)).toBe(201);
    }
    await createHook('hook', { target: { element: 'add', input: { params: ['${{ body.n }}'] } } });
  });
  afterAll(() => t?.close());

  it('shows the secret once, in the create answer, and never again', async () => {
    const r = await post('ops/create', {
      element_type: 'webhook',
      slug: 'once',
      spec: { target: { element: 'add', input: { params: [1] } } },
    });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const once = r.body.shown_once;
    secrets.once = once.secret;
    expect(once.secret).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/);
    expect(Buffer.from(once.secret.slice(6), 'base64')).toHaveLength(32);
    expect(once).toMatchObject({ url: `/hooks/${slug}/once`, signing: 'standard' });
    expect(r.body.warnings).toBeUndefined();
    for (const path of ['once/ops/get', 'once/ops/version?history=true', 'once/ops/deliveries', 'elements']) {
      const g = await get(path);
      expect(g.status, path).toBe(200);
      expect(JSON.stringify(g.body), path).not.toContain(once.secret);
      expect(JSON.stringify(g.body), path).not.toContain(once.secret.slice(6));
    }
    expect((await get('once/ops/get')).body.spec).toMatchObject({
      signing: 'standard',
      max_body_bytes: 1048576,
    });
    // A create sent with an Idempotency-Key is replayable, but its replay does not repeat the secret
    // (and the stored answer does not hold it).
    const body = {
      element_type: 'webhook',
      slug: 'keyed',
      spec: { target: { element: 'add', input: { params: [1] } } },
    };
    const first = await t.call('POST', `/api/${slug}/ops/create`, body, A, {
      'idempotency-key': `k-${slug}`,
    });
    expect(first.status).toBe(201);
    expect(first.body.shown_once.secret).toMatch(/^whsec_/);
    const replay = await t.call('POST', `/api/${slug}/ops/create`, body, A, {
      'idempotency-key': `k-${slug}`,
    });
    expect(replay.body.id).toBe(first.body.id);
    expect(JSON.stringify(replay.body)).not.toContain(first.body.shown_once.secret);
    const stored = await db().query(`SELECT answer::text AS a FROM cairn.idempotency WHERE key = $1`, [
      `k-${slug}`,
    ]);
    expect(stored.rows[0]!.a).not.toContain(first.body.shown_once.secret.slice(6));
  });

  it('refuses bad definitions with typed errors and creates nothing', async () => {
    const cases: [unknown, string][] = [
      [{}, 'MISSING_TARGET'],
      [{ target: { element: 'nope' } }, 'INVALID_TARGET'],
      [{ target: { element: 'add', op: 'get' } }, 'INVALID_TARGET'],
      [{ target: { element: 'add', input: { params: [] } }, input: { params: [] } }, 'INVALID_TARGET'],
      [{ target: { element: 'add' }, input: { params: ['${{ schedule.x }}'] } }, 'INVALID_MAPPING'],
      [{ target: { element: 'add', input: { params: ['${{ body. }}'] } } }, 'INVALID_MAPPING'],
      [{ target: { element: 'add' }, signing: 'hmac' }, 'INVALID_SPEC'],
      [{ target: { element: 'add' }, max_body_bytes: 11 * 1024 * 1024 }, 'INVALID_SPEC'],
    ];
    for (const [spec, code] of cases) {
      const r = await post('ops/create', { element_type: 'webhook', slug: 'bad', spec });
      expect(r.status, JSON.stringify(r.body)).toBe(400);
      expectTypedError(r.body);
      expect(r.body.error.code, JSON.stringify(spec)).toBe(code);
    }
    expect((await get('bad/ops/get')).status).toBe(404);
  });

  it('answers a signed delivery 202 at once and runs the target with the mapped input', async () => {
    const payload = JSON.stringify({ n: 41, note: 'hello' });
    const h = standard(secrets.hook!, payload);
    const r = await deliver('hook', payload, {
      ...h,
      authorization: 'Bearer not-a-cairn-token',
      cookie: 'a=b',
    });
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    expect(r.body).toEqual({
      run_id: expect.any(String),
      status: 'queued',
      run_url: `/api/runs/${r.body.run_id}`,
    });
    expect(r.headers.location).toBe(r.body.run_url);
    const run = await waitRun(t, r.body.run_id, A);
    expect(run.status).toBe('succeeded');
    expect(run.output.rows).toEqual([{ n: 42 }]);
    expect(run.input).toEqual({ params: [41] });
    expect(run.trigger).toMatchObject({
      type: 'webhook',
      source: 'hook',
      actor: 'webhook:hook',
      webhook_id: h['webhook-id'],
      body_sha256: sha256(payload),
    });
    const headers = run.trigger.headers;
    expect(headers['webhook-signature']).toBe('[redacted]');
    expect(headers.authorization).toBe('[redacted]');
    expect(headers.cookie).toBe('[redacted]');
    expect(headers['webhook-id']).toBe(h['webhook-id']);
    expect(headers['content-type']).toBe('application/json');
    expect(JSON.stringify(run)).not.toContain(h['webhook-signature'].slice(3));
    const d = await get('hook/ops/deliveries');
    expect(d.status).toBe(200);
    expect(d.body.deliveries[0]).toMatchObject({
      delivery_id: h['webhook-id'],
      run_id: r.body.run_id,
      body_sha256: sha256(payload),
      received_at: expect.any(String),
    });
  });

  it('refuses unsigned, mis-signed, stale, oversize and non-JSON deliveries, starting nothing', async () => {
    await createHook('small', {
      target: { element: 'add', input: { params: ['${{ body.n }}'] } },
      max_body_bytes: 100,
    });
    const before = (await runsBy('hook')).length + (await runsBy('small')).length;
    const payload = JSON.stringify({ n: 1 });
    const good = standard(secrets.hook!, payload);
    const cases: [string, string, Record<string, string>, number, string][] = [
      ['hook', payload, {}, 401, 'WEBHOOK_SIGNATURE_MISSING'],
      ['hook', payload, { 'webhook-id': good['webhook-id'] }, 401, 'WEBHOOK_SIGNATURE_MISSING'],
      ['hook', payload, standard(secrets.once!, payload), 401, 'WEBHOOK_SIGNATURE_INVALID'],
      ['hook', payload, { ...good, 'webhook-signature': 'v1,AAAA' }, 401, 'WEBHOOK_SIGNATURE_INVALID'],
      ['hook', JSON.stringify({ n: 2 }), good, 401, 'WEBHOOK_SIGNATURE_INVALID'],
      ['hook', payload, { ...good, 'webhook-timestamp': 'yesterday' }, 401, 'WEBHOOK_SIGNATURE_INVALID'],
      [
        'hook',
        payload,
        standard(secrets.hook!, payload, 'msg_stale', new Date(Date.now() - 10 * 60_000)),
        401,
        'WEBHOOK_TIMESTAMP_STALE',
      ],
      [
        'hook',
        payload,
        standard(secrets.hook!, payload, 'msg_future', new Date(Date.now() + 10 * 60_000)),
        401,
        'WEBHOOK_TIMESTAMP_STALE',
      ],
      ['small', 'x'.repeat(101), standard(secrets.small!, 'x'.repeat(101)), 413, 'WEBHOOK_BODY_TOO_LARGE'],
      ['hook', 'not json', standard(secrets.hook!, 'not json'), 400, 'WEBHOOK_BODY_NOT_JSON'],
      ['hook', '{"n": 1', standard(secrets.hook!, '{"n": 1'), 400, 'WEBHOOK_BODY_NOT_JSON'],
      [
        'hook',
        '{"__proto__": {"x": 1}}',
        standard(secrets.hook!, '{"__proto__": {"x": 1}}'),
        400,
        'WEBHOOK_BODY_NOT_JSON',
      ],
      ['hook', '{"m": 1}', standard(secrets.hook!, '{"m": 1}'), 400, 'WEBHOOK_MAPPING_FAILED'],
      [
        'hook',
        '{"n": "\\u0000"}',
        standard(secrets.hook!, '{"n": "\\u0000"}'),
        400,
        'WEBHOOK_BODY_UNSTORABLE',
      ],
    ];
    for (const [hook, body, headers, status, code] of cases) {
      const r = await deliver(hook, body, headers);
      expect(r.status, `${code}: ${JSON.stringify(r.body)}`).toBe(status);
      expectTypedError(r.body);
      expect(r.body.error.code).toBe(code);
      if (status === 401) expect(r.body.error.class).toBe('auth');
    }
    // Beyond the largest max_body_bytes (10 MiB) the body is not even read: a typed 413 as well.
    const huge = await deliver('hook', 'x'.repeat(10 * 1024 * 1024 + 1), good);
    expect(huge.status).toBe(413);
    expectTypedError(huge.body);
    // A token does not stand in for a signature.
    const withToken = await t.call('POST', `/hooks/${slug}/hook`, payload, A);
    expect(withToken.status).toBe(401);
    expect(withToken.body.error.code).toBe('WEBHOOK_SIGNATURE_MISSING');
    expect((await runsBy('hook')).length + (await runsBy('small')).length).toBe(before);
    // The refused stale delivery's id was not claimed: signed now, it starts its run.
    const fresh = await deliver('hook', payload, standard(secrets.hook!, payload, 'msg_stale'));
    expect(fresh.status, JSON.stringify(fresh.body)).toBe(202);
  });

  it('parses the body as JSON whatever its Content-Type, an empty one as {}', async () => {
    const payload = JSON.stringify({ n: 6 });
    const r = await deliver('hook', payload, {
      ...standard(secrets.hook!, payload),
      'content-type': 'text/plain',
    });
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    expect((await waitRun(t, r.body.run_id, A)).output.rows).toEqual([{ n: 7 }]);
    await createHook('whole', {
      target: { element: 'add' },
      input: { params: ['${{ size(body) + (has(query.k) ? int(query.k) : 0) }}'] },
    });
    const e = await t.app.inject({
      method: 'POST',
      url: `/hooks/${slug}/whole?k=5`,
      headers: standard(secrets.whole!, ''),
    });
    expect(e.statusCode, e.body).toBe(202);
    expect((await waitRun(t, JSON.parse(e.body).run_id, A)).output.rows).toEqual([{ n: 6 }]);
  });

  it('starts one run per delivery id: a replay answers the first run', async () => {
    const payload = JSON.stringify({ n: 10 });
    const id = `msg_${randomUUID()}`;
    const first = await deliver('hook', payload, standard(secrets.hook!, payload, id));
    expect(first.status, JSON.stringify(first.body)).toBe(202);
    const again = await deliver('hook', payload, standard(secrets.hook!, payload, id));
    expect(again.status, JSON.stringify(again.body)).toBe(202);
    expect(again.body).toMatchObject({ run_id: first.body.run_id, duplicate: true });
    expect(again.headers.location).toBe(`/api/runs/${first.body.run_id}`);
    const runs = (await runsBy('hook')).filter((x: any) => x.trigger.webhook_id === id);
    expect(runs).toHaveLength(1);
  });

  it('starts exactly one run for 100 concurrent deliveries of one id', async () => {
    const payload = JSON.stringify({ n: 100 });
    const id = `msg_${randomUUID()}`;
    const h = standard(secrets.hook!, payload, id);
    const answers = await Promise.all(Array.from({ length: 100 }, () => deliver('hook', payload, h)));
    // Every one answers 202 with the one run; exactly one is the delivery, the others replays.
    for (const a of answers) expect(a.status, JSON.stringify(a.body)).toBe(202);
    expect(new Set(answers.map((a) => a.body.run_id)).size).toBe(1);
    expect(answers.filter((a) => !a.body.duplicate)).toHaveLength(1);
    const runs = (await runsBy('hook')).filter((x: any) => x.trigger.webhook_id === id);
    expect(runs).toHaveLength(1);
    expect((await waitRun(t, runs[0].id, A)).output.rows).toEqual([{ n: 101 }]);
  });

  it('gives the claim up when the target does not start, so a retry of the delivery starts it', async () => {
    await createHook('flaky', { target: { element: 'add2', input: { params: ['${{ body.n }}'] } } });
    expect((await post('add2/ops/disable', { reason: 'maintenance' })).status).toBe(200);
    const payload = JSON.stringify({ n: 3 });
    const id = `msg_${randomUUID()}`;
    const refused = await deliver('flaky', payload, standard(secrets.flaky!, payload, id));
    expect(refused.status, JSON.stringify(refused.body)).toBe(409);
    expectTypedError(refused.body);
    expect(refused.body.error.code).toBe('ELEMENT_DISABLED');
    // Concurrent deliveries of the id while the target cannot start: each answers a typed error.
    const many = await Promise.all(
      Array.from({ length: 20 }, () => deliver('flaky', payload, standard(secrets.flaky!, payload, id))),
    );
    for (const a of many) {
      expect([409], JSON.stringify(a.body)).toContain(a.status);
      expectTypedError(a.body);
      expect(a.body.error.code).toBe('ELEMENT_DISABLED');
    }
    expect(await runsBy('flaky', 'add2')).toHaveLength(0);
    expect((await post('add2/ops/enable', {})).status).toBe(200);
    const retried = await deliver('flaky', payload, standard(secrets.flaky!, payload, id));
    expect(retried.status, JSON.stringify(retried.body)).toBe(202);
    expect(retried.body.duplicate).toBeUndefined();
    expect((await waitRun(t, retried.body.run_id, A)).output.rows).toEqual([{ n: 4 }]);
  });

  it('rotates the secret: the old one verifies during the overlap, not after', async () => {
    await createHook('rot', { target: { element: 'add', input: { params: ['${{ body.n }}'] } } });
    const old = secrets.rot!;
    const payload = JSON.stringify({ n: 1 });
    const rotated = await post('rot/ops/rotate_secret', {});
    expect(rotated.status, JSON.stringify(rotated.body)).toBe(200);
    const fresh: string = rotated.body.secret;
    expect(fresh).toMatch(/^whsec_/);
    expect(fresh).not.toBe(old);
    const until = Date.parse(rotated.body.previous_valid_until);
    expect(Math.abs(until - (Date.now() + 86_400_000))).toBeLessThan(60_000);
    expect(JSON.stringify((await get('rot/ops/get')).body)).not.toContain(fresh);
    for (const s of [old, fresh])
      expect((await deliver('rot', payload, standard(s, payload))).status).toBe(202);
    // A rotation needs admin.
    const byWriter = await t.call('POST', `/api/${slug}/rot/ops/rotate_secret`, {}, W);
    expect(byWriter.status).toBe(403);
    expectTypedError(byWriter.body);

    const now = await post('rot/ops/rotate_secret', { overlap_ms: 0 });
    expect(now.status, JSON.stringify(now.body)).toBe(200);
    expect(Math.abs(Date.parse(now.body.previous_valid_until) - Date.now())).toBeLessThan(60_000);
    for (const s of [old, fresh]) {
      const r = await deliver('rot', payload, standard(s, payload));
      expect(r.status).toBe(401);
      expectTypedError(r.body);
      expect(r.body.error.code).toBe('WEBHOOK_SIGNATURE_INVALID');
    }
    expect((await deliver('rot', payload, standard(now.body.secret, payload))).status).toBe(202);
    const bad = await post('rot/ops/rotate_secret', { overlap_ms: 8 * 86_400_000 });
    expect(bad.status).toBe(400);
    expectTypedError(bad.body);
  });

  it('verifies GitHub signatures (X-Hub-Signature-256) with the github preset', async () => {
    const created = await createHook('gh', {
      signing: 'github',
      target: { element: 'add' },
      input: { params: ['${{ body.n }}'] },
    });
    expect(created.shown_once.signing).toBe('github');
    const secret = secrets.gh!;
    const payload = JSON.stringify({ n: 20, action: 'opened' });
    const sign = (s: string, p: string) => `sha256=${createHmac('sha256', s).update(p).digest('hex')}`;
    const delivery = randomUUID();
    const ok = await deliver('gh', payload, {
      'x-hub-signature-256': sign(secret, payload),
      'x-github-delivery': delivery,
      'x-github-event': 'pull_request',
    });
    expect(ok.status, JSON.stringify(ok.body)).toBe(202);
    const run = await waitRun(t, ok.body.run_id, A);
    expect(run.output.rows).toEqual([{ n: 21 }]);
    expect(run.trigger).toMatchObject({ type: 'webhook', source: 'gh', webhook_id: delivery });
    expect(run.trigger.headers['x-hub-signature-256']).toBe('[redacted]');
    expect(run.trigger.headers['x-github-event']).toBe('pull_request');
    const refusals: [Record<string, string>, string][] = [
      [
        { 'x-hub-signature-256': sign('whsec_other', payload), 'x-github-delivery': randomUUID() },
        'WEBHOOK_SIGNATURE_INVALID',
      ],
      [{ 'x-hub-signature-256': 'sha1=abc', 'x-github-delivery': randomUUID() }, 'WEBHOOK_SIGNATURE_INVALID'],
      [{ 'x-github-delivery': randomUUID() }, 'WEBHOOK_SIGNATURE_MISSING'],
      [{ 'x-hub-signature-256': sign(secret, payload) }, 'WEBHOOK_SIGNATURE_MISSING'],
      [standard(secret, payload), 'WEBHOOK_SIGNATURE_MISSING'],
    ];
    for (const [headers, code] of refusals) {
      const r = await deliver('gh', payload, headers);
      expect(r.status, JSON.stringify(r.body)).toBe(401);
      expectTypedError(r.body);
      expect(r.body.error.code).toBe(code);
    }
    expect(await runsBy('gh')).toHaveLength(1);
  });

  it('signing none: a warning on create, unsigned deliveries work, the same body is one delivery', async () => {
    const created = await createHook('open', {
      signing: 'none',
      target: { element: 'add', input: { params: ['${{ body.n }}'] } },
    });
    expect(created.warnings).toEqual(['signing: none — anyone who knows the URL can start runs']);
    const payload = JSON.stringify({ n: 30 });
    const a = await deliver('open', payload);
    expect(a.status, JSON.stringify(a.body)).toBe(202);
    expect((await waitRun(t, a.body.run_id, A)).trigger.webhook_id).toBe(`sha256:${sha256(payload)}`);
    const b = await deliver('open', payload);
    expect(b.body).toMatchObject({ run_id: a.body.run_id, duplicate: true });
    const c = await deliver('open', JSON.stringify({ n: 31 }));
    expect(c.status).toBe(202);
    expect(c.body.run_id).not.toBe(a.body.run_id);
    const d = await deliver('open', payload, { 'webhook-id': 'evt-1' });
    expect(d.status).toBe(202);
    expect(d.body.duplicate).toBeUndefined();
    expect(await runsBy('open')).toHaveLength(3);
  });

  it('answers an unknown circle, an unknown hook and a disabled one with the same 404', async () => {
    const payload = '{}';
    const h = standard(secrets.hook!, payload);
    const noCircle = await deliver('hook', payload, h, 'no-such-circle');
    const noHook = await deliver('no-such-hook', payload, h);
    const notAHook = await deliver('add', payload, h);
    expect((await post('once/ops/disable', {})).status).toBe(200);
    const disabled = await deliver('once', payload, standard(secrets.once!, payload));
    for (const r of [noCircle, noHook, notAHook, disabled]) {
      expect(r.status).toBe(404);
      expectTypedError(r.body);
      expect(r.body.error.code).toBe('WEBHOOK_NOT_FOUND');
      expect(r.body).toEqual(noCircle.body);
    }
    // Another method at the hook path is 405, not an authentication error.
    expect((await t.call('GET', `/hooks/${slug}/hook`, undefined, '')).status).toBe(405);
  });

  it('is in the OpenAPI document as a public route that answers 202 and 401', async () => {
    const doc = (await t.call('GET', '/openapi.json', undefined, '')).body;
    const op = doc.paths['/hooks/{circle}/{slug}'].post;
    expect(op.security).toEqual([]);
    for (const s of ['202', '400', '401', '404', '413']) expect(op.responses[s], s).toBeDefined();
    expect(op.parameters.map((p: any) => p.name)).toEqual(
      expect.arrayContaining(['circle', 'slug', 'webhook-signature', 'X-Hub-Signature-256']),
    );
    expect(op.parameters.map((p: any) => p.name)).not.toContain('Idempotency-Key');
  });
});

import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { expectTypedError, testApp, type TestApp } from '../helpers/app.js';

/**
 * Issue 10: one idempotency mechanism for every state-changing request. A
 * replay answers the stored response with `Idempotent-Replayed: true`; the same
 * key with a different body or route is 422 IDEMPOTENCY_KEY_REUSED (Stripe's
 * behaviour), never a silent answer of the first run.
 */
describeEachDriver('Idempotency-Key', ({ db }) => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  const runsOf = async () =>
    (await t.call('GET', `/api/${c.slug}/runs?limit=500`, undefined, c.tokens.read)).body.runs.length;
  const invoke = (slug: string, body: unknown, key: string, query = '') =>
    t.call('POST', `/api/${c.slug}/${slug}/ops/invoke${query}`, body, c.tokens.execute, {
      'idempotency-key': key,
    });

  beforeAll(async () => {
    t = await testApp(db());
    c = await t.circle('idem');
    for (const slug of ['add-one', 'add-two'])
      expect(
        (
          await t.call(
            'POST',
            `/api/${c.slug}/ops/create`,
            {
              element_type: 'sql',
              slug,
              spec: { query: `select $1::int + ${slug === 'add-one' ? 1 : 2} as n` },
            },
            c.tokens.write,
          )
        ).status,
      ).toBe(201);
  });
  afterAll(() => t.close());

  it('a replayed invoke answers the stored response, marked, and creates no second run', async () => {
    const first = await invoke('add-one', { params: [1] }, 'k-replay');
    expect(first.status).toBe(200);
    expect(first.headers['idempotent-replayed']).toBeUndefined();
    const n = await runsOf();
    const again = await invoke('add-one', { params: [1] }, 'k-replay');
    expect(again.status).toBe(200);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.body).toEqual(first.body);
    // `async` only changes how long the caller waits: the same request.
    const asy = await invoke('add-one', { params: [1] }, 'k-replay', '?async=1');
    expect(asy.body.run_id).toBe(first.body.run_id);
    expect(await runsOf()).toBe(n);
  });

  it('the same key with another body, element, mode or route is a typed 422', async () => {
    await invoke('add-one', { params: [5] }, 'k-reuse');
    const n = await runsOf();
    for (const [slug, body, query] of [
      ['add-one', { params: [6] }, ''],
      ['add-two', { params: [5] }, ''],
      ['add-one', { params: [5] }, '?mode=dry_run'],
    ] as const) {
      const r = await invoke(slug, body, 'k-reuse', query);
      expect(r.status, `${slug} ${JSON.stringify(body)} ${query}`).toBe(422);
      expect(r.body.error.code).toBe('IDEMPOTENCY_KEY_REUSED');
      expectTypedError(r.body);
    }
    const run = (await invoke('add-one', { params: [5] }, 'k-reuse')).body;
    const other = await t.call('POST', `/api/runs/${run.run_id}/cancel`, {}, c.tokens.execute, {
      'idempotency-key': 'k-reuse',
    });
    expect(other.status).toBe(422);
    expect(other.body.error.code).toBe('IDEMPOTENCY_KEY_REUSED');
    expect(await runsOf()).toBe(n);
  });

  it('state-changing element ops and run control replay the same way', async () => {
    const create = (q: string) =>
      t.call(
        'POST',
        `/api/${c.slug}/ops/create`,
        { element_type: 'sql', slug: 'x-' + q.length, spec: { query: q } },
        c.tokens.write,
        { 'idempotency-key': 'k-create' },
      );
    const a = await create('select 1');
    const b = await create('select 1');
    expect(b.status).toBe(a.status);
    expect(b.body).toEqual(a.body);
    expect(b.headers['idempotent-replayed']).toBe('true');
    expect((await create('select 22')).status).toBe(422);
  });

  it('racing identical invokes make one run', async () => {
    const answers = await Promise.all(
      Array.from({ length: 6 }, () => invoke('add-two', { params: [1] }, 'k-race', '?async=1')),
    );
    const ids = new Set(answers.filter((a) => a.status < 300).map((a) => a.body.run_id));
    expect(ids.size).toBe(1);
    for (const a of answers) if (a.status >= 300) expect(a.body.error.code).toBe('IDEMPOTENCY_KEY_IN_USE'); // still being created
  });
});

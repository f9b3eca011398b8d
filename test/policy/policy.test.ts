import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, expectTypedError, type TestApp, waitRun } from '../helpers/app.js';

/**
 * Policy hooks (issue 13, R-POLICY), through the real API on both drivers: invalid Cedar and
 * invalid patches are typed 400s; with no policy everything runs; a forbid denies with its id and
 * reason and creates no run; a permit's patch modifies the input; a broken set fails closed; the
 * decision is on the run, in its first audit event, and the set in its snapshot — for invokes,
 * workflow triggers, scheduled runs and retry-failed alike.
 */
describeEachDriver('policy hooks', ({ db, driver }) => {
  let t: TestApp;
  let A: string;
  let X: string;
  const slug = `pol-${driver}`;
  const post = (path: string, body: unknown, token = A) =>
    t.call('POST', `/api/${slug}/${path}`, body, token);
  const runCount = async (el: string) =>
    Number(
      (
        await db().query<{ n: string }>(
          `SELECT count(*)::text AS n FROM cairn.runs r JOIN cairn.circles c ON c.id = r.circle_id
            WHERE c.slug = $1 AND r.element_slug = $2`,
          [slug, el],
        )
      ).rows[0]!.n,
    );
  const policy = (s: string, cedar: string, patches?: unknown) =>
    post('ops/create', { element_type: 'policy', slug: s, spec: { cedar, ...(patches ? { patches } : {}) } });

  beforeAll(async () => {
    t = await testApp(db());
    const c = await t.circle(slug);
    A = c.tokens.admin;
    X = c.tokens.execute;
    for (const [s, query] of [
      ['add-one', 'select $1::int + 1 as n'],
      ['risky', 'select 1 as n'],
    ])
      expect((await post('ops/create', { element_type: 'sql', slug: s, spec: { query } })).status).toBe(201);
    expect(
      (
        await post('ops/create', {
          element_type: 'workflow',
          slug: 'flow',
          spec: {
            parameters: { type: 'object', properties: { n: { type: 'integer' } } },
            steps: [{ name: 'a', element: 'add-one', input: { params: ['${{ parameters.n }}'] } }],
            outputs: { n: '${{ steps.a.output.rows[0].n }}' },
          },
        })
      ).status,
    ).toBe(201);
  });
  afterAll(() => t?.close());

  it('refuses invalid Cedar and invalid patches with typed errors, creating nothing', async () => {
    const bad = await policy('bad', '@id("x") forbid(principal, action, resource) when { context.nope };');
    expect(bad.status).toBe(400);
    expectTypedError(bad.body);
    expect(bad.body.error.code).toBe('INVALID_POLICY');
    expect(bad.body.error.details.diagnostics.length).toBeGreaterThan(0);
    const syntax = await policy('bad', 'forbid(principal, action resource);');
    expect(syntax.body.error.code).toBe('INVALID_POLICY');
    const patch = await policy('bad', '@id("p") permit(principal, action, resource);', {
      p: [{ op: 'jump', path: '/x' }],
    });
    expect(patch.status).toBe(400);
    expect(patch.body.error.code).toBe('INVALID_PATCH');
    const onForbid = await policy('bad', '@id("f") forbid(principal, action, resource) when { false };', {
      f: [{ op: 'add', path: '/x', value: 1 }],
    });
    expect(onForbid.body.error.code).toBe('INVALID_PATCH');
    expect((await t.call('GET', `/api/${slug}/bad/ops/get`, undefined, A)).status).toBe(404);
  });

  it('runs everything when the circle has no policy (and records no decision)', async () => {
    const r = await post('add-one/ops/invoke', { params: [1] }, X);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    const run = (await t.call('GET', `/api/runs/${r.body.run_id}`, undefined, A)).body;
    expect(run.policy).toBeNull();
    expect(run.snapshot.policy_set_hash).toBeNull();
  });

  it('denies by a forbid (403 POLICY_DENIED with its id and reason) and starts no run', async () => {
    const p = await policy(
      'freeze',
      `@id("no-risky") @reason("risky is frozen for the audit")
       forbid(principal, action == Cairn::Action::"run", resource == Cairn::Sql::"risky");`,
    );
    expect(p.status, JSON.stringify(p.body)).toBe(201);
    const before = await runCount('risky');
    const r = await post('risky/ops/invoke', {}, X);
    expect(r.status).toBe(403);
    expectTypedError(r.body);
    expect(r.body.error.code).toBe('POLICY_DENIED');
    expect(r.body.error.message).toContain('freeze/no-risky');
    expect(r.body.error.message).toContain('risky is frozen for the audit');
    expect(r.body.error.details.deciding).toEqual([
      { id: 'freeze/no-risky', effect: 'forbid', reason: 'risky is frozen for the audit', actions: ['run'] },
    ]);
    expect(await runCount('risky')).toBe(before);
    // A dry run is asked too, and denied the same way.
    expect((await t.call('POST', `/api/${slug}/risky/ops/invoke?mode=dry_run`, {}, X)).status).toBe(403);

    // Another element still runs; its run records the allow, the set's hash and texts.
    const ok = await post('add-one/ops/invoke', { params: [2] }, X);
    expect(ok.status).toBe(200);
    const run = (await t.call('GET', `/api/runs/${ok.body.run_id}`, undefined, A)).body;
    expect(run.policy).toMatchObject({ decision: 'allow', action: 'run', explicit_permit: false, patch: [] });
    expect(run.policy.policy_set_hash).toMatch(/^[0-9a-f]{64}$/);
    expect(run.policy.input_sha256_before).toBe(run.policy.input_sha256_after);
    expect(run.snapshot.policy_set_hash).toBe(run.policy.policy_set_hash);
    // The texts are stored once, by the set's hash, and served with the run's bill of materials.
    const bom = (await t.call('GET', `/api/runs/${ok.body.run_id}/snapshot`, undefined, A)).body;
    expect(bom.policy_set.hash).toBe(run.policy.policy_set_hash);
    expect(bom.policy_set.policies).toEqual([
      expect.objectContaining({ element: 'freeze', version: 1, cedar: expect.stringContaining('no-risky') }),
    ]);
    const audit = (await t.call('GET', `/api/runs/${ok.body.run_id}/audit`, undefined, A)).body;
    const first = (audit.events ?? audit)[0];
    expect(first.data.policy.policy_set_hash).toBe(run.policy.policy_set_hash);
  });

  it('modifies the input with a permit policy patch, recording the patch and both hashes', async () => {
    const p = await policy(
      'caps',
      `@id("floor") permit(principal, action == Cairn::Action::"run", resource == Cairn::Sql::"add-one")
         when { context.input_keys.contains("params") };`,
      { floor: [{ op: 'replace', path: '/params/0', value: 41 }] },
    );
    expect(p.status, JSON.stringify(p.body)).toBe(201);
    const r = await post('add-one/ops/invoke', { params: [1] }, X);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.output.rows[0].n).toBe(42);
    const run = (await t.call('GET', `/api/runs/${r.body.run_id}`, undefined, A)).body;
    expect(run.input).toEqual({ params: [41] });
    expect(run.policy.explicit_permit).toBe(true);
    expect(run.policy.deciding.map((d: any) => d.id)).toContain('caps/floor');
    expect(run.policy.patch).toEqual([{ op: 'replace', path: '/params/0', value: 41 }]);
    expect(run.policy.input_sha256_before).not.toBe(run.policy.input_sha256_after);
    // A patch that does not apply to this input fails closed.
    const before = await runCount('add-one');
    const bad = await post('add-one/ops/invoke', { params: [] }, X);
    expect(bad.status).toBe(403);
    expectTypedError(bad.body);
    expect(bad.body.error.code).toBe('POLICY_ERROR');
    expect(await runCount('add-one')).toBe(before);
    expect((await t.call('DELETE', `/api/${slug}/caps/ops/delete?confirm=true`, undefined, A)).status).toBe(
      200,
    );
  });

  it('fails closed when the stored set is broken (403 POLICY_ERROR, no run)', async () => {
    const p = await policy('fragile', '@id("ok") permit(principal, action, resource);');
    expect(p.status).toBe(201);
    await db().query(
      `UPDATE cairn.policies SET cedar = 'permit(principal, action, resource' WHERE slug = 'fragile'`,
    );
    const before = await runCount('add-one');
    const r = await post('add-one/ops/invoke', { params: [1] }, X);
    expect(r.status).toBe(403);
    expectTypedError(r.body);
    expect(r.body.error.code).toBe('POLICY_ERROR');
    expect(await runCount('add-one')).toBe(before);
    await db().query(`UPDATE cairn.policies SET enabled = false WHERE slug = 'fragile'`);
    expect((await post('add-one/ops/invoke', { params: [1] }, X)).status).toBe(200);
  });

  it('refuses a workflow whose step a policy forbids, and lets only admins define policies', async () => {
    const p = await policy(
      'steps',
      `@id("no-risky-step") @reason("risky runs in no workflow")
       forbid(principal, action == Cairn::Action::"run", resource == Cairn::Sql::"risky");`,
    );
    expect(p.status, JSON.stringify(p.body)).toBe(201);
    expect(
      (
        await post('ops/create', {
          element_type: 'workflow',
          slug: 'uses-risky',
          spec: { steps: [{ name: 'r', element: 'risky' }] },
        })
      ).status,
    ).toBe(201);
    const before = await runCount('uses-risky');
    const tr = await post('uses-risky/ops/trigger', { parameters: {} }, X);
    expect(tr.status, JSON.stringify(tr.body)).toBe(403);
    expect(tr.body.error.code).toBe('POLICY_DENIED');
    expect(tr.body.error.message).toContain('risky runs in no workflow');
    expect(await runCount('uses-risky')).toBe(before);
    // The tokens a policy constrains cannot rewrite it: write and execute tokens may not define one.
    const W = (await t.call('POST', `/api/${slug}/tokens`, { role: 'write' }, A)).body.token;
    for (const token of [W, X]) {
      const c = await t.call(
        'POST',
        `/api/${slug}/ops/create`,
        {
          element_type: 'policy',
          slug: 'mine',
          spec: { cedar: '@id("p") permit(principal, action, resource);' },
        },
        token,
      );
      expect(c.status).toBe(403);
      expectTypedError(c.body);
      const u = await t.call('PATCH', `/api/${slug}/steps/ops/update`, { spec: { enabled: false } }, token);
      expect(u.status).toBe(403);
    }
    // A write token may not start runs through a trigger either (a schedule needs execute).
    const sch = await t.call(
      'POST',
      `/api/${slug}/ops/create`,
      {
        element_type: 'schedule',
        slug: 'sneaky',
        spec: { cron: '* * * * *', target: { element: 'add-one' } },
      },
      W,
    );
    expect(sch.status).toBe(403);
    expect((await t.call('DELETE', `/api/${slug}/steps/ops/delete?confirm=true`, undefined, A)).status).toBe(
      200,
    );
  });

  it('decides a rerun as the token that asked, with its role', async () => {
    const p = await policy(
      'reruns',
      `@id("admins-rerun") @reason("only admins rerun")
       forbid(principal, action == Cairn::Action::"run", resource) when { context.trigger == "rerun" }
         unless { principal in Cairn::Role::"admin" };`,
    );
    expect(p.status, JSON.stringify(p.body)).toBe(201);
    const r = await post('add-one/ops/invoke', { params: [1] }, X);
    expect(r.status).toBe(200);
    const denied = await t.call('POST', `/api/runs/${r.body.run_id}/rerun`, {}, X);
    expect(denied.status).toBe(403);
    expect(denied.body.error.code).toBe('POLICY_DENIED');
    expect((await t.call('POST', `/api/runs/${r.body.run_id}/rerun`, {}, A)).status).toBe(201);
    expect((await t.call('DELETE', `/api/${slug}/reruns/ops/delete?confirm=true`, undefined, A)).status).toBe(
      200,
    );
  });

  it('decides workflow triggers (with a patch of the parameters), scheduled runs and retry-failed', async () => {
    const p = await policy(
      'flows',
      `@id("n-is-ten") permit(principal, action == Cairn::Action::"run", resource == Cairn::Workflow::"flow");
       @id("no-schedules") @reason("nothing runs on a clock here")
       forbid(principal is Cairn::Trigger, action, resource) when { context.trigger == "schedule" };
       @id("no-retry") forbid(principal, action == Cairn::Action::"retry", resource);`,
      { 'n-is-ten': [{ op: 'add', path: '/parameters/n', value: 10 }] },
    );
    expect(p.status, JSON.stringify(p.body)).toBe(201);
    const tr = await post('flow/ops/trigger', { parameters: { n: 1 } }, X);
    expect(tr.status, JSON.stringify(tr.body)).toBe(202);
    const run = await waitRun(t, tr.body.run_id, A);
    expect(run.status).toBe('succeeded');
    expect(run.output).toEqual({ n: 11 });
    expect(run.policy.deciding.map((d: any) => d.id)).toContain('flows/n-is-ten');

    const s = await post('ops/create', {
      element_type: 'schedule',
      slug: 'clock',
      spec: { cron: '* * * * * *', target: { element: 'add-one', input: { params: [1] } } },
    });
    expect(s.status).toBe(201);
    await new Promise((r) => setTimeout(r, 2_200));
    await post('clock/ops/pause', {});
    const occ = (await t.call('GET', `/api/${slug}/clock/ops/occurrences`, undefined, A)).body.occurrences;
    const failed = occ.filter((o: any) => o.status === 'failed');
    expect(failed.length).toBeGreaterThanOrEqual(1);
    expect(occ.every((o: any) => o.run_id === null)).toBe(true);
    expect(failed[0].error.code).toBe('POLICY_DENIED');
    expect(failed[0].error.message).toContain('nothing runs on a clock here');

    const failing = await post('add-one/ops/invoke', { params: ['x'] }, X);
    expect(failing.body.status).toBe('failed');
    const retry = await t.call('POST', `/api/runs/${failing.body.run_id}/retry-failed`, {}, A);
    expect(retry.status).toBe(403);
    expect(retry.body.error.code).toBe('POLICY_DENIED');
  });
});

import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, expectTypedError, type TestApp, waitRun } from '../helpers/app.js';

/**
 * Replay (issue 13): a new run of the recorded input on the original's snapshot definitions (the
 * old version after an update), gated by policy — strict refuses to repeat side effects unless a
 * policy permits the replay, a forbid on the replay action denies, and runs that cannot be replayed
 * get a typed error; a workflow replays from a task, reusing the tasks before it.
 */
describeEachDriver('replay', ({ db, driver }) => {
  let t: TestApp;
  let A: string;
  const slug = `replay-${driver}`;
  const post = (path: string, body: unknown) => t.call('POST', `/api/${slug}/${path}`, body, A);
  const patch = (path: string, body: unknown) => t.call('PATCH', `/api/${slug}/${path}`, body, A);
  const replay = (id: string, body: unknown) => t.call('POST', `/api/runs/${id}/replay`, body, A);
  const py = (v: string, extra: Record<string, unknown> = {}) => ({
    source: { code: `def handler(d):\n    return {"v": "${v}"}\n` },
    ...extra,
  });

  beforeAll(async () => {
    t = await testApp(db());
    A = (await t.circle(slug)).tokens.admin;
    for (const [s, query] of [
      ['ver', "select 'v1' as v"],
      ['one', 'select 1 as n'],
      ['plus', 'select $1::int + 100 as n'],
    ])
      expect((await post('ops/create', { element_type: 'sql', slug: s, spec: { query } })).status).toBe(201);
    expect(
      (await post('ops/create', { element_type: 'python', slug: 'writer', spec: py('w1') })).status,
    ).toBe(201);
    expect(
      (
        await post('ops/create', {
          element_type: 'python',
          slug: 'pure',
          spec: py('p1', { side_effects: false }),
        })
      ).status,
    ).toBe(201);
  });
  afterAll(() => t?.close());

  it('re-executes the recorded input with the old definition after the element was updated', async () => {
    const orig = await post('ver/ops/invoke', {});
    expect(orig.body.output.rows[0].v).toBe('v1');
    expect((await patch('ver/ops/update', { spec: { query: "select 'v2' as v" } })).status).toBe(200);
    expect((await post('ver/ops/invoke', {})).body.output.rows[0].v).toBe('v2');
    const r = await replay(orig.body.run_id, { policy: 'strict' });
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    expect(r.body.side_effect_tasks).toEqual([]);
    const run = await waitRun(t, r.body.run_id, A);
    expect(run.status).toBe('succeeded');
    expect(run.output.rows[0].v).toBe('v1');
    expect(run.replay_of).toBe(orig.body.run_id);
    expect(run.trigger).toMatchObject({ type: 'replay', source: orig.body.run_id, policy: 'strict' });
    expect(run.element.version).toBe(1);
    expect(run.snapshot.element.spec.query).toBe("select 'v1' as v");
  });

  it('refuses a strict replay that repeats a side effect, unless permissive or a policy permits it', async () => {
    const orig = await post('writer/ops/invoke', {});
    expect(orig.body.status, JSON.stringify(orig.body)).toBe('succeeded');
    const runsBefore = (await t.call('GET', `/api/${slug}/writer/ops/runs?limit=100`, undefined, A)).body.runs
      .length;
    const strict = await replay(orig.body.run_id, { policy: 'strict' });
    expect(strict.status).toBe(409);
    expectTypedError(strict.body);
    expect(strict.body.error.code).toBe('REPLAY_HAS_SIDE_EFFECTS');
    expect(strict.body.error.details.side_effect_tasks).toEqual(['writer.invoke']);
    expect(
      (await t.call('GET', `/api/${slug}/writer/ops/runs?limit=100`, undefined, A)).body.runs.length,
    ).toBe(runsBefore);
    const permissive = await replay(orig.body.run_id, { policy: 'permissive' });
    expect(permissive.status).toBe(202);
    expect(permissive.body.side_effect_tasks).toEqual(['writer.invoke']);
    expect((await waitRun(t, permissive.body.run_id, A)).output).toEqual({ v: 'w1' });

    // A function that says it has no side effects replays strictly.
    const pure = await post('pure/ops/invoke', {});
    expect((await replay(pure.body.run_id, { policy: 'strict' })).status).toBe(202);

    // A permit of any action does not count as permitting a replay: strict still refuses.
    const generic = await post('ops/create', {
      element_type: 'policy',
      slug: 'generic',
      spec: { cedar: '@id("all") permit(principal, action, resource);' },
    });
    expect(generic.status, JSON.stringify(generic.body)).toBe(201);
    expect((await replay(orig.body.run_id, { policy: 'strict' })).status).toBe(409);
    expect(
      (await t.call('DELETE', `/api/${slug}/generic/ops/delete?confirm=true`, undefined, A)).status,
    ).toBe(200);

    // A policy that explicitly permits replaying the writer lets strict through; a forbid denies.
    const p = await post('ops/create', {
      element_type: 'policy',
      slug: 'replays',
      spec: {
        cedar: `@id("writer-ok") permit(principal, action == Cairn::Action::"replay", resource == Cairn::Python::"writer")
                  when { context.original_status == "succeeded" };
                @id("no-failed") @reason("failed runs are investigated, not replayed")
                forbid(principal, action == Cairn::Action::"replay", resource) when { context.original_status == "failed" };`,
      },
    });
    expect(p.status, JSON.stringify(p.body)).toBe(201);
    const allowed = await replay(orig.body.run_id, { policy: 'strict' });
    expect(allowed.status, JSON.stringify(allowed.body)).toBe(202);
    const run = await waitRun(t, allowed.body.run_id, A);
    expect(run.policy).toMatchObject({ action: 'replay', explicit_permit: true });
    const failed = await post('plus/ops/invoke', { params: ['x'] });
    expect(failed.body.status).toBe('failed');
    const denied = await replay(failed.body.run_id, { policy: 'permissive' });
    expect(denied.status).toBe(403);
    expect(denied.body.error.code).toBe('POLICY_DENIED');
    expect(denied.body.error.message).toContain('failed runs are investigated, not replayed');
    expect(
      (await t.call('DELETE', `/api/${slug}/replays/ops/delete?confirm=true`, undefined, A)).status,
    ).toBe(200);
  });

  it('replays a batch run: its items, on the definition the original pinned', async () => {
    expect(
      (
        await post('ops/create', {
          element_type: 'sql',
          slug: 'tenx',
          spec: { query: 'select $1::int * 10 as n' },
        })
      ).status,
    ).toBe(201);
    const tb = await post('ops/create', {
      element_type: 'table',
      slug: 'nums',
      spec: {
        fields: { k: { type: 'integer', required: true } },
        columns: { out: { element: 'tenx', input: { params: ['k'] } } },
      },
    });
    expect(tb.status, JSON.stringify(tb.body)).toBe(201);
    expect((await post('nums/ops/rows', { rows: [{ k: 1 }, { k: 2 }, { k: 3 }] })).status).toBe(201);
    const col = await post('nums/ops/columns/out/run', {});
    expect(col.status, JSON.stringify(col.body)).toBe(202);
    const orig = await waitRun(t, col.body.run_id, A);
    expect(orig.status).toBe('succeeded');
    expect((await patch('tenx/ops/update', { spec: { query: 'select $1::int * 1000 as n' } })).status).toBe(
      200,
    );
    const r = await replay(orig.id, { policy: 'strict' });
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    const run = await waitRun(t, r.body.run_id, A);
    expect(run.kind).toBe('batch');
    expect(run.status).toBe('succeeded');
    expect(run.replay_of).toBe(orig.id);
    expect(run.items_total).toBe(3);
    const items = (await t.call('GET', `/api/runs/${run.id}/items`, undefined, A)).body.items;
    expect(items.map((i: any) => i.outputs.rows[0].n).sort((a: number, b: number) => a - b)).toEqual([
      10, 20, 30,
    ]);
  });

  it('answers a typed error for a run that cannot be replayed', async () => {
    const dry = await t.call('POST', `/api/${slug}/one/ops/invoke?mode=dry_run`, {}, A);
    const r = await replay(dry.body.run_id, { policy: 'strict' });
    expect(r.status).toBe(409);
    expectTypedError(r.body);
    expect(r.body.error.code).toBe('RUN_NOT_REPLAYABLE');
    const inv = await post('one/ops/invoke', {});
    const ft = await replay(inv.body.run_id, { policy: 'strict', from_task: 'a' });
    expect(ft.status).toBe(400);
    expectTypedError(ft.body);
    const bad = await replay(inv.body.run_id, { policy: 'sloppy' });
    expect(bad.status).toBe(400);
    expectTypedError(bad.body);
  });

  it('replays a workflow from a task, reusing the recorded tasks before it, on the pinned definition', async () => {
    expect(
      (
        await post('ops/create', {
          element_type: 'workflow',
          slug: 'chain',
          spec: {
            steps: [
              { name: 'a', element: 'one' },
              {
                name: 'b',
                element: 'plus',
                needs: ['a'],
                input: { params: ['${{ steps.a.output.rows[0].n }}'] },
              },
            ],
            outputs: { n: '${{ steps.b.output.rows[0].n }}' },
          },
        })
      ).status,
    ).toBe(201);
    const tr = await post('chain/ops/trigger', { parameters: {} });
    const orig = await waitRun(t, tr.body.run_id, A);
    expect(orig.output).toEqual({ n: 101 });
    const origTasks = (await t.call('GET', `/api/runs/${orig.id}/tasks`, undefined, A)).body.tasks;
    // The step's element changes: a replay still runs what the original pinned.
    expect((await patch('plus/ops/update', { spec: { query: 'select $1::int + 5000 as n' } })).status).toBe(
      200,
    );
    const r = await replay(orig.id, { policy: 'strict', from_task: 'b' });
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    expect(r.body.reused_tasks).toEqual(['a']);
    const run = await waitRun(t, r.body.run_id, A);
    expect(run.status).toBe('succeeded');
    expect(run.output).toEqual({ n: 101 });
    expect(run.definition_hash).toBe(orig.definition_hash);
    const tasks = (await t.call('GET', `/api/runs/${run.id}/tasks`, undefined, A)).body.tasks;
    const a = tasks.find((x: any) => x.name === 'a');
    const b = tasks.find((x: any) => x.name === 'b');
    const origA = origTasks.find((x: any) => x.name === 'a');
    expect(a.status).toBe('succeeded');
    expect(origA.child_run_id).toMatch(/^[0-9a-f-]{36}$/);
    expect(a.child_run_id).toBe(origA.child_run_id);
    expect(b.status).toBe('succeeded');
    expect(b.child_run_id).toMatch(/^[0-9a-f-]{36}$/);
    expect(b.child_run_id).not.toBe(origTasks.find((x: any) => x.name === 'b').child_run_id);
    const unknown = await replay(orig.id, { policy: 'strict', from_task: 'zzz' });
    expect(unknown.status).toBe(400);
    expectTypedError(unknown.body);
  });
});

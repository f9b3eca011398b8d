import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, type TestApp, waitRun } from '../helpers/app.js';
import { busyFor } from '../helpers/slow-sql.js';

/**
 * Control of workflow runs (R-CONTROL): retry-failed re-runs the failed tasks
 * and the tasks they skipped in the same run; rerun makes a new run on the
 * same pinned definition; pause lets running tasks finish and starts no new
 * one; resume goes on. All through the engine's transitions, all audited.
 */

const tasksOf = async (t: TestApp, id: string, token: string) =>
  Object.fromEntries(
    ((await t.call('GET', `/api/runs/${id}/tasks`, undefined, token)).body.tasks as any[]).map((x) => [
      x.name,
      x,
    ]),
  );

describeEachDriver('workflow control', ({ db, driver }) => {
  let t: TestApp;
  let A: string;
  const slug = `wfc-${driver}`;
  const mk = async (body: unknown) => {
    const r = await t.call('POST', `/api/${slug}/ops/create`, body, A);
    expect(r.status, JSON.stringify(r.body)).toBe(201);
  };

  beforeAll(async () => {
    t = await testApp(db());
    A = (await t.circle(slug)).tokens.admin;
    await mk({ element_type: 'sql', slug: 'ddl', spec: { query: 'create table fixes (k int)' } });
    expect((await t.call('POST', `/api/${slug}/ddl/ops/invoke`, {}, A)).body.status).toBe('succeeded');
    await mk({ element_type: 'sql', slug: 'fix', spec: { query: 'insert into fixes values (1)' } });
    await mk({
      element_type: 'sql',
      slug: 'divide',
      spec: { query: 'select 100 / (select count(*) from fixes)::int as n' },
    });
    await mk({ element_type: 'sql', slug: 'add-one', spec: { query: 'select $1::int + 1 as n' } });
    const nap = driver === 'pg' ? 0.6 : 0.3;
    await mk({
      element_type: 'sql',
      slug: 'nap',
      spec: { query: `select 1 as n from ${busyFor(db().kind, nap)}` },
    });
    await mk({
      element_type: 'workflow',
      slug: 'fragile',
      spec: {
        parameters: { type: 'object', properties: { x: { type: 'integer' } } },
        steps: [
          { name: 'first', element: 'add-one', input: { params: ['${{ parameters.x }}'] } },
          { name: 'divide', element: 'divide', needs: ['first'] },
          { name: 'after', element: 'add-one', input: { params: ['${{ steps.divide.output.rows[0].n }}'] } },
          { name: 'never', element: 'add-one', when: '${{ parameters.x > 100 }}', input: { params: [0] } },
        ],
        outputs: { n: '${{ steps.after.output.rows[0].n }}' },
      },
    });
    await mk({
      element_type: 'python',
      slug: 'sleeper',
      spec: {
        source: { code: 'import time\ndef handler(d):\n    time.sleep(30)\n    return {}\n' },
        timeout_ms: 60_000,
      },
    });
    await mk({
      element_type: 'workflow',
      slug: 'sleepy',
      spec: {
        steps: [
          { name: 'zz', element: 'sleeper' },
          { name: 'after', element: 'add-one', needs: ['zz'], input: { params: [1] } },
        ],
      },
    });
    await mk({
      element_type: 'workflow',
      slug: 'naps',
      spec: {
        steps: [
          { name: 'one', element: 'nap' },
          { name: 'two', element: 'nap', needs: ['one'] },
        ],
      },
    });
  }, 60_000);
  afterAll(async () => t?.close());

  it('retry-failed runs the failed task and what it skipped again, in the same run', async () => {
    const r = await t.call('POST', `/api/${slug}/fragile/ops/trigger`, { parameters: { x: 1 } }, A);
    const failed = await waitRun(t, r.body.run_id, A);
    expect(failed.status).toBe('failed');
    let tasks = await tasksOf(t, failed.id, A);
    expect(tasks.divide.status).toBe('failed');
    expect(tasks.after.status).toBe('skipped');
    expect(tasks.never.status).toBe('skipped');
    const firstChild = tasks.first.child_run_id;
    // Nothing to fix yet: a retry would fail the same way, but it is allowed; fix first.
    expect((await t.call('POST', `/api/${slug}/fix/ops/invoke`, {}, A)).body.status).toBe('succeeded');
    const retry = await t.call('POST', `/api/runs/${failed.id}/retry-failed`, {}, A);
    expect(retry.status, JSON.stringify(retry.body)).toBe(200);
    expect(retry.body.retried).toBe(2); // divide, and after (skipped because of it); never stays skipped
    const done = await waitRun(t, failed.id, A);
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
    expect(done.output).toEqual({ n: 101 });
    tasks = await tasksOf(t, failed.id, A);
    expect(tasks.first.child_run_id).toBe(firstChild); // what succeeded did not run again
    expect(tasks.first.attempts).toBe(1);
    expect(tasks.divide.attempts).toBe(2);
    expect(tasks.divide.evidence.runs).toHaveLength(2);
    expect(tasks.never.status).toBe('skipped');
    const audit = (await t.call('GET', `/api/runs/${failed.id}/audit`, undefined, A)).body.events as any[];
    expect(audit.filter((e) => e.type === 'status').map((e) => `${e.from_status}>${e.to_status}`)).toEqual([
      'null>queued',
      'queued>running',
      'running>failed',
      'queued>running',
      'running>succeeded',
    ]);
    expect(
      audit.some((e) => e.type === 'control' && e.data.action === 'retry-failed' && e.data.tasks === 2),
    ).toBe(true);
    // Nothing failed now: a clear answer, nothing changes.
    const again = await t.call('POST', `/api/runs/${failed.id}/retry-failed`, {}, A);
    expect(again.body.retried).toBe(0);
  });

  it('rerun makes a new run with the same parameters on the same pinned definition', async () => {
    const r = await t.call('POST', `/api/${slug}/fragile/ops/trigger`, { parameters: { x: 5 } }, A);
    const first = await waitRun(t, r.body.run_id, A);
    const again = await t.call('POST', `/api/runs/${first.id}/rerun`, {}, A);
    expect(again.status, JSON.stringify(again.body)).toBe(201);
    const second = await waitRun(t, again.body.id ?? again.body.run_id, A);
    expect(second.id).not.toBe(first.id);
    expect(second.rerun_of).toBe(first.id);
    expect(second.definition_hash).toBe(first.definition_hash);
    expect(second.input).toEqual(first.input);
    expect(second.trigger.type).toBe('rerun');
    expect(second.output).toEqual(first.output);
  });

  it('cancel kills the running sandbox of a task at once and releases everything', async () => {
    const r = await t.call('POST', `/api/${slug}/sleepy/ops/trigger`, {}, A);
    const id = r.body.run_id;
    const until = Date.now() + 30_000;
    let child: any;
    for (;;) {
      const task = (await tasksOf(t, id, A)).zz;
      child =
        task?.child_run_id && (await t.call('GET', `/api/runs/${task.child_run_id}`, undefined, A)).body;
      if (child?.status === 'running' || Date.now() > until) break;
      await new Promise((s) => setTimeout(s, 20));
    }
    expect(child.status).toBe('running');
    await new Promise((s) => setTimeout(s, 300)); // the python process is up and sleeping
    const t0 = Date.now();
    expect((await t.call('POST', `/api/runs/${id}/cancel`, {}, A)).body.status).toBe('cancelled');
    while (t.worker!.inFlight > 0 && Date.now() - t0 < 5_000) await new Promise((s) => setTimeout(s, 5));
    // The sandbox was killed, not waited for (it sleeps 30 s): nothing of the run is left in this worker.
    expect(t.worker!.inFlight).toBe(0);
    if (process.env.SHOW_CANCEL_MS) console.log('cancel → sandbox gone ms', Date.now() - t0);
    expect(Date.now() - t0).toBeLessThan(1_000);
    expect((await t.call('GET', `/api/runs/${child.id}`, undefined, A)).body.status).toBe('cancelled');
    const tasks = await tasksOf(t, id, A);
    expect([tasks.zz.status, tasks.after.status]).toEqual(['cancelled', 'cancelled']);
  });

  it('pause lets the running task finish and starts no new one; resume goes on', async () => {
    const r = await t.call('POST', `/api/${slug}/naps/ops/trigger`, {}, A);
    const id = r.body.run_id;
    const until = Date.now() + 20_000;
    while ((await tasksOf(t, id, A)).one?.status !== 'running' && Date.now() < until)
      await new Promise((s) => setTimeout(s, 20));
    const p = await t.call('POST', `/api/runs/${id}/pause`, {}, A);
    expect(p.status, JSON.stringify(p.body)).toBe(200);
    expect(p.body.status).toBe('paused');
    // The first task finishes; the second does not start while paused.
    await waitRun(t, id, A, { done: () => true });
    const untilOne = Date.now() + 20_000;
    let tasks = await tasksOf(t, id, A);
    while (tasks.one.status !== 'succeeded' && Date.now() < untilOne) {
      await new Promise((s) => setTimeout(s, 50));
      tasks = await tasksOf(t, id, A);
    }
    expect(tasks.one.status).toBe('succeeded');
    await new Promise((s) => setTimeout(s, 400));
    tasks = await tasksOf(t, id, A);
    expect(tasks.two.status).toBe('pending');
    expect((await t.call('GET', `/api/runs/${id}`, undefined, A)).body.status).toBe('paused');
    const res = await t.call('POST', `/api/runs/${id}/resume`, {}, A);
    expect(res.status).toBe(200);
    const done = await waitRun(t, id, A);
    expect(done.status).toBe('succeeded');
    const audit = (await t.call('GET', `/api/runs/${id}/audit`, undefined, A)).body.events as any[];
    expect(audit.filter((e) => e.type === 'control').map((e) => e.data.action)).toEqual(['pause', 'resume']);
  });
});

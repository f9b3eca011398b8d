import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, expectTypedError, type TestApp, waitRun } from '../helpers/app.js';
import { busyFor } from '../helpers/slow-sql.js';

/**
 * Workflows (issue 12) through the real API on both drivers, with real sql
 * elements as steps: the DAG, expressions, for_each, when, trigger by name
 * and by hash (pinned step versions), failures and continue_on_error,
 * cancel, the ledger, and every bad definition's typed 400.
 */

const PRICE = 1_000; // sql invoke

const enrich = (extra: Record<string, unknown> = {}) => ({
  element_type: 'workflow',
  slug: 'enrich',
  spec: {
    parameters: { type: 'object', properties: { n: { type: 'integer' } }, required: ['n'] },
    steps: [
      { name: 'double', element: 'double-it', input: { params: ['${{ parameters.n }}'] } },
      { name: 'add', element: 'add-one', input: { params: ['${{ steps.double.output.rows[0].n }}'] } },
      { name: 'list', element: 'list' },
      {
        name: 'each',
        element: 'greeter',
        for_each: '${{ steps.list.output.rows }}',
        input: { params: ['${{ item.name }}'] },
      },
      {
        name: 'sign-off',
        element: 'add-one',
        needs: ['add'],
        when: '${{ steps.add.output.rows[0].n > 10 }}',
        input: { params: [0] },
      },
    ],
    outputs: {
      result: '${{ steps.add.output.rows[0].n }}',
      greetings: '${{ steps.each.output.map(o, o.rows[0].greeting) }}',
      label: 'n=${{ parameters.n }}',
    },
    ...extra,
  },
});

describeEachDriver('workflows', ({ db: getDb, driver }) => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  let A: string;
  const slug = `wf-${driver}`;
  const mk = async (body: unknown) => t.call('POST', `/api/${slug}/ops/create`, body, A);

  beforeAll(async () => {
    t = await testApp(getDb(), { concurrency: 4 });
    c = await t.circle(slug);
    A = c.tokens.admin;
    for (const b of [
      { element_type: 'sql', slug: 'double-it', spec: { query: 'select $1::int * 2 as n' } },
      { element_type: 'sql', slug: 'add-one', spec: { query: 'select $1::int + 1 as n' } },
      {
        element_type: 'sql',
        slug: 'list',
        spec: { query: "select * from (values ('ann'), ('bob'), ('cy')) as t(name)" },
      },
      { element_type: 'sql', slug: 'greeter', spec: { query: "select 'hello ' || $1::text as greeting" } },
      { element_type: 'sql', slug: 'boom', spec: { query: 'select 1 / 0 as x' } },
      {
        element_type: 'sql',
        slug: 'slow',
        spec: {
          query: `select 1 as x from ${busyFor(getDb().kind, getDb().kind === 'pg' ? 20 : 2)}`,
          timeout_ms: 60_000,
        },
      },
    ]) {
      const r = await mk(b);
      expect(r.status, JSON.stringify(r.body)).toBe(201);
    }
    const w = await mk(enrich());
    expect(w.status, JSON.stringify(w.body)).toBe(201);
  }, 60_000);
  afterAll(async () => t?.close());

  it('runs the DAG: expressions, for_each fan-out, when, outputs; every task recorded with its child run', async () => {
    const before = (await t.call('GET', `/api/${slug}/wallet`, undefined, A)).body;
    const r = await t.call(
      'POST',
      `/api/${slug}/enrich/ops/trigger`,
      { parameters: { n: 3 } },
      c.tokens.execute,
    );
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    expect(r.headers.location).toBe(`/api/runs/${r.body.run_id}`);
    expect(r.body.definition_hash).toMatch(/^[0-9a-f]{64}$/);
    const run = await waitRun(t, r.body.run_id, A);
    expect(run.status, JSON.stringify(run.error)).toBe('succeeded');
    expect(run.kind).toBe('workflow');
    expect(run.definition_hash).toBe(r.body.definition_hash);
    expect(run.output).toEqual({
      result: 7,
      greetings: ['hello ann', 'hello bob', 'hello cy'],
      label: 'n=3',
    });

    const tasks = (await t.call('GET', `/api/runs/${run.id}/tasks`, undefined, A)).body.tasks as any[];
    const by = Object.fromEntries(tasks.map((x) => [x.name, x]));
    expect(Object.keys(by).sort()).toEqual(
      ['add', 'double', 'each', 'each[0]', 'each[1]', 'each[2]', 'list', 'sign-off'].sort(),
    );
    expect(by['sign-off'].status).toBe('skipped'); // 7 > 10 is false
    expect(by.add.inputs).toEqual({ params: [6] });
    expect(by['each[1]'].inputs).toEqual({ params: ['bob'] });
    for (const k of ['double', 'add', 'list', 'each[0]', 'each[1]', 'each[2]']) {
      const x = by[k];
      expect(x.status).toBe('succeeded');
      expect(x.attempts).toBe(1);
      expect(x.child_run_id).toMatch(/^[0-9a-f-]{36}$/);
      expect(x.element.version).toBe(1);
      expect(x.evidence.host).toBeTruthy();
      // The child is a run of its own: parent and root point at the workflow run.
      const child = (await t.call('GET', `/api/runs/${x.child_run_id}`, undefined, A)).body;
      expect(child.parent_run_id).toBe(run.id);
      expect(child.root_run_id).toBe(run.id);
      expect(child.status).toBe('succeeded');
      expect(child.trigger.type).toBe('workflow');
      expect(child.output).toEqual(x.outputs);
    }
    const one = (
      await t.call('GET', `/api/runs/${run.id}/tasks/${encodeURIComponent('each[2]')}`, undefined, A)
    ).body;
    expect(one.outputs.rows[0].greeting).toBe('hello cy');
    expect((await t.call('GET', `/api/runs/${run.id}/tasks/nope`, undefined, A)).status).toBe(404);

    // The ledger: six child runs of a priced op, each captured on its own; nothing left held.
    const after = (await t.call('GET', `/api/${slug}/wallet`, undefined, A)).body;
    expect(run.credits_used).toBe(6 * PRICE);
    expect(after.debits_pending).toBe(before.debits_pending);
    expect(after.debits_posted - before.debits_posted).toBe(6 * PRICE);

    // The audit trail has the run's transitions and every task's.
    const audit = (await t.call('GET', `/api/runs/${run.id}/audit`, undefined, A)).body.events as any[];
    const statuses = audit.filter((e) => e.type === 'status').map((e) => e.to_status);
    expect(statuses).toEqual(['queued', 'running', 'succeeded']);
    const taskEvents = audit.filter((e) => e.type === 'task');
    expect(taskEvents.filter((e) => e.data.status === 'running').length).toBe(7); // six children + each's group
    expect(taskEvents.some((e) => e.data.task === 'sign-off' && e.data.reason === 'when_false')).toBe(true);
  });

  it('by hash runs the pinned workflow and step versions after both were updated', async () => {
    const first = await t.call('POST', `/api/${slug}/enrich/ops/trigger`, { parameters: { n: 10 } }, A);
    const old = await waitRun(t, first.body.run_id, A);
    expect(old.output.result).toBe(21);
    const hash = first.body.definition_hash;
    // A new step version and a new workflow version.
    expect(
      (
        await t.call(
          'PATCH',
          `/api/${slug}/add-one/ops/update`,
          { spec: { query: 'select $1::int + 100 as n' } },
          A,
        )
      ).status,
    ).toBe(200);
    const upd = await t.call(
      'PATCH',
      `/api/${slug}/enrich/ops/update`,
      { spec: { outputs: { result: '${{ steps.add.output.rows[0].n }}', v: 2 } }, deep: true },
      A,
    );
    expect(upd.status, JSON.stringify(upd.body)).toBe(200);
    const now = await t.call('POST', `/api/${slug}/enrich/ops/trigger`, { parameters: { n: 10 } }, A);
    expect(now.body.definition_hash).not.toBe(hash);
    const latest = await waitRun(t, now.body.run_id, A);
    expect(latest.output.result).toBe(120);
    expect(latest.output.v).toBe(2);

    for (const url of [
      `/api/workflows/by-hash/${hash}/trigger`,
      `/api/${slug}/workflows/by-hash/${hash}/trigger`,
    ]) {
      const p = await t.call('POST', url, { parameters: { n: 10 } }, c.tokens.execute);
      expect(p.status, JSON.stringify(p.body)).toBe(202);
      expect(p.body.definition_hash).toBe(hash);
      const pinned = await waitRun(t, p.body.run_id, A);
      expect(pinned.output.result).toBe(21); // the old add-one (+1), not +100
      expect(pinned.output.v).toBeUndefined(); // the old workflow spec
      const add = (await t.call('GET', `/api/runs/${pinned.id}/tasks/add`, undefined, A)).body;
      expect(add.element.version).toBe(1);
    }
    // By name, on the token's circle; and the by-hash form of the element's own trigger.
    const byName = await t.call(
      'POST',
      '/api/workflows/enrich/trigger',
      { parameters: { n: 1 } },
      c.tokens.execute,
    );
    expect(byName.status).toBe(202);
    expect((await waitRun(t, byName.body.run_id, A)).output.result).toBe(102);
    const own = await t.call(
      'POST',
      `/api/${slug}/enrich/ops/trigger`,
      { parameters: { n: 1 }, definition_hash: hash },
      A,
    );
    expect((await waitRun(t, own.body.run_id, A)).output.result).toBe(3);
    // An unknown hash: typed 404. Put add-one back.
    const unknown = await t.call(
      'POST',
      `/api/${slug}/workflows/by-hash/${'0'.repeat(64)}/trigger`,
      { parameters: { n: 1 } },
      A,
    );
    expect(unknown.status).toBe(404);
    expect(unknown.body.error.code).toBe('WORKFLOW_DEFINITION_NOT_FOUND');
    await t.call(
      'PATCH',
      `/api/${slug}/add-one/ops/update`,
      { spec: { query: 'select $1::int + 1 as n' } },
      A,
    );
  });

  it('parameters failing the schema: typed 400, no run, no charge', async () => {
    const runsBefore = (await t.call('GET', `/api/${slug}/runs?limit=500`, undefined, A)).body.runs.length;
    const walletBefore = (await t.call('GET', `/api/${slug}/wallet`, undefined, A)).body;
    for (const parameters of [{}, { n: 'three' }, { n: 1.5 }]) {
      const r = await t.call('POST', `/api/${slug}/enrich/ops/trigger`, { parameters }, A);
      expect(r.status).toBe(400);
      expectTypedError(r.body);
      expect(r.body.error.code).toBe('WORKFLOW_PARAMETERS_INVALID');
    }
    expect((await t.call('GET', `/api/${slug}/runs?limit=500`, undefined, A)).body.runs.length).toBe(
      runsBefore,
    );
    const walletAfter = (await t.call('GET', `/api/${slug}/wallet`, undefined, A)).body;
    expect(walletAfter.available).toBe(walletBefore.available);
  });

  it('a failed step fails the run and skips its dependents; continue_on_error goes on', async () => {
    const steps = (coe: boolean) => [
      { name: 'a', element: 'double-it', input: { params: [1] } },
      { name: 'bad', element: 'boom', continue_on_error: coe },
      {
        name: 'after',
        element: 'add-one',
        needs: ['bad'],
        input: { params: ['${{ steps.a.output.rows[0].n }}'] },
      },
    ];
    expect(
      (await mk({ element_type: 'workflow', slug: 'fails', spec: { steps: steps(false) } })).status,
    ).toBe(201);
    expect(
      (
        await mk({
          element_type: 'workflow',
          slug: 'goes-on',
          spec: { steps: steps(true), outputs: { x: '${{ steps.after.output.rows[0].n }}' } },
        })
      ).status,
    ).toBe(201);
    const f = await t.call('POST', `/api/${slug}/fails/ops/trigger`, {}, A);
    const failed = await waitRun(t, f.body.run_id, A);
    expect(failed.status).toBe('failed');
    expect(failed.error.code).toBe('WORKFLOW_STEP_FAILED');
    expect(failed.error.details.failed[0].task).toBe('bad');
    const ft = Object.fromEntries(
      ((await t.call('GET', `/api/runs/${failed.id}/tasks`, undefined, A)).body.tasks as any[]).map((x) => [
        x.name,
        x,
      ]),
    );
    expect(ft.a.status).toBe('succeeded');
    expect(ft.bad.status).toBe('failed');
    expect(ft.bad.error.code).toMatch(/^SQL_/);
    expect(ft.after.status).toBe('skipped');
    expect(ft.after.child_run_id).toBeNull();
    const g = await t.call('POST', `/api/${slug}/goes-on/ops/trigger`, {}, A);
    const went = await waitRun(t, g.body.run_id, A);
    expect(went.status, JSON.stringify(went.error)).toBe('succeeded');
    expect(went.output).toEqual({ x: 3 });
  });

  it('cancel stops the run and its running child; holds are released', async () => {
    expect(
      (
        await mk({
          element_type: 'workflow',
          slug: 'long',
          spec: {
            steps: [
              { name: 's', element: 'slow' },
              { name: 'then', element: 'add-one', needs: ['s'], input: { params: [1] } },
            ],
          },
        })
      ).status,
    ).toBe(201);
    const r = await t.call('POST', `/api/${slug}/long/ops/trigger`, {}, A);
    let task: any;
    const until = Date.now() + 20_000;
    do {
      await new Promise((res) => setTimeout(res, 50));
      task = (await t.call('GET', `/api/runs/${r.body.run_id}/tasks/s`, undefined, A)).body;
    } while (!task.child_run_id && Date.now() < until);
    expect(task.child_run_id).toBeTruthy();
    const cx = await t.call('POST', `/api/runs/${r.body.run_id}/cancel`, { reason: 'test' }, A);
    expect(cx.status).toBe(200);
    expect(cx.body.status).toBe('cancelled');
    const child = await waitRun(t, task.child_run_id, A, { ms: 10_000 });
    const tasks = (await t.call('GET', `/api/runs/${r.body.run_id}/tasks`, undefined, A)).body.tasks as any[];
    if (driver === 'pg') {
      // The child's statement is interrupted (PostgreSQL cancels it), and every task ends cancelled.
      expect(child.status).toBe('cancelled');
      expect(tasks.every((x: any) => x.status === 'cancelled')).toBe(true);
    } else {
      // PGlite cannot interrupt a statement: the cancel waits for it, then the rest is cancelled.
      expect(['cancelled', 'succeeded']).toContain(child.status);
      expect(tasks.find((x: any) => x.name === 'then').status).toBe('cancelled');
    }
    // Nothing stays held by the run or its child.
    const wallet = (await t.call('GET', `/api/${slug}/wallet`, undefined, A)).body;
    const until2 = Date.now() + 10_000;
    let w = wallet;
    while (w.debits_pending !== 0 && Date.now() < until2) {
      await new Promise((res) => setTimeout(res, 50));
      w = (await t.call('GET', `/api/${slug}/wallet`, undefined, A)).body;
    }
    expect(w.debits_pending).toBe(0);
  });

  it('every bad definition is a typed 400 and creates nothing', async () => {
    const cases: [string, unknown, string][] = [
      [
        'cycle',
        {
          steps: [
            { name: 'a', element: 'add-one', needs: ['b'] },
            { name: 'b', element: 'add-one', input: { params: ['${{ steps.a.output.rows[0].n }}'] } },
          ],
        },
        'WORKFLOW_CYCLE',
      ],
      [
        'unknown-step',
        { steps: [{ name: 'a', element: 'add-one', needs: ['zz'] }] },
        'WORKFLOW_UNKNOWN_STEP',
      ],
      [
        'unknown-step-expr',
        { steps: [{ name: 'a', element: 'add-one', input: { params: ['${{ steps.zz.output }}'] } }] },
        'WORKFLOW_UNKNOWN_STEP',
      ],
      ['unknown-element', { steps: [{ name: 'a', element: 'no-such-thing' }] }, 'WORKFLOW_UNKNOWN_ELEMENT'],
      [
        'not-runnable',
        { steps: [{ name: 'a', element: 'add-one', op: 'get' }] },
        'WORKFLOW_STEP_NOT_RUNNABLE',
      ],
      [
        'self',
        { steps: [{ name: 'a', element: 'add-one', input: { params: ['${{ steps.a.output }}'] } }] },
        'WORKFLOW_STEP_NOT_RUN',
      ],
      [
        'parse',
        { steps: [{ name: 'a', element: 'add-one', input: { params: ['${{ parameters.n + }}'] } }] },
        'WORKFLOW_EXPRESSION_INVALID',
      ],
      [
        'unclosed',
        { steps: [{ name: 'a', element: 'add-one', input: { params: ['${{ parameters.n'] } }] },
        'WORKFLOW_EXPRESSION_INVALID',
      ],
      [
        'bad-root',
        { steps: [{ name: 'a', element: 'add-one', input: { params: ['${{ process.env }}'] } }] },
        'WORKFLOW_EXPRESSION_INVALID',
      ],
      [
        'item-outside',
        { steps: [{ name: 'a', element: 'add-one', input: { params: ['${{ item }}'] } }] },
        'WORKFLOW_EXPRESSION_INVALID',
      ],
      [
        'nested-macro',
        {
          steps: [
            {
              name: 'a',
              element: 'add-one',
              input: { params: ['${{ parameters.l.map(x, parameters.l.map(y, y)) }}'] },
            },
          ],
        },
        'WORKFLOW_EXPRESSION_INVALID',
      ],
      [
        'cap',
        {
          steps: [
            {
              name: 'a',
              element: 'add-one',
              for_each: Array.from({ length: 1001 }, (_, i) => i),
              input: { params: ['${{ item }}'] },
            },
          ],
        },
        'WORKFLOW_FOR_EACH_CAP',
      ],
      [
        'dup',
        {
          steps: [
            { name: 'a', element: 'add-one' },
            { name: 'a', element: 'add-one' },
          ],
        },
        'WORKFLOW_DUPLICATE_STEP',
      ],
      [
        'schema',
        { parameters: { type: 'objekt' }, steps: [{ name: 'a', element: 'add-one' }] },
        'WORKFLOW_PARAMETERS_SCHEMA_INVALID',
      ],
      ['no-steps', { steps: [] }, 'INVALID_SPEC'],
    ];
    for (const [name, spec, code] of cases) {
      const r = await mk({ element_type: 'workflow', slug: `bad-${name}`, spec });
      expect(r.status, `${name}: ${JSON.stringify(r.body)}`).toBe(400);
      expectTypedError(r.body);
      expect(r.body.error.code, name).toBe(code);
      expect((await t.call('GET', `/api/${slug}/bad-${name}/ops/get`, undefined, A)).status).toBe(404);
    }
  });
});

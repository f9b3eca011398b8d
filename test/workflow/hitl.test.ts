import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, expectTypedError, type TestApp, waitRun } from '../helpers/app.js';

/**
 * hitl steps (issue 12): a task that waits for a person. Approve (with a
 * response the next step reads), reject, timeout both ways, the wrong role,
 * a second decision, and a hitl invoked alone — through the real API on both drivers.
 */

async function waitAwaiting(t: TestApp, id: string, task: string, token: string) {
  const until = Date.now() + 20_000;
  for (;;) {
    const x = (await t.call('GET', `/api/runs/${id}/tasks/${task}`, undefined, token)).body;
    if (x.awaiting) return x;
    if (Date.now() > until) throw new Error(`task ${task} of ${id} is ${x.status}, not awaiting`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describeEachDriver('hitl approvals', ({ db, driver }) => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  let A: string;
  const slug = `hitl-${driver}`;
  const mk = async (body: unknown) => {
    const r = await t.call('POST', `/api/${slug}/ops/create`, body, A);
    expect(r.status, JSON.stringify(r.body)).toBe(201);
  };
  const flow = (approval: string) => ({
    steps: [
      { name: 'a', element: 'add-one', input: { params: [1] } },
      { name: 'sign-off', element: approval, needs: ['a'] },
      {
        name: 'after',
        element: 'add-one',
        input: { params: ["${{ steps['sign-off'].output.response.budget }}"] },
      },
    ],
    outputs: { n: '${{ steps.after.output.rows[0].n }}', by: "${{ steps['sign-off'].output.approver }}" },
  });

  beforeAll(async () => {
    t = await testApp(db());
    c = await t.circle(slug);
    A = c.tokens.admin;
    await mk({ element_type: 'sql', slug: 'add-one', spec: { query: 'select $1::int + 1 as n' } });
    await mk({
      element_type: 'hitl',
      slug: 'manager-approval',
      spec: {
        instructions: 'Check the budget, then approve with the amount.',
        approvers: { role: 'admin' },
        timeout_ms: 120_000,
        response_schema: {
          type: 'object',
          properties: { budget: { type: 'integer' } },
          required: ['budget'],
        },
      },
    });
    await mk({ element_type: 'hitl', slug: 'quick-no', spec: { instructions: 'x', timeout_ms: 1_000 } });
    await mk({
      element_type: 'hitl',
      slug: 'quick-yes',
      spec: { instructions: 'x', timeout_ms: 1_000, on_timeout: 'approve' },
    });
    await mk({ element_type: 'workflow', slug: 'approve-flow', spec: flow('manager-approval') });
    await mk({
      element_type: 'workflow',
      slug: 'timeout-no',
      spec: {
        steps: [
          { name: 'gate', element: 'quick-no' },
          { name: 'then', element: 'add-one', needs: ['gate'], input: { params: [1] } },
        ],
      },
    });
    await mk({
      element_type: 'workflow',
      slug: 'timeout-yes',
      spec: {
        steps: [
          { name: 'gate', element: 'quick-yes' },
          { name: 'then', element: 'add-one', needs: ['gate'], input: { params: [1] } },
        ],
      },
    });
  }, 60_000);
  afterAll(async () => t?.close());

  it('waits for an approver with the role; the response feeds the next step; a second decision is a 409', async () => {
    const r = await t.call('POST', `/api/${slug}/approve-flow/ops/trigger`, {}, A);
    expect(r.status).toBe(202);
    const id = r.body.run_id;
    const waiting = await waitAwaiting(t, id, 'sign-off', A);
    expect(waiting.status).toBe('running');
    expect(waiting.awaiting.role).toBe('admin');
    expect(waiting.awaiting.instructions).toMatch(/budget/);
    expect(Date.parse(waiting.awaiting.deadline)).toBeGreaterThan(Date.now());
    expect(waiting.child_run_id).toBeNull(); // an approval runs no code
    const runNow = (await t.call('GET', `/api/runs/${id}`, undefined, A)).body;
    expect(runNow.status).toBe('running');
    // The run itself says that it awaits approval, and for whom.
    expect(runNow.awaiting_approval).toEqual([
      {
        task: 'sign-off',
        role: 'admin',
        instructions: waiting.awaiting.instructions,
        deadline: waiting.awaiting.deadline,
      },
    ]);

    // The wrong role: an execute token may not decide an approval that needs admin.
    const wrong = await t.call(
      'POST',
      `/api/runs/${id}/tasks/sign-off/approve`,
      { response: { budget: 1 } },
      c.tokens.execute,
    );
    expect(wrong.status).toBe(403);
    expectTypedError(wrong.body);
    // A response that does not match the schema, and none at all.
    const bad = await t.call(
      'POST',
      `/api/runs/${id}/tasks/sign-off/approve`,
      { response: { budget: 'lots' } },
      A,
    );
    expect(bad.status).toBe(400);
    expect(bad.body.error.code).toBe('HITL_RESPONSE_INVALID');
    expect((await t.call('POST', `/api/runs/${id}/tasks/sign-off/approve`, {}, A)).body.error.code).toBe(
      'HITL_RESPONSE_INVALID',
    );
    // Another circle's token learns nothing.
    const other = await t.circle(`${slug}-other`);
    expect(
      (
        await t.call(
          'POST',
          `/api/runs/${id}/tasks/sign-off/approve`,
          { response: { budget: 1 } },
          other.tokens.admin,
        )
      ).status,
    ).toBe(404);

    const ok = await t.call(
      'POST',
      `/api/runs/${id}/tasks/sign-off/approve`,
      { comment: 'fine by me', response: { budget: 41 } },
      A,
    );
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);
    expect(ok.body.status).toBe('succeeded');
    expect(ok.body.outputs).toMatchObject({
      decision: 'approved',
      comment: 'fine by me',
      response: { budget: 41 },
    });
    expect(ok.body.outputs.approver).toMatch(/^token:/);

    const again = await t.call(
      'POST',
      `/api/runs/${id}/tasks/sign-off/approve`,
      { response: { budget: 2 } },
      A,
    );
    expect(again.status).toBe(409);
    expect(again.body.error.code).toBe('TASK_NOT_AWAITING_APPROVAL');
    expect((await t.call('POST', `/api/runs/${id}/tasks/sign-off/reject`, {}, A)).status).toBe(409);
    // Not an approval at all.
    expect((await t.call('POST', `/api/runs/${id}/tasks/a/approve`, {}, A)).body.error.code).toBe(
      'TASK_NOT_AWAITING_APPROVAL',
    );

    const run = await waitRun(t, id, A);
    expect(run.status, JSON.stringify(run.error)).toBe('succeeded');
    expect(run.awaiting_approval).toEqual([]);
    expect(run.output.n).toBe(42);
    expect(run.output.by).toBe(ok.body.outputs.approver);
    const audit = (await t.call('GET', `/api/runs/${id}/audit`, undefined, A)).body.events as any[];
    const decided = audit.filter((e) => e.type === 'approval');
    expect(decided).toHaveLength(1);
    expect(decided[0].actor).toBe(ok.body.outputs.approver);
    expect(decided[0].data).toMatchObject({ task: 'sign-off', decision: 'approved', comment: 'fine by me' });
  });

  it('a rejection fails the task and the run, and skips what depends on it', async () => {
    const r = await t.call('POST', `/api/${slug}/approve-flow/ops/trigger`, {}, A);
    await waitAwaiting(t, r.body.run_id, 'sign-off', A);
    const no = await t.call(
      'POST',
      `/api/runs/${r.body.run_id}/tasks/sign-off/reject`,
      { comment: 'too expensive' },
      A,
    );
    expect(no.status).toBe(200);
    expect(no.body.status).toBe('failed');
    expect(no.body.error.code).toBe('HITL_REJECTED');
    expect(no.body.error.message).toMatch(/too expensive/);
    const run = await waitRun(t, r.body.run_id, A);
    expect(run.status).toBe('failed');
    expect(run.error.code).toBe('WORKFLOW_STEP_FAILED');
    const after = (await t.call('GET', `/api/runs/${r.body.run_id}/tasks/after`, undefined, A)).body;
    expect(after.status).toBe('skipped');
  });

  it('a timeout decides by on_timeout: reject fails, approve goes on', async () => {
    const no = await t.call('POST', `/api/${slug}/timeout-no/ops/trigger`, {}, A);
    const yes = await t.call('POST', `/api/${slug}/timeout-yes/ops/trigger`, {}, A);
    const ran = await waitRun(t, no.body.run_id, A);
    expect(ran.status).toBe('failed');
    const gate = (await t.call('GET', `/api/runs/${no.body.run_id}/tasks/gate`, undefined, A)).body;
    expect(gate.error.code).toBe('HITL_TIMED_OUT');
    expect(gate.decision).toMatchObject({
      decision: 'rejected',
      approver: 'system:timeout',
      timed_out: true,
    });
    const went = await waitRun(t, yes.body.run_id, A);
    expect(went.status).toBe('succeeded');
    const gate2 = (await t.call('GET', `/api/runs/${yes.body.run_id}/tasks/gate`, undefined, A)).body;
    expect(gate2.decision).toMatchObject({ decision: 'approved', approver: 'system:timeout' });
    expect((await t.call('GET', `/api/runs/${yes.body.run_id}/tasks/then`, undefined, A)).body.status).toBe(
      'succeeded',
    );
  });

  it('a for_each over an approval waits for each task; each is decided on its own', async () => {
    await mk({
      element_type: 'workflow',
      slug: 'fan-approve',
      spec: {
        steps: [
          { name: 'ask', element: 'manager-approval', for_each: ['a', 'b'] },
          {
            name: 'bad',
            element: 'add-one',
            for_each: [1],
            input: { params: ['${{ item.nope }}'] },
            continue_on_error: true,
          },
        ],
      },
    });
    const r = await t.call('POST', `/api/${slug}/fan-approve/ops/trigger`, {}, A);
    const a0 = await waitAwaiting(t, r.body.run_id, encodeURIComponent('ask[0]'), A);
    expect(a0.awaiting.role).toBe('admin');
    await waitAwaiting(t, r.body.run_id, encodeURIComponent('ask[1]'), A);
    for (const k of ['ask[0]', 'ask[1]'])
      expect(
        (
          await t.call(
            'POST',
            `/api/runs/${r.body.run_id}/tasks/${encodeURIComponent(k)}/approve`,
            { response: { budget: 1 } },
            A,
          )
        ).status,
      ).toBe(200);
    const run = await waitRun(t, r.body.run_id, A);
    expect(run.status, JSON.stringify(run.error)).toBe('succeeded');
    // A fan-out task that failed as it fanned out keeps its error.
    const bad = (
      await t.call('GET', `/api/runs/${r.body.run_id}/tasks/${encodeURIComponent('bad[0]')}`, undefined, A)
    ).body;
    expect(bad.status).toBe('failed');
    expect(bad.error.code).toBe('WORKFLOW_EXPRESSION_FAILED');
    expect(bad.finished_at).toBeTruthy();
  });

  it('a hitl invoked alone makes a one-step run that waits the same way', async () => {
    const r = await t.call('POST', `/api/${slug}/manager-approval/ops/invoke`, {}, c.tokens.execute);
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    expect(r.headers.location).toBe(`/api/runs/${r.body.run_id}`);
    const waiting = await waitAwaiting(t, r.body.run_id, 'approval', A);
    expect(waiting.awaiting.role).toBe('admin');
    const run0 = (await t.call('GET', `/api/runs/${r.body.run_id}`, undefined, A)).body;
    expect(run0.kind).toBe('workflow');
    expect(run0.element.slug).toBe('manager-approval');
    await t.call('POST', r.body.approve_url, { response: { budget: 7 } }, A);
    const run = await waitRun(t, r.body.run_id, A);
    expect(run.status).toBe('succeeded');
    expect(run.output.approval).toMatchObject({ decision: 'approved', response: { budget: 7 } });
  });
});

import { afterAll, beforeAll, expect, it } from 'vitest';
import { parse } from 'yaml';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, type TestApp, waitRun } from '../helpers/app.js';

/**
 * Issue 12's "Done means", to the letter: the workflow YAML of the issue,
 * with double-it, add-one, greeter, list and manager-approval defined,
 * triggers by name and by hash (the old step versions after both the
 * workflow and a step were updated); and every task field of seed 001 is
 * recorded for a go-fn, a python and a sql step.
 */

// The issue's YAML, verbatim. Its for_each reads steps.list, a step it does not declare.
const ISSUE_YAML = `
element_type: workflow
slug: enrich
spec:
  parameters:
    type: object
    properties: { n: { type: integer } }
    required: [n]
  steps:
    - name: double
      element: double-it
      op: invoke
      input: { params: ["\${{ parameters.n }}"] }
    - name: add
      element: add-one
      input: { params: ["\${{ steps.double.output.rows[0].n }}"] }
    - name: each
      element: greeter
      for_each: "\${{ steps.list.output.rows }}"
      input: { name: "\${{ item.name }}" }
    - name: sign-off
      element: manager-approval
      needs: [add]
      when: "\${{ steps.add.output.rows[0].n > 10 }}"
  outputs:
    result: "\${{ steps.add.output.rows[0].n }}"
`;

describeEachDriver('the issue 12 workflow', ({ db, driver }) => {
  let t: TestApp;
  let A: string;
  const slug = `seed-${driver}`;
  const apply = (body: unknown) => t.call('POST', `/api/${slug}/ops/apply`, body, A);

  beforeAll(async () => {
    t = await testApp(db());
    A = (await t.circle(slug)).tokens.admin;
    for (const b of [
      { element_type: 'sql', slug: 'double-it', spec: { query: 'select $1::int * 2 as n' } },
      { element_type: 'sql', slug: 'add-one', spec: { query: 'select $1::int + 1 as n' } },
      {
        element_type: 'sql',
        slug: 'list',
        spec: { query: "select * from (values ('ann'), ('bob')) as t(name)" },
      },
      {
        element_type: 'python',
        slug: 'greeter',
        spec: { source: { code: 'def handler(d):\n    return {"greeting": "hello " + d["name"]}\n' } },
      },
      {
        element_type: 'hitl',
        slug: 'manager-approval',
        spec: { instructions: 'Approve results above 10.', approvers: { role: 'admin' } },
      },
      {
        element_type: 'go-fn',
        slug: 'go-double',
        spec: {
          source: {
            type: 'inline',
            code: 'package main\n\nfunc Handler(input map[string]interface{}) (map[string]interface{}, error) {\n\treturn map[string]interface{}{"n": input["n"].(float64) * 2}, nil\n}\n',
          },
        },
      },
    ]) {
      const r = await apply(b);
      expect(r.status, JSON.stringify(r.body)).toBeLessThan(300);
    }
  }, 180_000);
  afterAll(async () => t?.close());

  it('the YAML as written is refused (it reads a step it does not declare); with the list step it runs by name and by hash', async () => {
    const doc = parse(ISSUE_YAML);
    const refused = await apply(doc);
    expect(refused.status).toBe(400);
    expect(refused.body.error.code).toBe('WORKFLOW_UNKNOWN_STEP');
    expect(refused.body.error.message).toMatch(/"list"/);

    doc.spec.steps.splice(2, 0, { name: 'list', element: 'list' });
    expect((await apply(doc)).body.action).toBe('created');
    const low = await t.call('POST', `/api/${slug}/enrich/ops/trigger`, { parameters: { n: 3 } }, A);
    const lowRun = await waitRun(t, low.body.run_id, A);
    expect(lowRun.status, JSON.stringify(lowRun.error)).toBe('succeeded');
    expect(lowRun.output).toEqual({ result: 7 });
    const lowTasks = (await t.call('GET', `/api/runs/${lowRun.id}/tasks`, undefined, A)).body.tasks as any[];
    expect(lowTasks.find((x) => x.name === 'sign-off').status).toBe('skipped');
    expect(
      lowTasks.filter((x) => x.step === 'each' && x.index !== null).map((x) => x.outputs.greeting),
    ).toEqual(['hello ann', 'hello bob']);

    // Above 10, the manager approves.
    const high = await t.call('POST', `/api/workflows/enrich/trigger`, { parameters: { n: 6 } }, A);
    const until = Date.now() + 60_000;
    let sign: any;
    do {
      await new Promise((r) => setTimeout(r, 50));
      sign = (await t.call('GET', `/api/runs/${high.body.run_id}/tasks/sign-off`, undefined, A)).body;
    } while (!sign.awaiting && Date.now() < until);
    expect(sign.awaiting.role).toBe('admin');
    expect(
      (await t.call('POST', `/api/runs/${high.body.run_id}/tasks/sign-off/approve`, { comment: 'ok' }, A))
        .status,
    ).toBe(200);
    expect((await waitRun(t, high.body.run_id, A)).output).toEqual({ result: 13 });

    // Update a step and the workflow; the old hash still runs the old versions.
    expect(
      (
        await t.call(
          'PATCH',
          `/api/${slug}/add-one/ops/update`,
          { spec: { query: 'select $1::int + 2 as n' } },
          A,
        )
      ).status,
    ).toBe(200);
    doc.spec.description = 'version 2';
    expect((await apply(doc)).body.action).toBe('updated');
    const latest = await waitRun(
      t,
      (await t.call('POST', `/api/${slug}/enrich/ops/trigger`, { parameters: { n: 3 } }, A)).body.run_id,
      A,
    );
    expect(latest.output).toEqual({ result: 8 });
    expect(latest.definition_hash).not.toBe(lowRun.definition_hash);
    const pinned = await t.call(
      'POST',
      `/api/workflows/by-hash/${lowRun.definition_hash}/trigger`,
      { parameters: { n: 3 } },
      A,
    );
    const pinnedRun = await waitRun(t, pinned.body.run_id, A);
    expect(pinnedRun.output).toEqual({ result: 7 });
    expect(pinnedRun.element.version).toBe(1); // the workflow's own old version
    const add = (await t.call('GET', `/api/runs/${pinnedRun.id}/tasks/add`, undefined, A)).body;
    expect(add.element.version).toBe(1);
  });

  it('records every task field of seed 001 for a go-fn, a python and a sql step', async () => {
    const r = await apply({
      element_type: 'workflow',
      slug: 'mixed',
      spec: {
        steps: [
          { name: 'go', element: 'go-double', input: { n: 21 } },
          { name: 'py', element: 'greeter', input: { name: 'go ${{ steps.go.output.n }}' } },
          { name: 'sql', element: 'double-it', input: { params: ['${{ steps.go.output.n }}'] } },
        ],
      },
    });
    expect(r.body.action, JSON.stringify(r.body)).toBe('created');
    const run = await waitRun(
      t,
      (await t.call('POST', `/api/${slug}/mixed/ops/trigger`, {}, A)).body.run_id,
      A,
    );
    expect(run.status, JSON.stringify(run.error)).toBe('succeeded');
    const tasks = (await t.call('GET', `/api/runs/${run.id}/tasks`, undefined, A)).body.tasks as any[];
    expect(tasks.map((x) => x.name)).toEqual(['go', 'py', 'sql']);
    for (const x of tasks) {
      for (const k of [
        'name',
        'status',
        'attempts',
        'element',
        'child_run_id',
        'command',
        'toolchain',
        'toolchain_hash',
        'input_hashes',
        'output_hashes',
        'output_variables',
        'exit_code',
        'stdout',
        'stderr',
        'timing',
        'host',
        'started_at',
        'finished_at',
        'duration_ms',
      ])
        expect(x[k], `${x.name}.${k}`).not.toBeNull();
      expect(x.element).toMatchObject({ version: 1 });
      expect(x.exit_code).toBe(0);
      expect(x.toolchain_hash).toMatch(/^sha256:[0-9a-f]{64}$/);
      expect(x.stdout).toMatchObject({ sha256: expect.stringMatching(/^sha256:/) });
      expect(Object.values(x.output_hashes)[0]).toMatch(/^sha256:[0-9a-f]{64}$/);
    }
    const by = Object.fromEntries(tasks.map((x) => [x.name, x]));
    expect(by.go.output_variables).toEqual({ n: 42 });
    expect(by.py.output_variables).toEqual({ greeting: 'hello go 42' });
    expect(by.sql.output_variables.rows[0].n).toBe(84);
    expect(by.go.toolchain.go).toBeTruthy();
    expect(by.py.toolchain.runtime).toBe('python');
    expect(by.sql.toolchain.engine).toBe(driver === 'pg' ? 'postgresql' : 'pglite');
  });
});

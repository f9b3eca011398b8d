import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliAgainst, ensureBuilt, serveIn, until, type Proc } from '../helpers/bin.js';

const TOKEN = 'cairn_e2e_bootstrap_token_wf_0123456789';
const C = ['--circle', 'wfcli'];
const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

const ELEMENTS = `
element_type: sql
slug: double
spec:
  query: 'select $1::int * 2 as n'
---
element_type: sql
slug: add-one
spec:
  query: 'select $1::int + 1 as n'
---
element_type: sql
slug: boom
spec:
  query: 'select 1 / 0 as x'
---
element_type: workflow
slug: calc
spec:
  parameters:
    type: object
    properties:
      n: { type: integer }
    required: [n]
  steps:
    - name: double
      element: double
      input: { params: ['\${{ parameters.n }}'] }
    - name: plus
      element: add-one
      input: { params: ['\${{ steps.double.output.rows[0].n }}'] }
  outputs:
    n: '\${{ steps.plus.output.rows[0].n }}'
---
element_type: workflow
slug: broken
spec:
  steps:
    - name: boom
      element: boom
---
element_type: hitl
slug: gate
spec:
  instructions: 'Check the number, then approve with one.'
  timeout_ms: 120000
  response_schema:
    type: object
    properties:
      n: { type: integer }
---
element_type: workflow
slug: gated
spec:
  steps:
    - name: first
      element: add-one
      input: { params: [1] }
    - name: sign-off
      element: gate
      needs: [first]
    - name: after
      element: add-one
      input: { params: ["\${{ steps['sign-off'].output.response.n }}"] }
  outputs:
    n: '\${{ steps.after.output.rows[0].n }}'
`;

/** Black box: workflows, tasks, approvals, files and lineage through the real bin/cairn against a real server. */
describe('bin/cairn workflows, tasks, approvals, files, lineage', () => {
  let dir: string;
  let server: Proc;
  let url: string;
  const cli = cliAgainst(() => url, TOKEN);

  const runOf = async (id: string) => JSON.parse((await cli(['runs', 'get', id, '--json'])).out);
  const ended = (id: string) =>
    until(
      async () => {
        const r = await runOf(id);
        return ['succeeded', 'completed', 'failed', 'cancelled'].includes(r.status) ? r : undefined;
      },
      60_000,
      `run ${id} to end`,
    );
  const awaiting = (id: string, task: string) =>
    until(
      async () => {
        const g = await cli(['runs', 'tasks', id, task, '--json']);
        if (g.code !== 0) return undefined;
        const t = JSON.parse(g.out);
        return t.awaiting ? t : undefined;
      },
      60_000,
      `task ${task} of ${id} to await approval`,
    );
  const trigger = async (args: string[]) => {
    const r = await cli(['workflows', 'trigger', ...args, ...C, '--json']);
    expect(r.code, r.err).toBe(8); // accepted, not finished
    return JSON.parse(r.out) as { run_id: string; status: string; definition_hash: string };
  };

  beforeAll(async () => {
    ensureBuilt();
    dir = mkdtempSync(join(tmpdir(), 'cairn-e2e-wf-'));
    ({ server, url } = await serveIn(dir, TOKEN));
    expect((await cli(['circles', 'create', 'wfcli'])).code).toBe(0);
    const file = join(dir, 'elements.yaml');
    writeFileSync(file, ELEMENTS);
    const a = await cli(['apply', '-f', file, ...C]);
    expect(a.code, a.err).toBe(0);
  }, 120_000);

  afterAll(async () => {
    server?.child.kill('SIGTERM');
    await server?.exited;
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('trigger -p n=3 --follow shows each task, the final status and the output', async () => {
    const r = await cli(['workflows', 'trigger', 'calc', '-p', 'n=3', '--follow', ...C]);
    expect(r.code, r.err + r.out).toBe(0);
    expect(r.out).toMatch(/^task double succeeded$/m);
    expect(r.out).toMatch(/^task plus succeeded$/m);
    // Each status change once, in order: a task is not repeated while its status stays.
    const lines = r.out.split('\n').filter((l) => l.startsWith('task double '));
    expect(new Set(lines).size).toBe(lines.length);
    expect(r.out).toMatch(/✓ succeeded in [\d.]+ (ms|s)\s+run [0-9a-f-]{36}/);
    expect(r.out).toMatch(/"n": 7/);

    const js = await cli(['workflows', 'trigger', 'calc', '-p', 'n=4', '--follow', ...C, '--json']);
    expect(js.code).toBe(0);
    const end = JSON.parse(js.out); // only the JSON on stdout
    expect(end).toMatchObject({ kind: 'workflow', status: 'succeeded', output: { n: 9 } });
    expect(end.tasks.map((t: any) => t.name).sort()).toEqual(['double', 'plus']);
  }, 120_000);

  it('a failed run exits 1 when followed, and shows the failed task', async () => {
    const r = await cli(['workflows', 'trigger', 'broken', '--follow', ...C]);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/^task boom failed\s+\S+/m);
    expect(r.out).toMatch(/✗ failed/);
    expect(r.err).toMatch(/error WORKFLOW_STEP_FAILED/);
  }, 60_000);

  it('--json trigger, then runs tasks as a table, as JSON and one in detail; --hash pins the definition', async () => {
    const t = await trigger(['calc', '-p', 'n=5']);
    expect(t.status).toBe('queued');
    expect(t.definition_hash).toMatch(/^[0-9a-f]{64}$/);
    const run = await ended(t.run_id);
    expect(run).toMatchObject({ status: 'succeeded', output: { n: 11 } });

    const human = await cli(['runs', 'tasks', t.run_id]);
    expect(human.code).toBe(0);
    const [head, ...rows] = human.out.trim().split('\n');
    expect(head!.split(/\s+/)).toEqual(['NAME', 'STATUS', 'ATTEMPTS', 'ELEMENT', 'DURATION', 'CHILD_RUN']);
    expect(rows.find((l) => l.startsWith('double'))).toMatch(
      /^double\s+succeeded\s+1\s+double@1\s+[\d.]+ (ms|s)\s+[0-9a-f-]{36}$/,
    );
    expect(rows.find((l) => l.startsWith('plus'))).toMatch(/^plus\s+succeeded\s+1\s+add-one@1\s/);

    const js = JSON.parse((await cli(['runs', 'tasks', t.run_id, '--json'])).out);
    expect(js.run_id).toBe(t.run_id);
    const by = Object.fromEntries(js.tasks.map((x: any) => [x.name, x]));
    expect(by.double).toMatchObject({ status: 'succeeded', attempts: 1, outputs: { rows: [{ n: 10 }] } });
    expect(by.plus.child_run_id).toMatch(/^[0-9a-f-]{36}$/);
    expect(by.plus.inputs).toEqual({ params: [10] });

    const one = await cli(['runs', 'tasks', t.run_id, 'plus']);
    expect(one.code).toBe(0);
    expect(one.out).toMatch(/^task plus\s+✓ succeeded/);
    expect(one.out).toMatch(/element\s+add-one@1 \(sql\)/);
    expect(one.out).toMatch(/outputs\s+\{"rows":\[\{"n":11\}\]/);
    expect((await cli(['runs', 'tasks', t.run_id, 'nope'])).code).toBe(4);

    const pinned = await trigger(['calc', '-p', 'n=1', '--hash', t.definition_hash]);
    expect(pinned.definition_hash).toBe(t.definition_hash);
    expect(await ended(pinned.run_id)).toMatchObject({ status: 'succeeded', output: { n: 3 } });
    const unknown = await cli(['workflows', 'trigger', 'calc', '-p', 'n=1', '--hash', 'f'.repeat(64), ...C]);
    expect(unknown.code).toBe(4);
    expect(unknown.err).toMatch(/WORKFLOW_DEFINITION_NOT_FOUND/);
  }, 120_000);

  it('approve: a followed run shows the task awaiting approval, and succeeds once approved with a response', async () => {
    const following = cli(['workflows', 'trigger', 'gated', '--follow', ...C]);
    const id = await until(
      async () => {
        const l = JSON.parse(
          (await cli(['runs', 'list', ...C, '--element', 'gated', '--status', 'running', '--json'])).out,
        );
        return l.runs[0]?.id as string | undefined;
      },
      60_000,
      'the gated run',
    );
    const waiting = await awaiting(id, 'sign-off');
    expect(waiting.awaiting.instructions).toMatch(/approve with one/);
    const table = await cli(['runs', 'tasks', id]);
    expect(table.out).toMatch(/^sign-off\s+awaiting_approval\s/m);

    const bad = await cli(['runs', 'approve', id, 'sign-off', '--response-json', '{"n": "lots"}']);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/HITL_RESPONSE_INVALID/);
    const ok = await cli([
      'runs',
      'approve',
      id,
      'sign-off',
      '-m',
      'looks right',
      '--response-json',
      '{"n": 41}',
    ]);
    expect(ok.code, ok.err).toBe(0);
    expect(ok.out).toMatch(/task sign-off of run \S+ approved by \S+: looks right/);

    const f = await following;
    expect(f.code, f.err + f.out).toBe(0);
    expect(f.out).toMatch(/^task sign-off awaiting_approval/m);
    expect(f.out).toMatch(/^task sign-off succeeded$/m);
    expect(f.out).toMatch(/^task after succeeded$/m);
    expect(f.out).toMatch(/"n": 42/);
    const run = await runOf(id);
    expect(run).toMatchObject({ status: 'succeeded', output: { n: 42 } });
    const task = JSON.parse((await cli(['runs', 'tasks', id, 'sign-off', '--json'])).out);
    expect(task.decision).toMatchObject({
      decision: 'approved',
      comment: 'looks right',
      response: { n: 41 },
    });
  }, 120_000);

  it('reject: the run fails; a second reject is a 409 (exit 5)', async () => {
    const t = await trigger(['gated']);
    await awaiting(t.run_id, 'sign-off');
    const no = await cli(['runs', 'reject', t.run_id, 'sign-off', '-m', 'not this one']);
    expect(no.code, no.err).toBe(0);
    expect(no.out).toMatch(/task sign-off of run \S+ rejected by \S+: not this one/);
    const run = await ended(t.run_id);
    expect(run.status).toBe('failed');
    expect((await cli(['runs', 'get', t.run_id])).code).toBe(1);
    const again = await cli(['runs', 'reject', t.run_id, 'sign-off']);
    expect(again.code).toBe(5);
    expect(again.err).toMatch(/TASK_NOT_AWAITING_APPROVAL/);
    const json = await cli(['runs', 'reject', t.run_id, 'sign-off', '--json']);
    expect(json.code).toBe(5);
    expect(JSON.parse(json.out).error.code).toBe('TASK_NOT_AWAITING_APPROVAL');
  }, 120_000);

  it('files put and get: the same bytes back; a parameter file is in runs files and the lineage', async () => {
    const bin = join(dir, 'blob.bin');
    const bytes = Buffer.concat([randomBytes(4096), Buffer.from([0, 255, 10, 13, 0])]);
    writeFileSync(bin, bytes);
    const put = await cli(['files', 'put', bin, '--name', 'blob.bin', ...C]);
    expect(put.code, put.err).toBe(0);
    expect(put.out).toContain(`sha256 ${sha(bytes)}  ${bytes.length} bytes  application/octet-stream`);
    expect(put.out).toContain(`{"$file":"sha256:${sha(bytes)}"}`);
    const back = join(dir, 'back.bin');
    const get = await cli(['files', 'get', sha(bytes), '-o', back, ...C]);
    expect(get.code, get.err).toBe(0);
    expect(readFileSync(back).equals(bytes)).toBe(true);

    const csv = join(dir, 'data.csv');
    writeFileSync(csv, 'a,b\n1,2\n');
    const putJson = JSON.parse((await cli(['files', 'put', csv, ...C, '--json'])).out);
    expect(putJson).toMatchObject({
      sha256: sha('a,b\n1,2\n'),
      size: 8,
      media_type: 'text/csv',
      ref: { $file: `sha256:${sha('a,b\n1,2\n')}` },
    });
    const out = await cli(['files', 'get', `sha256:${putJson.sha256}`, ...C]);
    expect(out.code).toBe(0);
    expect(out.out).toBe('a,b\n1,2\n'); // to stdout, nothing else
    expect((await cli(['files', 'get', 'a'.repeat(64), ...C])).code).toBe(4);
    expect((await cli(['files', 'put', join(dir, 'missing'), ...C])).code).toBe(2);

    const t = await trigger([
      'calc',
      '--params-json',
      JSON.stringify({ data: putJson.ref, n: 100 }),
      '-p',
      'n=2', // -p overrides --params-json
    ]);
    expect(await ended(t.run_id)).toMatchObject({ status: 'succeeded', output: { n: 5 } });
    const files = JSON.parse((await cli(['runs', 'files', t.run_id, '--json'])).out).files;
    expect(files).toContainEqual(
      expect.objectContaining({ sha256: putJson.sha256, direction: 'input', task: null, name: 'data.csv' }),
    );
    const human = await cli(['runs', 'files', t.run_id]);
    expect(human.out).toMatch(
      new RegExp(`input\\s+\\(parameters\\)\\s+data\\.csv\\s+8\\s+text/csv\\s+${putJson.sha256}`),
    );

    const ol = await cli(['runs', 'lineage', t.run_id, '--format', 'openlineage']);
    expect(ol.code).toBe(0);
    const doc = JSON.parse(ol.out); // JSON even without --json
    expect(doc.run_id).toBe(t.run_id);
    expect(doc.events.length).toBeGreaterThan(0);
    expect(doc.events.every((e: any) => typeof e.eventType === 'string' && e.run?.runId)).toBe(true);

    const graph = await cli(['runs', 'lineage', t.run_id]);
    expect(graph.code).toBe(0);
    expect(graph.out).toMatch(/^ {2}\$parameters → double {2}parameters$/m);
    expect(graph.out).toMatch(/^ {2}double → plus {2}depends$/m);
    expect(graph.out).toMatch(/^ {2}plus → \$outputs {2}outputs$/m);
    expect(graph.out).toContain(`sha256:${putJson.sha256} → $parameters  reads`);
    const gj = JSON.parse((await cli(['runs', 'lineage', t.run_id, '--json'])).out);
    expect(gj).toMatchObject({ run_id: t.run_id, kind: 'workflow' });
    expect(gj.edges).toContainEqual({ from: 'double', to: 'plus', kind: 'depends' });
    expect((await cli(['runs', 'lineage', t.run_id, '--format', 'dot'])).code).toBe(2);
  }, 120_000);

  it('bad parameters exit 2 with a clear message', async () => {
    const novalue = await cli(['workflows', 'trigger', 'calc', '-p', 'novalue', ...C]);
    expect(novalue.code).toBe(2);
    expect(novalue.err).toMatch(/INVALID_PARAMETER: -p "novalue" is not key=value/);
    expect(novalue.err).toMatch(/-p n=3/);
    const json = await cli(['workflows', 'trigger', 'calc', '--params-json', '{"n": ', ...C]);
    expect(json.code).toBe(2);
    expect(json.err).toMatch(/INVALID_JSON: --params-json is not valid JSON/);
    const arr = await cli(['workflows', 'trigger', 'calc', '--params-json', '[1]', ...C]);
    expect(arr.code).toBe(2);
    const schema = await cli(['workflows', 'trigger', 'calc', '-p', 'n=abc', ...C]); // "abc": a string, not an integer
    expect(schema.code).toBe(2);
    expect(schema.err).toMatch(/WORKFLOW_PARAMETERS_INVALID/);
    expect((await cli(['workflows', 'trigger', 'nope', ...C])).code).toBe(4);
    const noCircle = await cli(['workflows', 'trigger', 'calc', '-p', 'n=1']);
    expect(noCircle.code).toBe(2);
    expect(noCircle.err).toMatch(/CIRCLE_REQUIRED/);
  }, 60_000);
});

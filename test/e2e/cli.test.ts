import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, ROOT, cairn, cliAgainst, ensureBuilt, serveIn, until, type Proc } from '../helpers/bin.js';

const run = promisify(execFile);
const TOKEN = 'cairn_e2e_bootstrap_token_0123456789';

/** Black box: the real `bin/cairn serve` on its embedded PostgreSQL, driven by the real CLI. */
describe('bin/cairn end to end (embedded database)', () => {
  let dir: string;
  let server: Proc;
  let url: string;

  async function start(): Promise<void> {
    ({ server, url } = await serveIn(dir, TOKEN));
  }

  const cli = cliAgainst(() => url, TOKEN);

  beforeAll(async () => {
    ensureBuilt();
    dir = mkdtempSync(join(tmpdir(), 'cairn-e2e-'));
    await start();
  }, 120_000);

  afterAll(async () => {
    server?.child.kill('SIGTERM');
    await server?.exited;
    rmSync(dir, { recursive: true, force: true });
  });

  it('answers /healthz and serves its OpenAPI document', async () => {
    const h = await fetch(url + '/healthz');
    expect(h.status).toBe(200);
    expect(await h.json()).toMatchObject({ status: 'ok', database: 'pg' });
    const doc: any = await (await fetch(url + '/openapi.json')).json();
    expect(doc.openapi).toBe('3.1.0');
    expect(doc.paths['/api/{circle}/{slug}/ops/invoke'].post['x-cairn-element-types']).toContain('sql');
    expect(doc.paths['/api/runs/{id}/audit'].get).toBeDefined();
  });

  it('applies the issue YAML, invokes it sync and async, and shows the run and its audit trail', async () => {
    expect((await cli(['circles', 'create', 'e2e'])).code).toBe(0);
    const a1 = await cli(['apply', '-f', 'examples/add-one.yaml', '--circle', 'e2e']);
    expect(a1.code).toBe(0);
    expect(a1.out).toMatch(/^created\s+add-one \(sql\) v1/);
    const a2 = await cli(['apply', '-f', 'examples/add-one.yaml', '--circle', 'e2e']);
    expect(a2.out).toMatch(/^unchanged\s+add-one/);

    const inv = await cli(['invoke', 'add-one', '--circle', 'e2e', '-d', '{"params": [41]}', '--json']);
    expect(inv.code).toBe(0);
    const body = JSON.parse(inv.out);
    expect(body).toMatchObject({ status: 'succeeded', output: { rows: [{ n: 42 }], row_count: 1 } });
    // A run a person starts from the CLI is a manual run (R-TRIGGERS).
    const started = JSON.parse((await cli(['runs', 'get', body.run_id, '--json'])).out);
    expect(started.trigger.type).toBe('manual');

    const human = await cli(['invoke', 'add-one', '--circle', 'e2e', '-d', '{"params": [1]}']);
    expect(human.out).toMatch(/✓ succeeded in [\d.]+ ms\s+run [0-9a-f-]{36}\s+credits 0\.001\b/); // credits, not micro-credits

    const asy = await cli([
      'invoke',
      'add-one',
      '--circle',
      'e2e',
      '-d',
      '{"params": [2]}',
      '--async',
      '--json',
    ]);
    expect(asy.code).toBe(8); // accepted, not finished yet
    const queued = JSON.parse(asy.out);
    expect(queued.status).toBe('queued');
    const done = await until(
      async () => {
        const g = await cli(['runs', 'get', queued.run_id, '--json']);
        const r = JSON.parse(g.out);
        return r.status === 'succeeded' ? r : undefined;
      },
      20_000,
      'the async run',
    );
    expect(done.output.rows[0].n).toBe(3);

    const get = await cli(['runs', 'get', body.run_id]);
    expect(get.code).toBe(0);
    for (const f of [
      'element',
      'operation',
      'trigger',
      'attempt',
      'queued',
      'started',
      'finished',
      'duration',
      'host / worker',
      'credits',
      'engine',
    ]) {
      expect(get.out).toContain(f);
    }
    const audit = JSON.parse((await cli(['runs', 'audit', body.run_id, '--json'])).out);
    expect(audit.events.filter((e: any) => e.type === 'status').map((e: any) => e.to_status)).toEqual([
      'queued',
      'running',
      'succeeded',
    ]);
    const list = await cli(['runs', 'list', '--circle', 'e2e', '--status', 'success']);
    expect(list.out.split('\n').filter((l) => l.includes('add-one'))).toHaveLength(3);
  });

  it('exit codes scripts can rely on', async () => {
    expect((await cli(['invoke', 'add-one', '--circle', 'e2e', '-d', '{"params": ["x"]}'])).code).toBe(1); // run failed
    expect((await cli(['invoke', 'add-one', '--circle', 'e2e', '-d', '{"params": [1'])).code).toBe(2); // bad JSON
    expect((await cli(['invoke', 'nope', '--circle', 'e2e'])).code).toBe(4); // not found
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'element_type: sql\nslug: x\n  spec: [\n');
    const y = await cli(['apply', '-f', bad, '--circle', 'e2e']);
    expect(y.code).toBe(2);
    expect(y.err).toMatch(/INVALID_YAML/);
    const noauth = await run(
      process.execPath,
      [BIN, 'runs', 'list', '--circle', 'e2e', '--url', url, '--token', 'cairn_wrong'],
      { cwd: ROOT },
    ).catch((e) => e);
    expect(noauth.code).toBe(3);
    // A CLI user is told about --token / CAIRN_TOKEN, not about an HTTP header.
    expect(noauth.stderr).toMatch(/--token or CAIRN_TOKEN/);
    expect(noauth.stderr).not.toMatch(/Authorization: Bearer/);
    const down = await run(
      process.execPath,
      [BIN, 'runs', 'list', '--circle', 'e2e', '--url', 'http://127.0.0.1:1', '--token', TOKEN],
      { cwd: ROOT },
    ).catch((e) => e);
    expect(down.code).toBe(7);
    const w = await run(process.execPath, [BIN, 'worker'], {
      cwd: ROOT,
      env: { ...process.env, DATABASE_URL: '' },
    }).catch((e) => e);
    expect(w.code).toBe(2);
    expect(w.stderr).toMatch(/WORKER_NEEDS_SERVER/);
  });

  it('runs logs, the stack of a failed run, an async hint, and a closed stdout', async () => {
    const py = join(dir, 'loud.yaml');
    writeFileSync(
      py,
      [
        'element_type: python',
        'slug: loud',
        'spec:',
        '  handler: handler',
        '  source:',
        '    type: inline',
        '    code: |',
        '      import sys',
        '      def handler(input):',
        '          print("hello from stdout")',
        '          print("hello from stderr", file=sys.stderr)',
        '          if input.get("fail"):',
        '              raise ValueError("card declined")',
        '          return {"ok": True}',
        '',
      ].join('\n'),
    );
    expect((await cli(['apply', '-f', py, '--circle', 'e2e'])).code).toBe(0);
    const ok = JSON.parse((await cli(['invoke', 'loud', '--circle', 'e2e', '--json'])).out);
    const logs = await cli(['runs', 'logs', ok.run_id]);
    expect(logs.code).toBe(0);
    expect(logs.out).toMatch(/out hello from stdout/);
    expect(logs.out).toMatch(/err hello from stderr/);
    expect(
      JSON.parse((await cli(['runs', 'logs', ok.run_id, '--tail', '1', '--json'])).out).lines,
    ).toHaveLength(1);
    // --follow reads the live stream: the lines of a run still going, then the run's outcome as exit code.
    for (const [input, code] of [
      ['{}', 0],
      ['{"fail": true}', 1],
    ] as const) {
      const queued = JSON.parse(
        (await cli(['invoke', 'loud', '--circle', 'e2e', '-d', input, '--async', '--json'])).out,
      );
      const followed = await cli(['runs', 'logs', queued.run_id, '--follow']);
      expect(followed.code, followed.out).toBe(code);
      expect(followed.out).toMatch(/out hello from stdout/);
      expect(followed.out).toMatch(/err hello from stderr/);
    }

    const bad = JSON.parse(
      (await cli(['invoke', 'loud', '--circle', 'e2e', '-d', '{"fail": true}', '--json'])).out,
    );
    expect(bad.error.code).toBe('PYTHON_FN_EXECUTION_FAILED');
    const shown = await cli(['runs', 'get', bad.run_id]);
    expect(shown.out).toMatch(/Traceback \(most recent call last\)/); // details.stack, as the suggestion says
    expect(shown.out).toMatch(/ValueError: card declined/);

    const asy = await cli(['invoke', 'add-one', '--circle', 'e2e', '-d', '{"params": [5]}', '--async']);
    expect(asy.out).toMatch(/cairn runs watch [0-9a-f-]{36}/);

    // The reader goes away before the CLI writes: no EPIPE stack, SIGPIPE's conventional status.
    const piped = await run(
      'bash',
      [
        '-c',
        `"${process.execPath}" "${BIN}" wallet --circle e2e --url ${url} --token ${TOKEN} 2>"${dir}/err" | false; echo "\${PIPESTATUS[0]}"; cat "${dir}/err"`,
      ],
      { cwd: ROOT },
    );
    expect(piped.stdout.trim()).toBe('141');
  });

  it('a second serve on a port in use says PORT_IN_USE before it opens anything', async () => {
    const port = new URL(url).port;
    const other = mkdtempSync(join(tmpdir(), 'cairn-e2e-2-'));
    try {
      const second = cairn(['serve', '--port', port, '--data', other], { CAIRN_LOG_LEVEL: 'warn' });
      expect(await second.exited).toBe(2);
      expect(second.output()).toMatch(/PORT_IN_USE: Port \d+ on 127\.0\.0\.1 is already in use/);
      expect(second.output()).toMatch(/--port or CAIRN_PORT/);
      expect(second.output()).not.toMatch(/EADDRINUSE|\n\s+at /);
      expect(existsSync(join(other, 'pg'))).toBe(false); // the database was never opened
    } finally {
      rmSync(other, { recursive: true, force: true });
    }
  });

  it('tables, column runs, run control, cells and the wallet from the CLI', async () => {
    expect((await cli(['apply', '-f', 'examples/people.yaml', '--circle', 'e2e'])).code).toBe(0);
    const file = join(dir, 'people.json');
    const people = ['Alice', 'Bob', 'Chloé', 'Dmitri', 'Eve'].map((name) => ({ name }));
    writeFileSync(file, people.map((p) => JSON.stringify(p)).join('\n'));
    const ins = await cli(['rows', 'insert', 'people', '-f', file, '--circle', 'e2e']);
    expect(ins.out).toMatch(/inserted 5 rows into people/);

    const dry = await cli([
      'columns',
      'run',
      'people',
      'greeting',
      '--mode',
      'dry_run',
      '--circle',
      'e2e',
      '--json',
    ]);
    expect(dry.code).toBe(0);
    expect(JSON.parse(dry.out)).toMatchObject({ mode: 'dry_run', items_valid: 5, estimated_credits: 5000 });

    const w0 = JSON.parse((await cli(['wallet', '--circle', 'e2e', '--json'])).out);
    const live = await cli(['columns', 'run', 'people', 'greeting', '--follow', '--circle', 'e2e', '--json']);
    expect(live.code).toBe(0);
    const end = JSON.parse(live.out);
    expect(end).toMatchObject({ kind: 'batch', status: 'succeeded', items_succeeded: 5, credits_used: 5000 });
    const w1 = JSON.parse((await cli(['wallet', '--circle', 'e2e', '--json'])).out);
    expect(w0.balance - w1.balance).toBe(5000);

    const failed = await cli(['runs', 'items', end.id, '--status', 'failed', '--json']);
    expect(JSON.parse(failed.out).items).toEqual([]);
    const rows = JSON.parse((await cli(['rows', 'list', 'people', '--circle', 'e2e', '--json'])).out).rows;
    const alice = rows.find((r: any) => r.data.name === 'Alice');
    const cell = await cli(['cells', 'inspect', 'people', alice.id, 'greeting', '--circle', 'e2e', '--json']);
    expect(JSON.parse(cell.out)).toMatchObject({
      cell: { status: 'succeeded', value: { rows: [{ message: 'Hello, Alice!', letters: 5 }] } },
      item: { inputs: { params: ['Alice'] }, attempt_count: 1 },
    });

    const nothing = await cli(['runs', 'retry-failed', end.id]);
    expect(nothing.code).toBe(0);
    expect(nothing.out).toMatch(/no failed items/);
    const late = await cli(['runs', 'pause', end.id]);
    expect(late.code).toBe(5); // 409: the run already finished
    expect(late.err).toMatch(/RUN_ALREADY_FINISHED/);
    const neg = await cli(['wallet', 'grant', '-5', '--circle', 'e2e']);
    expect(neg.code).toBe(2);
    const ledger = JSON.parse((await cli(['runs', 'ledger', end.id, '--json'])).out);
    expect(ledger.totals).toEqual({ reserved: 5000, captured: 5000, released: 0, held: 0 });
  }, 120_000);

  it('every accepted run survives a restart', async () => {
    const before = JSON.parse(
      (await cli(['runs', 'list', '--circle', 'e2e', '--json', '--limit', '500'])).out,
    ).runs;
    server.child.kill('SIGTERM');
    expect(await server.exited).toBe(0);
    await start();
    const after = JSON.parse(
      (await cli(['runs', 'list', '--circle', 'e2e', '--json', '--limit', '500'])).out,
    ).runs;
    expect(after.map((r: any) => [r.id, r.status])).toEqual(before.map((r: any) => [r.id, r.status]));
  }, 120_000);
});

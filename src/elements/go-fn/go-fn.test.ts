import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshDb } from '../../../test/helpers/db.js';
import { testApp, type TestApp } from '../../../test/helpers/app.js';
import { parseElementsYaml } from '../../yaml.js';
import { GO_FN_ERRORS } from './errors.js';

const greeter = parseElementsYaml(
  readFileSync(new URL('../../../examples/my-greeter.yaml', import.meta.url), 'utf8'),
)[0]!;

const fn = (body: string, imports = '') => `package main

${imports}

func Handler(input map[string]interface{}) (map[string]interface{}, error) {
${body}
}
`;

describe('go-fn', () => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  let drop: () => Promise<void>;
  let n = 0;
  const create = async (spec: Record<string, unknown>) => {
    const slug = `g${n++}`;
    const r = await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: 'go-fn', slug, spec },
      c.tokens.write,
    );
    return { slug, r };
  };
  const invoke = async (slug: string, body: unknown = {}) =>
    (await t.call('POST', `/api/${c.slug}/${slug}/ops/invoke`, body, c.tokens.execute)).body;
  const run = async (code: string, body: unknown = {}, extra: Record<string, unknown> = {}) => {
    const { slug, r } = await create({ source: { type: 'inline', code }, ...extra });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    return invoke(slug, body);
  };

  beforeAll(async () => {
    const h = await freshDb('pg');
    drop = h.drop;
    t = await testApp(h.db);
    c = await t.circle('gofn');
  }, 120_000);
  afterAll(async () => {
    await t.close();
    await drop();
  });

  it("applies the seed's Quick Start verbatim and answers as the seed says", async () => {
    const a = await t.call('POST', `/api/${c.slug}/ops/apply`, greeter, c.tokens.write);
    expect(a.status).toBe(200);
    expect(a.body.element.spec).toMatchObject({
      handler: 'Handler',
      timeout_ms: 30000,
      memory_mb: 128,
      env: {},
      data_sources: [],
    });
    const alice = await invoke('my-greeter', { name: 'Alice' });
    expect(alice).toMatchObject({
      status: 'succeeded',
      output: { message: 'Hello, Alice!' },
      credits_used: 10000,
    });
    expect((await invoke('my-greeter', { payload: { name: 'Alice' } })).output).toEqual({
      message: 'Hello, Alice!',
    });
    expect((await invoke('my-greeter', {})).output).toEqual({ message: 'Hello, World!' });

    const items = (await t.call('GET', `/api/runs/${alice.run_id}/items`, undefined, c.tokens.read)).body
      .items;
    const ev = items[0].evidence;
    expect(ev.command).toEqual(['/fn/handler']);
    expect(ev.binary_hash).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(ev.toolchain.go).toMatch(/^go1\./);
    expect(ev.exit_code).toBe(0);
    expect(ev.verdict).toBe('ok');
    expect(ev.sandbox.backend).toBe('bubblewrap');
    expect(ev.input_hashes.stdin).toMatch(/^sha256:/);
    expect(ev.output_hashes.output).toMatch(/^sha256:/);
    expect(ev.peak_memory_kb).toBeGreaterThan(0);
    // The first invoke may have built it; the next one finds it in the cache.
    const again = await invoke('my-greeter', { name: 'Bob' });
    const ev2 = (await t.call('GET', `/api/runs/${again.run_id}/items`, undefined, c.tokens.read)).body
      .items[0].evidence;
    expect(ev2.timing.build_cached).toBe(true);
    expect(ev2.binary_hash).toBe(ev.binary_hash);
  });

  it('supports the context signature, whose deadline is the run timeout', async () => {
    const code = `package main

import (
	"context"
	"time"
)

func Handler(ctx context.Context, input map[string]interface{}) (map[string]interface{}, error) {
	d, ok := ctx.Deadline()
	return map[string]interface{}{"has_deadline": ok, "left_ms": time.Until(d).Milliseconds()}, nil
}
`;
    const r = await run(code, {}, { timeout_ms: 5000 });
    expect(r.status).toBe('succeeded');
    expect(r.output.has_deadline).toBe(true);
    expect(r.output.left_ms).toBeGreaterThan(3000);
    expect(r.output.left_ms).toBeLessThanOrEqual(5000);
  });

  it('builds and runs the seed gjson requirements example', async () => {
    const code = `package main

import (
  "github.com/tidwall/gjson"
)

func Handler(input map[string]interface{}) (map[string]interface{}, error) {
    v := gjson.Get(\`{"name":{"first":"Ada"}}\`, "name.first")
    return map[string]interface{}{"first": v.String()}, nil
}
`;
    const r = await run(
      code,
      {},
      { source: { type: 'inline', code, requirements: 'github.com/tidwall/gjson v1.18.0\n' } },
    );
    expect(r.error).toBeNull();
    expect(r.output).toEqual({ first: 'Ada' });
  }, 180_000);

  it('GO_FN_HANDLER_NOT_EXPORTED, and the other definition-time errors and warnings', async () => {
    const lower = await create({
      source: { type: 'inline', code: fn('return nil, nil') },
      handler: 'handler',
    });
    expect(lower.r.status).toBe(400);
    expect(lower.r.body.error.code).toBe('GO_FN_HANDLER_NOT_EXPORTED');
    expect((await create({ source: { type: 'inline' } })).r.body.error.message).toMatch(
      /source.code is required when source.type is inline/,
    );
    expect((await create({ source: { type: 'git' } })).r.body.error.message).toMatch(
      /source.git_url is required/,
    );
    expect((await create({ source: { type: 'inline', code: 'x' }, timeout_ms: 50 })).r.body.error.code).toBe(
      'INVALID_SPEC',
    );
    expect(
      (await create({ source: { type: 'inline', code: 'x', requirements: 'replace a => /etc' } })).r.body
        .error.code,
    ).toBe('INVALID_SPEC');
    const warn = await create({
      source: { type: 'inline', code: fn('return nil, nil') },
      memory_mb: 2048,
      timeout_ms: 600000,
    });
    expect(warn.r.status).toBe(201);
    expect(warn.r.body.warnings).toEqual([
      'memory_mb over 1024MB — consider whether your function truly needs this much memory',
      'timeout_ms over 5 minutes — long-running functions may be better suited to an agent element',
    ]);
    const git = await create({
      source: { type: 'git', git_url: 'https://git.example.com/fn.git', git_ref: 'main' },
    });
    expect(git.r.body.warnings).toEqual([
      "Pinning to 'main' branch means code changes automatically — consider pinning to a commit SHA for stable deployments",
    ]);
  });

  const cases: [string, string, RegExp][] = [
    ['GO_FN_COMPILATION_FAILED', fn('return undefinedThing, nil'), /fn\.go:6:\d+: undefined: undefinedThing/],
    [
      'GO_FN_EXECUTION_FAILED',
      fn('var m map[string]int\n\tm["boom"] = 1\n\treturn nil, nil'),
      /panicked: assignment to entry in nil map/,
    ],
    [
      'GO_FN_EXECUTION_FAILED',
      fn('return nil, errors.New("card declined")', 'import "errors"'),
      /returned an error: card declined/,
    ],
    [
      'GO_FN_INVALID_OUTPUT',
      fn('return map[string]interface{}{"c": make(chan int)}, nil'),
      /json: unsupported type: chan int/,
    ],
    ['GO_FN_TIMEOUT', fn('for {}'), /longer than timeout_ms \(300 ms\)/],
    [
      'GO_FN_MEMORY_EXCEEDED',
      fn(
        'b := [][]byte{}\n\tfor i := 0; i < 4096; i++ { x := make([]byte, 1<<20); for j := range x { x[j] = 1 }; b = append(b, x) }\n\treturn map[string]interface{}{"n": len(b)}, nil',
      ),
      /exceeded memory_mb \(64 MB\)/,
    ],
    [
      'GO_FN_OUTPUT_TOO_LARGE',
      fn('for { fmt.Println("flood flood flood flood flood flood flood") }', 'import "fmt"'),
      /more than \d+ bytes of logs/,
    ],
  ];
  for (const [code, src, msg] of cases) {
    it(`${code}: ${msg.source}`, async () => {
      const r = await run(src, {}, { timeout_ms: code === 'GO_FN_TIMEOUT' ? 300 : 20_000, memory_mb: 64 });
      expect(r.status, JSON.stringify(r)).toBe('failed');
      const decl = GO_FN_ERRORS.find((e) => e.code === code)!;
      expect(r.error, JSON.stringify(r)).toMatchObject({
        code,
        class: decl.class,
        retryable: decl.retryable,
        _suggestion: decl.suggestion,
      });
      expect(r.error.message).toMatch(msg);
    });
  }

  it('a wrong handler signature fails the build with a message that names it', async () => {
    const r = await run(`package main

func Handler(input string) (map[string]interface{}, error) { return nil, nil }
`);
    expect(r.error.code).toBe('GO_FN_COMPILATION_FAILED');
    expect(r.error.message).toMatch(/unsupported signature \(func\(input string\)/);
  });

  it('build and validate ops', async () => {
    const { slug } = await create({
      source: { type: 'inline', code: fn('return map[string]interface{}{"ok": true}, nil') },
    });
    const b1 = await t.call('POST', `/api/${c.slug}/${slug}/ops/build`, {}, c.tokens.write);
    expect(b1.body).toMatchObject({ status: 'built' });
    const b2 = await t.call('POST', `/api/${c.slug}/${slug}/ops/build`, {}, c.tokens.write);
    expect(b2.body.cached).toBe(true);
    expect(b2.body.build_key).toBe(b1.body.build_key);
    const ok = await t.call('POST', `/api/${c.slug}/${slug}/ops/validate`, {}, c.tokens.read);
    expect(ok.body).toEqual({ valid: true, errors: [], warnings: [] });
    const bad = await create({
      source: { type: 'inline', code: fn('fmt.Printf("%d", "x")\n\treturn nil, nil', 'import "fmt"') },
    });
    const v = await t.call('POST', `/api/${c.slug}/${bad.slug}/ops/validate`, {}, c.tokens.read);
    expect(v.body.valid).toBe(false);
    expect(v.body.errors.join('\n')).toMatch(
      /fn\.go:\d+:\d+: fmt\.Printf format %d has arg "x" of wrong type string/,
    );
    const d = await t.call('GET', `/api/${c.slug}/${slug}/ops/diagnostics`, undefined, c.tokens.read);
    expect(d.body).toMatchObject({
      isolation_backend: 'bubblewrap',
      isolation_reachable: true,
      worker_available: true,
      embedded_worker: t.worker!.id,
      last_error: null,
    });
  });

  it('run_cancel kills a running sandbox within 100 ms and records it', async () => {
    const { slug } = await create({
      source: {
        type: 'inline',
        code: fn('time.Sleep(30 * time.Second)\n\treturn nil, nil', 'import "time"'),
      },
      timeout_ms: 60000,
    });
    await t.call('POST', `/api/${c.slug}/${slug}/ops/build`, {}, c.tokens.write);
    const r = await t.call('POST', `/api/${c.slug}/${slug}/ops/invoke?async=1`, {}, c.tokens.execute);
    const id = r.body.run_id;
    for (let i = 0; i < 200 && t.worker!.inFlight === 0; i++) await new Promise((res) => setTimeout(res, 10));
    await new Promise((res) => setTimeout(res, 100)); // the sandbox is up and sleeping
    const t0 = performance.now();
    const x = await t.call(
      'POST',
      `/api/${c.slug}/${slug}/ops/runs/${id}/cancel`,
      { reason: 'stop' },
      c.tokens.execute,
    );
    expect(x.body.status).toBe('cancelled');
    while (t.worker!.inFlight > 0 && performance.now() - t0 < 2000)
      await new Promise((res) => setTimeout(res, 2));
    expect(t.worker!.inFlight).toBe(0);
    expect(performance.now() - t0).toBeLessThan(100);
    const audit = (await t.call('GET', `/api/runs/${id}/audit`, undefined, c.tokens.read)).body.events;
    expect(audit.at(-1)).toMatchObject({
      type: 'control',
      to_status: 'cancelled',
      data: { action: 'cancel', reason: 'stop' },
    });
    expect((await t.call('GET', `/api/runs/${id}`, undefined, c.tokens.read)).body.status).toBe('cancelled');
  });

  it('builds from a git source pinned to a ref (a local repository under CAIRN_GIT_LOCAL_ROOTS)', async () => {
    const { execFileSync } = await import('node:child_process');
    const { chmodSync, mkdirSync, mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    // The admin's allow-list is the temp dir; the builder uid (not root) reads the repository.
    const base = mkdtempSync(join(tmpdir(), 'cairn-fn-repos-'));
    chmodSync(base, 0o755);
    const repo = join(base, 'repo');
    const saved = process.env.CAIRN_GIT_LOCAL_ROOTS;
    process.env.CAIRN_GIT_LOCAL_ROOTS = base;
    const git = (...a: string[]) =>
      execFileSync('git', ['-C', repo, '-c', 'user.email=t@t', '-c', 'user.name=t', ...a]);
    execFileSync('git', ['init', '-q', '-b', 'main', repo]);
    writeFileSync(join(repo, 'go.mod'), 'module example.com/fn\n\ngo 1.22\n');
    writeFileSync(join(repo, 'fn.go'), fn('return map[string]interface{}{"version": "v1"}, nil'));
    git('add', '-A');
    git('commit', '-qm', 'v1');
    git('tag', 'v1.0.0');
    writeFileSync(join(repo, 'fn.go'), fn('return map[string]interface{}{"version": "v2"}, nil'));
    git('commit', '-qam', 'v2');
    try {
      const pinned = await create({ source: { type: 'git', git_url: repo, git_ref: 'v1.0.0' } });
      expect(pinned.r.status).toBe(201);
      expect(pinned.r.body.warnings).toBeUndefined();
      expect((await invoke(pinned.slug)).output).toEqual({ version: 'v1' });
      const head = await create({ source: { type: 'git', git_url: repo, git_ref: 'main' } });
      expect(head.r.body.warnings[0]).toMatch(/Pinning to 'main'/);
      const out = await invoke(head.slug);
      expect(out.output).toEqual({ version: 'v2' });
      const ev = (await t.call('GET', `/api/runs/${out.run_id}/items`, undefined, c.tokens.read)).body
        .items[0].evidence;
      expect(ev.toolchain.commit).toBe(
        execFileSync('git', ['-C', repo, 'rev-parse', 'HEAD'], { encoding: 'utf8' }).trim(),
      );
      // A missing repository inside the root is refused when defined…
      const missing = await create({
        source: { type: 'git', git_url: join(base, 'nope'), git_ref: 'v1.0.0' },
      });
      expect(missing.r.status).toBe(400);
      expect(missing.r.body.error.code).toBe('INVALID_SPEC');
      expect(missing.r.body.error.message).toMatch(/does not exist/);
      // …a directory that is not a repository fails the clone…
      mkdirSync(join(base, 'empty'), { mode: 0o755 });
      const empty = await create({
        source: { type: 'git', git_url: join(base, 'empty'), git_ref: 'v1.0.0' },
      });
      expect(empty.r.status).toBe(201);
      const failed = await invoke(empty.slug);
      expect(failed.error.code).toBe('GO_FN_COMPILATION_FAILED');
      expect(failed.error.message).toMatch(/git clone .* failed/);
      // …and the policy is checked again at build time: the admin closed local paths since.
      process.env.CAIRN_GIT_LOCAL_ROOTS = '';
      const closed = await t.call('POST', `/api/${c.slug}/${pinned.slug}/ops/build`, {}, c.tokens.write);
      expect(closed.body.error.code).toBe('GO_FN_COMPILATION_FAILED');
      expect(closed.body.error.message).toMatch(/allows no local git repositories/);
    } finally {
      if (saved === undefined) delete process.env.CAIRN_GIT_LOCAL_ROOTS;
      else process.env.CAIRN_GIT_LOCAL_ROOTS = saved;
      rmSync(base, { recursive: true, force: true });
    }
  }, 120_000);

  it('concurrent invokes of a changed handler build it once (single flight)', async () => {
    const { buildGo } = await import('../../sandbox/builders/go.js');
    const sandbox = t.deps.engine.sandbox;
    const code = fn(`return map[string]interface{}{"nonce": "${Date.now()}-${Math.random()}"}, nil`);
    const builds = await Promise.all(
      Array.from({ length: 6 }, () =>
        buildGo(sandbox, { source: { type: 'inline', code }, handler: 'Handler' }),
      ),
    );
    expect(new Set(builds.map((b) => b.key)).size).toBe(1);
    expect(builds.filter((b) => !b.cached).length).toBeLessThanOrEqual(6);
    // all six waited on one compile: their durations overlap instead of adding up
    const compiled = builds.filter((b) => !b.cached);
    expect(compiled.length).toBeGreaterThanOrEqual(1);
    const cached = await buildGo(sandbox, { source: { type: 'inline', code }, handler: 'Handler' });
    expect(cached.cached).toBe(true);
    expect(cached.durationMs).toBeLessThan(5);
  });

  it('stores stdout and stderr as timestamped lines, served by the logs op and /api/runs/{id}/logs', async () => {
    const code = fn(
      'fmt.Println("hello from stdout")\n\tfmt.Fprintln(os.Stderr, "warning on stderr")\n\tfmt.Println("second line")\n\treturn map[string]interface{}{"ok": true}, nil',
      'import (\n\t"fmt"\n\t"os"\n)',
    );
    const { slug } = await create({ source: { type: 'inline', code } });
    const a = await invoke(slug);
    const b = await invoke(slug);
    expect(a.output).toEqual({ ok: true }); // logs stay logs
    const one = await t.call(
      'GET',
      `/api/${c.slug}/${slug}/ops/logs?run_id=${a.run_id}`,
      undefined,
      c.tokens.read,
    );
    expect(one.body.lines.map((l: any) => [l.stream, l.line])).toEqual(
      expect.arrayContaining([
        ['stdout', 'hello from stdout'],
        ['stderr', 'warning on stderr'],
        ['stdout', 'second line'],
      ]),
    );
    expect(one.body.lines).toHaveLength(3);
    expect(one.body.lines.every((l: any) => l.run_id === a.run_id && !Number.isNaN(Date.parse(l.ts)))).toBe(
      true,
    );
    const all = await t.call('GET', `/api/${c.slug}/${slug}/ops/logs`, undefined, c.tokens.read);
    expect(all.body.lines).toHaveLength(6);
    expect(all.body.lines.at(-1).run_id).toBe(b.run_id);
    const tail = await t.call('GET', `/api/${c.slug}/${slug}/ops/logs?tail=2`, undefined, c.tokens.read);
    expect(tail.body.lines).toHaveLength(2);
    const future = new Date(Date.now() + 60_000).toISOString();
    expect(
      (await t.call('GET', `/api/${c.slug}/${slug}/ops/logs?since=${future}`, undefined, c.tokens.read)).body
        .lines,
    ).toEqual([]);
    const direct = await t.call('GET', `/api/runs/${a.run_id}/logs?tail=1`, undefined, c.tokens.read);
    expect(direct.body.lines).toHaveLength(1);
    const ev = (await t.call('GET', `/api/runs/${a.run_id}/items`, undefined, c.tokens.read)).body.items[0]
      .evidence;
    expect(ev.stdout).toMatchObject({ bytes: 'hello from stdout\nsecond line\n'.length, truncated: false });
    expect(ev.stdout.sha256).toMatch(/^sha256:/);
    const bad = await t.call(
      'GET',
      `/api/${c.slug}/${slug}/ops/logs?run_id=00000000-0000-7000-8000-000000000000`,
      undefined,
      c.tokens.read,
    );
    expect(bad.body.error.code).toBe('RUN_NOT_FOUND');
  });

  it('failed runs keep their evidence; events, stats and metrics follow the seed', async () => {
    const nonce = `${Date.now()}`;
    const { slug } = await create({
      source: {
        type: 'inline',
        code: fn(
          `fmt.Println("nonce ${nonce}")\n\tif input["fail"] == true {\n\t\treturn nil, errors.New("asked to fail")\n\t}\n\treturn map[string]interface{}{"ok": true}, nil`,
          'import (\n\t"errors"\n\t"fmt"\n)',
        ),
      },
    });
    const ok1 = await invoke(slug, {});
    await invoke(slug, {});
    const bad = await invoke(slug, { fail: true });
    expect(bad.error.code).toBe('GO_FN_EXECUTION_FAILED');
    const ev = (await t.call('GET', `/api/runs/${bad.run_id}/items`, undefined, c.tokens.read)).body.items[0]
      .evidence;
    expect(ev).toMatchObject({ command: ['/fn/handler'], exit_code: 0, verdict: 'ok' });
    expect(ev.binary_hash).toMatch(/^sha256:/);
    expect(ev.log_lines.map((l: any) => l[2])).toEqual([`nonce ${nonce}`]);

    const events = (await t.call('GET', `/api/${c.slug}/${slug}/ops/activity`, undefined, c.tokens.read)).body
      .events;
    const names = events.map((e: any) => e.name).reverse();
    expect(names).toEqual([
      'go_fn.invoked',
      'go_fn.build_completed',
      'go_fn.completed',
      'go_fn.invoked',
      'go_fn.completed',
      'go_fn.invoked',
      'go_fn.failed',
    ]);
    expect(events.find((e: any) => e.name === 'go_fn.failed').data.error_code).toBe('GO_FN_EXECUTION_FAILED');
    expect(events.find((e: any) => e.name === 'go_fn.build_completed').run_id).toBe(ok1.run_id);

    const st = (await t.call('GET', `/api/${c.slug}/${slug}/ops/stats`, undefined, c.tokens.read)).body;
    expect(st).toMatchObject({
      period: 'day',
      runs: 3,
      succeeded: 2,
      failed: 1,
      errors_per_day: 1,
      health: 'error',
    });
    expect(st.success_rate).toBeCloseTo(2 / 3, 5);
    expect(st.avg_duration_ms).toBeGreaterThan(0);

    const m = await t.app.inject({
      method: 'GET',
      url: '/metrics',
      headers: { authorization: `Bearer ${t.admin}` },
    });
    expect(m.statusCode).toBe(200);
    for (const name of [
      'go_fn_invocation_count',
      'go_fn_duration_ms_bucket',
      'go_fn_error_rate',
      'go_fn_build_duration_ms_bucket',
      'go_fn_cache_hit_rate',
    ]) {
      expect(m.body).toContain(name);
    }
    expect(m.body).toMatch(
      new RegExp(`go_fn_invocation_count\\{circle="${c.id}",element="${slug}",status="failed"\\} 1`),
    );
    expect(
      (
        await t.app.inject({
          method: 'GET',
          url: '/metrics',
          headers: { authorization: `Bearer ${c.tokens.admin}` },
        })
      ).statusCode,
    ).toBe(403);
  });
});

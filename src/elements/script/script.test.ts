import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshDb } from '../../../test/helpers/db.js';
import { testApp, type TestApp } from '../../../test/helpers/app.js';
import { javascriptType, pythonType } from './index.js';

const LANGS = {
  python: {
    decl: pythonType,
    mem: 64,
    greet: 'def handler(input):\n    return {"message": "Hello, " + input.get("name", "World") + "!"}\n',
    cases: [
      ['SYNTAX_ERROR', 'def handler(input)\n    return 1\n', /Syntax error: .*line 1/],
      ['HANDLER_NOT_FOUND', 'def other(input):\n    return {}\n', /no function "handler"/],
      [
        'EXECUTION_FAILED',
        'def handler(input):\n    raise ValueError("card declined")\n',
        /raised ValueError: card declined/,
      ],
      ['INVALID_OUTPUT', 'def handler(input):\n    return {"s": {1, 2}}\n', /not JSON serializable/],
      [
        'TIMEOUT',
        'def handler(input):\n    while True:\n        pass\n',
        /longer than timeout_ms \(500 ms\)/,
      ],
      [
        'MEMORY_EXCEEDED',
        'def handler(input):\n    b = []\n    while True:\n        b.append(bytearray(1 << 20))\n',
        /exceeded memory_mb \(64 MB\)/,
      ],
      [
        'OUTPUT_TOO_LARGE',
        'def handler(input):\n    while True:\n        print("flood " * 100)\n',
        /bytes of logs/,
      ],
    ],
    logs: 'import sys\ndef handler(input):\n    print("to stdout")\n    print("to stderr", file=sys.stderr)\n    return {"ok": True}\n',
    envRead:
      'import os\ndef handler(input):\n    return {"v": os.environ.get("GREETING"), "secret": os.environ.get("CAIRN_SECRET_FOR_TEST")}\n',
  },
  javascript: {
    decl: javascriptType,
    mem: 128,
    greet: 'export function handler(input) {\n  return { message: `Hello, ${input.name ?? "World"}!` };\n}\n',
    cases: [
      ['SYNTAX_ERROR', 'export function handler(input) {\n  return {\n}\n', /Syntax error: SyntaxError/],
      ['HANDLER_NOT_FOUND', 'export function other() { return {}; }\n', /no function "handler"/],
      [
        'EXECUTION_FAILED',
        'export async function handler() {\n  throw new TypeError("card declined");\n}\n',
        /raised TypeError: card declined/,
      ],
      [
        'INVALID_OUTPUT',
        'export function handler() {\n  const a = {}; a.self = a;\n  return a;\n}\n',
        /circular structure/,
      ],
      ['TIMEOUT', 'export function handler() {\n  for (;;) {}\n}\n', /longer than timeout_ms \(500 ms\)/],
      [
        'MEMORY_EXCEEDED',
        'export function handler() {\n  const b = [];\n  for (;;) b.push(new Array(1e6).fill(1.5));\n}\n',
        /exceeded memory_mb \(128 MB\)/,
      ],
      [
        'OUTPUT_TOO_LARGE',
        'import { writeSync } from "node:fs";\nexport function handler() {\n  for (;;) writeSync(1, "flood ".repeat(100) + "\\n");\n}\n',
        /bytes of logs/,
      ],
    ],
    logs: 'export function handler() {\n  console.log("to stdout");\n  console.error("to stderr");\n  return { ok: true };\n}\n',
    envRead:
      'export function handler() {\n  return { v: process.env.GREETING ?? null, secret: process.env.CAIRN_SECRET_FOR_TEST ?? null };\n}\n',
  },
} as const;

describe('python and javascript functions', () => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  let drop: () => Promise<void>;
  let n = 0;
  beforeAll(async () => {
    const h = await freshDb('pglite');
    drop = h.drop;
    // First-time dependency installs download from the registries: give sync invokes room.
    t = await testApp(h.db, { syncWaitMs: 180_000 });
    c = await t.circle('scripts');
  }, 120_000);
  afterAll(async () => {
    await t.close();
    await drop();
  });
  const create = async (type: string, code: string, extra: Record<string, unknown> = {}) => {
    const slug = `s${n++}`;
    const r = await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: type, slug, spec: { source: { type: 'inline', code }, ...extra } },
      c.tokens.write,
    );
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    return slug;
  };
  const invoke = async (slug: string, body: unknown = {}) =>
    (await t.call('POST', `/api/${c.slug}/${slug}/ops/invoke`, body, c.tokens.execute)).body;

  for (const [type, L] of Object.entries(LANGS)) {
    describe(type, () => {
      it('the handler gets the clean input object and returns JSON', async () => {
        const slug = await create(type, L.greet);
        expect((await invoke(slug, { name: 'Alice' })).output).toEqual({ message: 'Hello, Alice!' });
        expect((await invoke(slug, { payload: { name: 'Alice' } })).output).toEqual({
          message: 'Hello, Alice!',
        });
        const w = await invoke(slug, {});
        expect(w).toMatchObject({
          status: 'succeeded',
          output: { message: 'Hello, World!' },
          credits_used: 10000,
        });
        const ev = (await t.call('GET', `/api/runs/${w.run_id}/items`, undefined, c.tokens.read)).body
          .items[0].evidence;
        expect(ev.toolchain.runtime).toBe(type === 'python' ? 'python' : 'node');
        expect(ev.source_hash).toMatch(/^sha256:[0-9a-f]{64}$/);
        expect(ev.exit_code).toBe(0);
        expect(ev.peak_memory_kb).toBeGreaterThan(1000);
      });

      for (const [suffix, code, msg] of L.cases) {
        it(`${L.decl.errors[0]!.code.split('_FN_')[0]}_FN_${suffix}`, async () => {
          const slug = await create(type, code, {
            timeout_ms: suffix === 'TIMEOUT' ? 500 : 20_000,
            memory_mb: L.mem,
          });
          const r = await invoke(slug);
          expect(r.status, JSON.stringify(r)).toBe('failed');
          const decl = L.decl.errors.find((e) => e.code.endsWith('_' + suffix))!;
          expect(r.error, JSON.stringify(r)).toMatchObject({
            code: decl.code,
            class: decl.class,
            retryable: decl.retryable,
            _suggestion: decl.suggestion,
          });
          expect(r.error.message).toMatch(msg);
        });
      }

      it('keeps logs apart from the result, and sees only its own env', async () => {
        const slug = await create(type, L.logs);
        const r = await invoke(slug);
        expect(r.output).toEqual({ ok: true });
        const logs = (
          await t.call('GET', `/api/runs/${r.run_id}/logs`, undefined, c.tokens.read)
        ).body.lines.map((l: any) => [l.stream, l.line]);
        expect(logs).toEqual(
          expect.arrayContaining([
            ['stdout', 'to stdout'],
            ['stderr', 'to stderr'],
          ]),
        );
        process.env.CAIRN_SECRET_FOR_TEST = 'host-secret';
        try {
          const e = await create(type, L.envRead, { env: { GREETING: 'hi' } });
          expect((await invoke(e)).output).toEqual({ v: 'hi', secret: null });
        } finally {
          delete process.env.CAIRN_SECRET_FOR_TEST;
        }
      });

      it('refuses a memory_mb below what the runtime needs', async () => {
        const r = await t.call(
          'POST',
          `/api/${c.slug}/ops/create`,
          {
            element_type: type,
            slug: `low${n++}`,
            spec: { source: { code: L.greet }, memory_mb: L.mem - 1 },
          },
          c.tokens.write,
        );
        expect(r.status).toBe(400);
        expect(r.body.error.code).toBe('INVALID_SPEC');
      });

      it('validate loads the source without calling the handler', async () => {
        const ok = await create(type, L.greet);
        expect((await t.call('POST', `/api/${c.slug}/${ok}/ops/validate`, {}, c.tokens.read)).body).toEqual({
          valid: true,
          errors: [],
          warnings: [],
        });
        const bad = await create(type, L.cases[0]![1]);
        const v = (await t.call('POST', `/api/${c.slug}/${bad}/ops/validate`, {}, c.tokens.read)).body;
        expect(v.valid).toBe(false);
        expect(v.errors[0]).toMatch(/Syntax error/);
        const missing = await create(type, L.cases[1]![1]);
        expect(
          (await t.call('POST', `/api/${c.slug}/${missing}/ops/validate`, {}, c.tokens.read)).body.errors[0],
        ).toMatch(/no function "handler"/);
      });
    });
  }

  it('the sandbox opt-out is explicit, logged at start, and flagged on every run', async () => {
    const { warnIfUnsandboxed } = await import('../../runtime.js');
    const { sandboxOptions } = await import('../../sandbox/runner.js');
    const pino = (await import('pino')).default;
    const lines: string[] = [];
    const log = pino({ level: 'info' }, { write: (l: string) => lines.push(l) });
    const py = await create('python', LANGS.python.greet);
    const sandboxed = await invoke(py, { name: 'A' });
    expect(
      (await t.call('GET', `/api/runs/${sandboxed.run_id}`, undefined, c.tokens.read)).body.flags,
    ).toEqual([]);
    warnIfUnsandboxed(log, t.deps.engine.sandbox);
    expect(lines).toEqual([]);
    // The opt-out is a setting of the sandbox instance (CAIRN_UNSAFE_NO_SANDBOX=1 in a real process).
    expect(sandboxOptions().disabled).toBe(false);
    const optOut = await testApp(t.deps.db, { syncWaitMs: 60_000, sandbox: { disabled: true } });
    try {
      warnIfUnsandboxed(log, optOut.deps.engine.sandbox);
      expect(lines.join('')).toMatch(/WITHOUT the bubblewrap sandbox/);
      const invokeBare = async (slug: string, body: unknown = {}) =>
        (await optOut.call('POST', `/api/${c.slug}/${slug}/ops/invoke`, body, c.tokens.execute)).body;
      for (const [type, code] of [
        ['python', LANGS.python.greet],
        ['javascript', LANGS.javascript.greet],
      ] as const) {
        const slug = await create(type, code);
        const r = await invokeBare(slug, { name: 'Bare' });
        expect(r.output).toEqual({ message: 'Hello, Bare!' });
        const run = (await t.call('GET', `/api/runs/${r.run_id}`, undefined, c.tokens.read)).body;
        expect(run.flags).toEqual(['unsandboxed']);
        const ev = (await t.call('GET', `/api/runs/${r.run_id}/items`, undefined, c.tokens.read)).body
          .items[0].evidence;
        expect(ev.sandbox.backend).toBe('none');
      }
      const failing = await create('python', 'def handler(input):\n    raise RuntimeError("x")\n');
      const f = await invokeBare(failing);
      expect(f.status).toBe('failed');
      expect((await t.call('GET', `/api/runs/${f.run_id}`, undefined, c.tokens.read)).body.flags).toEqual([
        'unsandboxed',
      ]);
    } finally {
      await optOut.close();
    }
  });

  it('installs declared dependencies once per content key and imports them in the sandbox', async () => {
    const py = await create(
      'python',
      'import six\ndef handler(input):\n    return {"six": six.__version__}\n',
      {
        source: {
          code: 'import six\ndef handler(input):\n    return {"six": six.__version__}\n',
          requirements: 'six==1.16.0\n',
        },
      },
    );
    const a = await invoke(py);
    expect(a.error).toBeNull();
    expect(a.output).toEqual({ six: '1.16.0' });
    const js = await create('javascript', '', {
      source: {
        code: 'import isNumber from "is-number";\nexport function handler(input) {\n  return { yes: isNumber(5), no: isNumber("x") };\n}\n',
        dependencies: { 'is-number': '7.0.0' },
      },
    });
    const b = await invoke(js);
    expect(b.error).toBeNull();
    expect(b.output).toEqual({ yes: true, no: false });
    const ev = (await t.call('GET', `/api/runs/${b.run_id}/items`, undefined, c.tokens.read)).body.items[0]
      .evidence;
    expect(ev.dependencies.key).toMatch(/^[0-9a-f]{64}$/);
    const again = await invoke(js);
    const ev2 = (await t.call('GET', `/api/runs/${again.run_id}/items`, undefined, c.tokens.read)).body
      .items[0].evidence;
    expect(ev2.dependencies).toEqual({ key: ev.dependencies.key, cached: true });
  }, 240_000);

  it('refuses dependency declarations that are not plain registry packages, and types install failures', async () => {
    for (const [type, source] of [
      ['python', { code: LANGS.python.greet, requirements: '-e git+https://example.com/x.git' }],
      ['python', { code: LANGS.python.greet, requirements: '--index-url http://evil/ six' }],
      ['python', { code: LANGS.python.greet, requirements: '/etc/passwd' }],
      ['javascript', { code: LANGS.javascript.greet, dependencies: { x: 'file:../../etc' } }],
      ['javascript', { code: LANGS.javascript.greet, dependencies: { x: 'git+https://example.com/x.git' } }],
      ['javascript', { code: LANGS.javascript.greet, dependencies: { '../x': '1.0.0' } }],
    ] as const) {
      const r = await t.call(
        'POST',
        `/api/${c.slug}/ops/create`,
        { element_type: type, slug: `dep${n++}`, spec: { source } },
        c.tokens.write,
      );
      expect(r.status, JSON.stringify(source)).toBe(400);
      expect(r.body.error.code).toBe('INVALID_SPEC');
    }
    const missing = await create('python', '', {
      source: { code: LANGS.python.greet, requirements: 'cairn-no-such-package-xyz==9.9.9' },
    });
    const f = await invoke(missing);
    expect(f.error.code).toBe('PYTHON_FN_DEPENDENCY_FAILED');
    expect(f.error.message).toMatch(/pip install failed: .*(No matching distribution|Could not find)/);
  }, 240_000);
});

import fc from 'fast-check';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, type TestApp } from '../helpers/app.js';
import { findUnstorable, MAX_DEPTH } from '../../src/core/storable.js';

/**
 * Issue 9, finding 1: random hostile values — NUL, lone surrogates, invalid
 * UTF-8 bytes on stdout and stderr, numbers beyond a double, deep nesting,
 * and the same in thrown errors — through go-fn, python and javascript
 * outputs and logs. Every run ends on its own, with a status and a typed
 * error the run record can hold, and a concurrent run of another circle
 * finishes every time.
 */
const HANDLERS = {
  python: {
    prefix: 'PYTHON_FN',
    code: `import sys
def handler(input):
    s = "".join(chr(c) for c in input.get("codes", []))
    raw = bytes(input.get("bytes", []))
    sys.stdout.buffer.write(s.encode("utf-8", "surrogatepass") + b"\\n" + raw + b"\\n")
    sys.stdout.flush()
    sys.stderr.buffer.write(raw)
    sys.stderr.flush()
    v = {"s": s, "k": {s: 1}}
    if input.get("big"):
        v["n"] = 10 ** input["big"]
    for _ in range(input.get("depth", 0)):
        v = [v]
    if input.get("raise"):
        raise ValueError(s)
    return {"v": v}
`,
    handler: 'handler',
  },
  javascript: {
    prefix: 'JS_FN',
    code: `export function handler(input) {
  const s = String.fromCodePoint(...(input.codes ?? []));
  const raw = Buffer.from(input.bytes ?? []);
  process.stdout.write(s + '\\n');
  process.stdout.write(raw);
  process.stderr.write(raw);
  let v = { s, k: { [s]: 1 } };
  if (input.big) v.n = Number('1e' + input.big);
  for (let i = 0; i < (input.depth ?? 0); i++) v = [v];
  if (input.raise) throw new Error(s);
  return { v };
}
`,
    handler: 'handler',
  },
  'go-fn': {
    prefix: 'GO_FN',
    code: `package main

import (
	"encoding/json"
	"errors"
	"os"
	"strconv"
	"strings"
)

func Handler(input map[string]interface{}) (map[string]interface{}, error) {
	var b strings.Builder
	if codes, ok := input["codes"].([]interface{}); ok {
		for _, c := range codes {
			b.WriteRune(rune(c.(float64)))
		}
	}
	s := b.String()
	raw := []byte{}
	if bs, ok := input["bytes"].([]interface{}); ok {
		for _, x := range bs {
			raw = append(raw, byte(x.(float64)))
		}
	}
	os.Stdout.Write([]byte(s + "\\n"))
	os.Stdout.Write(raw)
	os.Stderr.Write(raw)
	out := map[string]interface{}{"s": s, "k": map[string]interface{}{s: 1}}
	if big, ok := input["big"].(float64); ok && big > 0 {
		out["n"] = json.Number("1e" + strconv.Itoa(int(big)))
	}
	var v interface{} = out
	depth, _ := input["depth"].(float64)
	for i := 0; i < int(depth); i++ {
		v = []interface{}{v}
	}
	if r, _ := input["raise"].(bool); r {
		return nil, errors.New(s)
	}
	return map[string]interface{}{"v": v}, nil
}
`,
    handler: 'Handler',
  },
} as const;

type Lang = keyof typeof HANDLERS;

interface Payload {
  codes: number[];
  bytes: number[];
  big: number;
  depth: number;
  raise: boolean;
}

const codePoint = fc.oneof(
  fc.constant(0),
  fc.integer({ min: 0xd800, max: 0xdfff }), // lone surrogates
  fc.integer({ min: 1, max: 0x7f }),
  fc.integer({ min: 0x80, max: 0xd7ff }),
  fc.integer({ min: 0xe000, max: 0x10ffff }),
);
const payload: fc.Arbitrary<Payload> = fc.record({
  codes: fc.array(codePoint, { maxLength: 12 }),
  // invalid UTF-8 on purpose: continuation bytes alone, overlongs, 0xff, NUL
  bytes: fc.array(fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0, 0x80, 0xc0, 0xff, 0xed)), {
    maxLength: 24,
  }),
  big: fc.oneof(fc.constant(0), fc.integer({ min: 300, max: 4000 })),
  depth: fc.oneof(fc.integer({ min: 0, max: 8 }), fc.integer({ min: MAX_DEPTH - 4, max: MAX_DEPTH + 40 })),
  raise: fc.boolean(),
});

/** What a payload must end as, per language (what each runtime does with the value before Cairn sees it). */
function expected(lang: Lang, p: Payload): 'succeeded' | 'INVALID_OUTPUT' | 'EXECUTION_FAILED' {
  if (p.raise) return 'EXECUTION_FAILED';
  const hasNul = p.codes.includes(0);
  // Adjacent high and low surrogates make a valid pair once the string is UTF-16 (JS, and Python's JSON);
  // only a lone one is unstorable.
  const hasSurrogate = findUnstorable(String.fromCodePoint(...p.codes.filter((c) => c !== 0))) !== undefined;
  // Go's strings are UTF-8: a surrogate becomes U+FFFD. JS turns 1e300+ beyond a double into null.
  const bad =
    hasNul ||
    (hasSurrogate && lang !== 'go-fn') ||
    (p.big > 308 && lang !== 'javascript') ||
    p.depth + 3 > MAX_DEPTH;
  return bad ? 'INVALID_OUTPUT' : 'succeeded';
}

describeEachDriver('hostile outputs and logs', ({ db }) => {
  let t: TestApp;
  let attacker: Awaited<ReturnType<TestApp['circle']>>;
  let victim: Awaited<ReturnType<TestApp['circle']>>;

  beforeAll(async () => {
    t = await testApp(db(), { concurrency: 4, syncWaitMs: 30_000 });
    attacker = await t.circle('fuzzer');
    victim = await t.circle('bystander');
    for (const [lang, h] of Object.entries(HANDLERS)) {
      const r = await t.call(
        'POST',
        `/api/${attacker.slug}/ops/create`,
        {
          element_type: lang,
          slug: `echo-${lang}`,
          spec: { source: { type: 'inline', code: h.code }, handler: h.handler, timeout_ms: 20_000 },
        },
        attacker.tokens.write,
      );
      expect(r.status, JSON.stringify(r.body)).toBe(201);
    }
    const v = await t.call(
      'POST',
      `/api/${victim.slug}/ops/create`,
      { element_type: 'sql', slug: 'add-one', spec: { query: 'select $1::int + 1 as n' } },
      victim.tokens.write,
    );
    expect(v.status).toBe(201);
  }, 180_000);
  afterAll(() => t.close());

  for (const lang of Object.keys(HANDLERS) as Lang[]) {
    it(`${lang}: every run ends on its own, typed, and a bystander's run finishes`, async () => {
      const prefix = HANDLERS[lang].prefix;
      await fc.assert(
        fc.asyncProperty(payload, async (p) => {
          const [run, other] = await Promise.all([
            t.call('POST', `/api/${attacker.slug}/echo-${lang}/ops/invoke`, p, attacker.tokens.execute),
            t.call('POST', `/api/${victim.slug}/add-one/ops/invoke`, { params: [1] }, victim.tokens.execute),
          ]);
          expect(other.body.status, JSON.stringify(other.body)).toBe('succeeded');
          expect(other.body.output.rows).toEqual([{ n: 2 }]);
          const want = expected(lang, p);
          expect(run.body.status, JSON.stringify(run.body).slice(0, 500)).toBe(
            want === 'succeeded' ? 'succeeded' : 'failed',
          );
          if (want !== 'succeeded') expect(run.body.error.code).toBe(`${prefix}_${want}`);
          // What was recorded can be read back, whole, and holds nothing a jsonb cannot.
          const full = (await t.call('GET', `/api/runs/${run.body.run_id}`, undefined, attacker.tokens.read))
            .body;
          expect(full.status).toBe(run.body.status);
          expect(findUnstorable(full.output)).toBeUndefined();
          expect(findUnstorable(full.error)).toBeUndefined();
          const items = (
            await t.call('GET', `/api/runs/${run.body.run_id}/items`, undefined, attacker.tokens.read)
          ).body;
          expect(findUnstorable(items, Infinity)).toBeUndefined(); // nesting is the output's, one level down
          const logs = await t.call(
            'GET',
            `/api/runs/${run.body.run_id}/logs`,
            undefined,
            attacker.tokens.read,
          );
          expect(logs.status).toBe(200);
        }),
        { numRuns: 25, seed: Number(process.env.FUZZ_SEED ?? Date.now() % 100000), endOnFailure: true },
      );
      expect(t.worker!.healthReport().degraded).toBe(false);
    }, 240_000);
  }
});

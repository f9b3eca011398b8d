import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  allowedTransitions,
  canTransition,
  isTerminal,
  normalizeStatus,
  RUN_STATUSES,
  assertTransition,
} from './status.js';
import { canonicalJson, definitionHash } from './hash.js';
import { deepMerge } from './json.js';
import { VERSION } from './version.js';
import { unwrapEnvelope } from '../api/envelope.js';
import { pgTimestampToIso } from '../db/timestamps.js';

describe('run statuses', () => {
  it('terminal states have no way out, except retry-failed re-queueing a completed or failed run', () => {
    for (const from of RUN_STATUSES.filter(isTerminal)) {
      for (const to of RUN_STATUSES)
        expect(canTransition(from, to)).toBe(to === 'queued' && (from === 'completed' || from === 'failed'));
      expect(() => assertTransition(from, 'running')).toThrowError(/cannot become running/);
    }
  });
  it('allows exactly the documented transitions', () => {
    expect(canTransition('queued', 'running')).toBe(true);
    expect(canTransition('running', 'queued')).toBe(true); // lease lost / handed back
    expect(canTransition('paused', 'queued')).toBe(true);
    expect(canTransition('queued', 'succeeded')).toBe(true); // a dry run ends as soon as it is recorded
    expect(canTransition('succeeded', 'queued')).toBe(false);
    expect(canTransition('cancelled', 'queued')).toBe(false);
    expect(canTransition('paused', 'running')).toBe(false);
  });
  it("accepts the seeds' synonyms in filters", () => {
    expect(normalizeStatus('pending')).toBe('queued');
    expect(normalizeStatus('success')).toBe('succeeded');
    expect(normalizeStatus('killed')).toBe('cancelled');
    expect(normalizeStatus('canceled')).toBe('cancelled');
    expect(normalizeStatus('FAILED')).toBe('failed');
    expect(normalizeStatus('bogus')).toBeUndefined();
  });
});

describe('definition hash', () => {
  it('is sha256 of RFC 8785 canonical JSON of {element_type, spec}', () => {
    const spec = { query: 'select $1::int + 1 as n', timeout_ms: 5000, max_rows: 1000 };
    // Written out by hand: keys sorted, no whitespace.
    const canonical =
      '{"element_type":"sql","spec":{"max_rows":1000,"query":"select $1::int + 1 as n","timeout_ms":5000}}';
    expect(canonicalJson({ element_type: 'sql', spec })).toBe(canonical);
    expect(definitionHash('sql', spec)).toBe(createHash('sha256').update(canonical).digest('hex'));
  });
  it('does not depend on key order', () => {
    expect(definitionHash('sql', { a: 1, b: { d: 2, c: 3 } })).toBe(
      definitionHash('sql', { b: { c: 3, d: 2 }, a: 1 }),
    );
  });
});

describe('deep merge', () => {
  it('merges objects, replaces lists and scalars', () => {
    expect(deepMerge({ a: { x: 1, y: 2 }, l: [1, 2, 3], s: 'a' }, { a: { y: 3 }, l: [9], s: 'b' })).toEqual({
      a: { x: 1, y: 3 },
      l: [9],
      s: 'b',
    });
  });
});

describe('envelope unwrapping (seed 004 input contract)', () => {
  it('unwraps payload, data and input, and strips internal metadata', () => {
    expect(unwrapEnvelope({ payload: { name: 'Alice' } })).toEqual({ name: 'Alice' });
    expect(unwrapEnvelope({ data: { name: 'Alice' }, _meta: { t: 1 } })).toEqual({ name: 'Alice' });
    expect(unwrapEnvelope({ input: { name: 'Alice', _trace: 'x' } })).toEqual({ name: 'Alice' });
    expect(unwrapEnvelope({ name: 'Alice', count: 3 })).toEqual({ name: 'Alice', count: 3 });
  });
  it('leaves a body alone when the envelope key has siblings or is not an object', () => {
    expect(unwrapEnvelope({ data: { a: 1 }, other: 2 })).toEqual({ data: { a: 1 }, other: 2 });
    expect(unwrapEnvelope({ data: [1, 2] })).toEqual({ data: [1, 2] });
  });
});

describe('timestamps', () => {
  it('keeps microseconds', () => {
    expect(pgTimestampToIso('2026-11-21 19:58:09.123456+00')).toBe('2026-11-21T19:58:09.123456Z');
    expect(pgTimestampToIso('2026-11-21 19:58:09+00')).toBe('2026-11-21T19:58:09.000000Z');
  });
});

it('engine version follows package.json', () => {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8'));
  expect(VERSION).toBe(pkg.version);
});

describe('the state diagram in docs/architecture.md', () => {
  it('lists exactly the transitions core/status.ts allows', () => {
    const doc = readFileSync(new URL('../../docs/architecture.md', import.meta.url), 'utf8');
    const start = doc.indexOf('Every allowed transition');
    const table = doc.slice(start, doc.indexOf('\n\n', doc.indexOf('| from', start)));
    const rows = [...table.matchAll(/^\| (\w+)\s+\| (\w+)\s+\| [^|]+\|$/gm)]
      .map((m) => `${m[1]}→${m[2]}`)
      .filter((r) => !r.startsWith('from→'));
    expect(rows.sort()).toEqual(
      allowedTransitions()
        .map(([a, b]) => `${a}→${b}`)
        .sort(),
    );
  });
});

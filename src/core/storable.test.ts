import { describe, expect, it } from 'vitest';
import { findUnstorable, MAX_DEPTH, storable, storableText } from './storable.js';

describe('the run record boundary', () => {
  it('accepts every JSON value PostgreSQL can store, surrogate pairs included', () => {
    for (const v of [null, true, 0, -1.5e308, '', 'héllo 🌍', { a: [1, { b: null }] }, [], {}, 'a\u0001b'])
      expect(findUnstorable(v)).toBeUndefined();
  });

  it('finds NUL, lone surrogates, non-finite numbers and deep nesting, and says where', () => {
    expect(findUnstorable({ a: [1, 'x\u0000'] })).toEqual({
      path: '$.a[1]',
      reason: 'the string holds a NUL character (U+0000) at offset 1',
    });
    expect(findUnstorable({ 'odd key': '\ud800' })?.path).toBe('$["odd key"]');
    expect(findUnstorable({ ['\udc00k']: 1 })?.reason).toMatch(
      /the key holds a lone UTF-16 surrogate \(U\+DC00\)/,
    );
    expect(findUnstorable({ n: Infinity })?.reason).toMatch(/outside what a JSON number holds/);
    expect(findUnstorable({ n: NaN })?.path).toBe('$.n');
    let deep: unknown = 1;
    for (let i = 0; i < MAX_DEPTH + 1; i++) deep = [deep];
    expect(findUnstorable(deep)?.reason).toBe(`nesting deeper than ${MAX_DEPTH} levels`);
    let ok: unknown = 1;
    for (let i = 0; i < MAX_DEPTH; i++) ok = [ok];
    expect(findUnstorable(ok)).toBeUndefined();
  });

  it('walks a hostile depth without overflowing the stack', () => {
    let deep: unknown = 'x';
    for (let i = 0; i < 200_000; i++) deep = { d: deep };
    expect(findUnstorable(deep, Infinity)).toBeUndefined();
    expect(findUnstorable(deep)?.reason).toMatch(/nesting deeper/);
  });

  it('escapes text: NUL and lone surrogates become U+FFFD, pairs stay', () => {
    expect(storableText('a\u0000b\ud800c\udc00🌍')).toBe('a\ufffdb\ufffdc\ufffd🌍');
    const v = { m: 'x\u0000', n: Infinity, ['k\u0000']: [1, '\udfff'] };
    expect(storable(v)).toEqual({ m: 'x\ufffd', n: null, ['k\ufffd']: [1, '\ufffd'] });
    const clean = { a: 1 };
    expect(storable(clean)).toBe(clean); // untouched values are not copied
    let deep: unknown = 1;
    for (let i = 0; i < 100; i++) deep = [deep];
    expect(findUnstorable(storable(deep))).toBeUndefined();
  });
});

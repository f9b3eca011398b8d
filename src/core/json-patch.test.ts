import { describe, expect, it } from 'vitest';
import { CairnError } from './errors.js';
import { applyPatch, checkPatch, jsonEqual, MAX_PATCH_OPS } from './json-patch.js';

/** Checks then applies, as callers do. */
function patch(doc: unknown, ops: unknown): unknown {
  return applyPatch(doc, checkPatch(ops));
}

function errorOf(fn: () => unknown): CairnError {
  try {
    fn();
  } catch (e) {
    if (e instanceof CairnError) return e;
    throw e;
  }
  throw new Error('expected a CairnError');
}

describe('RFC 6902 Appendix A', () => {
  it('A.1 adding an object member', () => {
    expect(patch({ foo: 'bar' }, [{ op: 'add', path: '/baz', value: 'qux' }])).toEqual({
      baz: 'qux',
      foo: 'bar',
    });
  });

  it('A.2 adding an array element', () => {
    expect(patch({ foo: ['bar', 'baz'] }, [{ op: 'add', path: '/foo/1', value: 'qux' }])).toEqual({
      foo: ['bar', 'qux', 'baz'],
    });
  });

  it('A.3 removing an object member', () => {
    expect(patch({ baz: 'qux', foo: 'bar' }, [{ op: 'remove', path: '/baz' }])).toEqual({ foo: 'bar' });
  });

  it('A.4 removing an array element', () => {
    expect(patch({ foo: ['bar', 'qux', 'baz'] }, [{ op: 'remove', path: '/foo/1' }])).toEqual({
      foo: ['bar', 'baz'],
    });
  });

  it('A.5 replacing a value', () => {
    expect(patch({ baz: 'qux', foo: 'bar' }, [{ op: 'replace', path: '/baz', value: 'boo' }])).toEqual({
      baz: 'boo',
      foo: 'bar',
    });
  });

  it('A.6 moving a value', () => {
    const doc = { foo: { bar: 'baz', waldo: 'fred' }, qux: { corge: 'grault' } };
    expect(patch(doc, [{ op: 'move', from: '/foo/waldo', path: '/qux/thud' }])).toEqual({
      foo: { bar: 'baz' },
      qux: { corge: 'grault', thud: 'fred' },
    });
  });

  it('A.7 moving an array element', () => {
    expect(
      patch({ foo: ['all', 'grass', 'cows', 'eat'] }, [{ op: 'move', from: '/foo/1', path: '/foo/3' }]),
    ).toEqual({ foo: ['all', 'cows', 'eat', 'grass'] });
  });

  it('A.8 testing a value: success', () => {
    const doc = { baz: 'qux', foo: ['a', 2, 'c'] };
    expect(
      patch(doc, [
        { op: 'test', path: '/baz', value: 'qux' },
        { op: 'test', path: '/foo/1', value: 2 },
      ]),
    ).toEqual(doc);
  });

  it('A.9 testing a value: error', () => {
    const e = errorOf(() => patch({ baz: 'qux' }, [{ op: 'test', path: '/baz', value: 'bar' }]));
    expect(e.code).toBe('PATCH_FAILED');
    expect(e.errorClass).toBe('validation');
    expect(e.message).toContain('op 0');
  });

  it('A.10 adding a nested member object', () => {
    expect(patch({ foo: 'bar' }, [{ op: 'add', path: '/child', value: { grandchild: {} } }])).toEqual({
      foo: 'bar',
      child: { grandchild: {} },
    });
  });

  it('A.11 ignoring unrecognized elements: we refuse them instead', () => {
    // RFC 6902 says to ignore unknown members; Cairn refuses them so a typo never passes silently.
    const e = errorOf(() => checkPatch([{ op: 'add', path: '/baz', value: 'qux', xyz: 123 }]));
    expect(e.code).toBe('INVALID_PATCH');
    expect(e.message).toContain('"xyz"');
  });

  it('A.12 adding to a nonexistent target', () => {
    const e = errorOf(() => patch({ foo: 'bar' }, [{ op: 'add', path: '/baz/bat', value: 'qux' }]));
    expect(e.code).toBe('PATCH_FAILED');
  });

  it('A.13 invalid JSON Patch document: refused (a member of another op stands in for the duplicate "op")', () => {
    const e = errorOf(() => checkPatch([{ op: 'add', path: '/baz', value: 'qux', from: '/x' }]));
    expect(e.code).toBe('INVALID_PATCH');
  });

  it('A.14 ~ escape ordering', () => {
    expect(patch({ '/': 9, '~1': 10 }, [{ op: 'test', path: '/~01', value: 10 }])).toEqual({
      '/': 9,
      '~1': 10,
    });
  });

  it('A.15 comparing strings and numbers', () => {
    const e = errorOf(() => patch({ '/': 9, '~1': 10 }, [{ op: 'test', path: '/~01', value: '10' }]));
    expect(e.code).toBe('PATCH_FAILED');
  });

  it('A.16 adding an array value', () => {
    expect(patch({ foo: ['bar'] }, [{ op: 'add', path: '/foo/-', value: ['abc', 'def'] }])).toEqual({
      foo: ['bar', ['abc', 'def']],
    });
  });
});

describe('applyPatch', () => {
  it('never mutates its input nor shares values with the result', () => {
    const doc = { a: { b: [1, 2] }, c: 1 };
    const value = { deep: [1] };
    const ops = checkPatch([
      { op: 'add', path: '/a/b/-', value: 3 },
      { op: 'add', path: '/v', value },
      { op: 'remove', path: '/c' },
    ]);
    const out = applyPatch(doc, ops) as { a: { b: number[] }; v: { deep: number[] } };
    expect(doc).toEqual({ a: { b: [1, 2] }, c: 1 });
    expect(out).toEqual({ a: { b: [1, 2, 3] }, v: { deep: [1] } });
    out.v.deep.push(2);
    expect(value.deep).toEqual([1]);
  });

  it('is all or nothing: a failing op leaves no partial result and names its index', () => {
    const doc = { a: 1 };
    const e = errorOf(() =>
      patch(doc, [
        { op: 'replace', path: '/a', value: 2 },
        { op: 'remove', path: '/missing' },
      ]),
    );
    expect(e.code).toBe('PATCH_FAILED');
    expect(e.message).toContain('op 1');
    expect(e.details).toMatchObject({ op_index: 1, op: 'remove', path: '/missing' });
    expect(doc).toEqual({ a: 1 });
  });

  it('operates on the root', () => {
    expect(patch({ a: 1 }, [{ op: 'replace', path: '', value: [1] }])).toEqual([1]);
    expect(patch({ a: 1 }, [{ op: 'add', path: '', value: 'x' }])).toBe('x');
    expect(patch({ a: 1 }, [{ op: 'test', path: '', value: { a: 1 } }])).toEqual({ a: 1 });
    expect(patch({ a: 1 }, [{ op: 'copy', from: '', path: '/self' }])).toEqual({ a: 1, self: { a: 1 } });
    expect(errorOf(() => patch({ a: 1 }, [{ op: 'remove', path: '' }])).code).toBe('PATCH_FAILED');
  });

  it('handles array indexes per RFC 6901 and 6902', () => {
    expect(patch([1, 2], [{ op: 'add', path: '/2', value: 3 }])).toEqual([1, 2, 3]);
    expect(patch([1, 2], [{ op: 'add', path: '/0', value: 0 }])).toEqual([0, 1, 2]);
    expect(patch([1, 2], [{ op: 'replace', path: '/1', value: 9 }])).toEqual([1, 9]);
    for (const ops of [
      [{ op: 'add', path: '/3', value: 3 }],
      [{ op: 'add', path: '/01', value: 3 }],
      [{ op: 'add', path: '/-1', value: 3 }],
      [{ op: 'remove', path: '/2' }],
      [{ op: 'remove', path: '/-' }],
      [{ op: 'replace', path: '/-', value: 1 }],
      [{ op: 'test', path: '/-', value: 1 }],
      [{ op: 'test', path: '/x', value: 1 }],
    ]) {
      expect(errorOf(() => patch([1, 2], ops)).code, JSON.stringify(ops)).toBe('PATCH_FAILED');
    }
  });

  it('fails when a path does not exist for remove, replace, test and from', () => {
    for (const op of [
      { op: 'remove', path: '/x' },
      { op: 'replace', path: '/x', value: 1 },
      { op: 'test', path: '/x', value: 1 },
      { op: 'move', from: '/x', path: '/y' },
      { op: 'copy', from: '/x', path: '/y' },
      { op: 'add', path: '/a/b/c', value: 1 },
      { op: 'add', path: '/s/x', value: 1 },
    ]) {
      expect(errorOf(() => patch({ a: {}, s: 'str' }, [op])).code, JSON.stringify(op)).toBe('PATCH_FAILED');
    }
  });

  it('moves and copies', () => {
    expect(patch({ a: { b: 1 } }, [{ op: 'move', from: '/a', path: '/a' }])).toEqual({ a: { b: 1 } });
    expect(patch({ a: { b: 1 } }, [{ op: 'move', from: '/a/b', path: '/c' }])).toEqual({ a: {}, c: 1 });
    expect(patch({ a: [1, 2, 3] }, [{ op: 'move', from: '/a/0', path: '/a/-' }])).toEqual({ a: [2, 3, 1] });
    const out = patch({ a: { b: [1] } }, [
      { op: 'copy', from: '/a', path: '/c' },
      { op: 'add', path: '/c/b/-', value: 2 },
    ]);
    expect(out).toEqual({ a: { b: [1] }, c: { b: [1, 2] } });
    expect(errorOf(() => applyPatch({ a: { b: 1 } }, [{ op: 'move', from: '/a', path: '/a/b' }])).code).toBe(
      'PATCH_FAILED',
    );
  });

  it('tests with deep JSON equality', () => {
    const doc = { o: { x: 1, y: [1, { z: null }] } };
    expect(patch(doc, [{ op: 'test', path: '/o', value: { y: [1, { z: null }], x: 1 } }])).toEqual(doc);
    expect(jsonEqual({ a: 1 }, { a: 1, b: undefined })).toBe(false);
    expect(jsonEqual([1, 2], [2, 1])).toBe(false);
    expect(jsonEqual(null, {})).toBe(false);
    expect(jsonEqual({}, [])).toBe(false);
    expect(errorOf(() => patch(doc, [{ op: 'test', path: '/o/y', value: [1] }])).code).toBe('PATCH_FAILED');
  });
});

describe('checkPatch', () => {
  it('answers the ops of a valid patch', () => {
    const ops = [
      { op: 'add', path: '/a', value: null },
      { op: 'remove', path: '/a' },
      { op: 'replace', path: '/b~0c~1d', value: [1] },
      { op: 'move', from: '/x', path: '/y' },
      { op: 'copy', from: '/x', path: '/y' },
      { op: 'test', path: '', value: {} },
    ];
    expect(checkPatch(ops)).toEqual(ops);
    expect(checkPatch([])).toEqual([]);
  });

  it.each([
    ['not an array', { op: 'add', path: '/a', value: 1 }, 'must be an array'],
    ['an op that is no object', [1], 'op 0'],
    ['an unknown op', [{ op: 'merge', path: '/a' }], '"op" must be one of'],
    ['no op', [{ path: '/a' }], '"op" must be one of'],
    ['no path', [{ op: 'remove' }], '"path" must be a string'],
    ['a path not a pointer', [{ op: 'remove', path: 'a' }], 'is not a JSON Pointer'],
    ['a bad escape', [{ op: 'remove', path: '/a~2' }], 'is not a JSON Pointer'],
    ['a trailing ~', [{ op: 'remove', path: '/a~' }], 'is not a JSON Pointer'],
    ['no value on add', [{ op: 'add', path: '/a' }], 'needs a "value"'],
    ['undefined value', [{ op: 'replace', path: '/a', value: undefined }], 'must be JSON'],
    ['a NaN value', [{ op: 'test', path: '/a', value: Number.NaN }], 'must be JSON'],
    ['no from on move', [{ op: 'move', path: '/a' }], 'needs a "from"'],
    ['a bad from', [{ op: 'copy', from: 'x', path: '/a' }], '"from" "x" is not a JSON Pointer'],
    ['value on remove', [{ op: 'remove', path: '/a', value: 1 }], 'member "value" is not allowed'],
    ['from on add', [{ op: 'add', path: '/a', value: 1, from: '/b' }], 'member "from" is not allowed'],
    ['__proto__', [{ op: 'add', path: '/__proto__/x', value: 1 }], '"__proto__"'],
    ['constructor', [{ op: 'add', path: '/a/constructor', value: 1 }], '"constructor"'],
    ['prototype in from', [{ op: 'copy', from: '/prototype', path: '/a' }], '"prototype"'],
    ['a move into its own child', [{ op: 'move', from: '/a', path: '/a/b' }], 'its own child'],
  ])('refuses %s', (_name, input, fragment) => {
    const e = errorOf(() => checkPatch(input));
    expect(e.code).toBe('INVALID_PATCH');
    expect(e.errorClass).toBe('validation');
    expect(e.message).toContain(fragment);
    expect(e.suggestion.length).toBeGreaterThan(10);
  });

  it('names the index of the bad op', () => {
    const e = errorOf(() =>
      checkPatch([
        { op: 'add', path: '/a', value: 1 },
        { op: 'add', path: '/b', value: 1 },
        { op: 'nope', path: '/c' },
      ]),
    );
    expect(e.message).toContain('op 2');
    expect(e.details).toMatchObject({ op_index: 2 });
  });

  it(`refuses more than ${MAX_PATCH_OPS} ops`, () => {
    const ops = Array.from({ length: MAX_PATCH_OPS + 1 }, () => ({ op: 'test', path: '', value: 1 }));
    expect(errorOf(() => checkPatch(ops)).message).toContain(`at most ${MAX_PATCH_OPS}`);
    expect(checkPatch(ops.slice(1))).toHaveLength(MAX_PATCH_OPS);
  });

  it('escapes ~1 before ~0 (so "~01" is "~1", not "/")', () => {
    expect(patch({ '~1': 1 }, [{ op: 'remove', path: '/~01' }])).toEqual({});
    expect(patch({}, [{ op: 'add', path: '/a~1b', value: 1 }])).toEqual({ 'a/b': 1 });
    expect(patch({}, [{ op: 'add', path: '/', value: 1 }])).toEqual({ '': 1 });
  });
});

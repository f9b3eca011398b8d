/**
 * RFC 6902 JSON Patch over RFC 6901 JSON Pointers: our own, small and strict.
 * `checkPatch` checks a patch's shape once (when a policy is defined);
 * `applyPatch` applies a checked patch to a copy of a document, all or nothing.
 */
import { CairnError } from './errors.js';

export type JsonPatchOp =
  | { op: 'add' | 'replace' | 'test'; path: string; value: unknown }
  | { op: 'remove'; path: string }
  | { op: 'move' | 'copy'; from: string; path: string };

export type JsonPatchOpName = JsonPatchOp['op'];

/** The most operations one patch may hold. */
export const MAX_PATCH_OPS = 100;

const MAX_VALUE_DEPTH = 64;

/** The members each operation has (RFC 6902 §4); any other member is refused. */
const MEMBERS: Record<JsonPatchOpName, readonly string[]> = {
  add: ['op', 'path', 'value'],
  remove: ['op', 'path'],
  replace: ['op', 'path', 'value'],
  move: ['op', 'from', 'path'],
  copy: ['op', 'from', 'path'],
  test: ['op', 'path', 'value'],
};

/** Tokens that would reach an object's prototype chain if a consumer used them as keys. */
const FORBIDDEN_TOKENS = new Set(['__proto__', 'constructor', 'prototype']);

const ARRAY_INDEX = /^(0|[1-9][0-9]*)$/;

function invalid(index: number | null, problem: string, suggestion?: string): CairnError {
  return new CairnError({
    code: 'INVALID_PATCH',
    class: 'validation',
    message:
      index === null ? `Invalid JSON Patch: ${problem}` : `Invalid JSON Patch, op ${index}: ${problem}`,
    details: index === null ? { problem } : { op_index: index, problem },
    suggestion:
      suggestion ??
      'Send an RFC 6902 JSON Patch: an array of {"op": "add"|"remove"|"replace"|"move"|"copy"|"test", "path": "/a/b", …} with "value" for add, replace and test and "from" for move and copy.',
  });
}

function failed(index: number, op: JsonPatchOp, problem: string): CairnError {
  return new CairnError({
    code: 'PATCH_FAILED',
    class: 'validation',
    message: `JSON Patch op ${index} (${op.op} "${op.path}") failed: ${problem}`,
    details: { op_index: index, op: op.op, path: op.path, problem },
    suggestion:
      'Make the patch match the document it applies to: paths of remove, replace, test, move and copy must exist, array indexes must be in range, and a test must equal the value at its path.',
  });
}

/** Splits an RFC 6901 pointer into unescaped tokens; `null` when it is not a valid pointer. */
function parsePointer(pointer: string): string[] | null {
  if (pointer === '') return [];
  if (!pointer.startsWith('/')) return null;
  const tokens: string[] = [];
  for (const raw of pointer.slice(1).split('/')) {
    // `~` must be followed by 0 or 1 (RFC 6901 §3).
    if (/~(?![01])/.test(raw)) return null;
    tokens.push(raw.replace(/~1/g, '/').replace(/~0/g, '~'));
  }
  return tokens;
}

function isJsonValue(v: unknown, depth: number): boolean {
  if (depth > MAX_VALUE_DEPTH) return false;
  if (v === null || typeof v === 'string' || typeof v === 'boolean') return true;
  if (typeof v === 'number') return Number.isFinite(v);
  if (Array.isArray(v)) return v.every((x) => isJsonValue(x, depth + 1));
  if (typeof v === 'object') {
    const proto = Object.getPrototypeOf(v) as unknown;
    if (proto !== Object.prototype && proto !== null) return false;
    return Object.values(v).every((x) => isJsonValue(x, depth + 1));
  }
  return false;
}

function isProperPrefix(prefix: string[], of: string[]): boolean {
  return prefix.length < of.length && prefix.every((t, i) => t === of[i]);
}

function checkPointer(index: number, member: 'path' | 'from', v: unknown): string[] {
  if (typeof v !== 'string') throw invalid(index, `"${member}" must be a string (a JSON Pointer)`);
  const tokens = parsePointer(v);
  if (tokens === null) {
    throw invalid(
      index,
      `"${member}" ${JSON.stringify(v)} is not a JSON Pointer`,
      'A JSON Pointer (RFC 6901) is "" (the whole document) or "/"-separated tokens starting with "/", with "~" written "~0" and "/" written "~1", e.g. "/limits/max~1min".',
    );
  }
  const bad = tokens.find((t) => FORBIDDEN_TOKENS.has(t));
  if (bad !== undefined) {
    throw invalid(
      index,
      `"${member}" ${JSON.stringify(v)} names "${bad}", which is refused`,
      'Paths may not contain the tokens "__proto__", "constructor" or "prototype"; rename the field.',
    );
  }
  return tokens;
}

/** Checks a patch's shape; answers it typed, or throws INVALID_PATCH naming the op and the problem. */
export function checkPatch(patch: unknown): JsonPatchOp[] {
  if (!Array.isArray(patch)) throw invalid(null, 'a patch must be an array of operations');
  if (patch.length > MAX_PATCH_OPS) {
    throw invalid(
      null,
      `a patch holds at most ${MAX_PATCH_OPS} operations, this one has ${patch.length}`,
      `Split the change or replace a whole object with one "replace" (at most ${MAX_PATCH_OPS} operations).`,
    );
  }
  return patch.map((raw: unknown, i): JsonPatchOp => {
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
      throw invalid(i, 'an operation must be an object');
    }
    const o = raw as Record<string, unknown>;
    const op = o.op;
    if (typeof op !== 'string' || !Object.hasOwn(MEMBERS, op)) {
      throw invalid(
        i,
        `"op" must be one of add, remove, replace, move, copy, test (got ${JSON.stringify(op) ?? 'nothing'})`,
      );
    }
    const name = op as JsonPatchOpName;
    const allowed = MEMBERS[name];
    for (const k of Object.keys(o)) {
      if (!allowed.includes(k)) {
        throw invalid(
          i,
          `member "${k}" is not allowed on a ${name} operation`,
          `A ${name} operation has exactly the members ${allowed.map((m) => `"${m}"`).join(', ')}; remove "${k}".`,
        );
      }
    }
    const path = o.path;
    const pathTokens = checkPointer(i, 'path', path);
    const p = path as string;
    switch (name) {
      case 'remove':
        return { op: name, path: p };
      case 'add':
      case 'replace':
      case 'test': {
        if (!Object.hasOwn(o, 'value')) throw invalid(i, `a ${name} operation needs a "value"`);
        if (!isJsonValue(o.value, 0)) {
          throw invalid(i, `"value" must be JSON (no undefined, functions, NaN or Infinity)`);
        }
        return { op: name, path: p, value: o.value };
      }
      case 'move':
      case 'copy': {
        if (!Object.hasOwn(o, 'from')) throw invalid(i, `a ${name} operation needs a "from"`);
        const fromTokens = checkPointer(i, 'from', o.from);
        if (name === 'move' && isProperPrefix(fromTokens, pathTokens)) {
          throw invalid(
            i,
            `cannot move "${String(o.from)}" into its own child "${p}"`,
            'The "from" of a move must not be a prefix of its "path" (RFC 6902 §4.4); copy it instead.',
          );
        }
        return { op: name, from: o.from as string, path: p };
      }
    }
  });
}

// --- applying ---------------------------------------------------------------

type Container = Record<string, unknown> | unknown[];

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Deep equality with JSON semantics: object members in any order, arrays in order. */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a)) {
    return Array.isArray(b) && a.length === b.length && a.every((x, i) => jsonEqual(x, b[i]));
  }
  if (isObject(a)) {
    if (!isObject(b)) return false;
    const ka = Object.keys(a);
    if (ka.length !== Object.keys(b).length) return false;
    return ka.every((k) => Object.hasOwn(b, k) && jsonEqual(a[k], b[k]));
  }
  return false;
}

class Fail extends Error {}

function tokensOf(pointer: string): string[] {
  const tokens = parsePointer(pointer);
  if (tokens === null) throw new Fail(`${JSON.stringify(pointer)} is not a JSON Pointer`);
  const bad = tokens.find((t) => FORBIDDEN_TOKENS.has(t));
  if (bad !== undefined) throw new Fail(`the token "${bad}" is refused`);
  return tokens;
}

function describe(tokens: string[], n: number): string {
  return tokens
    .slice(0, n)
    .map((t) => '/' + t.replace(/~/g, '~0').replace(/\//g, '~1'))
    .join('');
}

/** An existing array index (for reads, remove and replace). */
function existingIndex(arr: unknown[], token: string, tokens: string[], n: number): number {
  if (!ARRAY_INDEX.test(token)) throw new Fail(`"${describe(tokens, n)}" is not an index of an array`);
  const i = Number(token);
  if (i >= arr.length) {
    throw new Fail(`index ${token} at "${describe(tokens, n)}" is out of range (length ${arr.length})`);
  }
  return i;
}

/** The value at `tokens`; fails when it does not exist. */
function get(doc: unknown, tokens: string[]): unknown {
  let cur = doc;
  for (let n = 0; n < tokens.length; n++) {
    const t = tokens[n] as string;
    if (Array.isArray(cur)) cur = cur[existingIndex(cur, t, tokens, n + 1)];
    else if (isObject(cur)) {
      if (!Object.hasOwn(cur, t)) throw new Fail(`"${describe(tokens, n + 1)}" does not exist`);
      cur = cur[t];
    } else
      throw new Fail(`"${describe(tokens, n + 1)}" does not exist (its parent is not an object or array)`);
  }
  return cur;
}

/** The container holding the last token of a non-empty pointer, and that token. */
function parentOf(doc: unknown, tokens: string[]): [Container, string] {
  const parent = get(doc, tokens.slice(0, -1));
  if (!Array.isArray(parent) && !isObject(parent)) {
    throw new Fail(`the parent of "${describe(tokens, tokens.length)}" is not an object or array`);
  }
  return [parent, tokens[tokens.length - 1] as string];
}

/** Adds `value` at `tokens`, answering the new document (the root may be replaced). */
function add(doc: unknown, tokens: string[], value: unknown): unknown {
  if (tokens.length === 0) return value;
  const [parent, t] = parentOf(doc, tokens);
  if (Array.isArray(parent)) {
    if (t === '-') parent.push(value);
    else {
      if (!ARRAY_INDEX.test(t)) {
        throw new Fail(`"${describe(tokens, tokens.length)}" is not an index of an array (or "-")`);
      }
      const i = Number(t);
      if (i > parent.length) {
        throw new Fail(`index ${t} is out of range for an add (array length ${parent.length})`);
      }
      parent.splice(i, 0, value);
    }
  } else parent[t] = value;
  return doc;
}

function remove(doc: unknown, tokens: string[]): unknown {
  if (tokens.length === 0) throw new Fail('the whole document cannot be removed');
  const [parent, t] = parentOf(doc, tokens);
  if (Array.isArray(parent)) parent.splice(existingIndex(parent, t, tokens, tokens.length), 1);
  else {
    if (!Object.hasOwn(parent, t)) throw new Fail(`"${describe(tokens, tokens.length)}" does not exist`);
    delete parent[t];
  }
  return doc;
}

function replace(doc: unknown, tokens: string[], value: unknown): unknown {
  if (tokens.length === 0) return value;
  const [parent, t] = parentOf(doc, tokens);
  if (Array.isArray(parent)) parent[existingIndex(parent, t, tokens, tokens.length)] = value;
  else {
    if (!Object.hasOwn(parent, t)) throw new Fail(`"${describe(tokens, tokens.length)}" does not exist`);
    parent[t] = value;
  }
  return doc;
}

/**
 * Applies `patch` to a deep copy of `doc` (RFC 6902 semantics, operations in
 * order, all or nothing) and answers the new document; `doc` and the patch's
 * values are never changed nor shared with the result. Throws PATCH_FAILED
 * naming the first operation that failed.
 */
export function applyPatch(doc: unknown, patch: JsonPatchOp[]): unknown {
  let out: unknown = structuredClone(doc);
  patch.forEach((op, i) => {
    try {
      const path = tokensOf(op.path);
      switch (op.op) {
        case 'add':
          out = add(out, path, structuredClone(op.value));
          break;
        case 'remove':
          out = remove(out, path);
          break;
        case 'replace':
          out = replace(out, path, structuredClone(op.value));
          break;
        case 'move': {
          const from = tokensOf(op.from);
          if (isProperPrefix(from, path)) throw new Fail(`"${op.from}" cannot be moved into its own child`);
          const value = get(out, from);
          if (from.length === path.length && from.every((t, n) => t === path[n])) break;
          out = add(remove(out, from), path, value);
          break;
        }
        case 'copy': {
          const value = structuredClone(get(out, tokensOf(op.from)));
          out = add(out, path, value);
          break;
        }
        case 'test': {
          const actual = get(out, path);
          if (!jsonEqual(actual, op.value)) {
            throw new Fail(`the value at "${op.path}" is ${JSON.stringify(actual)}, not the one tested`);
          }
          break;
        }
        default: {
          const unknownOp: { op?: unknown } = op;
          throw new Fail(`unknown op ${JSON.stringify(unknownOp.op)}`);
        }
      }
    } catch (e) {
      if (e instanceof Fail) throw failed(i, op, e.message);
      throw e;
    }
  });
  return out;
}

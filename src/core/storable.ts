/**
 * What a run record can hold. PostgreSQL's jsonb (and text) cannot store the
 * NUL character (U+0000: `22P05 unsupported Unicode escape sequence`) nor a
 * lone UTF-16 surrogate, and JSON has no Infinity or NaN. Whatever a handler
 * returns, logs or throws crosses this boundary before it reaches a shared
 * statement, so one tenant's value can never fail a statement that carries
 * other tenants' runs.
 *
 * The rule (docs/architecture.md#run-record-boundary):
 * - An **output** that holds such a value is refused (the type's
 *   `*_INVALID_OUTPUT`), with the JSON path of the first offending value. An
 *   output is data that callers and later steps consume: silently changing a
 *   byte of it would make the record lie about what the handler returned.
 * - **Text we record about the run** (log lines, error messages, stacks,
 *   evidence, event data) is escaped instead: NUL and lone surrogates become
 *   U+FFFD (as invalid UTF-8 already does when a stream is decoded),
 *   non-finite numbers become null, and nesting past MAX_DEPTH is cut. Evidence
 *   must land even when the program misbehaved — that is when it matters.
 */

/** Deepest nesting a run record keeps (jsonb parsing recurses; PGlite's stack is small). */
export const MAX_DEPTH = 64;

// eslint-disable-next-line no-control-regex
const UNSTORABLE = /\u0000|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
// eslint-disable-next-line no-control-regex
const UNSTORABLE_G = /\u0000|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/** Why a value cannot be stored as it is, and where. */
export interface Unstorable {
  path: string;
  reason: string;
}

function describeString(s: string): string {
  const m = UNSTORABLE.exec(s)!;
  return m[0] === '\u0000'
    ? `holds a NUL character (U+0000) at offset ${m.index}`
    : `holds a lone UTF-16 surrogate (U+${m[0].charCodeAt(0).toString(16).toUpperCase()}) at offset ${m.index}`;
}

function key(path: string, k: string): string {
  return /^[A-Za-z_$][\w$]*$/.test(k) ? `${path}.${k}` : `${path}[${JSON.stringify(storableText(k))}]`;
}

interface Frame {
  v: unknown;
  depth: number;
  parent: Frame | null;
  key: string | number;
}

/** The JSON path of a frame, built only when something is reported there. */
function pathOf(f: Frame | null): string {
  const keys: (string | number)[] = [];
  for (let x = f; x && x.parent; x = x.parent) keys.push(x.key);
  let path = '$';
  for (const k of keys.reverse()) path = typeof k === 'number' ? `${path}[${k}]` : key(path, k);
  return path;
}

/**
 * The first value that a run record cannot hold as it is, or undefined when
 * all of `value` can be stored. Iterative: a hostile depth cannot overflow the stack.
 */
export function findUnstorable(value: unknown, maxDepth = MAX_DEPTH): Unstorable | undefined {
  const stack: Frame[] = [{ v: value, depth: 0, parent: null, key: '' }];
  while (stack.length > 0) {
    const f = stack.pop()!;
    const v = f.v;
    if (typeof v === 'string') {
      if (UNSTORABLE.test(v)) return { path: pathOf(f), reason: `the string ${describeString(v)}` };
    } else if (typeof v === 'number') {
      if (!Number.isFinite(v))
        return {
          path: pathOf(f),
          reason: `the number ${v} is outside what a JSON number holds here (±1.8e308, no NaN)`,
        };
    } else if (typeof v === 'bigint') {
      return { path: pathOf(f), reason: 'a bigint has no JSON form' };
    } else if (v !== null && typeof v === 'object') {
      if (f.depth >= maxDepth) return { path: pathOf(f), reason: `nesting deeper than ${maxDepth} levels` };
      if (Array.isArray(v)) {
        for (let i = v.length - 1; i >= 0; i--)
          stack.push({ v: v[i], depth: f.depth + 1, parent: f, key: i });
      } else {
        for (const [k, x] of Object.entries(v)) {
          if (UNSTORABLE.test(k))
            return {
              path: pathOf({ v: x, depth: 0, parent: f, key: k }),
              reason: `the key ${describeString(k)}`,
            };
          stack.push({ v: x, depth: f.depth + 1, parent: f, key: k });
        }
      }
    } else if (v !== undefined && v !== null && typeof v !== 'boolean') {
      return { path: pathOf(f), reason: `a ${typeof v} has no JSON form` };
    }
  }
  return undefined;
}

/** Text as a run record can hold it: NUL and lone surrogates become U+FFFD. */
export function storableText(s: string): string {
  return UNSTORABLE.test(s) ? s.replace(UNSTORABLE_G, '\ufffd') : s;
}

/**
 * A copy of `value` that a run record can hold: strings (keys too) through
 * `storableText`, non-finite numbers and anything JSON has no form for as
 * null, nesting past `maxDepth` replaced by a marker string. Returns `value`
 * itself when nothing needs changing (the common case costs one walk).
 */
export function storable<T>(value: T, maxDepth = MAX_DEPTH): T {
  if (findUnstorable(value, maxDepth) === undefined) return value;
  const copy = (v: unknown, depth: number): unknown => {
    if (typeof v === 'string') return storableText(v);
    if (typeof v === 'number') return Number.isFinite(v) ? v : null;
    if (typeof v === 'boolean' || v === null) return v;
    if (typeof v !== 'object') return null;
    if (depth >= maxDepth) return `[nesting deeper than ${maxDepth} levels cut]`;
    if (Array.isArray(v)) return v.map((x) => copy(x, depth + 1));
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (x !== undefined) out[storableText(k)] = copy(x, depth + 1);
    return out;
  };
  return copy(value, 0) as T;
}

/** The message of an output refused by `findUnstorable`. */
export function unstorableOutputMessage(bad: Unstorable): string {
  return (
    `The handler's return value cannot be stored: at ${bad.path}, ${bad.reason}. ` +
    'Outputs are kept exactly as returned, so Cairn refuses them rather than change them; ' +
    'encode binary data as base64 (or hex) and strip NUL characters.'
  );
}

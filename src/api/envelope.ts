import { isPlainObject } from '../core/json.js';

const ENVELOPE_KEYS = ['payload', 'data', 'input'] as const;

/** Strips internal metadata: top-level keys that start with `_` (e.g. `_meta`, `_trace`). */
function stripInternal(v: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(v).filter(([k]) => !k.startsWith('_')));
}

/**
 * Seed 004's input contract: the platform unwraps an envelope (`payload`,
 * `data` or `input` as the only key, holding an object) and strips internal
 * metadata, so a handler always sees the clean payload. A body with other
 * keys beside the envelope key is passed through as it is.
 */
export function unwrapEnvelope(body: unknown): unknown {
  if (!isPlainObject(body)) return body;
  let cur = stripInternal(body);
  for (let depth = 0; depth < 2; depth++) {
    const keys = Object.keys(cur);
    const only = keys.length === 1 ? keys[0]! : undefined;
    if (!only || !(ENVELOPE_KEYS as readonly string[]).includes(only)) break;
    const inner = cur[only];
    if (!isPlainObject(inner)) break;
    cur = stripInternal(inner);
  }
  return cur;
}

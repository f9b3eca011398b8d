import { parseAllDocuments } from 'yaml';
import { CairnError } from './core/errors.js';
import { isPlainObject } from './core/json.js';

/** Parses one or more YAML documents (`---`) into element definitions, with typed errors that name the line. */
export function parseElementsYaml(text: string, file = 'input'): Record<string, unknown>[] {
  const docs = parseAllDocuments(text, { prettyErrors: true, uniqueKeys: true });
  const out: Record<string, unknown>[] = [];
  for (const doc of Array.isArray(docs) ? docs : [docs]) {
    const err = doc.errors[0];
    if (err) {
      const line = err.linePos?.[0];
      throw new CairnError({
        code: 'INVALID_YAML',
        class: 'validation',
        message: `${file}${line ? `:${line.line}:${line.col}` : ''}: ${err.message.split('\n')[0]}`,
        suggestion: 'Fix the YAML at the position given (indentation and quoting are the usual causes).',
      });
    }
    let v: unknown;
    try {
      v = doc.toJS({ maxAliasCount: 100 });
    } catch (e) {
      // Unresolved aliases and alias bombs surface here, not in doc.errors.
      throw new CairnError({
        code: 'INVALID_YAML',
        class: 'validation',
        message: `${file}: ${(e as Error).message.split('\n')[0]}`,
        suggestion: 'Define every anchor (&name) before its alias (*name), and avoid deeply nested aliases.',
      });
    }
    if (v === null || v === undefined) continue;
    if (!isPlainObject(v)) {
      throw new CairnError({
        code: 'INVALID_YAML',
        class: 'validation',
        message: `${file}: each document must be a mapping with element_type, slug and spec.`,
        suggestion: 'See examples/add-one.yaml for the shape.',
      });
    }
    out.push(v);
  }
  if (out.length === 0) {
    throw new CairnError({
      code: 'INVALID_YAML',
      class: 'validation',
      message: `${file}: no element definitions found.`,
      suggestion: 'Write element_type, slug and spec, as in examples/add-one.yaml.',
    });
  }
  return out;
}

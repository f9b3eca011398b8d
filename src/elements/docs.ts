import { jsonSchema } from './schema.js';
import { operationsOf } from './registry.js';
import type { ElementTypeDecl } from './types.js';

// A JSON Schema as zod renders it, read field by field.
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- JSON Schema is open-ended; every read is guarded
type Schema = Record<string, any>;

/** The object schema a field holds, if any: itself, a record's values, or a list's items (anyOf unwrapped). */
function objectOf(v: Schema): { schema: Schema; suffix: string } | undefined {
  const alt = (v.anyOf ?? v.oneOf ?? []).find((x: Schema) => x.type !== 'null');
  const s: Schema = alt && !v.type ? alt : v;
  if (s.type === 'object' && s.properties) return { schema: s, suffix: '' };
  if (s.type === 'object' && typeof s.additionalProperties === 'object' && s.additionalProperties.properties)
    return { schema: s.additionalProperties, suffix: '.<name>' };
  if (s.type === 'array' && s.items?.type === 'object' && s.items.properties)
    return { schema: s.items, suffix: '[]' };
  return undefined;
}

function typeOf(v: Schema): string {
  if (v.type) return Array.isArray(v.type) ? v.type.join(' or ') : String(v.type);
  const alts = (v.anyOf ?? v.oneOf ?? []) as Schema[];
  if (alts.length) return [...new Set(alts.map(typeOf))].join(' or ');
  if (v.enum) return 'enum';
  return 'any';
}

function notes(v: Schema): string {
  const range = [
    v.minimum !== undefined ? `≥ ${v.minimum}` : '',
    v.maximum !== undefined ? `≤ ${v.maximum}` : '',
    v.minLength !== undefined ? `length ≥ ${v.minLength}` : '',
    v.maxLength !== undefined ? `length ≤ ${v.maxLength}` : '',
    v.enum ? `one of ${v.enum.map((e: unknown) => `\`${JSON.stringify(e)}\``).join(', ')}` : '',
  ].filter(Boolean);
  return [v.description ?? '', ...range].filter(Boolean).join('; ');
}

/** Every field, nested ones too (`source.type`, `columns.<name>.element`), a row each. */
function rows(schema: Schema, prefix = '', depth = 0): string[] {
  const p = (schema.properties ?? {}) as Record<string, Schema>;
  const req = new Set<string>(schema.required ?? []);
  return Object.entries(p).flatMap(([k, v]) => {
    const name = prefix + k;
    const row = `| \`${name}\` | ${typeOf(v)} | ${req.has(k) && v.default === undefined ? 'yes' : ''} | ${v.default !== undefined ? `\`${JSON.stringify(v.default)}\`` : ''} | ${notes(v)} |`;
    const inner = depth < 4 ? objectOf(v) : undefined;
    return inner ? [row, ...rows(inner.schema, `${name}${inner.suffix}.`, depth + 1)] : [row];
  });
}

function props(schema: Schema): string {
  return ['| field | type | required | default | notes |', '|---|---|---|---|---|', ...rows(schema)].join(
    '\n',
  );
}

/** The reference page of a type, generated from its declaration (docs/elements/<type>.md). */
export function renderTypeDoc(t: ElementTypeDecl): string {
  const ops = operationsOf(t);
  return `# \`${t.type}\` — ${t.title}

<!-- Generated from the declaration of the \`${t.type}\` type (src/elements/registry.ts lists them) by \`npm run docs\`; a test keeps it in sync. -->

Category: **${t.category}**

${t.description}

## Spec

${props(jsonSchema(t.spec))}

## Operations

Each at \`/api/{circle}/{slug}/ops/<path>\`.

| op | method | path | auth | creates a run | price (micro-credits) | summary |
|---|---|---|---|---|---|---|
${ops.map((o) => `| ${o.name} | ${o.method} | \`${o.path}\` | ${o.auth} | ${o.createsRun ? 'yes' : ''} | ${o.price ?? ''} | ${o.summary} |`).join('\n')}

## Error codes

| code | class | retryable | when | suggestion |
|---|---|---|---|---|
${t.errors.map((e) => `| \`${e.code}\` | ${e.class} | ${e.retryable ? 'yes' : 'no'} | ${e.description} | ${e.suggestion} |`).join('\n')}
${
  t.rules.length
    ? `
## Validation rules

${t.rules.map((r) => `- **${r.level}**: ${r.message}`).join('\n')}
`
    : ''
}`;
}

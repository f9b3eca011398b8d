import { jsonSchema } from './schema.js';
import { operationsOf } from './registry.js';
import type { ElementTypeDecl } from './types.js';

function props(schema: Record<string, any>): string {
  const p = (schema.properties ?? {}) as Record<string, any>;
  const req = new Set<string>(schema.required ?? []);
  const rows = Object.entries(p).map(([k, v]) => {
    const range = [
      v.minimum !== undefined ? `≥ ${v.minimum}` : '',
      v.maximum !== undefined ? `≤ ${v.maximum}` : '',
    ]
      .filter(Boolean)
      .join(', ');
    return `| \`${k}\` | ${v.type ?? 'any'} | ${req.has(k) && v.default === undefined ? 'yes' : ''} | ${v.default !== undefined ? `\`${JSON.stringify(v.default)}\`` : ''} | ${[v.description ?? '', range].filter(Boolean).join('; ')} |`;
  });
  return ['| field | type | required | default | notes |', '|---|---|---|---|---|', ...rows].join('\n');
}

/** The reference page of a type, generated from its declaration (docs/elements/<type>.md). */
export function renderTypeDoc(t: ElementTypeDecl): string {
  const ops = operationsOf(t);
  return `# \`${t.type}\` — ${t.title}

<!-- Generated from src/elements/${t.type}/ by \`npm run docs\`; a test keeps it in sync. -->

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

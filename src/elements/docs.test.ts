import { readFileSync, writeFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { listTypes } from './registry.js';
import { renderTypeDoc } from './docs.js';

// `npm run docs` sets CAIRN_UPDATE_DOCS=1 to regenerate the pages.
it('docs/elements/*.md match the declarations (run `npm run docs` after changing a type)', () => {
  for (const t of listTypes()) {
    const file = new URL(`../../docs/elements/${t.type}.md`, import.meta.url);
    if (process.env.CAIRN_UPDATE_DOCS === '1') writeFileSync(file, renderTypeDoc(t));
    const committed = readFileSync(file, 'utf8');
    expect(committed).toBe(renderTypeDoc(t));
    for (const e of t.errors) expect(committed).toContain(e.code);
  }
});

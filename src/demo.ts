import { typeLookup } from './elements/registry.js';
import { readFile } from 'node:fs/promises';
import type { Config } from './config.js';
import type { Db } from './db/types.js';
import { createCircle, getCircleBySlug } from './store/circles.js';
import { applyElement, type ElementInput } from './elements/service.js';
import { readBootstrapToken } from './runtime.js';
import { parseElementsYaml } from './yaml.js';
import { hasRows, insertRows } from './elements/table/index.js';

/** src/ and dist/ are both one level under the repo root, where examples/ lives. */
const EXAMPLES = new URL('../examples/', import.meta.url);

/** `serve --demo`: a "demo" circle with the examples applied (idempotent), and how to call them. */
export async function installDemo(db: Db, url: string, config: Config): Promise<string> {
  const circle = (await getCircleBySlug(db, 'demo')) ?? (await createCircle(db, 'demo', 1_000_000_000));
  for (const f of [
    'add-one.yaml',
    'notes.yaml',
    'my-greeter.yaml',
    'hello-python.yaml',
    'people.yaml',
    'enrich.yaml',
  ]) {
    const text = await readFile(new URL(f, EXAMPLES), 'utf8');
    for (const def of parseElementsYaml(text, f))
      await applyElement(db, circle, def as unknown as ElementInput, 'demo', typeLookup);
  }
  // A few rows for the people table, once.
  if (!(await hasRows(db, circle, 'people')))
    await insertRows(
      db,
      circle,
      'people',
      ['Alice', 'Bob', 'Chloé', 'Dmitri', 'Eve', 'Farah'].map((name) => ({ name })),
    );
  const token = (await readBootstrapToken(config)) ?? '<your instance-admin token>';
  return `
Demo circle "demo" is ready: sql elements add-one, notes-setup, add-note, list-notes;
go-fn my-greeter (seed 004's Quick Start), python hello-python, and a table "people"
with a computed column "greeting".
Try:
  curl -s -X POST ${url}/api/demo/add-one/ops/invoke \\
    -H 'Authorization: Bearer ${token}' -H 'Content-Type: application/json' -d '{"params": [41]}'
  ./bin/cairn invoke add-one --circle demo -d '{"params": [41]}'
  ./bin/cairn invoke my-greeter --circle demo -d '{"name": "Alice"}'   # the first call compiles it
  ./bin/cairn columns run people greeting --follow --circle demo   # a batch run, one item per row
  ./bin/cairn wallet --circle demo
  ./bin/cairn runs list --circle demo
`;
}

import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT } from './helpers/bin.js';

const run = promisify(execFile);
const DEPCRUISE = join(ROOT, 'node_modules', '.bin', 'depcruise');
const CONFIG = join(ROOT, '.dependency-cruiser.cjs');

async function cruise(cwd: string): Promise<{ code: number; out: string }> {
  try {
    const r = await run(DEPCRUISE, ['src', '--config', CONFIG, '--output-type', 'err'], { cwd });
    return { code: 0, out: r.stdout };
  } catch (e: any) {
    return { code: e.code, out: String(e.stdout) + String(e.stderr) };
  }
}

/** Issue 10: `npm run deps` (part of `npm run check` and the test command) fails on a cycle or an upward import. */
describe('the dependency check', () => {
  const dirs: string[] = [];
  afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

  function tree(files: Record<string, string>): string {
    const dir = mkdtempSync(join(tmpdir(), 'cairn-deps-'));
    dirs.push(dir);
    writeFileSync(
      join(dir, 'tsconfig.json'),
      JSON.stringify({ compilerOptions: { module: 'nodenext', strict: true } }),
    );
    for (const [f, text] of Object.entries(files)) {
      mkdirSync(join(dir, f, '..'), { recursive: true });
      writeFileSync(join(dir, f), text);
    }
    return dir;
  }

  it('passes on src/ as it is', async () => {
    const r = await cruise(ROOT);
    expect(r.out).toMatch(/no dependency violations/);
    expect(r.code).toBe(0);
  }, 60_000);

  it('fails on an import cycle, a store importing the engine, an element importing the engine, a core module doing I/O', async () => {
    const dir = tree({
      'src/store/a.ts': "import { b } from '../engine/b.js';\nexport const a = () => b;\n",
      'src/engine/b.ts': "import { a } from '../store/a.js';\nexport const b = () => a;\n",
      'src/elements/e.ts': "import { b } from '../engine/b.js';\nexport const e = b;\n",
      'src/core/c.ts': "import { readFileSync } from 'node:fs';\nexport const c = readFileSync;\n",
    });
    const r = await cruise(dir);
    expect(r.code).not.toBe(0);
    for (const rule of ['no-circular', 'store-below-engine', 'elements-below-engine', 'core-is-pure'])
      expect(r.out).toContain(rule);
  }, 60_000);
});

import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, until, type Proc } from '../helpers/bin.js';
import { freePort } from '../helpers/pg-server.js';
import { spawn } from 'node:child_process';

const run = promisify(execFile);

/** The shell lines of README.md's ```sh blocks, but the two set-up commands this test itself stands for. */
export function readmeCommands(text: string): string[] {
  const blocks = [...text.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
  return blocks
    .join('\n')
    .split('\n')
    .filter((l) => !/^\.\/scripts\/(demo|test)\b/.test(l));
}

/**
 * Issue 10: every command README.md shows runs as written on a fresh clone
 * after `./scripts/demo` — the real script, the real server on the embedded
 * database, the real CLI and curl, one shell, `set -euo pipefail`.
 */
describe('README.md, as written', () => {
  let dir: string;
  let port: number;
  let demo: Proc;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cairn-readme-'));
    port = await freePort();
    const child = spawn('./scripts/demo', [], {
      cwd: ROOT,
      env: { ...process.env, CAIRN_PORT: String(port), CAIRN_DATA: dir, CAIRN_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    demo = { child, output: () => out, exited: new Promise((r) => child.on('exit', (c) => r(c))) };
    await until(async () => /Cairn is serving on/.test(out) || undefined, 180_000, `./scripts/demo\n${out}`);
  }, 200_000);

  afterAll(async () => {
    demo?.child.kill('SIGTERM');
    await demo?.exited;
    rmSync(dir, { recursive: true, force: true });
  });

  it('every command of its sh blocks succeeds', async () => {
    const lines = readmeCommands(readFileSync(join(ROOT, 'README.md'), 'utf8'));
    expect(lines.filter((l) => l.startsWith('./bin/cairn')).length).toBeGreaterThan(15);
    const script = ['set -euo pipefail', 'set -x', ...lines].join('\n');
    const r = await run('bash', ['-c', script], {
      cwd: ROOT,
      env: { ...process.env, CAIRN_PORT: String(port), CAIRN_DATA: dir, NO_COLOR: '1' },
      maxBuffer: 16 * 1024 * 1024,
      timeout: 240_000,
    }).catch((e: { code: number; stdout: string; stderr: string }) => {
      throw new Error(
        `README command failed (exit ${e.code}):\n${e.stderr.slice(-4000)}\n${e.stdout.slice(-2000)}`,
      );
    });
    // What the README promises it prints.
    expect(r.stdout).toMatch(/"n": 42/);
    expect(r.stdout).toMatch(/"status":"succeeded"/); // the curl answer
    expect(r.stdout).toMatch(/Hello, Alice!/);
    expect(r.stdout).toMatch(/Hello, Ada!/);
    expect(r.stdout).toMatch(/"result": 41/); // the workflow, followed to its end
  }, 300_000);
});

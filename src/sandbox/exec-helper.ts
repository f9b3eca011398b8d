import { thrown } from '../core/errors.js';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { setting } from '../config.js';

const SOURCE = fileURLToPath(new URL('../../src/sandbox/exec-helper/helper.c', import.meta.url));

/** Where Cairn keeps what it builds for itself (helpers, the Go caches, function binaries). */
export function cacheRoot(): string {
  // Sandboxes run as other uids and must reach the binaries they run, so the cache
  // lives where every uid can traverse (not under a private data dir such as /root).
  return setting('CAIRN_CACHE_DIR') ?? join(tmpdir(), 'cairn-cache');
}

let built: string | undefined;

/**
 * Builds the helper (C, Debian's gcc) once per source hash, atomically, and
 * returns its path. Static when libc.a is there: no dynamic loader on every run.
 */
export function execHelper(): string {
  if (built && existsSync(built)) return built;
  const src = readFileSync(SOURCE);
  const key = createHash('sha256').update(src).digest('hex').slice(0, 16);
  const dir = join(cacheRoot(), 'helpers');
  const out = join(dir, `cairn-sandbox-exec-${key}`);
  if (!existsSync(out)) {
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    chmodSync(dir, 0o755);
    const tmp = `${out}.${process.pid}.tmp`;
    const cc = setting('CC');
    const compile = (extra: string[]) =>
      execFileSync(cc, ['-O2', '-Wall', ...extra, '-o', tmp, SOURCE], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
    try {
      try {
        compile(['-static']);
      } catch {
        compile([]);
      }
    } catch (caught) {
      const e = thrown(caught);
      rmSync(tmp, { force: true });
      throw new Error(
        `cannot build the sandbox exec helper with ${cc} (install Debian's gcc and libc6-dev): ${String(e?.stderr ?? e?.message ?? e).slice(0, 500)}`,
      );
    }
    chmodSync(tmp, 0o755);
    renameSync(tmp, out);
  }
  built = out;
  return out;
}

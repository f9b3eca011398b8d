import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const BIN = join(ROOT, 'bin', 'cairn');

function newest(dir: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}

/** Black-box tests run the real bin/cairn; build dist/ first if src/ is newer. */
export function ensureBuilt(): void {
  const main = join(ROOT, 'dist', 'cli', 'main.js');
  if (existsSync(main) && statSync(main).mtimeMs >= newest(join(ROOT, 'src'))) return;
  execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' });
}

export interface Proc {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

export function cairn(args: string[], env: Record<string, string | undefined> = {}): Proc {
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd: ROOT,
    env: { ...process.env, CAIRN_LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  return { child, output: () => out, exited };
}

export async function until<T>(
  fn: () => Promise<T | undefined | false>,
  timeoutMs: number,
  what: string,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const v = await fn();
    if (v) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** `cairn serve` on the embedded database in `dir`, with `token` as its bootstrap token; resolves once it serves. */
export async function serveIn(dir: string, token: string): Promise<{ server: Proc; url: string }> {
  const server = cairn(['serve', '--port', '0', '--data', dir], {
    CAIRN_BOOTSTRAP_TOKEN: token,
    DATABASE_URL: undefined,
    CAIRN_LOG_LEVEL: 'warn',
  });
  const url = await until(
    async () => /serving on (http:\/\/\S+)/.exec(server.output())?.[1],
    60_000,
    'cairn serve to start\n' + server.output(),
  );
  return { server, url };
}

/**
 * `cairn worker` processes against the PostgreSQL at `url()`, with short leases so that a
 * killed one's runs are recovered within seconds; `killAll` for afterAll.
 */
export function workerProcs(url: () => string) {
  const procs: Proc[] = [];
  return {
    start(concurrency = 4): Proc {
      const p = cairn(['worker', '--concurrency', String(concurrency)], {
        DATABASE_URL: url(),
        CAIRN_LEASE_MS: '1500',
        CAIRN_POLL_MS: '100',
        CAIRN_SHUTDOWN_GRACE_MS: '300',
      });
      procs.push(p);
      return p;
    },
    killAll(): void {
      for (const p of procs) p.child.kill('SIGKILL');
    },
  };
}

/** Runs the real CLI against `url()` with `token`; answers its exit code and output instead of throwing. */
export function cliAgainst(
  url: () => string,
  token: string,
): (args: string[]) => Promise<{ code: number; out: string; err: string }> {
  const run = promisify(execFile);
  return async (args) => {
    try {
      const r = await run(process.execPath, [BIN, ...args, '--url', url(), '--token', token], {
        cwd: ROOT,
        env: { ...process.env, NO_COLOR: '1' },
      });
      return { code: 0, out: r.stdout, err: r.stderr };
    } catch (caught) {
      const e = caught as { code: number; stdout: string; stderr: string };
      return { code: e.code, out: e.stdout, err: e.stderr };
    }
  };
}

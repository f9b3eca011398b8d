import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Finds Debian's PostgreSQL binaries (the README's commands install the `postgresql` package). */
export function pgBinDir(): string {
  const base = '/usr/lib/postgresql';
  if (existsSync(base)) {
    const versions = readdirSync(base).sort((a, b) => Number(b) - Number(a));
    for (const v of versions) if (existsSync(join(base, v, 'bin', 'initdb'))) return join(base, v, 'bin');
  }
  throw new Error(
    "PostgreSQL is not installed: run ./scripts/test (it installs Debian's postgresql package).",
  );
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export interface PgServer {
  url: string;
  port: number;
  dir: string;
  stop(): void;
}

const isRoot = process.getuid?.() === 0;

function run(bin: string, args: string[]): void {
  const cmd = isRoot ? ['runuser', '-u', 'postgres', '--', bin, ...args] : [bin, ...args];
  const r = spawnSync(cmd[0]!, cmd.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${bin} failed: ${r.stderr || r.stdout}`);
}

/**
 * A throwaway PostgreSQL cluster for tests and benchmarks: initdb in a temp
 * dir, password auth (so circle roles really log in), tuned for speed
 * (fsync off — the data is disposable).
 */
/** `statements`: load pg_stat_statements (benchmarks break PostgreSQL time down by statement). */
export async function startPgServer(with_: { statements?: boolean } = {}): Promise<PgServer> {
  const bin = pgBinDir();
  const dir = mkdtempSync(join(tmpdir(), 'cairn-pg-'));
  const data = join(dir, 'data');
  const pw = join(dir, 'pw');
  writeFileSync(pw, 'cairn\n');
  if (isRoot) {
    chownSync(dir, uidOf('postgres'), gidOf('postgres'));
    chownSync(pw, uidOf('postgres'), gidOf('postgres'));
  }
  chmodSync(dir, 0o700);
  run(join(bin, 'initdb'), [
    '-D',
    data,
    '-U',
    'cairn',
    '--pwfile',
    pw,
    '--auth=scram-sha-256',
    '-E',
    'UTF8',
    '--no-sync',
  ]);
  const port = await freePort();
  const opts = [
    `-p ${port}`,
    `-k ${dir}`,
    '-c listen_addresses=127.0.0.1',
    '-c fsync=off',
    '-c synchronous_commit=off',
    '-c full_page_writes=off',
    '-c max_connections=300',
    '-c shared_buffers=128MB',
    ...(with_.statements
      ? ['-c shared_preload_libraries=pg_stat_statements', '-c pg_stat_statements.track=all']
      : []),
  ].join(' ');
  run(join(bin, 'pg_ctl'), ['-D', data, '-o', opts, '-l', join(dir, 'log'), '-w', '-t', '60', 'start']);
  const stop = () => {
    try {
      run(join(bin, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop']);
    } catch {
      // already stopped
    }
    rmSync(dir, { recursive: true, force: true });
  };
  return { url: `postgres://cairn:cairn@127.0.0.1:${port}/postgres`, port, dir, stop };
}

function uidOf(user: string): number {
  return Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }).trim());
}
function gidOf(user: string): number {
  return Number(execFileSync('id', ['-g', user], { encoding: 'utf8' }).trim());
}

export function withDatabase(url: string, db: string): string {
  const u = new URL(url);
  u.pathname = '/' + db;
  return u.toString();
}

/** A new database cloned from the migrated template (`CREATE DATABASE … TEMPLATE`); returns its URL and name. */
export async function cloneTemplate(
  serverUrl: string,
  prefix = 'cairn_t_',
): Promise<{ url: string; name: string }> {
  const name = prefix + randomBytes(6).toString('hex');
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name} TEMPLATE cairn_template`);
  } finally {
    await admin.end();
  }
  return { url: withDatabase(serverUrl, name), name };
}

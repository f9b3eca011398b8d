import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  closeSync,
  constants as fsc,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import pg from 'pg';
import { CairnError } from '../core/errors.js';
import type { Logger } from '../telemetry/log.js';
import { processAlive } from '../process.js';

/**
 * The embedded database: a private PostgreSQL cluster that Cairn initialises,
 * starts, supervises and stops in `<data>/pg`. It listens on a unix socket in
 * that directory only (no TCP port), runs as an unprivileged OS user when
 * Cairn runs as root (the `postgres` user of Debian's package), and dies with
 * Cairn (the parent-death signal asks it for a fast shutdown). The binaries
 * are Debian's `postgresql` package (installed by `./scripts/setup`), or the
 * directory CAIRN_PG_BIN names.
 */
export interface ManagedPgOptions {
  /** Cairn's data directory; the cluster lives in `<dataDir>/pg`. */
  dataDir: string;
  /** The directory with initdb and postgres (CAIRN_PG_BIN); the newest Debian one when absent. */
  binDir?: string;
  log: Logger;
  /** Extra server settings (`-c name=value`), over the defaults below. */
  settings?: Record<string, string>;
}

/** Server settings for one embedded, single-tenant-process cluster on a small machine. */
const DEFAULT_SETTINGS: Record<string, string> = {
  listen_addresses: '',
  unix_socket_permissions: '0700',
  max_connections: '100',
  shared_buffers: '128MB',
  max_wal_size: '256MB',
  min_wal_size: '32MB',
  // Autovacuum on (the default), tuned for run tables that are updated twice per row.
  autovacuum: 'on',
  autovacuum_naptime: '10s',
  autovacuum_vacuum_scale_factor: '0.05',
  autovacuum_analyze_scale_factor: '0.05',
  log_destination: 'stderr',
  log_line_prefix: '%m [%p] ',
  huge_pages: 'off',
  TimeZone: 'UTC',
};

/** Longest unix socket path the kernel takes (sun_path is 108 bytes with its NUL). */
const MAX_SOCKET_PATH = 107;

export interface ManagedPgStatus {
  state: 'starting' | 'running' | 'restarting' | 'stopped' | 'failed';
  pid: number | null;
  version: string;
  bin_dir: string;
  data_dir: string;
  os_user: string;
  restarts: number;
  last_exit: string | null;
}

function fail(code: string, message: string, suggestion: string, details?: unknown): CairnError {
  return new CairnError({ code, class: 'internal', status: 500, message, suggestion, details });
}

/** Debian's binaries: the newest /usr/lib/postgresql/<major>/bin with initdb and postgres. */
export function findPgBin(explicit?: string): string {
  if (explicit) {
    if (!existsSync(join(explicit, 'postgres')) || !existsSync(join(explicit, 'initdb')))
      throw fail(
        'POSTGRES_NOT_FOUND',
        `CAIRN_PG_BIN=${explicit} holds no initdb and postgres.`,
        'Point CAIRN_PG_BIN at the bin directory of a PostgreSQL installation, or unset it to use Debian’s.',
      );
    return explicit;
  }
  const root = '/usr/lib/postgresql';
  const majors = existsSync(root)
    ? readdirSync(root)
        .filter((d) => /^\d+$/.test(d) && existsSync(join(root, d, 'bin', 'postgres')))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  if (majors.length === 0)
    throw fail(
      'POSTGRES_NOT_FOUND',
      'The embedded database needs PostgreSQL, and none is installed here.',
      'Run ./scripts/setup (it installs Debian’s postgresql package), set CAIRN_PG_BIN to a PostgreSQL bin directory, use a server with DATABASE_URL, or run with --db pglite.',
    );
  return join(root, majors[0]!, 'bin');
}

interface OsUser {
  name: string;
  uid: number;
  gid: number;
}

/** The OS user the cluster runs as: Cairn's own, or (as root) the `postgres` system user. */
function osUser(): OsUser | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('postgres:'));
  if (!line)
    throw fail(
      'POSTGRES_USER_MISSING',
      'Cairn runs as root, and PostgreSQL refuses to: it needs the unprivileged `postgres` OS user, which does not exist.',
      'Install Debian’s postgresql package (./scripts/setup does), or create the user: useradd --system --home-dir /var/lib/postgresql postgres.',
    );
  const f = line.split(':');
  return { name: 'postgres', uid: Number(f[2]), gid: Number(f[3]) };
}

/** The first directory above `dir` that `user` cannot enter (PostgreSQL must reach its data dir). */
function unreachableAncestor(dir: string, user: OsUser): string | undefined {
  for (let d = dirname(dir); ; d = dirname(d)) {
    const st = statSync(d);
    const mode = st.mode;
    const ok = st.uid === user.uid ? mode & 0o100 : st.gid === user.gid ? mode & 0o010 : mode & 0o001;
    if (!ok) return d;
    if (d === dirname(d)) return undefined;
  }
}

/**
 * One Cairn process per data dir: `<data>/cairn.pid`, made exclusively. A
 * file whose process is gone (a crash) is taken over.
 */
export function lockDataDir(dataDir: string): () => void {
  mkdirSync(dataDir, { recursive: true });
  const path = join(dataDir, 'cairn.pid');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, fsc.O_CREAT | fsc.O_EXCL | fsc.O_WRONLY, 0o644);
      writeSync(fd, String(process.pid));
      closeSync(fd);
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        process.removeListener('exit', release);
        try {
          if (readFileSync(path, 'utf8') === String(process.pid)) rmSync(path, { force: true });
        } catch {
          // already gone
        }
      };
      process.once('exit', release);
      return release;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const owner = Number(readFileSync(path, 'utf8').trim());
      if (Number.isInteger(owner) && owner > 0 && processAlive(owner))
        throw new CairnError({
          code: 'DATA_DIR_IN_USE',
          class: 'conflict',
          message: `The data directory ${dataDir} is in use by another Cairn process (pid ${owner}).`,
          suggestion:
            'Stop that process first, or give this one its own --data directory (env CAIRN_DATA). Several processes share one database through DATABASE_URL.',
          details: { data_dir: dataDir, pid: owner },
        });
      rmSync(path, { force: true }); // its owner is gone
    }
  }
  throw new Error(`could not lock ${path}`);
}

/** A data dir an earlier Cairn used with PGlite (`<data>/pgdata`), not yet moved to PostgreSQL. */
export function pgliteDataDirError(dataDir: string): CairnError {
  return new CairnError({
    code: 'PGLITE_DATA_DIR',
    class: 'conflict',
    message: `${dataDir} holds an embedded PGlite database (pgdata/) from an earlier Cairn; the embedded default is now a real PostgreSQL, and this data is not moved silently.`,
    suggestion: `Keep serving it with --db pglite (env CAIRN_DB=pglite), or start fresh on PostgreSQL with another --data directory (or after moving ${join(dataDir, 'pgdata')} aside).`,
    details: { data_dir: dataDir, pglite: join(dataDir, 'pgdata') },
  });
}

export class ManagedPostgres {
  readonly pgData: string;
  readonly binDir: string;
  readonly url: string;
  private readonly user: OsUser | undefined;
  private readonly log: Logger;
  private readonly settings: Record<string, string>;
  private readonly logFile: string;
  private child: ChildProcess | undefined;
  private stopping = false;
  private restarts = 0;
  private recentRestarts: number[] = [];
  private lastExit: string | null = null;
  private state: ManagedPgStatus['state'] = 'starting';
  private version = '';
  private stderrTail = '';

  private constructor(
    readonly dataDir: string,
    opts: ManagedPgOptions,
    private readonly password: string,
  ) {
    this.pgData = join(dataDir, 'pg');
    this.binDir = findPgBin(opts.binDir);
    this.user = osUser();
    this.log = opts.log.child({ component: 'postgres' });
    this.settings = { ...DEFAULT_SETTINGS, ...opts.settings, unix_socket_directories: this.pgData };
    this.logFile = join(dataDir, 'postgres.log');
    const u = new URL('postgres://localhost/cairn');
    u.username = 'cairn';
    u.password = password;
    u.searchParams.set('host', this.pgData);
    this.url = u.toString();
  }

  /** Initialises the cluster on first use, starts it and waits until it takes connections. */
  static async start(opts: ManagedPgOptions): Promise<ManagedPostgres> {
    const dataDir = opts.dataDir;
    mkdirSync(dataDir, { recursive: true });
    const pwFile = join(dataDir, 'pg-password');
    let password: string;
    if (existsSync(pwFile)) password = readFileSync(pwFile, 'utf8').trim();
    else {
      password = randomBytes(24).toString('base64url');
      writeFileSync(pwFile, password + '\n', { mode: 0o600 });
    }
    const m = new ManagedPostgres(dataDir, opts, password);
    m.check();
    await m.initdb();
    m.stopLeftover();
    await m.launch();
    await m.ensureDatabase();
    return m;
  }

  private check(): void {
    const socket = join(this.pgData, '.s.PGSQL.5432');
    if (Buffer.byteLength(socket) > MAX_SOCKET_PATH)
      throw fail(
        'DATA_DIR_PATH_TOO_LONG',
        `The embedded database's socket path ${socket} is longer than the ${MAX_SOCKET_PATH} bytes a unix socket takes.`,
        'Choose a shorter --data directory (env CAIRN_DATA).',
      );
    if (this.user) {
      // Cairn's own data dir lets the cluster's group through (search only: it cannot list it).
      const st = statSync(this.dataDir);
      if (st.uid === process.getuid?.() && unreachableAncestor(this.pgData, this.user) === this.dataDir) {
        chownSync(this.dataDir, st.uid, this.user.gid);
        chmodSync(this.dataDir, (st.mode & 0o7777 & ~0o070) | 0o010);
      }
      const blocked = unreachableAncestor(this.pgData, this.user);
      if (blocked)
        throw fail(
          'DATA_DIR_UNREACHABLE',
          `The embedded database runs as the unprivileged OS user ${this.user.name}, which cannot enter ${blocked} on the way to ${this.pgData}.`,
          `Choose a --data directory outside it (e.g. under /var/lib or /srv), or let that user through: chmod o+x ${blocked}.`,
        );
    }
  }

  /** Runs a PostgreSQL binary as the cluster's OS user; resolves with its output. */
  private runBin(bin: string, args: string[]): Promise<string> {
    const [cmd, argv] = this.command(join(this.binDir, bin), args, false);
    return new Promise((resolve, reject) => {
      const c = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: this.env() });
      let out = '';
      c.stdout!.on('data', (d: Buffer) => (out += d.toString('utf8')));
      c.stderr!.on('data', (d: Buffer) => (out += d.toString('utf8')));
      c.on('error', reject);
      c.on('exit', (code) =>
        code === 0 ? resolve(out) : reject(new Error(`${bin} exited ${code}: ${out.trim().slice(-2000)}`)),
      );
    });
  }

  private env(): NodeJS.ProcessEnv {
    return { PATH: '/usr/bin:/bin', LANG: 'C', LC_ALL: 'C' };
  }

  /** [command, argv]: through setpriv, as the OS user (when root) and with the parent-death signal. */
  private command(bin: string, args: string[], dieWithCairn: boolean): [string, string[]] {
    const pre: string[] = [];
    if (this.user) pre.push(`--reuid=${this.user.uid}`, `--regid=${this.user.gid}`, '--init-groups');
    if (dieWithCairn) pre.push('--pdeathsig=SIGINT');
    return pre.length ? ['/usr/bin/setpriv', [...pre, '--', bin, ...args]] : [bin, args];
  }

  private async initdb(): Promise<void> {
    const versionFile = join(this.pgData, 'PG_VERSION');
    this.version = (await this.runBin('postgres', ['--version'])).trim();
    const major = /(\d+)/.exec(this.version.replace(/^[^\d]*/, ''))?.[1] ?? '';
    if (existsSync(versionFile)) {
      const have = readFileSync(versionFile, 'utf8').trim();
      if (have !== major)
        throw fail(
          'POSTGRES_VERSION_MISMATCH',
          `The embedded database in ${this.pgData} was made by PostgreSQL ${have}; the binaries in ${this.binDir} are ${major}.`,
          `Point CAIRN_PG_BIN at PostgreSQL ${have}'s bin directory, or upgrade the cluster with pg_upgrade.`,
        );
      return;
    }
    // A half-made cluster (a crash during initdb) is made again from nothing.
    rmSync(this.pgData, { recursive: true, force: true });
    mkdirSync(this.pgData, { mode: 0o700 });
    if (this.user) chownSync(this.pgData, this.user.uid, this.user.gid);
    const pw = join(this.dataDir, '.initdb-pw'); // not in the data dir initdb wants empty
    writeFileSync(pw, this.password + '\n', { mode: 0o600 });
    if (this.user) chownSync(pw, this.user.uid, this.user.gid);
    const t0 = performance.now();
    try {
      await this.runBin('initdb', [
        '-D',
        this.pgData,
        '-U',
        'cairn',
        `--pwfile=${pw}`,
        '--auth=scram-sha-256',
        '-E',
        'UTF8',
        '--locale=C',
      ]);
    } catch (e) {
      rmSync(this.pgData, { recursive: true, force: true });
      throw fail(
        'POSTGRES_INIT_FAILED',
        `initdb of the embedded database failed: ${(e as Error).message}`,
        'Check the data directory is writable and has free space; the error above is initdb’s own.',
      );
    } finally {
      rmSync(pw, { force: true });
    }
    this.log.info(
      { ms: Math.round(performance.now() - t0), dir: this.pgData },
      'embedded PostgreSQL initialised',
    );
  }

  /** A postmaster left by a Cairn that died without stopping it (we hold the data dir's lock now). */
  private stopLeftover(): void {
    const pidFile = join(this.pgData, 'postmaster.pid');
    if (!existsSync(pidFile)) return;
    const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
    if (!Number.isInteger(pid) || pid <= 0 || !processAlive(pid)) return;
    try {
      const comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
      if (comm !== 'postgres') return;
      this.log.warn({ pid }, 'stopping a PostgreSQL left running by an earlier Cairn on this data dir');
      process.kill(pid, 'SIGINT');
    } catch {
      // gone meanwhile
    }
  }

  private async launch(): Promise<void> {
    // Wait for a leftover postmaster (fast shutdown) or a crashed one's backends to let go.
    const deadline = Date.now() + 30_000;
    let lastError = '';
    while (Date.now() < deadline) {
      const exited = await this.spawnOnce();
      if (exited === undefined) {
        this.state = 'running';
        return;
      }
      lastError = exited;
      // "lock file … already exists" or "shared memory block is still in use": the old one is still going.
      if (!/already exists|still in use|Is another postmaster/.test(exited)) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    this.state = 'failed';
    throw fail(
      'POSTGRES_START_FAILED',
      `The embedded PostgreSQL did not start: ${lastError.trim().split('\n').slice(-3).join(' ')}`,
      `Read ${this.logFile}; another PostgreSQL may be using ${this.pgData}.`,
    );
  }

  /** Starts the postmaster; undefined once it takes connections, else what it said before it exited. */
  private spawnOnce(): Promise<string | undefined> {
    const args = ['-D', this.pgData];
    for (const [k, v] of Object.entries(this.settings)) args.push('-c', `${k}=${v}`);
    const [cmd, argv] = this.command(join(this.binDir, 'postgres'), args, true);
    const c = spawn(cmd, argv, { stdio: ['ignore', 'ignore', 'pipe'], env: this.env() });
    this.child = c;
    this.stderrTail = '';
    const logFd = openSync(this.logFile, 'a', 0o600);
    c.stderr!.on('data', (d: Buffer) => {
      this.stderrTail = (this.stderrTail + d.toString('utf8')).slice(-4000);
      try {
        writeSync(logFd, d);
      } catch {
        // a full disk: postgres itself reports it
      }
    });
    let exited: string | undefined;
    const onExit = new Promise<void>((resolve) =>
      c.once('exit', (code, sig) => {
        closeSync(logFd);
        exited = `${this.stderrTail}\n(exit ${code ?? sig})`;
        resolve();
        this.exited(c, code, sig);
      }),
    );
    return (async () => {
      const t0 = performance.now();
      for (;;) {
        if (exited !== undefined) return exited;
        if (await this.accepts()) {
          this.log.info(
            { ms: Math.round(performance.now() - t0), pid: c.pid, version: this.version },
            'embedded PostgreSQL is ready',
          );
          return undefined;
        }
        await Promise.race([onExit, new Promise((r) => setTimeout(r, 25))]);
      }
    })();
  }

  private async accepts(): Promise<boolean> {
    const u = new URL(this.url);
    u.pathname = '/postgres';
    const client = new pg.Client({ connectionString: u.toString(), connectionTimeoutMillis: 1_000 });
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.query('SELECT 1');
      return true;
    } catch {
      return false;
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  private async ensureDatabase(): Promise<void> {
    const u = new URL(this.url);
    u.pathname = '/postgres';
    const client = new pg.Client({ connectionString: u.toString() });
    await client.connect();
    try {
      const r = await client.query("SELECT 1 FROM pg_database WHERE datname = 'cairn'");
      if (r.rowCount === 0) await client.query('CREATE DATABASE cairn');
    } finally {
      await client.end();
    }
  }

  /** The postmaster exited: asked to (stop), or not (a crash), which is restarted with backoff. */
  private exited(c: ChildProcess, code: number | null, sig: NodeJS.Signals | null): void {
    if (this.child !== c) return;
    this.child = undefined;
    this.lastExit = `${code ?? sig} at ${new Date().toISOString()}`;
    // A postmaster that never became ready is launch()'s to retry, not a crash to restart.
    if (this.stopping || this.state !== 'running') return;
    this.log.error(
      { code, signal: sig, tail: this.stderrTail.trim().split('\n').slice(-3) },
      'the embedded PostgreSQL exited; restarting it',
    );
    const now = Date.now();
    this.recentRestarts = this.recentRestarts.filter((t) => now - t < 60_000);
    if (this.recentRestarts.length >= 5) {
      this.state = 'failed';
      this.log.fatal(`the embedded PostgreSQL exited 5 times in a minute; giving up (see ${this.logFile})`);
      return;
    }
    this.recentRestarts.push(now);
    this.state = 'restarting';
    const delay = Math.min(5_000, 200 * 2 ** (this.recentRestarts.length - 1));
    setTimeout(() => {
      if (this.stopping) return;
      this.restarts++;
      this.launch().catch((e) => {
        this.log.fatal({ err: (e as Error).message }, 'could not restart the embedded PostgreSQL');
      });
    }, delay).unref();
  }

  status(): ManagedPgStatus {
    return {
      state: this.state,
      pid: this.child?.pid ?? null,
      version: this.version,
      bin_dir: this.binDir,
      data_dir: this.pgData,
      os_user: this.user?.name ?? 'cairn’s own',
      restarts: this.restarts,
      last_exit: this.lastExit,
    };
  }

  /** Fast shutdown (SIGINT: active sessions are ended, the data is consistent), then immediate after 15 s. */
  async stop(): Promise<void> {
    this.stopping = true;
    const c = this.child;
    if (!c || c.exitCode !== null) {
      this.state = 'stopped';
      return;
    }
    const done = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill('SIGINT');
    const t = setTimeout(() => c.kill('SIGQUIT'), 15_000);
    await done;
    clearTimeout(t);
    this.state = 'stopped';
  }
}

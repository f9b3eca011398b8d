import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cairn, ensureBuilt, until, type Proc } from '../helpers/bin.js';
import { processAlive } from '../../src/process.js';

const TOKEN = 'cairn_embedded_pg_token_0123456789';
const auth = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };

/** The postmaster of the cluster in `dir/pg` (first line of postmaster.pid), while it runs. */
function postmaster(dir: string): number | undefined {
  const f = join(dir, 'pg', 'postmaster.pid');
  if (!existsSync(f)) return undefined;
  const pid = Number(readFileSync(f, 'utf8').split('\n')[0]);
  return processAlive(pid) ? pid : undefined;
}

/** TCP sockets a process listens on (from its fds and /proc/net/tcp*). */
function tcpListeners(pid: number): number {
  const inodes = new Set<string>();
  for (const fd of execFileSync('ls', [`/proc/${pid}/fd`])
    .toString()
    .split('\n')
    .filter(Boolean)) {
    try {
      const m = /socket:\[(\d+)\]/.exec(execFileSync('readlink', [`/proc/${pid}/fd/${fd}`]).toString());
      if (m) inodes.add(m[1]!);
    } catch {
      // closed meanwhile
    }
  }
  let n = 0;
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(table, 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[3] === '0A' && inodes.has(f[9]!)) n++; // 0A: LISTEN
    }
  }
  return n;
}

function serve(dir: string, extra: string[] = [], env: Record<string, string> = {}): Proc {
  return cairn(['serve', '--port', '0', '--data', dir, '--json', ...extra], {
    CAIRN_BOOTSTRAP_TOKEN: TOKEN,
    DATABASE_URL: undefined,
    CAIRN_DB: undefined,
    CAIRN_LOG_LEVEL: 'warn',
    ...env,
  });
}

async function urlOf(p: Proc): Promise<string> {
  return until(
    async () => /"event":"serving","url":"([^"]+)"/.exec(p.output())?.[1],
    60_000,
    'cairn serve to start\n' + p.output(),
  );
}

async function post(url: string, path: string, body: unknown): Promise<{ status: number; body: any }> {
  const r = await fetch(url + path, { method: 'POST', headers: auth, body: JSON.stringify(body) });
  return { status: r.status, body: await r.json() };
}

/**
 * Issue 11, step 0: without DATABASE_URL, `cairn serve` runs a private
 * PostgreSQL cluster in `<data>/pg` — a unix socket and no TCP port, an
 * unprivileged OS user, one Cairn per data dir, stopped with Cairn, restarted
 * when it crashes, and a tenant's pg_sleep does not hold /healthz.
 */
describe('the embedded PostgreSQL', () => {
  let dir: string;
  let server: Proc;
  let url: string;

  beforeAll(async () => {
    ensureBuilt();
    dir = mkdtempSync(join(tmpdir(), 'cairn-epg-'));
    server = serve(dir);
    url = await urlOf(server);
    expect(server.output()).toMatch(/"database":"postgres \(embedded\)"/);
    expect((await post(url, '/api/circles', { slug: 'epg' })).status).toBe(201);
  }, 120_000);

  afterAll(async () => {
    if (server && server.child.exitCode === null) {
      server.child.kill('SIGTERM');
      await server.exited;
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it('is a real PostgreSQL in <data>/pg: no TCP port, its own OS user, a unix socket only', async () => {
    const pid = postmaster(dir)!;
    expect(pid).toBeGreaterThan(0);
    expect(readFileSync(`/proc/${pid}/comm`, 'utf8').trim()).toBe('postgres');
    expect(tcpListeners(pid)).toBe(0);
    expect(existsSync(join(dir, 'pg', '.s.PGSQL.5432'))).toBe(true);
    const uid = Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
    if (process.getuid?.() === 0) expect(uid).not.toBe(0);
    const d: any = await (await fetch(url + '/api/diagnostics', { headers: auth })).json();
    expect(d.database.label).toBe('postgres (embedded)');
    expect(d.database.embedded).toMatchObject({ state: 'running', pid, restarts: 0 });
    expect(d.database.embedded.version).toMatch(/PostgreSQL/);
    // Maintained by PostgreSQL itself: autovacuum tuned for the run tables, the WAL capped.
    const conn = new URL('postgres://localhost/cairn');
    conn.username = 'cairn';
    conn.password = readFileSync(join(dir, 'pg-password'), 'utf8').trim();
    conn.searchParams.set('host', join(dir, 'pg'));
    const client = new pg.Client({ connectionString: conn.toString() });
    await client.connect();
    try {
      const show = async (name: string) => (await client.query(`SHOW ${name}`)).rows[0]![name];
      expect(await show('autovacuum')).toBe('on');
      expect(await show('autovacuum_vacuum_scale_factor')).toBe('0.05');
      expect(await show('max_wal_size')).toBe('256MB');
      expect(await show('listen_addresses')).toBe('');
    } finally {
      await client.end();
    }
  });

  it('a second serve on the same data dir is refused, typed, and the first keeps serving', async () => {
    const second = serve(dir);
    expect(await second.exited).not.toBe(0);
    expect(second.output()).toMatch(
      /DATA_DIR_IN_USE: The data directory .* is in use by another Cairn process/,
    );
    expect(second.output()).toMatch(/--data/);
    expect(second.output()).not.toMatch(/\n\s+at /);
    expect((await fetch(url + '/healthz')).status).toBe(200);
  });

  it("a tenant's pg_sleep does not hold /healthz", async () => {
    expect(
      (
        await post(url, '/api/epg/ops/create', {
          element_type: 'sql',
          slug: 'sleepy',
          spec: { query: 'SELECT pg_sleep(3) AS slept', timeout_ms: 10_000 },
        })
      ).status,
    ).toBe(201);
    const started = post(url, '/api/epg/sleepy/ops/invoke', {});
    await new Promise((r) => setTimeout(r, 300));
    const times: number[] = [];
    for (let i = 0; i < 10; i++) {
      const t0 = performance.now();
      expect((await fetch(url + '/healthz')).status).toBe(200);
      times.push(performance.now() - t0);
    }
    const sleepy = await started;
    expect(sleepy.body.status).toBe('succeeded');
    // The sleep held its own backend for 3 s; every health check answered meanwhile.
    expect(Math.max(...times)).toBeLessThan(1_000);
  });

  it('a crash of the database process is restarted, and the API serves again', async () => {
    const before = postmaster(dir)!;
    process.kill(before, 'SIGKILL');
    await until(
      async () => {
        const p = postmaster(dir);
        return p !== undefined && p !== before;
      },
      30_000,
      'a new postmaster',
    );
    await until(async () => (await fetch(url + '/healthz')).status === 200, 30_000, '/healthz back to 200');
    const d: any = await (await fetch(url + '/api/diagnostics', { headers: auth })).json();
    expect(d.database.embedded.state).toBe('running');
    expect(d.database.embedded.restarts).toBe(1);
    // The record survived: the circle made before the crash is there, and a run works.
    const r = await until(
      async () => {
        const x = await post(url, '/api/epg/ops/create', {
          element_type: 'sql',
          slug: `after-${Date.now()}`,
          spec: { query: 'SELECT 1 AS one' },
        });
        return x.status === 201 ? x : undefined;
      },
      20_000,
      'an element created after the restart',
    );
    expect(r.status).toBe(201);
  }, 90_000);

  it('stops with Cairn: nothing of it is left, and the next start finds the same data', async () => {
    const pid = postmaster(dir)!;
    server.child.kill('SIGTERM');
    expect(await server.exited).toBe(0);
    expect(processAlive(pid)).toBe(false);
    expect(existsSync(join(dir, 'cairn.pid'))).toBe(false);
    server = serve(dir);
    url = await urlOf(server);
    const c = await fetch(url + '/api/circles', { headers: auth });
    const listed: any = await c.json();
    expect((listed.circles ?? []).map((x: { slug: string }) => x.slug)).toContain('epg');
  }, 90_000);

  it('a Cairn killed outright takes its PostgreSQL with it, and the data dir can be served again', async () => {
    const pid = postmaster(dir)!;
    server.child.kill('SIGKILL');
    await server.exited;
    await until(async () => !processAlive(pid), 20_000, 'the orphaned postmaster to stop');
    server = serve(dir); // the stale cairn.pid is taken over
    url = await urlOf(server);
    expect((await fetch(url + '/healthz')).status).toBe(200);
  }, 90_000);

  it('an old PGlite data dir is refused with a typed error; --db pglite serves it', async () => {
    const old = mkdtempSync(join(tmpdir(), 'cairn-epg-lite-'));
    try {
      const lite = serve(old, ['--db', 'pglite']);
      const liteUrl = await urlOf(lite);
      expect(lite.output()).toMatch(/"database":"pglite"/);
      expect((await post(liteUrl, '/api/circles', { slug: 'kept' })).status).toBe(201);
      lite.child.kill('SIGTERM');
      expect(await lite.exited).toBe(0);
      const refused = serve(old);
      expect(await refused.exited).not.toBe(0);
      expect(refused.output()).toMatch(/PGLITE_DATA_DIR: .* holds an embedded PGlite database/);
      expect(refused.output()).toMatch(/--db pglite/);
      expect(existsSync(join(old, 'pg'))).toBe(false);
    } finally {
      rmSync(old, { recursive: true, force: true });
    }
  }, 120_000);

  it('a data dir whose socket path would be too long is a typed error before anything starts', async () => {
    const deep = join(mkdtempSync(join(tmpdir(), 'cairn-epg-long-')), 'x'.repeat(90));
    mkdirSync(deep, { recursive: true });
    try {
      const p = serve(deep);
      expect(await p.exited).not.toBe(0);
      expect(p.output()).toMatch(/DATA_DIR_PATH_TOO_LONG/);
      expect(p.output()).toMatch(/shorter --data/);
    } finally {
      rmSync(deep, { recursive: true, force: true });
    }
  });
});

import { initTracing, shutdownTracing } from './telemetry/tracing.js';
import { CairnError, errors, toCairnError } from './core/errors.js';
import { createServer as createHttpServer } from 'node:http';
import { registry } from './telemetry/metrics.js';
import { createServer as createNetServer } from 'node:net';
import { link, mkdir, readFile, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { setting, type Config } from './config.js';
import type { Db } from './db/types.js';
import { PgliteDb } from './db/pglite.js';
import { PgDb } from './db/pg.js';
import { lockDataDir, ManagedPostgres, pgliteDataDirError } from './db/managed-pg.js';
import { existsSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { realpath } from 'node:fs/promises';
import { promisify } from 'node:util';
import { listTypes, operationsOf } from './elements/registry.js';

const run = promisify(execFile);
import { silentLogger } from './telemetry/log.js';
import { Keyring, parseKey, setKeyring } from './core/sealed.js';
import { deploymentKeyId } from './store/sealed.js';
import { migrate } from './db/migrate.js';
import { createToken, hasInstanceAdmin } from './store/tokens.js';
import { loadSqlParser } from './elements/sql/guard.js';
import { Engine } from './engine/engine.js';
import { Worker } from './engine/worker.js';
import { Authenticator, authorize } from './api/auth.js';
import { buildApp } from './api/app.js';
import type { Deps } from './api/context.js';
import type { Logger } from './telemetry/log.js';
import { Sandbox } from './sandbox/runner.js';
import { prewarmGo } from './sandbox/builders/go.js';

/**
 * The keyring that seals secrets (R-SECRETS): CAIRN_SECRETS_KEY, or the key in <data>/secrets.key
 * (generated on first start, mode 0600), plus CAIRN_SECRETS_KEY_PREVIOUS during a rotation. Every
 * process of a deployment must hold the same key.
 */
export async function loadKeyring(config: Config, log: Logger = silentLogger): Promise<Keyring> {
  const configured = setting('CAIRN_SECRETS_KEY');
  let current: Buffer;
  if (configured) current = parseKey(configured, 'CAIRN_SECRETS_KEY');
  else {
    const file = join(config.dataDir, 'secrets.key');
    await mkdir(config.dataDir, { recursive: true });
    if (!existsSync(file)) {
      // Written whole under another name, then linked: a process starting at the same moment
      // reads either no file or the whole key, never half of one.
      const tmp = `${file}.${process.pid}.tmp`;
      await writeFile(tmp, Keyring.generateKey().toString('base64') + '\n', { mode: 0o600 });
      try {
        await link(tmp, file);
        log.info({ file }, 'generated the key that seals secrets (keep it: without it no secret opens)');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      } finally {
        await unlink(tmp);
      }
    }
    current = parseKey(await readFile(file, 'utf8'), file);
  }
  const previous = setting('CAIRN_SECRETS_KEY_PREVIOUS')
    .split(',')
    .map((k) => k.trim())
    .filter(Boolean)
    .map((k, i) => parseKey(k, `CAIRN_SECRETS_KEY_PREVIOUS[${i}]`));
  const ring = new Keyring(current, previous);
  setKeyring(ring);
  return ring;
}

/** A process whose key is not the deployment's says so when it starts (its secret runs would fail). */
export async function checkKeyring(db: Db, ring: Keyring, log: Logger): Promise<void> {
  const recorded = await deploymentKeyId(db, ring.currentId);
  if (!ring.holds(recorded))
    log.error(
      { deployment_key_id: recorded, this_key_id: ring.currentId },
      'this process does not hold the key that sealed the secrets of this database: every run that needs a secret will fail with SECRET_UNREADABLE; start it with the same CAIRN_SECRETS_KEY as the others',
    );
}

/** The sandbox opt-out is loud: logged at start by every process that executes runs. */
export function warnIfUnsandboxed(log: Logger, sandbox: Sandbox): void {
  if (sandbox.disabled) {
    log.warn(
      'CAIRN_UNSAFE_NO_SANDBOX=1: code actions run WITHOUT the bubblewrap sandbox (no namespaces, no seccomp, network reachable); every such run is flagged "unsandboxed"',
    );
  }
}

/** Warms the Go build cache in the background; a missing toolchain only matters when a go-fn runs. */
function prewarm(log: Logger, sandbox: Sandbox): void {
  if (!setting('CAIRN_PREWARM')) return;
  prewarmGo(sandbox).then(
    () => log.debug('go build cache warm'),
    (e) => log.warn({ err: String(e?.message ?? e) }, 'could not pre-warm the Go build cache'),
  );
}

/** What an open database is: its driver, and for the embedded PostgreSQL, its supervisor. */
export interface OpenedDb {
  db: Db;
  /** `postgres (embedded)`, `postgres` (DATABASE_URL) or `pglite`. */
  label: string;
  managed?: ManagedPostgres;
  /** Closes the pools, then stops the embedded PostgreSQL and lets go of the data dir. */
  close(): Promise<void>;
}

/**
 * Opens the configured database and migrates it: the PostgreSQL server of
 * DATABASE_URL; else the embedded one, a private PostgreSQL cluster in
 * `<data>/pg` (or PGlite in `<data>/pgdata` with --db pglite). An embedded
 * database belongs to one Cairn process: its data dir is locked.
 */
export async function openDatabase(config: Config, log: Logger = silentLogger): Promise<OpenedDb> {
  await loadSqlParser();
  if (config.databaseUrl) {
    const db = new PgDb(config.databaseUrl, { max: config.pgPool });
    await migrate(db);
    return { db, label: 'postgres', close: () => db.close() };
  }
  const unlock = lockDataDir(config.dataDir);
  try {
    if (config.db === 'pglite') {
      const db = await PgliteDb.open(join(config.dataDir, 'pgdata'));
      await migrate(db);
      return {
        db,
        label: 'pglite',
        close: async () => {
          await db.close();
          unlock();
        },
      };
    }
    if (existsSync(join(config.dataDir, 'pgdata')) && !existsSync(join(config.dataDir, 'pg')))
      throw pgliteDataDirError(config.dataDir);
    const managed = await ManagedPostgres.start({
      dataDir: config.dataDir,
      binDir: setting('CAIRN_PG_BIN'),
      log,
    });
    const db = new PgDb(managed.url, { max: config.pgPool });
    try {
      await migrate(db);
    } catch (e) {
      await db.close();
      await managed.stop();
      throw e;
    }
    return {
      db,
      label: 'postgres (embedded)',
      managed,
      close: async () => {
        await db.close();
        await managed.stop();
        unlock();
      },
    };
  } catch (e) {
    unlock();
    throw e;
  }
}

/**
 * First start: the instance-admin token is CAIRN_BOOTSTRAP_TOKEN when set;
 * otherwise one is generated, printed once, and kept in `<data>/bootstrap-token`.
 */
export async function ensureBootstrapToken(
  db: Db,
  config: Config,
  print: (s: string) => void,
): Promise<void> {
  if (config.bootstrapToken) {
    await createToken(db, {
      circleId: null,
      role: 'admin',
      name: 'bootstrap',
      secret: config.bootstrapToken,
    });
    return;
  }
  if (await hasInstanceAdmin(db)) return;
  const { token } = await createToken(db, { circleId: null, role: 'admin', name: 'bootstrap' });
  await mkdir(config.dataDir, { recursive: true });
  const file = join(config.dataDir, 'bootstrap-token');
  await writeFile(file, token + '\n', { mode: 0o600 });
  print(`Instance-admin token (shown once, also saved to ${file}):\n  ${token}\n`);
}

export async function readBootstrapToken(config: Config): Promise<string | undefined> {
  if (config.bootstrapToken) return config.bootstrapToken;
  try {
    return (await readFile(join(config.dataDir, 'bootstrap-token'), 'utf8')).trim();
  } catch {
    return undefined;
  }
}

/** A tool's version line and the sha256 of its binary (null when it is not installed). */
async function toolchain(bin: string, args: string[]) {
  try {
    const { stdout, stderr } = await run(bin, args, { timeout: 10_000 });
    const path = (await run('sh', ['-c', `command -v ${bin}`])).stdout.trim();
    const real = path ? await realpath(path) : '';
    return {
      version: (stdout || stderr).trim().split('\n')[0]!.slice(0, 200),
      binary_sha256: real
        ? createHash('sha256')
            .update(await readFile(real))
            .digest('hex')
        : null,
    };
  } catch {
    return null;
  }
}

/**
 * What every run's snapshot pins beyond its definitions (the run's bill of materials): the
 * database, the toolchains code is built and run with (versions and binary hashes), the sandbox,
 * the Node.js that runs Cairn, and the price table of every metered op. Read once per process.
 */
export async function snapshotFacts(db: Db): Promise<Record<string, unknown>> {
  const r = await db.query<{ v: string }>('SELECT version() AS v');
  const [go, python, bwrap] = await Promise.all([
    toolchain('go', ['version']),
    toolchain('python3', ['--version']),
    toolchain('bwrap', ['--version']),
  ]);
  const prices: Record<string, number> = {};
  for (const t of listTypes())
    for (const op of operationsOf(t)) if (op.price) prices[`${t.type}.${op.name}`] = op.price;
  return {
    toolchains: {
      database: { driver: db.kind, version: r.rows[0]?.v ?? 'unknown' },
      node: { version: process.version },
      ...(go ? { go } : {}),
      ...(python ? { python } : {}),
      ...(bwrap ? { bubblewrap: bwrap } : {}),
    },
    price_table: prices,
  };
}

export interface Server {
  app: FastifyInstance;
  db: Db;
  /** `postgres (embedded)`, `postgres` or `pglite`. */
  database: string;
  /** The embedded PostgreSQL's supervisor, when Cairn manages the database. */
  managed?: ManagedPostgres;
  worker?: Worker;
  url: string;
  stop(): Promise<void>;
}

function portInUse(host: string, port: number): CairnError {
  return new CairnError({
    code: 'PORT_IN_USE',
    class: 'conflict',
    message: `Port ${port} on ${host} is already in use (another \`cairn serve\`, or another program).`,
    suggestion:
      'Stop the other server, or choose another port with --port or CAIRN_PORT (0 picks a free one).',
  });
}

/** Fails fast, before the database is opened or a worker starts, when the port is taken. */
async function assertPortFree(host: string, port: number): Promise<void> {
  if (port === 0) return;
  await new Promise<void>((resolve, reject) => {
    const probe = createNetServer();
    probe.once('error', (e: NodeJS.ErrnoException) =>
      reject(e.code === 'EADDRINUSE' ? portInUse(host, port) : e),
    );
    probe.listen({ port, host, exclusive: true }, () => probe.close(() => resolve()));
  });
}

/** `cairn serve`: the API and, unless disabled, an embedded worker, in one process. */
export async function startServer(
  config: Config,
  log: Logger,
  print: (s: string) => void = () => undefined,
): Promise<Server> {
  await assertPortFree(config.host, config.port);
  if (initTracing()) log.info('exporting traces over OTLP (OTEL_EXPORTER_OTLP_* settings)');
  const ring = await loadKeyring(config, log);
  const opened = await openDatabase(config, log);
  const { db } = opened;
  await checkKeyring(db, ring, log);
  await ensureBootstrapToken(db, config, print);
  // An embedded database is one process's: its worker must live in the same process.
  const withWorker = config.embeddedWorker || !config.databaseUrl;
  const sandbox = new Sandbox();
  if (withWorker) {
    warnIfUnsandboxed(log, sandbox);
    prewarm(log, sandbox);
  }
  const snapshotExtra = await snapshotFacts(db);
  const engine = new Engine({
    db,
    log,
    sandbox,
    snapshotExtra,
    waitPollMs: config.pollMs,
    worker: withWorker
      ? {
          concurrency: config.workerConcurrency,
          leaseMs: config.leaseMs,
          pollMs: config.pollMs,
          retentionMs: config.retentionIntervalMs,
          retentionDays: config.retentionDays,
          liveRetentionHours: config.liveRetentionHours,
        }
      : false,
  });
  await engine.start();
  const worker = engine.worker;
  const deps: Deps = {
    db,
    config,
    log,
    authn: new Authenticator(db),
    engine,
    snapshotExtra,
    database: () => ({ label: opened.label, embedded: opened.managed?.status() ?? null }),
  };
  const app = await buildApp(deps);
  let address: string;
  try {
    address = await app.listen({ port: config.port, host: config.host });
  } catch (e) {
    // Taken between the check and now: let go of what started, then say so, typed.
    await engine.stop(0);
    sandbox.close();
    await opened.close();
    throw (e as NodeJS.ErrnoException).code === 'EADDRINUSE' ? portInUse(config.host, config.port) : e;
  }
  const port = (app.server.address() as { port: number }).port;
  config.port = port;
  log.info({ address, database: opened.label }, 'cairn serving');
  return {
    app,
    db,
    database: opened.label,
    managed: opened.managed,
    worker,
    url: `http://${config.host}:${port}`,
    async stop() {
      await app.close();
      await engine.stop(config.shutdownGraceMs);
      sandbox.close();
      await opened.close();
      await shutdownTracing().catch(() => undefined);
    },
  };
}

/** `cairn worker`: claims and executes runs from a PostgreSQL server; many may run on many machines. */
export async function startWorker(
  config: Config,
  log: Logger,
): Promise<{ worker: Worker; db: Db; metricsUrl?: string; stop(): Promise<void> }> {
  if (initTracing()) log.info('exporting traces over OTLP (OTEL_EXPORTER_OTLP_* settings)');
  const ring = await loadKeyring(config, log);
  const opened = await openDatabase(config, log);
  const { db } = opened;
  await checkKeyring(db, ring, log);
  const sandbox = new Sandbox();
  // The engine, not a bare worker: a worker process also fires schedules and hands off upstream runs.
  const engine = new Engine({
    db,
    log,
    sandbox,
    snapshotExtra: await snapshotFacts(db),
    worker: {
      concurrency: config.workerConcurrency,
      leaseMs: config.leaseMs,
      pollMs: config.pollMs,
      retentionMs: config.retentionIntervalMs,
      retentionDays: config.retentionDays,
      liveRetentionHours: config.liveRetentionHours,
    },
  });
  warnIfUnsandboxed(log, sandbox);
  prewarm(log, sandbox);
  await engine.start();
  const worker = engine.worker!;
  const metrics =
    config.metricsPort === undefined ? undefined : await serveMetrics(db, config.host, config.metricsPort);
  return {
    worker,
    db,
    metricsUrl: metrics?.url,
    async stop() {
      await metrics?.close();
      await engine.stop(config.shutdownGraceMs);
      sandbox.close();
      await opened.close();
      await shutdownTracing().catch(() => undefined);
    },
  };
}

/**
 * A worker's own /metrics (it serves no API): the same Prometheus registry and the same auth as
 * `cairn serve`'s /metrics (an instance-admin bearer token), typed JSON errors otherwise.
 */
async function serveMetrics(
  db: Db,
  host: string,
  port: number,
): Promise<{ url: string; close(): Promise<void> }> {
  const authn = new Authenticator(db, 5_000);
  const server = createHttpServer((req, res) => {
    const fail = (e: CairnError) => {
      res.writeHead(e.status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(e.toJSON()));
    };
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics')
      return fail(
        errors.notFound(
          'ROUTE_NOT_FOUND',
          `No route ${req.method} ${req.url} here.`,
          'A worker serves GET /metrics only.',
        ),
      );
    void (async () => {
      try {
        authorize(await authn.principal(req.headers.authorization), undefined, 'instance_admin');
        res.writeHead(200, { 'content-type': registry.contentType });
        res.end(await registry.metrics());
      } catch (e) {
        fail(toCairnError(e));
      }
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const addr = server.address() as { port: number };
  return {
    url: `http://${host}:${addr.port}/metrics`,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

import { z } from 'zod';
import { resolve } from 'node:path';
import { CairnError } from './core/errors.js';
import { describeIssues } from './core/zod.js';
import { RETENTION_DEFAULT_DAYS, RETENTION_MAX_DAYS, RETENTION_MIN_DAYS } from './core/retention.js';

const int = (d: number, min: number, max: number) => z.coerce.number().int().min(min).max(max).default(d);

/**
 * Every setting in one typed object. Each has an env variable and a default;
 * CLI flags override env. Validated up front so a bad value fails at start.
 */
export const configSchema = z.object({
  /** CAIRN_PORT / --port */
  port: int(8080, 0, 65535),
  /** CAIRN_HOST / --host */
  host: z.string().default('127.0.0.1'),
  /** CAIRN_DATA / --data: the embedded database, its password and the bootstrap token file */
  dataDir: z.string().default('.cairn'),
  /** DATABASE_URL: use a PostgreSQL server instead of the embedded database */
  databaseUrl: z.string().optional(),
  /**
   * CAIRN_DB / --db: the embedded database without DATABASE_URL: `postgres` (a private
   * PostgreSQL cluster Cairn manages in <data>/pg) or `pglite` (in-process WebAssembly, opt-in)
   */
  db: z.enum(['postgres', 'pglite']).default('postgres'),
  /** CAIRN_BOOTSTRAP_TOKEN: the instance-admin token on first start */
  bootstrapToken: z.string().min(16).optional(),
  /** CAIRN_PUBLIC_URL: base of web_url links */
  publicUrl: z.string().optional(),
  /** CAIRN_WORKER_CONCURRENCY: runs at once per worker */
  workerConcurrency: int(8, 1, 1024),
  /** CAIRN_LEASE_MS: a claim's lease without heartbeat */
  leaseMs: int(30_000, 200, 3_600_000),
  /** CAIRN_POLL_MS: queue poll when no NOTIFY arrives */
  pollMs: int(1_000, 10, 60_000),
  /** CAIRN_SYNC_WAIT_MS: how long a sync invoke waits before answering 202 */
  syncWaitMs: int(30_000, 0, 900_000),
  /** CAIRN_SHUTDOWN_GRACE_MS: how long a stopping worker lets runs finish */
  shutdownGraceMs: int(10_000, 0, 600_000),
  /** CAIRN_EMBEDDED_WORKER=0 disables the worker inside `serve` (server mode only) */
  embeddedWorker: z.coerce.boolean().default(true),
  /** CAIRN_PG_POOL: pool size on PostgreSQL */
  pgPool: int(10, 1, 200),
  /** CAIRN_WELCOME_CREDITS: promotional micro-credits granted to each new circle (0: none) */
  welcomeCredits: int(1_000_000_000, 0, Number.MAX_SAFE_INTEGER),
  /** CAIRN_RETENTION_DAYS: days a run is kept after it ends, in circles without a policy of their own */
  retentionDays: int(RETENTION_DEFAULT_DAYS, RETENTION_MIN_DAYS, RETENTION_MAX_DAYS),
  /** CAIRN_METRICS_PORT / `cairn worker --metrics-port`: where a worker serves /metrics (unset: it does not; 0: a free port) */
  metricsPort: z.coerce.number().int().min(0).max(65535).optional(),
  /** CAIRN_SSE_HEARTBEAT_MS: how often a live event stream sends a heartbeat comment */
  sseHeartbeatMs: int(15_000, 100, 300_000),
  /** CAIRN_LIVE_RETENTION_HOURS: how long live events can be resumed from (Last-Event-ID) */
  liveRetentionHours: int(24, 1, 24 * 90),
  /** CAIRN_RETENTION_INTERVAL_MS: how often a worker deletes expired runs (0: this worker does not) */
  retentionIntervalMs: int(60_000, 0, 86_400_000),
});

export type Config = z.infer<typeof configSchema>;

const ENV: Record<string, keyof Config> = {
  CAIRN_PORT: 'port',
  CAIRN_HOST: 'host',
  CAIRN_DATA: 'dataDir',
  DATABASE_URL: 'databaseUrl',
  CAIRN_DB: 'db',
  CAIRN_BOOTSTRAP_TOKEN: 'bootstrapToken',
  CAIRN_PUBLIC_URL: 'publicUrl',
  CAIRN_WORKER_CONCURRENCY: 'workerConcurrency',
  CAIRN_METRICS_PORT: 'metricsPort',
  CAIRN_LEASE_MS: 'leaseMs',
  CAIRN_POLL_MS: 'pollMs',
  CAIRN_SYNC_WAIT_MS: 'syncWaitMs',
  CAIRN_SHUTDOWN_GRACE_MS: 'shutdownGraceMs',
  CAIRN_EMBEDDED_WORKER: 'embeddedWorker',
  CAIRN_PG_POOL: 'pgPool',
  CAIRN_WELCOME_CREDITS: 'welcomeCredits',
  CAIRN_RETENTION_DAYS: 'retentionDays',
  CAIRN_RETENTION_INTERVAL_MS: 'retentionIntervalMs',
  CAIRN_SSE_HEARTBEAT_MS: 'sseHeartbeatMs',
  CAIRN_LIVE_RETENTION_HOURS: 'liveRetentionHours',
};

/**
 * Settings read where they are used, at call time (never at import time), by
 * the sandbox, the builders and the toolchains: each declared here with its
 * type, range and default, validated with the rest when `serve` or `worker`
 * starts (a bad value fails with INVALID_CONFIG), and documented in
 * docs/configuration.md (a test checks every variable the code reads is both).
 */
const flag = z.enum(['0', '1', 'true', 'false']).transform((v) => v === '1' || v === 'true');
export const SETTINGS = {
  /** The PostgreSQL bin directory of the embedded database (default: the newest /usr/lib/postgresql/<major>/bin). */
  CAIRN_PG_BIN: z.string().min(1).optional(),
  CAIRN_LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  CAIRN_CACHE_DIR: z.string().min(1).optional(),
  CAIRN_SANDBOX_UID_BASE: int(2_300_000, 1_000, 2_000_000_000),
  CAIRN_SANDBOX_STANDBY: int(2, 0, 64),
  CAIRN_UNSAFE_NO_SANDBOX: flag.default(false),
  CAIRN_CGROUPS: flag.default(true),
  CAIRN_CGROUP_MEMORY_ROOT: z.string().min(1).default('/sys/fs/cgroup/memory'),
  CAIRN_CGROUP_V2_ROOT: z.string().min(1).optional(),
  CAIRN_GOROOT: z.string().min(1).optional(),
  CAIRN_PYTHON: z.string().min(1).default('/usr/bin/python3'),
  CAIRN_NODE: z.string().min(1).optional(),
  CAIRN_NPM_DIR: z.string().min(1).default('/usr/lib/node_modules/npm'),
  CC: z.string().min(1).default('cc'),
  CAIRN_GO_BUILD_TIMEOUT_MS: int(120_000, 1_000, 3_600_000),
  CAIRN_GO_CACHE_ENTRIES: int(256, 1, 1_000_000),
  CAIRN_DEPS_TIMEOUT_MS: int(300_000, 1_000, 3_600_000),
  CAIRN_PREWARM: flag.default(true),
  CAIRN_GIT_LOCAL_ROOTS: z.string().default(''),
  CAIRN_GIT_ALLOW_PRIVATE_HOSTS: flag.default(false),
  /** The 32-byte key sealing secrets (base64 or hex); default: <data>/secrets.key, generated mode 0600. */
  CAIRN_SECRETS_KEY: z.string().min(1).optional(),
  /** CIDRs of loopback/private/link-local networks http and llm-provider allow lists may open; empty: none. */
  CAIRN_OUTBOUND_PRIVATE_NETS: z.string().default(''),
  /** Earlier keys (comma-separated) that still open secrets sealed before a rotation. */
  CAIRN_SECRETS_KEY_PREVIOUS: z.string().default(''),
} as const;
export type SettingName = keyof typeof SETTINGS;

const settingCache = new Map<SettingName, { raw: string | undefined; value: unknown }>();

/** The setting's value now (validated; parsed once per distinct raw value). */
export function setting<K extends SettingName>(name: K, env = process.env): z.output<(typeof SETTINGS)[K]> {
  const raw = env[name] === '' ? undefined : env[name];
  const hit = settingCache.get(name);
  if (hit && hit.raw === raw) return hit.value as z.output<(typeof SETTINGS)[K]>;
  const parsed = SETTINGS[name].safeParse(raw);
  if (!parsed.success) throw invalidSetting(name, raw, parsed.error);
  settingCache.set(name, { raw, value: parsed.data });
  return parsed.data as z.output<(typeof SETTINGS)[K]>;
}

function invalidSetting(name: string, raw: unknown, e: z.ZodError): CairnError {
  return new CairnError({
    code: 'INVALID_CONFIG',
    class: 'validation',
    message: `Invalid configuration: ${name}=${JSON.stringify(raw)}: ${describeIssues(e)}`,
    suggestion: 'Fix the environment variable named; docs/configuration.md lists them all.',
  });
}

/** Every declared setting, checked at once (serve and worker call this through loadConfig). */
export function validateSettings(env = process.env): void {
  for (const name of Object.keys(SETTINGS) as SettingName[]) setting(name, env);
}

export function loadConfig(
  overrides: Partial<Record<keyof Config, unknown>> = {},
  env = process.env,
): Config {
  const raw: Record<string, unknown> = {};
  for (const [k, key] of Object.entries(ENV)) {
    const v = env[k];
    if (v !== undefined && v !== '') raw[key] = key === 'embeddedWorker' ? v !== '0' && v !== 'false' : v;
  }
  for (const [k, v] of Object.entries(overrides)) if (v !== undefined) raw[k] = v;
  const parsed = configSchema.safeParse(raw);
  if (!parsed.success) {
    throw new CairnError({
      code: 'INVALID_CONFIG',
      class: 'validation',
      message: `Invalid configuration: ${describeIssues(parsed.error)}`,
      suggestion: 'Fix the environment variable or flag named; docs/configuration.md lists them all.',
    });
  }
  const c = parsed.data;
  c.dataDir = resolve(c.dataDir);
  validateSettings(env);
  return c;
}

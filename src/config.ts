import { z } from 'zod';
import { resolve } from 'node:path';
import { CairnError } from './core/errors.js';
import { describeIssues } from './core/zod.js';

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
  /** CAIRN_DATA / --data: PGlite data and the bootstrap token file */
  dataDir: z.string().default('.cairn'),
  /** DATABASE_URL: use a PostgreSQL server instead of PGlite */
  databaseUrl: z.string().optional(),
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
});

export type Config = z.infer<typeof configSchema>;

const ENV: Record<string, keyof Config> = {
  CAIRN_PORT: 'port',
  CAIRN_HOST: 'host',
  CAIRN_DATA: 'dataDir',
  DATABASE_URL: 'databaseUrl',
  CAIRN_BOOTSTRAP_TOKEN: 'bootstrapToken',
  CAIRN_PUBLIC_URL: 'publicUrl',
  CAIRN_WORKER_CONCURRENCY: 'workerConcurrency',
  CAIRN_LEASE_MS: 'leaseMs',
  CAIRN_POLL_MS: 'pollMs',
  CAIRN_SYNC_WAIT_MS: 'syncWaitMs',
  CAIRN_SHUTDOWN_GRACE_MS: 'shutdownGraceMs',
  CAIRN_EMBEDDED_WORKER: 'embeddedWorker',
  CAIRN_PG_POOL: 'pgPool',
  CAIRN_WELCOME_CREDITS: 'welcomeCredits',
};

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
  return c;
}

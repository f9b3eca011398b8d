import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import { Authenticator } from '../../src/api/auth.js';
import type { Deps } from '../../src/api/context.js';
import { loadConfig } from '../../src/config.js';
import type { Db } from '../../src/db/types.js';
import { Engine } from '../../src/engine/engine.js';
import type { Worker } from '../../src/engine/worker.js';
import { snapshotFacts } from '../../src/runtime.js';
import { createToken } from '../../src/store/tokens.js';
import { silentLogger, type Logger } from '../../src/telemetry/log.js';
import { Sandbox, sandboxOptions, type SandboxOptions } from '../../src/sandbox/runner.js';

export interface TestApp {
  app: FastifyInstance;
  admin: string;
  worker?: Worker;
  deps: Deps;
  call(
    method: string,
    url: string,
    body?: unknown,
    token?: string,
    headers?: Record<string, string>,
  ): Promise<{ status: number; body: any; headers: Record<string, any> }>;
  circle(
    slug: string,
  ): Promise<{ id: string; slug: string; tokens: Record<'read' | 'write' | 'execute' | 'admin', string> }>;
  close(): Promise<void>;
}

/** The real Fastify app on a real database, exercised with app.inject (DESIGN convention 6). */
export async function testApp(
  db: Db,
  opts: {
    worker?: boolean;
    syncWaitMs?: number;
    leaseMs?: number;
    welcomeCredits?: number;
    concurrency?: number;
    /** Sandbox options over the settings' (e.g. `{ disabled: true }`, cgroups off). */
    sandbox?: Partial<SandboxOptions>;
    /** The app's and the engine's logger (default: silent). */
    log?: Logger;
  } = {},
): Promise<TestApp> {
  const config = loadConfig(
    { port: 0, syncWaitMs: opts.syncWaitMs ?? 20_000, pollMs: 100, welcomeCredits: opts.welcomeCredits },
    {},
  );
  const snapshotExtra = await snapshotFacts(db);
  const sandbox = new Sandbox({ ...sandboxOptions(), ...opts.sandbox });
  const engine = new Engine({
    db,
    log: opts.log,
    sandbox,
    snapshotExtra,
    waitPollMs: 100,
    worker:
      opts.worker === false
        ? false
        : { concurrency: opts.concurrency ?? 4, leaseMs: opts.leaseMs ?? 10_000, pollMs: 100 },
  });
  await engine.start();
  const worker = engine.worker;
  const deps: Deps = {
    db,
    config,
    log: opts.log ?? silentLogger,
    authn: new Authenticator(db, 0),
    engine,
    snapshotExtra,
  };
  const app = await buildApp(deps);
  const { token: admin } = await createToken(db, { circleId: null, role: 'admin', name: 'test-admin' });
  const call: TestApp['call'] = async (method, url, body, token = admin, headers = {}) => {
    const res = await app.inject({
      method: method as any,
      url,
      headers: {
        ...(token ? { authorization: `Bearer ${token}` } : {}),
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...headers,
      },
      payload: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    let parsed: any;
    try {
      parsed = res.body ? JSON.parse(res.body) : undefined;
    } catch {
      parsed = res.body;
    }
    return { status: res.statusCode, body: parsed, headers: res.headers };
  };
  return {
    app,
    admin,
    worker,
    deps,
    call,
    async circle(slug) {
      const c = await call('POST', '/api/circles', { slug });
      if (c.status !== 201) throw new Error(`circle create failed: ${JSON.stringify(c.body)}`);
      const tokens = {} as Record<'read' | 'write' | 'execute' | 'admin', string>;
      for (const role of ['read', 'write', 'execute', 'admin'] as const) {
        const t = await call('POST', `/api/${slug}/tokens`, { role });
        tokens[role] = t.body.token;
      }
      return { id: c.body.id, slug, tokens };
    },
    async close() {
      await app.close();
      await engine.stop(2_000);
      sandbox.close();
    },
  };
}

export function expectTypedError(body: any): void {
  if (!body?.error) throw new Error(`not a typed error: ${JSON.stringify(body)}`);
  const e = body.error;
  for (const k of ['code', 'class', 'message', '_suggestion']) {
    if (typeof e[k] !== 'string' || e[k].length === 0)
      throw new Error(`typed error lacks ${k}: ${JSON.stringify(body)}`);
  }
  if (typeof e.retryable !== 'boolean')
    throw new Error(`typed error lacks retryable: ${JSON.stringify(body)}`);
}

export const TERMINAL_STATUSES = ['succeeded', 'completed', 'failed', 'cancelled'];

/**
 * Polls GET /api/runs/{id} until `done` holds (default: the run ended); after `ms` it throws,
 * naming the run's status and, for a workflow run, its tasks' statuses.
 */
export async function waitRun(
  t: TestApp,
  id: string,
  token: string,
  opts: { ms?: number; done?: (run: any) => boolean } = {},
): Promise<any> {
  const until = Date.now() + (opts.ms ?? 60_000);
  const done = opts.done ?? ((r: any) => TERMINAL_STATUSES.includes(r.status));
  for (;;) {
    const run = (await t.call('GET', `/api/runs/${id}`, undefined, token)).body;
    if (done(run)) return run;
    if (Date.now() > until) {
      const tasks =
        run?.kind === 'workflow'
          ? (await t.call('GET', `/api/runs/${id}/tasks`, undefined, token)).body.tasks
          : [];
      throw new Error(
        `run ${id} still ${run?.status}${tasks?.length ? `: ${JSON.stringify(tasks.map((x: any) => [x.name, x.status]))}` : ''}`,
      );
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { inject, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { startServer, type Server } from '../src/runtime.js';
import { silentLogger } from '../src/telemetry/log.js';
import { cloneTemplate } from '../test/helpers/pg-server.js';
import { machine, percentile, writeSection, timed } from './lib.js';

const N = Number(process.env.BENCH_INVOKES ?? 1000);
const WARMUP = 100;
const TOKEN = 'cairn_bench_' + randomBytes(12).toString('hex');

async function pgDatabase(): Promise<string> {
  return (await cloneTemplate(inject('pgUrl'), 'cairn_l_')).url;
}

async function measure(server: Server) {
  const h = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
  const post = (path: string, body: unknown) =>
    fetch(server.url + path, { method: 'POST', headers: h, body: JSON.stringify(body) });
  await post('/api/circles', { slug: 'lat' });
  await post('/api/lat/ops/create', { element_type: 'sql', slug: 'one', spec: { query: 'select 1 as one' } });
  const invoke = async () => {
    const r = await post('/api/lat/one/ops/invoke', {});
    const b: any = await r.json();
    if (b.status !== 'succeeded') throw new Error(JSON.stringify(b));
  };
  const health = async () => {
    await (await fetch(server.url + '/healthz')).arrayBuffer();
  };
  await timed(WARMUP, invoke);
  await timed(WARMUP, health);
  // Interleave in blocks so both see the same machine conditions.
  const inv: number[] = [];
  const hl: number[] = [];
  for (let b = 0; b < 10; b++) {
    inv.push(...(await timed(N / 10, invoke)));
    hl.push(...(await timed(N / 10, health)));
  }
  return { inv, hl };
}

it('sync invoke latency of select 1 over HTTP', async () => {
  const rows: string[] = [];
  for (const driver of ['pglite', 'pg'] as const) {
    const dir = mkdtempSync(join(tmpdir(), 'cairn-lat-'));
    const config = loadConfig(
      {
        port: 0,
        dataDir: dir,
        databaseUrl: driver === 'pg' ? await pgDatabase() : undefined,
        db: 'pglite',
        bootstrapToken: TOKEN,
        pollMs: 1000,
      },
      {},
    );
    const server = await startServer(config, silentLogger);
    try {
      const { inv, hl } = await measure(server);
      const f = (xs: number[], p: number) => percentile(xs, p).toFixed(2);
      rows.push(
        `| ${driver === 'pg' ? 'PostgreSQL' : 'PGlite'} | ${f(inv, 50)} | ${f(inv, 99)} | ${f(hl, 50)} | ${f(hl, 99)} | ${(percentile(inv, 50) / percentile(hl, 50)).toFixed(1)}× |`,
      );
      console.log(rows.at(-1));
    } finally {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  }
  writeSection(
    'invoke-latency',
    `## Sync invoke latency of \`select 1\` over HTTP

Command: \`npx vitest run --config bench/vitest.config.ts bench/invoke-latency.bench.ts\` (BENCH_INVOKES=${N})
Machine: ${machine()}.

\`cairn serve\` in-process (API + embedded worker) on a free port; ${N} sequential \`POST /api/lat/one/ops/invoke {}\` over HTTP
(keep-alive) after ${WARMUP} warm-up calls, each creating a fully recorded run (run + item + 3 audit events, snapshot, evidence),
waiting for the worker to claim, execute (as the circle role) and settle it. Alongside, in interleaved blocks: \`GET /healthz\`
(HTTP + one \`SELECT 1\`), the floor of any request.

| database | invoke p50 ms | invoke p99 ms | /healthz p50 ms | /healthz p99 ms | invoke p50 / floor p50 |
|---|---|---|---|---|---|
${rows.join('\n')}
`,
  );
});

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { startServer, type Server } from '../src/runtime.js';
import { silentLogger } from '../src/telemetry/log.js';
import { invokeRunsPerSecond, machine, percentile, timed, writeSection, tableBytes } from './lib.js';

/**
 * Run history at scale (issue 11, step 6): the API's reads and the engine's
 * rates as the history grows, on the embedded PostgreSQL (the default) and on
 * PGlite. The history is bulk-loaded between measurements by copying the rows
 * of real runs (the run, its item, its audit trail and its element events, as
 * the engine wrote them) with new time-ordered ids (UUIDv7-like, as the engine's) spread over the last 25
 * days, then analyzed (as autovacuum, or Cairn's maintenance on PGlite, does
 * within a minute).
 */
const TOKEN = 'cairn_bench_' + randomBytes(12).toString('hex');
const SIZES: Record<'postgres' | 'pglite', number[]> = {
  postgres: (process.env.BENCH_PG_SIZES ?? '0,100000,1000000').split(',').map(Number),
  pglite: (process.env.BENCH_PGLITE_SIZES ?? '0,100000,300000').split(',').map(Number),
};
const SAMPLES = Number(process.env.BENCH_SAMPLES ?? 200);
// Chunks of 10,000 with a checkpoint between them on PGlite: 50,000 at a time made its load super-linear (its WASM heap and WAL).
const CHUNK = Number(process.env.BENCH_CHUNK ?? 10_000);
const ENGINES = (process.env.BENCH_ENGINES ?? 'postgres,pglite').split(',') as ('postgres' | 'pglite')[];

interface Point {
  runs: number;
  invoke: number;
  list: number;
  get: number;
  audit: number;
  stats: number;
  bytesPerRun: number;
  runsPerSec: number;
}

/**
 * Copies the template runs (with their items, audit trail and events) `n` times, as history: run number
 * `from + g` of `total` is queued at an even step over the 25 days before the template runs, so the ids (and
 * every index on time) grow in order as they do in a live history, and each insert lands at an index's
 * right edge (random times made every index insert a random page write; on PGlite, whose file calls are
 * synchronous on Cairn's own thread, that made the load super-linear past about 100,000 runs).
 */
async function load(server: Server, circleId: string, from: number, n: number, total: number): Promise<void> {
  // The template: the newest real run (an index lookup now, not a join the planner may turn into a
  // scan of the whole history once ANALYZE has seen it grow).
  const tplId = (
    await server.db.query<{ id: string }>(
      `SELECT id FROM cairn.runs WHERE circle_id = $1 AND status = 'succeeded' ORDER BY id DESC LIMIT 1`,
      [circleId],
    )
  ).rows[0]!.id;
  for (let done = 0; done < n; done += CHUNK) {
    const k = Math.min(CHUNK, n - done);
    const t0 = performance.now();
    await server.db.query(
      `WITH tpl AS (SELECT * FROM cairn.runs WHERE id = $5::uuid AND circle_id = $1),
       gen AS (
         SELECT g, now() - interval '1 minute'
           - make_interval(secs => 25 * 86400 * (1 - ($3::bigint + g)::float8 / $4::bigint)) AS t
         FROM generate_series(1, $2::int) AS g),
       ids AS (
         SELECT g, t, (lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0') || '7'
           || substr(md5(random()::text), 1, 3) || '8' || substr(md5(random()::text), 1, 15))::uuid AS id
         FROM gen),
       r AS (
         INSERT INTO cairn.runs (id, circle_id, kind, element_id, element_slug, element_type, element_version,
           definition_hash, operation, status, mode, trigger, input, output, error, attempt, max_attempts,
           retryable_on_loss, queued_at, run_after, started_at, finished_at, duration_ms, engine_version, host,
           items_total, items_succeeded, credits_reserved, credits_used, flags, snapshot, trace_id, timeout_ms)
         SELECT ids.id, tpl.circle_id, tpl.kind, tpl.element_id, tpl.element_slug, tpl.element_type,
           tpl.element_version, tpl.definition_hash, tpl.operation,
           CASE WHEN g % 100 = 0 THEN 'failed' ELSE 'succeeded' END, tpl.mode, tpl.trigger, tpl.input, tpl.output,
           tpl.error, tpl.attempt, tpl.max_attempts, tpl.retryable_on_loss, ids.t, ids.t, ids.t,
           ids.t + interval '4 ms', 4 + g % 5, tpl.engine_version, tpl.host, tpl.items_total, tpl.items_succeeded,
           tpl.credits_reserved, tpl.credits_used, tpl.flags, tpl.snapshot, md5(ids.id::text), tpl.timeout_ms
         FROM ids, tpl RETURNING id, queued_at, status),
       it AS (
         INSERT INTO cairn.items (id, run_id, circle_id, key, ord, status, attempt_count, inputs, outputs,
           credits_used, started_at, finished_at, duration_ms, evidence)
         SELECT (left(replace(r.id::text, '-', ''), 13) || substr(md5(random()::text), 1, 19))::uuid, r.id,
           i.circle_id, i.key, i.ord, r.status, i.attempt_count, i.inputs, i.outputs,
           i.credits_used, r.queued_at, r.queued_at, i.duration_ms, i.evidence
         FROM r, (SELECT i.* FROM cairn.items i WHERE i.run_id = $5::uuid) i RETURNING 1),
       ev AS (
         INSERT INTO cairn.run_events (run_id, circle_id, type, from_status, to_status, actor, data, at)
         SELECT r.id, e.circle_id, e.type, e.from_status, e.to_status, e.actor, e.data, r.queued_at
         FROM r, (SELECT e.* FROM cairn.run_events e WHERE e.run_id = $5::uuid ORDER BY e.id) e RETURNING 1),
       el AS (
         INSERT INTO cairn.events (circle_id, run_id, element_id, name, data, at)
         SELECT e.circle_id, r.id, e.element_id, e.name, e.data, r.queued_at
         FROM r, (SELECT e.* FROM cairn.events e WHERE e.run_id = $5::uuid) e RETURNING 1)
       SELECT (SELECT count(*) FROM it) + (SELECT count(*) FROM ev) + (SELECT count(*) FROM el) AS n`,
      [circleId, k, from + done, total, tplId],
    );
    if (process.env.BENCH_CHUNK_LOG)
      console.log(`chunk of ${k} at ${from + done}: ${Math.round(performance.now() - t0)} ms`);
    if (server.db.kind === 'pglite') await server.db.exec('CHECKPOINT');
  }
  await server.worker!.maintain(); // folds the statistics deltas (and, on PGlite, vacuums)
  await server.db.exec('ANALYZE');
}

/** Bytes of all of Cairn's tables with their indexes and TOAST. */
async function cairnBytes(db: Server['db']): Promise<number> {
  return Object.values(await tableBytes(db)).reduce((a, b) => a + b, 0);
}

async function series(engine: 'postgres' | 'pglite'): Promise<Point[]> {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-hist-'));
  const config = loadConfig(
    { port: 0, dataDir: dir, db: engine, bootstrapToken: TOKEN, databaseUrl: undefined },
    { ...process.env, DATABASE_URL: undefined },
  );
  const server = await startServer(config, silentLogger);
  const h = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
  const call = async (method: string, path: string, body?: unknown) => {
    const r = await fetch(server.url + path, {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
    return r.json() as Promise<Record<string, unknown>>;
  };
  const points: Point[] = [];
  try {
    const circle = await call('POST', '/api/circles', { slug: 'hist' });
    await call('POST', '/api/hist/ops/create', {
      element_type: 'sql',
      slug: 'one',
      spec: { query: 'select 1 as one' },
    });
    const invoke = () => call('POST', '/api/hist/one/ops/invoke', {});
    await timed(50, invoke); // warm up, and the template runs the loader copies
    let loaded = 0;
    for (const size of SIZES[engine]) {
      if (size > loaded) {
        const t0 = performance.now();
        await load(server, circle.id as string, loaded, size - loaded, Math.max(...SIZES[engine]));
        console.log(`${engine}: loaded ${size - loaded} runs in ${Math.round(performance.now() - t0)} ms`);
        loaded = size;
      }
      const recent = (await call('GET', '/api/hist/runs?limit=50')).runs as { id: string }[];
      let n = 0;
      const pick = () => recent[n++ % recent.length]!.id;
      const p50 = async (fn: () => Promise<unknown>) => percentile(await timed(SAMPLES, fn), 50);
      const before = await cairnBytes(server.db);
      const counted = Number(
        (await server.db.query<{ n: string }>('SELECT count(*)::text AS n FROM cairn.runs')).rows[0]!.n,
      );
      const runsPerSec = await invokeRunsPerSecond(server, 'hist', 'one', {}, 1_000, 16);
      const bytesPerRun = (await cairnBytes(server.db)) - before;
      points.push({
        runs: counted,
        invoke: await p50(invoke),
        list: await p50(() => call('GET', '/api/hist/runs?status=succeeded&limit=50')),
        get: await p50(() => call('GET', `/api/runs/${pick()}`)),
        audit: await p50(() => call('GET', `/api/runs/${pick()}/audit`)),
        stats: await p50(() => call('GET', '/api/hist/one/ops/stats')),
        bytesPerRun: bytesPerRun / 1_000,
        runsPerSec,
      });
      console.log(engine, points.at(-1));
    }
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  return points;
}

it('run history at scale', async () => {
  const out: string[] = [];
  for (const engine of ENGINES) {
    const pts = await series(engine);
    const base = pts[0]!;
    const f = (x: number, b: number) => `${x.toFixed(2)} (${(x / b).toFixed(2)}×)`;
    out.push(
      `### ${engine === 'postgres' ? 'Embedded PostgreSQL (the default)' : 'PGlite (--db pglite)'}\n\n` +
        '| runs in history | sync invoke p50 ms | runs list p50 ms | run get p50 ms | audit p50 ms | stats p50 ms | table bytes per new run | runs/s (16 submitters) |\n|---|---|---|---|---|---|---|---|\n' +
        pts
          .map(
            (p) =>
              `| ${p.runs.toLocaleString('en')} | ${f(p.invoke, base.invoke)} | ${f(p.list, base.list)} | ${f(p.get, base.get)} | ${f(p.audit, base.audit)} | ${f(p.stats, base.stats)} | ${Math.round(p.bytesPerRun)} | ${Math.round(p.runsPerSec)} |`,
          )
          .join('\n'),
    );
  }
  const section = `## Run history at scale

Command: \`npx vitest run --config bench/vitest.config.ts bench/history.bench.ts\` (BENCH_PG_SIZES=${SIZES.postgres.join(',')}, BENCH_PGLITE_SIZES=${SIZES.pglite.join(',')}, BENCH_SAMPLES=${SAMPLES})
Machine: ${machine()}; \`cairn serve\` in-process on its embedded database, over HTTP. Between measurements the history
is bulk-loaded by copying real runs (run, item, audit trail, element events; 1 in 100 failed) with time-ordered ids
spread evenly over the 25 days before (so ids grow in time order, as in a live history), then analyzed. Each read: the p50 of ${SAMPLES} calls, and its ratio to the same read at the
first size (goal: ≤ 1.2×). The list is \`GET /api/{circle}/runs?status=succeeded&limit=50\`; get and audit read
recent runs; stats is the element's \`stats\` op (a day). Table bytes per new run: the growth of Cairn's tables and
indexes over 1,000 more runs (WAL excluded); runs/s: those 1,000 runs from 16 submitters, executed and settled.

${out.join('\n\n')}
`;
  console.log(section);
  writeSection('history', section);
}, 3_600_000);

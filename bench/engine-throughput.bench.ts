import { randomBytes } from 'node:crypto';
import { inject, it } from 'vitest';
import { z } from 'zod';
import { makeWorkerUtils, run as runGraphile } from 'graphile-worker';
import { PgDb } from '../src/db/pg.js';
import { createCircle } from '../src/store/circles.js';
import { createElement } from '../src/elements/service.js';
import { getElement } from '../src/store/elements.js';
import { getType, operationsOf, typeLookup } from '../src/elements/registry.js';
import { registerInvokeType } from '../test/helpers/types.js';
import { submitRun } from '../src/engine/submit.js';
import { Worker } from '../src/engine/worker.js';
import { cloneTemplate } from '../test/helpers/pg-server.js';
import { machine, median, writeSection } from './lib.js';

const N = Number(process.env.BENCH_RUNS ?? 4000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const PRODUCERS = 8;
const CONCURRENCY = 32;

// A type that does no work, registered only here: the engine is all that is measured.
registerInvokeType({
  type: 'bench-noop',
  title: 'No-op',
  input: z.object({}).passthrough(),
  invoke: async () => ({ output: { ok: true }, evidence: { command: ['noop'] } }),
});

async function newDatabase(): Promise<string> {
  return (await cloneTemplate(inject('pgUrl'), 'cairn_b_')).url;
}

async function produce(n: number, one: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: PRODUCERS }, async () => {
      while (next < n) await one(next++);
    }),
  );
}

/** Cairn: runs created (run + item + audit), claimed, executed, settled and audited, all on PostgreSQL. */
async function cairnRound(url: string, drain: boolean): Promise<number> {
  const db = new PgDb(url, { max: 20 });
  const circle = await createCircle(db, 'b' + randomBytes(3).toString('hex'));
  await createElement(
    db,
    circle,
    { element_type: 'bench-noop', slug: 'noop', spec: {} },
    'bench',
    typeLookup,
  );
  const el = (await getElement(db, circle.id, 'noop'))!;
  const type = getType('bench-noop');
  const op = operationsOf(type).find((o) => o.name === 'invoke')!;
  const worker = new Worker({ db, concurrency: CONCURRENCY, leaseMs: 30_000, pollMs: 50 });
  let done = 0;
  const finished = new Promise<void>((resolve) => {
    void db.listen('cairn_run_done', () => {
      if (++done === N) resolve();
    });
  });
  const submit = () =>
    produce(N, () =>
      submitRun(
        db,
        { circle, element: el, type, op, input: {}, trigger: { type: 'api', source: null, actor: 'bench' } },
        {},
      ),
    );
  if (drain) await submit();
  const t0 = performance.now();
  await worker.start();
  if (!drain) await submit();
  await finished;
  const secs = (performance.now() - t0) / 1000;
  const check = await db.query<{ n: number; e: number }>(
    `SELECT (SELECT count(*)::int FROM cairn.runs WHERE circle_id = $1 AND status = 'succeeded') AS n,
            (SELECT count(*)::int FROM cairn.run_events WHERE circle_id = $1) AS e`,
    [circle.id],
  );
  if (check.rows[0]!.n !== N || check.rows[0]!.e !== 3 * N)
    throw new Error(`incomplete: ${JSON.stringify(check.rows[0])}`);
  await worker.stop(1_000);
  await db.close();
  return N / secs;
}

/** graphile-worker: jobs added with addJob, executed by a no-op task, completed — same database server, same process. */
async function graphileRound(url: string, drain: boolean): Promise<number> {
  const utils = await makeWorkerUtils({ connectionString: url });
  await utils.migrate();
  let done = 0;
  let resolveAll!: () => void;
  const finished = new Promise<void>((r) => (resolveAll = r));
  if (drain) await produce(N, () => utils.addJob('noop', {}));
  const t0 = performance.now();
  const runner = await runGraphile({
    connectionString: url,
    concurrency: CONCURRENCY,
    noHandleSignals: true,
    pollInterval: 50,
    taskList: {
      noop: async () => {
        if (++done === N) setImmediate(resolveAll);
      },
    },
    logger: undefined,
  });
  if (!drain) await produce(N, () => utils.addJob('noop', {}));
  await finished;
  const secs = (performance.now() - t0) / 1000;
  await runner.stop();
  await utils.release();
  return N / secs;
}

async function compare(url: string, drain: boolean) {
  const cairn: number[] = [];
  const graphile: number[] = [];
  const ratios: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    // Alternate the order so neither always runs on a warmer server.
    let c: number;
    let g: number;
    if (r % 2 === 0) {
      c = await cairnRound(url, drain);
      g = await graphileRound(url, drain);
    } else {
      g = await graphileRound(url, drain);
      c = await cairnRound(url, drain);
    }
    cairn.push(c);
    graphile.push(g);
    ratios.push(c / g);
    console.log(
      `${drain ? 'drain' : 'live'} round ${r + 1}: cairn ${c.toFixed(0)} runs/s, graphile-worker ${g.toFixed(0)} jobs/s, ratio ${(c / g).toFixed(2)}`,
    );
  }
  return `| round | Cairn runs/s | graphile-worker jobs/s | ratio |
|---|---|---|---|
${cairn.map((c, i) => `| ${i + 1} | ${c.toFixed(0)} | ${graphile[i]!.toFixed(0)} | ${ratios[i]!.toFixed(2)} |`).join('\n')}
| **median** | **${median(cairn).toFixed(0)}** | **${median(graphile).toFixed(0)}** | **${median(ratios).toFixed(2)}×** |`;
}

it('engine throughput vs graphile-worker', async () => {
  const url = await newDatabase();
  const live = await compare(url, false);
  const drain = await compare(url, true);
  writeSection(
    'engine-throughput',
    `## Engine throughput on PostgreSQL vs graphile-worker

Command: \`npx vitest run --config bench/vitest.config.ts bench/engine-throughput.bench.ts\` (BENCH_RUNS=${N}, BENCH_ROUNDS=${ROUNDS})
Machine: ${machine()}; PostgreSQL 15 started by the harness (fsync off for both), same database for both.

Units of work: ${N} per round, submitted by ${PRODUCERS} concurrent producers (one insert each); one consumer with concurrency ${CONCURRENCY} in the same process.
- **Cairn**: each run is created (run row + item + \`→ queued\` audit event, one statement), claimed in batches (\`FOR UPDATE SKIP LOCKED\`, lease, \`→ running\` event), executed by a no-op type registered by the benchmark, and settled in batches (run + item + \`→ succeeded\` event + NOTIFY). Each round checks that all ${N} runs succeeded with 3 audit events each.
- **graphile-worker 0.16.6**: \`addJob\` + a no-op task, with its default job completion.

### Live: producers and consumer at once (first submit → last completion)

${live}

### Drain: the queue is filled first, then consumed (consumer start → last completion)

${drain}

Goal ≥ 1.0×.

Cairn keeps every run (run, item and three audit events per unit, indexed), so its tables grow round after round; graphile-worker deletes completed jobs. Rounds on this shared 2-core machine vary widely (see the per-round ratios); compare medians, and re-run before concluding from one round.
`,
  );
});

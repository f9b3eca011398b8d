import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { inject, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { startServer, type Server } from '../src/runtime.js';
import { silentLogger } from '../src/telemetry/log.js';
import { getCircleBySlug } from '../src/store/circles.js';
import { getElement } from '../src/store/elements.js';
import { triggerWorkflow } from '../src/engine/workflow-submit.js';
import { cloneTemplate } from '../test/helpers/pg-server.js';
import {
  invokeRunsPerSecond,
  machine,
  median,
  nodeCpuMs,
  percentile,
  postgresCpuMs,
  writeSection,
} from './lib.js';

/**
 * Workflows against plain invokes of the same element, side by side in one
 * process on one PostgreSQL (issue 12): a 20-step chain and a 200-task
 * for_each of a no-op `sql` step (`select 1`), against as many invoke runs of
 * that element. Cost per task: the CPU of Cairn's process and of PostgreSQL's
 * backends per task (goal ≤ 1.25× an invoke run's); fan-out throughput:
 * tasks/s against invoke runs/s from 16 submitters (goal ≥ 1×); step hand-off
 * latency: from a task's child run settled to its dependent's child run started,
 * read from the runs' own timestamps (goal p50 ≤ 2 ms).
 */
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const FAN = Number(process.env.BENCH_FAN ?? 200);
const CHAIN = Number(process.env.BENCH_CHAIN ?? 20);
/** Chains per round: /proc counts CPU in 10 ms ticks, so one 20-task chain is too short to measure. */
const CHAIN_REPS = Number(process.env.BENCH_CHAIN_REPS ?? 10);
const TOKEN = 'cairn_bench_' + randomBytes(12).toString('hex');

/** Where the chain's cost goes (measured by taking the statements apart while building this; see the issue 12 note). */
const NOTES = `The fan-out meets both goals: its tasks share the claim and settle batches of the worker like the invokes do, and
its orchestrator writes a round of task changes and child starts in one statement. The chain does not: a chain is strictly
sequential, so none of that batching applies, and every hand-off is the child's settle (its capture and release on the
ledger) plus one orchestrator statement that moves the next child's share of the parent's reservation to it
(\`cairn.fund_child\`: two transfers and two holds, the wallet untouched), inserts the child run (ten indexes on runs),
writes four audit rows and the task change. What would close it: the compact run record of issue 11 (fewer indexes and
audit rows per run), and the finished task written by the child's settle statement instead of by the next round.
Already done: a child is inserted claimed by the orchestrating worker when it has a free slot (no queue round trip), a
child settled by that worker reaches its orchestrator in memory (no read), and the reservation moves from parent to
child without a wallet write (hand-off p50 3.0 → 2.6 ms, chain CPU per task 2.4× → 2.1× on this machine).`;

interface Cost {
  perSec: number;
  cpuMs: number;
}

async function cpu<T>(n: number, fn: () => Promise<T>): Promise<{ value: T; cpuMs: number }> {
  const [n0, p0] = [nodeCpuMs(), postgresCpuMs()];
  const value = await fn();
  return { value, cpuMs: (nodeCpuMs() - n0 + postgresCpuMs() - p0) / n };
}

async function runWorkflow(server: Server, slug: string): Promise<{ id: string; ms: number }> {
  const circle = (await getCircleBySlug(server.db, 'bench'))!;
  const element = (await getElement(server.db, circle.id, slug))!;
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  let id = '';
  const un = await server.db.listen('cairn_run_done', (x) => x === id && done());
  const t0 = performance.now();
  const t = await triggerWorkflow(server.db, {
    circle,
    element,
    parameters: {},
    trigger: { type: 'api', source: null, actor: 'bench' },
    snapshotExtra: {},
  });
  id = t.run.id;
  server.worker?.kick();
  // The run may have ended before `id` was known to the listener.
  const poll = setInterval(async () => {
    const r = await server.db.query<{ status: string }>('SELECT status FROM cairn.runs WHERE id = $1', [id]);
    if (['succeeded', 'failed', 'cancelled'].includes(r.rows[0]?.status ?? '')) done();
  }, 250);
  await finished;
  clearInterval(poll);
  const ms = performance.now() - t0;
  await un();
  const st = await server.db.query<{ status: string }>('SELECT status FROM cairn.runs WHERE id = $1', [id]);
  if (st.rows[0]!.status !== 'succeeded') throw new Error(`workflow ${slug} ended ${st.rows[0]!.status}`);
  return { id, ms };
}

/** Hand-offs of a chain: each child run's start after the previous task's child run settled (ms). */
async function handoffs(server: Server, runId: string): Promise<number[]> {
  const r = await server.db.query<{ ms: number }>(
    `WITH c AS (
       SELECT i.ord, k.started_at, k.finished_at FROM cairn.items i JOIN cairn.runs k ON k.id = i.child_run_id
       WHERE i.run_id = $1 ORDER BY i.ord)
     SELECT (extract(epoch FROM started_at - lag(finished_at) OVER (ORDER BY ord)) * 1000)::float8 AS ms FROM c`,
    [runId],
  );
  return r.rows
    .map((x) => x.ms)
    .filter((x): x is number => x !== null)
    .map(Number);
}

it('workflows against invoke runs of the same element', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-bench-'));
  const url = (await cloneTemplate(inject('pgUrl'), 'cairn_w_')).url;
  const config = loadConfig(
    { port: 0, dataDir: dir, databaseUrl: url, bootstrapToken: TOKEN, workerConcurrency: 8 },
    {},
  );
  const server = await startServer(config, silentLogger);
  const h = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
  const post = async (path: string, body: unknown) => {
    const r = await fetch(server.url + path, { method: 'POST', headers: h, body: JSON.stringify(body) });
    if (r.status >= 300) throw new Error(`${path}: ${r.status} ${await r.text()}`);
    return r.json();
  };
  const rows: Record<string, { invoke: Cost; chain: Cost; fan: Cost; handoff: number[] }[]> = { pg: [] };
  try {
    await post('/api/circles', { slug: 'bench' }); // welcome credits: 1e9 micro-credits, a million sql runs
    await post('/api/bench/ops/create', {
      element_type: 'sql',
      slug: 'noop',
      spec: { query: 'select 1 as one' },
    });
    await post('/api/bench/ops/create', {
      element_type: 'workflow',
      slug: 'chain',
      spec: {
        steps: Array.from({ length: CHAIN }, (_, i) => ({
          name: `s${i}`,
          element: 'noop',
          ...(i > 0 ? { needs: [`s${i - 1}`] } : {}),
        })),
      },
    });
    await post('/api/bench/ops/create', {
      element_type: 'workflow',
      slug: 'fan',
      spec: {
        concurrency: 64,
        steps: [{ name: 'each', element: 'noop', for_each: [...Array(FAN).keys()], max_items: FAN }],
      },
    });
    // Warm up every path.
    await invokeRunsPerSecond(server, 'bench', 'noop', {}, 100, 16);
    await runWorkflow(server, 'chain');
    await runWorkflow(server, 'fan');
    for (let round = 0; round < ROUNDS; round++) {
      const inv = await cpu(FAN, () => invokeRunsPerSecond(server, 'bench', 'noop', {}, FAN, 16));
      const fan = await cpu(FAN, () => runWorkflow(server, 'fan'));
      const chain = await cpu(CHAIN * CHAIN_REPS, async () => {
        const runs = [];
        for (let i = 0; i < CHAIN_REPS; i++) runs.push(await runWorkflow(server, 'chain'));
        return runs;
      });
      const chainMs = chain.value.reduce((a, r) => a + r.ms, 0);
      const hand: number[] = [];
      for (const r of chain.value) hand.push(...(await handoffs(server, r.id)));
      const point = {
        invoke: { perSec: inv.value, cpuMs: inv.cpuMs },
        fan: { perSec: FAN / (fan.value.ms / 1000), cpuMs: fan.cpuMs },
        chain: { perSec: (CHAIN * CHAIN_REPS) / (chainMs / 1000), cpuMs: chain.cpuMs },
        handoff: hand,
      };
      rows.pg!.push(point);
      console.log(JSON.stringify({ round, ...point, handoff: percentile(point.handoff, 50) }));
    }
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const pts = rows.pg!;
  const m = (f: (p: (typeof pts)[number]) => number) => median(pts.map(f));
  const invCpu = m((p) => p.invoke.cpuMs);
  const fanCpu = m((p) => p.fan.cpuMs);
  const chainCpu = m((p) => p.chain.cpuMs);
  const invRate = m((p) => p.invoke.perSec);
  const fanRate = m((p) => p.fan.perSec);
  const chainRate = m((p) => p.chain.perSec);
  const hand = pts.flatMap((p) => p.handoff);
  const section = `## Workflows against invoke runs

Command: \`npx vitest run --config bench/vitest.config.ts bench/workflow.bench.ts\` (BENCH_ROUNDS=${ROUNDS}, BENCH_FAN=${FAN}, BENCH_CHAIN=${CHAIN}, BENCH_CHAIN_REPS=${CHAIN_REPS})
Machine: ${machine()}; \`cairn serve\` in-process on a PostgreSQL server (the test harness's), worker concurrency 8.
The step is a no-op \`sql\` element (\`select 1\`); the baseline is ${FAN} invoke runs of that element from 16 submitters,
measured in the same process, alternating with the workflows, ${ROUNDS} rounds (medians). CPU per task: Cairn's process
plus PostgreSQL's backends (from /proc), divided by the tasks (a workflow's orchestration included).

| | invoke runs (baseline) | ${FAN}-task for_each | ${CHAIN}-step chain | goal |
|---|---|---|---|---|
| CPU ms per task | ${invCpu.toFixed(2)} | ${fanCpu.toFixed(2)} (${(fanCpu / invCpu).toFixed(2)}×) | ${chainCpu.toFixed(2)} (${(chainCpu / invCpu).toFixed(2)}×, ${CHAIN_REPS} chains a round) | ≤ 1.25× |
| tasks (runs) per second | ${invRate.toFixed(0)} | ${fanRate.toFixed(0)} (${(fanRate / invRate).toFixed(2)}×) | ${chainRate.toFixed(0)} (one at a time) | fan-out ≥ 1× |

Step hand-off latency (a task's child run settled → its dependent's child run started, the runs' own timestamps), over
${hand.length} hand-offs: p50 ${percentile(hand, 50).toFixed(2)} ms, p90 ${percentile(hand, 90).toFixed(2)} ms (goal p50 ≤ 2 ms).

${NOTES}
`;
  console.log(section);
  writeSection('workflow', section);
}, 1_200_000);

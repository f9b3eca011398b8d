import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { inject, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { startServer } from '../src/runtime.js';
import { silentLogger } from '../src/telemetry/log.js';
import { PgDb } from '../src/db/pg.js';
import { createCircle } from '../src/store/circles.js';
import * as ledger from '../src/store/ledger.js';
import { newId } from '../src/core/ids.js';
import { parseElementsYaml } from '../src/yaml.js';
import { cloneTemplate } from '../test/helpers/pg-server.js';
import { machine, median, invokeRunsPerSecond, writeSection } from './lib.js';

const ROWS = Number(process.env.BENCH_ROWS ?? 10_000);
const RUNS = Number(process.env.BENCH_RUNS ?? 3_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);
const TOKEN = 'cairn_bench_' + randomBytes(12).toString('hex');
const greeter = parseElementsYaml(
  readFileSync(new URL('../examples/my-greeter.yaml', import.meta.url), 'utf8'),
)[0]!;

it('batch rows/s vs invoke runs/s of the same go-fn; ledger transfers/s on one wallet', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-bench-'));
  const url = (await cloneTemplate(inject('pgUrl'), 'cairn_b_')).url;
  const config = loadConfig(
    {
      port: 0,
      dataDir: dir,
      databaseUrl: url,
      bootstrapToken: TOKEN,
      workerConcurrency: 4,
      welcomeCredits: 1_000_000_000_000,
    },
    {},
  );
  const server = await startServer(config, silentLogger);
  const h = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
  const call = async (method: string, path: string, body?: unknown) =>
    (
      await fetch(server.url + path, {
        method,
        headers: h,
        body: body === undefined ? undefined : JSON.stringify(body),
      })
    ).json() as Promise<any>;
  try {
    await call('POST', '/api/circles', { slug: 'bench' });
    await call('POST', '/api/bench/ops/apply', greeter);
    await call('POST', '/api/bench/ops/create', {
      element_type: 'table',
      slug: 'names',
      spec: {
        fields: { name: { type: 'string', required: true } },
        columns: {
          greeting: { element: 'my-greeter', input: { name: 'name' }, concurrency: 4, max_attempts: 1 },
        },
      },
    });
    for (let i = 0; i < ROWS; i += 10_000) {
      const n = Math.min(10_000, ROWS - i);
      await call('POST', '/api/bench/names/ops/rows', {
        rows: Array.from({ length: n }, (_, k) => ({ name: `n${i + k}` })),
      });
    }
    // warm the build cache and the sandbox path
    await call('POST', '/api/bench/my-greeter/ops/invoke', { name: 'warm' });

    const invokeRate = () => invokeRunsPerSecond(server, 'bench', 'my-greeter', { name: 'Alice' }, RUNS);
    const batchRate = async () => {
      const t0 = performance.now();
      const r = await call('POST', '/api/bench/names/ops/columns/greeting/run', {});
      if (!r.run_id) throw new Error(JSON.stringify(r));
      for (;;) {
        const run = await call('GET', `/api/runs/${r.run_id}`);
        if (['succeeded', 'completed', 'failed', 'cancelled'].includes(run.status)) {
          if (run.status !== 'succeeded' || run.items_succeeded !== ROWS)
            throw new Error(JSON.stringify(run));
          break;
        }
        await new Promise((res) => setTimeout(res, 100));
      }
      return ROWS / ((performance.now() - t0) / 1000);
    };
    const inv: number[] = [];
    const bat: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      // alternate the order so neither always runs on a warmer machine
      if (r % 2 === 0) {
        inv.push(await invokeRate());
        bat.push(await batchRate());
      } else {
        bat.push(await batchRate());
        inv.push(await invokeRate());
      }
    }

    // Ledger: reserve → capture → release cycles from 16 connections, all on one wallet vs one wallet each.
    const pg = new PgDb(url, { max: 16 });
    const CYCLES = Number(process.env.BENCH_LEDGER_CYCLES ?? 300);
    const W = 16;
    const cyclesOn = async (wallets: string[]) => {
      const runs: { id: string; circle: string }[] = [];
      for (let i = 0; i < W; i++) {
        const c = wallets[i % wallets.length]!;
        for (let k = 0; k < CYCLES; k++) runs.push({ id: newId(), circle: c });
      }
      await pg.query(
        `INSERT INTO cairn.runs (id, circle_id, kind, operation, status, trigger, engine_version, trace_id)
         SELECT (x ->> 'id')::uuid, (x ->> 'circle')::uuid, 'invoke', 'invoke', 'running',
           '{"type":"api","source":null,"actor":"b"}', 'b', 'b' FROM jsonb_array_elements($1::jsonb) AS x`,
        [JSON.stringify(runs)],
      );
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: W }, async (_, w) => {
          for (let k = 0; k < CYCLES; k++) {
            const r = runs[w * CYCLES + k]!;
            if (!(await ledger.reserve(pg, `${r.id}:r`, r.circle, r.id, 1_000, 'bench')))
              throw new Error('refused');
            await ledger.capture(pg, `${r.id}:c`, r.id, 600, 'bench');
            await ledger.release(pg, `${r.id}:l`, r.id, null, 'bench');
          }
        }),
      );
      return (W * CYCLES * 3) / ((performance.now() - t0) / 1000);
    };
    const one = (await createCircle(pg, 'ledger-one', 1_000_000_000_000)).id;
    const many: string[] = [];
    for (let i = 0; i < W; i++) many.push((await createCircle(pg, `ledger-${i}`, 1_000_000_000_000)).id);
    const contended: number[] = [];
    const spread: number[] = [];
    for (let r = 0; r < 3; r++) {
      contended.push(await cyclesOn([one]));
      spread.push(await cyclesOn(many));
    }
    const w = await ledger.getWallet(pg, one);
    if (w.debits_pending !== 0 || w.debits_posted !== 3 * W * CYCLES * 600)
      throw new Error(JSON.stringify(w));
    await pg.close();

    const md = `## Batch runs and the ledger

Command: \`npx vitest run --config bench/vitest.config.ts bench/batch-ledger.bench.ts\` (BENCH_ROWS=${ROWS}, BENCH_RUNS=${RUNS}, BENCH_ROUNDS=${ROUNDS})
Machine: ${machine()}; \`cairn serve\` in-process on PostgreSQL (started by the harness).

### A ${ROWS.toLocaleString('en-US')}-row batch over a cached go-fn vs invoke runs of the same function

The same \`my-greeter\` go-fn (Quick Start, cached binary, every call sandboxed), 4 at a time both ways: as ${RUNS.toLocaleString('en-US')}
invoke runs (each inserted, claimed, executed, settled with its run, item, audit events and ledger capture), and as one
batch run over a ${ROWS.toLocaleString('en-US')}-row table (items claimed and settled in batches; each output written to its row's cell;
the whole estimate reserved at start and captured per settled batch). Rates from submission to the last settlement.

| round | batch rows/s | invoke runs/s | ratio |
|---|---|---|---|
${bat.map((b, i) => `| ${i + 1} | ${b.toFixed(0)} | ${inv[i]!.toFixed(0)} | ${(b / inv[i]!).toFixed(2)} |`).join('\n')}
| **median** | **${median(bat).toFixed(0)}** | **${median(inv).toFixed(0)}** | **${(median(bat) / median(inv)).toFixed(2)}×** |

Goal ≥ 1.0×.

### Ledger transfers under contention

${W} connections each run ${CYCLES} cycles of reserve → capture → release (3 transfers, each a PL/pgSQL call that
updates the wallet row, the run's hold and the grants, appends the transfer and the run's audit event). Contended:
all on one wallet (every transfer serialises on its row lock). Baseline, measured alternately: one wallet per connection.

| round | one wallet (transfers/s) | ${W} wallets (transfers/s) | ratio |
|---|---|---|---|
${contended.map((c, i) => `| ${i + 1} | ${c.toFixed(0)} | ${spread[i]!.toFixed(0)} | ${(c / spread[i]!).toFixed(2)} |`).join('\n')}
| **median** | **${median(contended).toFixed(0)}** | **${median(spread).toFixed(0)}** | **${(median(contended) / median(spread)).toFixed(2)}×** |

After the contended rounds the wallet holds nothing (debits_pending = 0) and its posted debits equal the captures to the micro-credit.
`;
    console.log(md);
    writeSection('batch-ledger', md);
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

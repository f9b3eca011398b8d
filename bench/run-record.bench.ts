import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { inject, it } from 'vitest';
import { z } from 'zod';
import { loadConfig } from '../src/config.js';
import { startServer } from '../src/runtime.js';
import { silentLogger } from '../src/telemetry/log.js';
import { buildGo } from '../src/sandbox/builders/go.js';
import { Sandbox } from '../src/sandbox/runner.js';
import { parseElementsYaml } from '../src/yaml.js';
import { registerInvokeType } from '../test/helpers/types.js';
import { cloneTemplate } from '../test/helpers/pg-server.js';
import type { Db } from '../src/db/types.js';
import {
  invokeRunsPerSecond,
  machine,
  median,
  writeSection,
  concurrently,
  postgresCpuMs,
  machineBusyMs,
  nodeCpuMs,
} from './lib.js';

/**
 * Where the CPU of a sandboxed run goes on these 2 cores: the Node process
 * (API, engine, pg driver, executor), the PostgreSQL backends (the run
 * record's statements) and the rest (the sandbox: helper, bwrap, the
 * program, the kernel's namespace work). Per run, in CPU milliseconds, for
 * go-fn runs through the engine, the sandbox alone, and no-op runs through
 * the engine (the run record with nothing to execute). The ratio goal of the
 * code-actions bench is decided by these sums: the cores are shared.
 */
const M = Number(process.env.BENCH_RUNS ?? 600);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const TOKEN = 'cairn_bench_' + randomBytes(12).toString('hex');

registerInvokeType({
  type: 'bench-noop',
  title: 'No-op',
  input: z.object({}).passthrough(),
  invoke: async () => ({ output: { ok: true }, evidence: { command: ['noop'] } }),
});

interface Split {
  rate: number;
  node: number;
  postgres: number;
  rest: number;
}

async function measure(n: number, fn: () => Promise<number>): Promise<Split> {
  const [n0, p0, m0] = [nodeCpuMs(), postgresCpuMs(), machineBusyMs()];
  const rate = await fn();
  const [n1, p1, m1] = [nodeCpuMs(), postgresCpuMs(), machineBusyMs()];
  const node = (n1 - n0) / n;
  const postgres = (p1 - p0) / n;
  return { rate, node, postgres, rest: Math.max(0, (m1 - m0) / n - node - postgres) };
}

/** The statements that took the most PostgreSQL time since the last reset, per run. */
async function topStatements(db: Db, runs: number): Promise<string[]> {
  const r = await db.query<{ q: string; calls: string; ms: number }>(
    `SELECT regexp_replace(left(query, 90), '\\s+', ' ', 'g') AS q, calls::text, total_exec_time AS ms
     FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC LIMIT 14`,
  );
  return r.rows.map(
    (x) =>
      `| ${(x.ms / runs).toFixed(3)} | ${(Number(x.calls) / runs).toFixed(2)} | \`${x.q.trim().replaceAll('|', '\\|')}…\` |`,
  );
}

it('run record: CPU per run, split by process', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-bench-'));
  const url = (await cloneTemplate(inject('pgUrl'), 'cairn_r_')).url;
  const config = loadConfig(
    { port: 0, dataDir: dir, databaseUrl: url, bootstrapToken: TOKEN, workerConcurrency: 4 },
    {},
  );
  const server = await startServer(config, silentLogger);
  const sandbox = new Sandbox();
  const h = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
  const post = async (path: string, body: unknown) =>
    (await fetch(server.url + path, { method: 'POST', headers: h, body: JSON.stringify(body) })).json();
  try {
    const greeter = parseElementsYaml(
      readFileSync(new URL('../examples/my-greeter.yaml', import.meta.url), 'utf8'),
    )[0]!;
    await post('/api/circles', { slug: 'bench' });
    await post('/api/bench/ops/apply', greeter);
    await post('/api/bench/ops/create', { element_type: 'bench-noop', slug: 'noop', spec: {} });
    const spec = (greeter as { spec: { source: { type: 'inline'; code: string } } }).spec;
    const build = await buildGo(sandbox, { source: spec.source, handler: 'Handler' });
    const alone = () =>
      sandbox.run({
        argv: ['/fn/handler'],
        binds: [{ src: build.binary, dest: '/fn/handler' }],
        env: { CAIRN_TIMEOUT_MS: '30000' },
        stdin: '{"name":"Alice"}',
        limits: { timeoutMs: 30_000, memoryMb: 128 },
        standby: true,
      });
    const phases: Record<string, () => Promise<number>> = {
      'go-fn through the engine': () =>
        invokeRunsPerSecond(server, 'bench', 'my-greeter', { name: 'Alice' }, M),
      'go-fn sandbox alone': () => concurrently(M, 4, alone),
      'no-op through the engine (the run record alone)': () =>
        invokeRunsPerSecond(server, 'bench', 'noop', {}, M),
    };
    for (const fn of Object.values(phases)) await fn(); // warm up
    await server.db.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
    const statements: string[][] = [];
    const got: Record<string, Split[]> = {};
    const names = Object.keys(phases);
    for (let r = 0; r < ROUNDS; r++)
      for (let k = 0; k < names.length; k++) {
        const name = names[(r + k) % names.length]!;
        await new Promise((res) => setTimeout(res, 1_500));
        if (name === names[0]) await server.db.query('SELECT pg_stat_statements_reset()');
        (got[name] ??= []).push(await measure(M, phases[name]!));
        if (name === names[0]) statements.push(await topStatements(server.db, M));
      }
    const f1 = (x: number) => x.toFixed(2);
    const total = (name: string) => {
      const xs = got[name]!;
      return median(xs.map((x) => x.node + x.postgres + x.rest));
    };
    const engine = total(names[0]!);
    const aloneMs = total(names[1]!);
    const budget = aloneMs / 0.9;
    const verdict = `A go-fn run through the engine costs ${engine.toFixed(2)} CPU ms against ${aloneMs.toFixed(2)} for the sandbox alone: the run record adds ${(engine - aloneMs).toFixed(2)} ms (${(((engine - aloneMs) / engine) * 100).toFixed(0)}% of the run). The code-actions goal (engine ≥ 0.9× the bare floor, which the sandbox alone matches) allows at most ${budget.toFixed(2)} ms per run, so the record must cost ≤ ${(budget - aloneMs).toFixed(2)} ms. The no-op run record (no price: no ledger movement) costs ${total(names[2]!).toFixed(2)} ms; a priced run adds the ledger: a reserve at submit and a capture (plus a release when something is left) at settle, each a PL/pgSQL transfer that updates the one wallet row, the run's hold and the grants, appends the transfer, its audit event and the threshold check (the table below). Even the no-op record ${total(names[2]!) > budget - aloneMs ? 'is over that budget' : 'fits that budget'}, so folding the ledger alone does not reach the goal: it needs the ledger folded (one hold row per run instead of wallet + hold + transfer + audit per movement, the wallet row updated once per settle batch: issue 11's "ledger movements folded per run") and the record's own work cut (claim and settle in one round trip when a slot frees, the snapshot stored once instead of per run, narrower audit rows: issue 11's compact runs). Settles come one or two runs at a time at this rate, so batching alone does not amortise them.`;
    const rows = names.map((name) => {
      const s = got[name]!;
      const m = (k: keyof Split) => median(s.map((x) => x[k]));
      return `| ${name} | ${Math.round(m('rate'))} | ${f1(m('node'))} | ${f1(m('postgres'))} | ${f1(m('rest'))} | ${f1(total(name))} |`;
    });
    const section = `## Run record: CPU per run\n\nCommand: \`npx vitest run --config bench/vitest.config.ts bench/run-record.bench.ts\` (BENCH_RUNS=${M}, BENCH_ROUNDS=${ROUNDS})\nMachine: ${machine()}; \`cairn serve\` in-process on PostgreSQL, worker concurrency 4.\n\n| phase | runs/s | Node CPU ms/run | PostgreSQL CPU ms/run | rest (sandbox, kernel) ms/run | total ms/run |\n|---|---|---|---|---|---|\n${rows.join('\n')}\n\nPostgreSQL execution time of the go-fn phase by statement (last round; nested statements of the\nPL/pgSQL ledger functions are counted inside their caller too), ms per run and calls per run:\n\n| ms/run | calls/run | statement |\n|---|---|---|\n${statements.at(-1)!.join('\n')}\n\n${verdict}\n`;
    console.log(section);
    writeSection('run-record', section);
  } finally {
    sandbox.close();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

import { mkdirSync, readFileSync, writeFileSync, existsSync, readdirSync } from 'node:fs';
import { cpus } from 'node:os';
import type { Db } from '../src/db/types.js';
import { getCircleBySlug } from '../src/store/circles.js';
import { getElement } from '../src/store/elements.js';
import { getType, operationsOf } from '../src/elements/registry.js';
import { submitRun } from '../src/engine/submit.js';

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

/** Times `n` sequential calls (ms each). */
export async function timed(n: number, fn: () => Promise<unknown>): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn();
    out.push(performance.now() - t0);
  }
  return out;
}

export const machine = () => `${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, Node ${process.version}`;

const OUT = new URL('./out/', import.meta.url);
const RESULTS = new URL('./results.md', import.meta.url);

/** Each benchmark writes its section; `bench/results.md` is assembled from the sections. */
export function writeSection(name: string, markdown: string): void {
  mkdirSync(OUT, { recursive: true });
  writeFileSync(new URL(`${name}.md`, OUT), markdown.trim() + '\n');
  const order = [
    'engine-throughput',
    'invoke-latency',
    'embedded',
    'history',
    'code-actions',
    'run-record',
    'batch-ledger',
    'workflow',
    'triggers',
    'live',
    'ui',
    'llm',
  ];
  // A section not measured on this machine yet keeps what results.md has for it (by its heading).
  const headings: Record<string, string> = {
    'engine-throughput': '## Engine throughput',
    'invoke-latency': '## Sync invoke latency',
    embedded: '## Embedded databases',
    history: '## Run history at scale',
    'code-actions': '## Code actions',
    'run-record': '## Run record',
    'batch-ledger': '## Batch runs and the ledger',
    workflow: '## Workflows against invoke runs',
    live: '## Watching runs: live events and traces',
    ui: '## The run page in a browser',
    triggers: '## Triggers and policies',
    llm: '## LLM gateway and the http element',
  };
  const current = existsSync(RESULTS) ? readFileSync(RESULTS, 'utf8') : '';
  const kept = (n: string): string | undefined => {
    const at = current.indexOf(headings[n]!);
    if (at < 0) return undefined;
    const next = current.indexOf('\n## ', at + 1);
    return current.slice(at, next < 0 ? undefined : next + 1).trim() + '\n';
  };
  const parts = order
    .map((n) =>
      existsSync(new URL(`${n}.md`, OUT)) ? readFileSync(new URL(`${n}.md`, OUT), 'utf8') : kept(n),
    )
    .filter((x): x is string => x !== undefined);
  writeFileSync(
    RESULTS,
    `# Benchmark results\n\nMeasured side by side in one process run, on a shared and noisy machine: read the ratios, not the absolute numbers.\nReproduce with \`npm run bench\` (all) or \`npx vitest run --config bench/vitest.config.ts bench/<name>.bench.ts\`.\n\n${parts.join('\n')}`,
  );
}

/**
 * Submits `count` runs (one after another, or from `producers` at once) and answers runs/s
 * from the first submit to the last settlement.
 */
export async function runsPerSecond(
  db: Db,
  count: number,
  submit: () => Promise<unknown>,
  kick: () => void,
  producers = 1,
): Promise<number> {
  let done = 0;
  let resolveAll!: () => void;
  const all = new Promise<void>((r) => (resolveAll = r));
  const un = await db.listen('cairn_run_done', () => ++done === count && resolveAll());
  const t0 = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: producers }, async () => {
      while (next++ < count) await submit();
    }),
  );
  kick();
  await all;
  await un();
  return count / ((performance.now() - t0) / 1000);
}

/**
 * Invoke runs of one element per second through the engine (no HTTP): each
 * submitted as the API would, then claimed, executed and settled by `server`'s worker.
 */
export async function invokeRunsPerSecond(
  server: { db: Db; worker?: { kick(): void } },
  circleSlug: string,
  elementSlug: string,
  input: unknown,
  count: number,
  producers = 1,
): Promise<number> {
  const circle = (await getCircleBySlug(server.db, circleSlug))!;
  const element = (await getElement(server.db, circle.id, elementSlug))!;
  const type = getType(element.element_type);
  const op = operationsOf(type).find((o) => o.name === 'invoke')!;
  const trigger = { type: 'api', source: null, actor: 'bench' };
  return runsPerSecond(
    server.db,
    count,
    () => submitRun(server.db, { circle, element, type, op, input, trigger }, {}),
    () => server.worker?.kick(),
    producers,
  );
}

/** Runs `fn` `total` times, `width` at a time; answers calls per second. */
export async function concurrently(
  total: number,
  width: number,
  fn: () => Promise<unknown>,
): Promise<number> {
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next++ < total) await fn();
    }),
  );
  return total / ((performance.now() - t0) / 1000);
}

/** Bytes of each of Cairn's tables with its indexes and TOAST. */
export async function tableBytes(db: Db): Promise<Record<string, number>> {
  const r = await db.query<{ t: string; b: string }>(
    `SELECT c.relname AS t, pg_total_relation_size(c.oid)::text AS b FROM pg_class c
     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'cairn' AND c.relkind = 'r'`,
  );
  return Object.fromEntries(r.rows.map((x) => [x.t, Number(x.b)]));
}

const TICK_MS = 10; // USER_HZ = 100

/** CPU ms of every process whose command is postgres (its backends and background workers). */
export function postgresCpuMs(): number {
  let ticks = 0;
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      if (comm !== 'postgres') continue;
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(f[11]) + Number(f[12]); // utime, stime
    } catch {
      // gone meanwhile
    }
  }
  return ticks * TICK_MS;
}

/** CPU ms the whole machine spent busy (all cores, every process). */
export function machineBusyMs(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const idle = f[3]! + f[4]!;
  return (f.reduce((a, b) => a + b, 0) - idle) * TICK_MS;
}

export function nodeCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Webhook } from 'standardwebhooks';
import { inject, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { startServer, type Server } from '../src/runtime.js';
import { silentLogger } from '../src/telemetry/log.js';
import { getCircleBySlug } from '../src/store/circles.js';
import { getElement } from '../src/store/elements.js';
import { getType, operationsOf } from '../src/elements/registry.js';
import { decide } from '../src/engine/policy.js';
import { authorize, policySetHash, type AuthzRequest } from '../src/elements/policy/cedar.js';
import { policySet } from '../src/store/policies.js';
import { cloneTemplate } from '../test/helpers/pg-server.js';
import { machine, median, nodeCpuMs, percentile, postgresCpuMs, timed, writeSection } from './lib.js';

/**
 * Triggers and policies (issue 13), each against its baseline in the same process:
 *  1. policy evaluation: sync invokes of `select 1` over HTTP in a circle with 100 policy elements
 *     (one Cedar policy each, none of which applies) against a circle with none, interleaved;
 *     goal: p50 difference ≤ 0.5 ms.
 *  2. signed webhook deliveries (Standard Webhooks, 16 at a time) against async invokes of the same
 *     `select 1` element (16 at a time), first request → last run ended; goal ≥ 0.9× the invokes' runs/s.
 *  3. an every-second schedule while 8 submitters keep the worker busy with `pg_sleep(0.05)` runs
 *     (a steady queue); lateness = fired_at − nominal_at; goal p99 ≤ 1 s.
 */
const DRIVERS = (process.env.BENCH_DRIVERS ?? 'pg,pglite').split(',').filter(Boolean) as ('pg' | 'pglite')[];
const INVOKES = Number(process.env.BENCH_INVOKES ?? 1000);
const POLICIES = Number(process.env.BENCH_POLICIES ?? 100);
const DELIVERIES = Number(process.env.BENCH_DELIVERIES ?? 1000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const WIDTH = 16;
const SCHEDULE_S = Number(process.env.BENCH_SCHEDULE_S ?? 30);
const LOAD_SUBMITTERS = Number(process.env.BENCH_LOAD_SUBMITTERS ?? 8);
/** Async invokes each load submitter keeps in flight (2 × 8 = 16 runs for 8 worker slots: a steady queue). */
const LOAD_DEPTH = Number(process.env.BENCH_LOAD_DEPTH ?? 2);
const WARMUP = 100;
const TOKEN = 'cairn_bench_' + randomBytes(12).toString('hex');
const TERMINAL = `('succeeded', 'completed', 'failed', 'cancelled')`;
const COMMAND = 'npx vitest run --config bench/vitest.config.ts bench/triggers.bench.ts';
const label = (d: 'pg' | 'pglite') => (d === 'pg' ? 'PostgreSQL' : 'PGlite');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const f2 = (x: number) => x.toFixed(2);
const ok = (pass: boolean) => (pass ? '✓' : '✗');
/** A paragraph re-wrapped at 118 columns (the notes are assembled from computed parts). */
function wrap(text: string): string {
  const lines: string[] = [];
  let line = '';
  for (const w of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + w.length > 118) {
      lines.push(line);
      line = w;
    } else line = line ? `${line} ${w}` : w;
  }
  if (line) lines.push(line);
  return lines.join('\n');
}

/** "Goal met on …; missed on …." */
function verdict(xs: { name: string; pass: boolean }[], on = 'on'): string {
  const met = xs.filter((x) => x.pass).map((x) => x.name);
  const missed = xs.filter((x) => !x.pass).map((x) => x.name);
  const parts = [
    met.length ? `met ${on} ${met.join(' and ')}` : '',
    missed.length ? `missed ${on} ${missed.join(' and ')}` : '',
  ];
  return `Goal ${parts.filter(Boolean).join('; ')}.`;
}

// ---- the section: three parts, each written as soon as it is measured ----------------------------

const HEADINGS = {
  policy: '### Policy evaluation before every run',
  webhook: '### Signed webhook deliveries against async invokes',
  schedule: '### Schedule lateness under a load of runs',
} as const;
type Part = keyof typeof HEADINGS;
const parts = new Map<Part, string>();

/** Writes the section with the parts measured in this process; a part not measured keeps its last text. */
function flush(): void {
  const file = new URL('./out/triggers.md', import.meta.url);
  const old = existsSync(file) ? readFileSync(file, 'utf8') : '';
  const keptPart = (p: Part): string | undefined => {
    const at = old.indexOf(HEADINGS[p]);
    if (at < 0) return undefined;
    const next = old.indexOf('\n### ', at + 1);
    return old.slice(at, next < 0 ? undefined : next + 1).trim();
  };
  const body = (Object.keys(HEADINGS) as Part[])
    .map((p) => parts.get(p)?.trim() ?? keptPart(p))
    .filter((x): x is string => x !== undefined);
  writeSection(
    'triggers',
    `## Triggers and policies

Command: \`${COMMAND}\` (the parameters of each part are given with it; \`-t <part>\` measures one part and keeps the others)
Machine: ${machine()}; \`cairn serve\` in-process on a free port, requests over real HTTP (keep-alive) from the same process;
PostgreSQL is the test harness's server (fsync off), each server on a fresh clone of the migrated template database.

${body.join('\n\n')}
`,
  );
}

// ---- servers --------------------------------------------------------------------------------------

interface Bench {
  server: Server;
  post(path: string, body: unknown, headers?: Record<string, string>): Promise<Response>;
  ok(path: string, body: unknown): Promise<any>;
  stop(): Promise<void>;
}

async function bench(driver: 'pg' | 'pglite', prefix: string, extra: Record<string, unknown> = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-trig-'));
  const config = loadConfig(
    {
      port: 0,
      dataDir: dir,
      databaseUrl: driver === 'pg' ? (await cloneTemplate(inject('pgUrl'), prefix)).url : undefined,
      db: 'pglite',
      bootstrapToken: TOKEN,
      retentionIntervalMs: 0,
      ...extra,
    },
    {},
  );
  const server = await startServer(config, silentLogger);
  const h = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
  const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(server.url + path, { method: 'POST', headers: { ...h, ...headers }, body: JSON.stringify(body) });
  const b: Bench = {
    server,
    post,
    ok: async (path, body) => {
      const r = await post(path, body);
      const text = await r.text();
      if (r.status >= 300) throw new Error(`${path}: ${r.status} ${text}`);
      return JSON.parse(text);
    },
    stop: async () => {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return b;
}

/** Runs `fn(i)` for i < total, `width` at a time. */
async function pool(total: number, width: number, fn: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      for (let i = next++; i < total; i = next++) await fn(i);
    }),
  );
}

/** Where the time goes (from the tables, and a CPU profile of the server taken while writing this benchmark). */
const POLICY_NOTES = (p: PolicyPoint) => {
  const cedar = median(p.cedarA);
  const decided = median(p.decideA) - median(p.decideB);
  return `On PostgreSQL the ${POLICIES} policies cost ${f2(p.cpuA.node - p.cpuB.node)} ms more CPU per invoke in this process
and ${f2(p.cpuA.pg - p.cpuB.pg)} ms more in PostgreSQL; \`decide()\` accounts for ${f2(decided)} ms of the latency, and
Cedar alone for ${f2(cedar)} ms of that in a tight loop. Reading the set, hashing it and pinning its texts no longer
cost per run (the set is kept per circle by its version, the snapshot names it by hash), so what is left is Cedar:
cedar-wasm evaluates every policy of the set for each request (${f2(((cedar - median(p.cedarOne)) / (POLICIES - 1)) * 1000)} µs a policy in
the loop, on top of ${f2(median(p.cedarOne))} ms for a set of one), and inside the server a CPU profile taken while writing this put it at 0.6 ms an
invoke (WebAssembly and the request marshalled into it), more than in the loop. What would close it (src/, not changed
here): give Cedar only the policies that can apply, by indexing the set in process by scope (action, resource type and
uid) and by the context keys a \`when\` reads, so a request is evaluated against those alone; or evaluate the set once
per distinct (principal, action, resource, context) and keep the answer while the set's version holds (the context
carries \`now\`, so only for sets that do not read it).`;
};

interface StatementRow {
  q: string;
  /** calls/run and ms/run, webhook phase and invoke phase. */
  hc: number;
  ic: number;
  hm: number;
  im: number;
}

const BY_KEY_LOOKUP = 'SELECT * FROM cairn.runs WHERE circle_id = $1 AND idempotency_key';

const WEBHOOK_NOTES = (rounds: WebhookPoint['rounds'], rows: StatementRow[], extraCalls: number) => {
  const m = (fn: (r: WebhookPoint['rounds'][number]) => number) => median(rounds.map(fn));
  const node = m((r) => r.hook.nodeMs - r.invoke.nodeMs);
  const pg = m((r) => r.hook.pgMs - r.invoke.pgMs);
  const requestBound = m((r) => r.hook.acceptedPerSec / r.hook.perSec) < 1.1;
  const only = rows.filter((x) => x.ic === 0 && x.hc >= 0.5);
  const top = rows[0];
  const lookup = rows.find((x) => x.q.startsWith(BY_KEY_LOOKUP) && x.hc >= 0.5);
  return `On PostgreSQL a delivery costs ${f2(node)} ms more CPU than an async invoke in this process (the client's signing
included) and ${f2(pg)} ms more in PostgreSQL; both phases are CPU-bound on the 2 cores${
    requestBound
      ? ', and the webhook phase is bound by its requests (its runs/s follow its answered requests/s; the invokes are answered faster than the worker runs them)'
      : ''
  }. The webhook path makes ${f2(extraCalls)} more statements per run (nested ones included), ${only.length} of them
statements the invoke path never makes (${only.map((x) => `\`${x.q.slice(0, 40).trim()}…\``).join(', ')}); each is a
round trip and, for a write, a transaction of its own, which costs PostgreSQL more around the statement (parse, bind,
commit, wake-ups) than its execution time in the table shows.${
    top
      ? ` The statement that adds most execution time is \`${top.q.slice(0, 60).trim()}…\` (${f2(top.hm - top.im)} ms/run more).`
      : ''
  }${
    lookup
      ? ` The idempotency-key lookup before the run insert is still made for every delivery: the webhook route asks the
start to skip it (\`fresh: true\`), but \`startTarget\` (src/engine/start.ts) does not pass \`fresh\` on to \`submitRun\`.${
          lookup.hm > 0.2
            ? ` And it costs ${lookup.hm.toFixed(3)} ms/run, growing with the circle's runs: it is a named prepared
statement (src/store/runs.ts \`BY_KEY\`), and the generic plan PostgreSQL keeps for it from when \`cairn.runs\` was nearly
empty scans the circle's runs by \`circle_id\` (index \`runs_circle_slug\`) and filters the key, until \`cairn.runs\` is
analyzed again.`
            : ''
        }`
      : ''
  }`;
};

const SCHEDULE_NOTES = (results: ScheduleResult[]) => {
  const spread = results.find((r) => r.variant === 'spread');
  const same = results.find((r) => r.variant === 'same');
  const ms = (xs: number[] | undefined) => (xs && xs.length ? percentile(xs, 50).toFixed(0) : '–');
  return `The scheduler sleeps until the soonest \`next_at\` and records and fires an occurrence without going through the
queue, so the load does not delay firing. The run then waits in the queue behind the load (run started_at − nominal_at
p50: ${ms(spread?.start)} ms with the load on 8 connections, about one 50 ms load run; ${ms(same?.start)} ms with the load in the
schedule's own circle, whose \`sql\` runs share 2 connections (src/db/pg.ts, \`asCircle\`: \`max: 2\`), so only 2 of the 8
busy worker slots execute, the others hold a run waiting for a connection, and the load makes ${
    spread && same ? (spread.loadRuns / same.loadRuns).toFixed(1) : '–'
  }× fewer runs). The first occurrence after a schedule is created can be up to 0.5 s late: nothing wakes the scheduler
when a schedule is written (\`TriggerSystem.kickScheduler\` in src/engine/triggers.ts is never called), so it first
sleeps out its idle 500 ms (the first / others column).`;
};

// ---- 1. policy evaluation --------------------------------------------------------------------------

/** Policy i: a forbid or a permit whose condition never holds for `select 1` invoked by the bench's token. */
function policyText(i: number): string {
  const id = `@id("c${i}")`;
  switch (i % 5) {
    case 0:
      return `${id} @reason("frozen ${i}") forbid(principal, action == Cairn::Action::"run", resource == Cairn::Sql::"frozen-${i}");`;
    case 1:
      return `${id} @reason("too dear ${i}") forbid(principal, action, resource) when { context.estimated_cost > ${1_000_000_000 + i} };`;
    case 2:
      return `${id} @reason("blocked key ${i}") forbid(principal, action, resource) when { context.input_keys.contains("blocked_${i}") };`;
    case 3:
      return `${id} @reason("intruder ${i}") forbid(principal is Cairn::Token, action, resource) when { principal.name == "intruder-${i}" };`;
    default:
      return `${id} permit(principal, action == Cairn::Action::"run", resource) when { resource.slug == "never-${i}" && context.mode == "live" };`;
  }
}

interface PolicyPoint {
  driver: 'pg' | 'pglite';
  a: number[];
  b: number[];
  decideA: number[];
  decideB: number[];
  cedarA: number[];
  /** Cedar alone with the first policy only. */
  cedarOne: number[];
  /** CPU ms per invoke: this process (server and client) and PostgreSQL's processes. */
  cpuA: { node: number; pg: number };
  cpuB: { node: number; pg: number };
  snapA: number;
  snapB: number;
}

async function policyPoint(driver: 'pg' | 'pglite'): Promise<PolicyPoint> {
  const x = await bench(driver, 'cairn_tp_', { pollMs: 1000 });
  try {
    for (const c of ['pol-a', 'pol-b']) {
      await x.ok('/api/circles', { slug: c });
      await x.ok(`/api/${c}/ops/create`, {
        element_type: 'sql',
        slug: 'one',
        spec: { query: 'select 1 as one' },
      });
    }
    for (let i = 0; i < POLICIES; i++)
      await x.ok('/api/pol-a/ops/create', {
        element_type: 'policy',
        slug: `p${String(i).padStart(3, '0')}`,
        spec: { cedar: policyText(i) },
      });
    // decide() alone (the circle's set as of its version, evaluated with Cedar), in process.
    const db = x.server.db;
    const ask = async (c: string) => {
      const circle = (await getCircleBySlug(db, c))!;
      const element = (await getElement(db, circle.id, 'one'))!;
      const op = operationsOf(getType('sql')).find((o) => o.name === 'invoke')!;
      return () =>
        decide(db, {
          circle,
          element,
          op,
          action: 'run',
          trigger: { type: 'api', source: null, actor: 'bench', role: 'admin' },
          mode: 'live',
          input: {},
          estimatedCost: op.price ?? 0,
        });
    };
    const [askA, askB] = [await ask('pol-a'), await ask('pol-b')];
    const decideRounds = async () => {
      await timed(WARMUP, askA);
      const A: number[] = [];
      const B: number[] = [];
      for (let k = 0; k < 5; k++) {
        A.push(...(await timed(100, askA)));
        B.push(...(await timed(100, askB)));
      }
      return { A, B };
    };
    const lastRun: Record<string, string> = {};
    const invoke = (c: string) => async () => {
      const r = await x.post(`/api/${c}/one/ops/invoke`, {});
      const b: any = await r.json();
      if (b.status !== 'succeeded') throw new Error(JSON.stringify(b));
      lastRun[c] = b.run_id;
    };
    await timed(WARMUP, invoke('pol-a'));
    await timed(WARMUP, invoke('pol-b'));
    const a: number[] = [];
    const b: number[] = [];
    const cpu = { 'pol-a': { node: 0, pg: 0 }, 'pol-b': { node: 0, pg: 0 } };
    // Interleaved in blocks, the order alternating, so both see the same machine.
    for (let k = 0; k < 10; k++) {
      const order = k % 2 ? (['pol-b', 'pol-a'] as const) : (['pol-a', 'pol-b'] as const);
      for (const c of order) {
        const [n0, p0] = [nodeCpuMs(), postgresCpuMs()];
        (c === 'pol-a' ? a : b).push(...(await timed(INVOKES / 10, invoke(c))));
        cpu[c].node += (nodeCpuMs() - n0) / INVOKES;
        cpu[c].pg += (postgresCpuMs() - p0) / INVOKES;
      }
    }
    // The run records the decision and pins the set: check that A's runs were evaluated against all of it.
    const get = async (path: string): Promise<any> =>
      (await fetch(x.server.url + path, { headers: { authorization: `Bearer ${TOKEN}` } })).json();
    const runA = await get(`/api/runs/${lastRun['pol-a']}`);
    const pinned = await get(`/api/runs/${lastRun['pol-a']}/snapshot`);
    const count = pinned.policy_set?.policies?.length ?? pinned.snapshot?.policies?.length;
    if (runA.policy?.decision !== 'allow' || count !== POLICIES)
      throw new Error(
        `circle A's run did not record the policy set: ${JSON.stringify(runA.policy)}, ${count}`,
      );
    const decided = await decideRounds();
    // Of decide() for A: Cedar alone (the set compiled and its hash known, as decide() has them cached).
    const circleA = (await getCircleBySlug(db, 'pol-a'))!;
    const set = (await policySet(db, circleA.id)).map((r) => ({
      element: r.slug,
      text: r.cedar,
      patches: {},
    }));
    const hash = policySetHash(set);
    const req: AuthzRequest = {
      principal: { kind: 'token', name: 'bench', role: 'admin' },
      action: 'run',
      resource: {
        circle: 'pol-a',
        type: 'sql',
        slug: 'one',
        category: 'actions',
        price: 0,
        side_effects: false,
      },
      context: { trigger: 'api', mode: 'live', operation: 'invoke', estimated_cost: 0, input: {} },
    };
    if (authorize(set, req, hash).decision !== 'allow') throw new Error('the set does not allow');
    const cedarOnly = async () => authorize(set, req, hash);
    await timed(WARMUP, cedarOnly);
    const cedarA = await timed(500, cedarOnly);
    const one = set.slice(0, 1);
    const oneHash = policySetHash(one);
    const cedarOneOnly = async () => authorize(one, req, oneHash);
    await timed(WARMUP, cedarOneOnly);
    const cedarOne = await timed(500, cedarOneOnly);
    const snap = async (id: string) =>
      Number(
        (
          await db.query<{ n: string }>(
            `SELECT octet_length(s.body::text)::text AS n FROM cairn.runs r JOIN cairn.snapshots s ON s.hash = r.snapshot_hash WHERE r.id = $1`,
            [id],
          )
        ).rows[0]?.n ?? 0,
      );
    return {
      driver,
      a,
      b,
      decideA: decided.A,
      decideB: decided.B,
      cedarA,
      cedarOne,
      cpuA: cpu['pol-a'],
      cpuB: cpu['pol-b'],
      snapA: await snap(lastRun['pol-a']!),
      snapB: await snap(lastRun['pol-b']!),
    };
  } finally {
    await x.stop();
  }
}

it('policy evaluation overhead on sync invokes', async () => {
  const points: PolicyPoint[] = [];
  for (const d of DRIVERS) {
    points.push(await policyPoint(d));
    const p = points.at(-1)!;
    console.log(d, percentile(p.a, 50), percentile(p.b, 50), median(p.decideA), median(p.decideB));
  }
  const rows = points.map((p) => {
    const diff = percentile(p.a, 50) - percentile(p.b, 50);
    const pg = (v: number) => (p.driver === 'pg' ? f2(v) : '–');
    return `| ${label(p.driver)} | ${f2(percentile(p.a, 50))} | ${f2(percentile(p.a, 99))} | ${f2(percentile(p.b, 50))} | ${f2(percentile(p.b, 99))} | **${f2(diff)}** | ≤ 0.50 | ${ok(diff <= 0.5)} | ${f2(p.cpuA.node)} / ${f2(p.cpuB.node)} | ${pg(p.cpuA.pg)} / ${pg(p.cpuB.pg)} |`;
  });
  const pgPoint = points.find((p) => p.driver === 'pg');
  const breakdown = points.map(
    (p) =>
      `| ${label(p.driver)} | ${f2(median(p.decideA))} | ${f2(median(p.decideB))} | ${f2(median(p.decideA) - median(p.decideB))} | ${f2(median(p.cedarA))} | ${p.snapA} / ${p.snapB} |`,
  );
  parts.set(
    'policy',
    `${HEADINGS.policy}

Parameters: BENCH_INVOKES=${INVOKES}, BENCH_POLICIES=${POLICIES}, BENCH_DRIVERS=${DRIVERS.join(',')}.
Two circles on one server: A holds ${POLICIES} policy elements (one Cedar policy each, ${POLICIES} distinct: forbids on
the resource, on \`context.estimated_cost\`, on \`context.input_keys\` and on the token's name, and permits on
\`resource.slug\` and \`context.mode\`, none of which applies, so every invoke is allowed by \`cairn/default\`); B holds none.
${INVOKES} sequential sync \`POST /api/{A,B}/one/ops/invoke {}\` of a \`sql\` element \`select 1\` each, after ${WARMUP}
warm-up calls each, interleaved in 10 blocks (the order alternating). Each of A's runs records the decision and pins
the set (its ${POLICIES} policies, checked on the last run).

| database | A (${POLICIES} policies) p50 ms | A p99 ms | B (none) p50 ms | B p99 ms | p50 difference ms | goal | | Node CPU ms/invoke A / B | PostgreSQL CPU ms/invoke A / B |
|---|---|---|---|---|---|---|---|---|---|
${rows.join('\n')}

CPU per invoke: this process (server and client alike) and PostgreSQL's backends (from /proc; PGlite runs inside this
process). Where the difference goes, p50 ms of 500 calls each in process (no HTTP): \`decide()\` (the circle's set as
of its version, evaluated), and of it Cedar alone (\`authorize\` with the set compiled and its hash known); and the
size of the run's snapshot (its canonical JSON, stored once per distinct content).

| database | decide() A | decide() B | difference | of A: Cedar alone | run snapshot bytes A / B |
|---|---|---|---|---|---|
${breakdown.join('\n')}

${wrap(`${verdict(points.map((p) => ({ name: label(p.driver), pass: percentile(p.a, 50) - percentile(p.b, 50) <= 0.5 })))} ${pgPoint ? POLICY_NOTES(pgPoint) : ''}`)}`,
  );
  flush();
}, 600_000);

// ---- 2. webhooks against async invokes --------------------------------------------------------------

interface Statement {
  q: string;
  calls: number;
  ms: number;
}

interface Phase {
  /** PostgreSQL's statements of the phase by queryid, per run (when asked for). */
  statements?: Map<string, Statement>;
  perSec: number;
  /** Requests answered per second (the submission side alone). */
  acceptedPerSec: number;
  /** CPU ms per run: this process (server and client) and PostgreSQL's processes. */
  nodeMs: number;
  pgMs: number;
}

/** Sends `n` requests 16 at a time and waits for all their runs to end (polling their statuses). */
async function phase(
  x: Bench,
  n: number,
  send: (i: number) => Promise<string>,
  statements = false,
): Promise<Phase> {
  const ids: string[] = new Array<string>(n);
  if (statements) await x.server.db.query('SELECT pg_stat_statements_reset()');
  const [n0, p0] = [nodeCpuMs(), postgresCpuMs()];
  const t0 = Date.now();
  await pool(n, WIDTH, async (i) => {
    ids[i] = await send(i);
  });
  const accepted = Date.now();
  for (;;) {
    const r = await x.server.db.query<{ n: number; bad: number; last: number }>(
      `SELECT count(*)::int AS n, count(*) FILTER (WHERE status <> 'succeeded')::int AS bad,
              (extract(epoch FROM max(finished_at)) * 1000)::float8 AS last
         FROM cairn.runs WHERE id = ANY($1::uuid[]) AND status IN ${TERMINAL}`,
      [ids],
    );
    const s = r.rows[0]!;
    if (s.n === n) {
      if (s.bad > 0) throw new Error(`${s.bad} runs did not succeed`);
      const [nodeMs, pgMs] = [(nodeCpuMs() - n0) / n, (postgresCpuMs() - p0) / n];
      return {
        ...(statements ? { statements: await statementsPerRun(x.server.db, n) } : {}),
        perSec: n / ((Number(s.last) - t0) / 1000),
        acceptedPerSec: n / ((accepted - t0) / 1000),
        nodeMs,
        pgMs,
      };
    }
    await sleep(50);
  }
}

/** pg_stat_statements since its reset, this database, per run (the phase's own polls left out). */
async function statementsPerRun(db: Server['db'], n: number): Promise<Map<string, Statement>> {
  const r = await db.query<{ id: string; q: string; calls: number; ms: number }>(
    `SELECT queryid::text AS id, regexp_replace(left(min(query), 80), '\\s+', ' ', 'g') AS q,
            sum(calls)::float8 AS calls, sum(total_exec_time)::float8 AS ms
       FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%max(finished_at)%'
      GROUP BY queryid`,
  );
  return new Map(r.rows.map((x) => [x.id, { q: x.q.trim(), calls: x.calls / n, ms: x.ms / n }]));
}

/** The statements the webhook path makes more often than the invoke path (per run), and the totals. */
function statementDiff(hook: Map<string, Statement>, inv: Map<string, Statement>) {
  const rows = [...new Set([...hook.keys(), ...inv.keys()])]
    .map((id) => {
      const h = hook.get(id);
      const i = inv.get(id);
      return { q: (h ?? i)!.q, hc: h?.calls ?? 0, ic: i?.calls ?? 0, hm: h?.ms ?? 0, im: i?.ms ?? 0 };
    })
    .filter((x) => Math.abs(x.hc - x.ic) >= 0.5 || Math.abs(x.hm - x.im) >= 0.03)
    .sort((a, b) => b.hm - b.im - (a.hm - a.im));
  const sum = (m: Map<string, Statement>, k: 'calls' | 'ms') => [...m.values()].reduce((a, x) => a + x[k], 0);
  return {
    raw: rows,
    extraCalls: sum(hook, 'calls') - sum(inv, 'calls'),
    rows: rows.map(
      (x) =>
        `| ${f2(x.hc)} | ${f2(x.ic)} | ${x.hm.toFixed(3)} | ${x.im.toFixed(3)} | \`${x.q.replaceAll('|', '\\|')}…\` |`,
    ),
    totals: `| ${f2(sum(hook, 'calls'))} | ${f2(sum(inv, 'calls'))} | ${sum(hook, 'ms').toFixed(3)} | ${sum(inv, 'ms').toFixed(3)} | all statements (PL/pgSQL's nested ones included) |`,
  };
}

interface WebhookPoint {
  driver: 'pg' | 'pglite';
  rounds: { hook: Phase; invoke: Phase }[];
}

async function webhookPoint(driver: 'pg' | 'pglite'): Promise<WebhookPoint> {
  const x = await bench(driver, 'cairn_tw_');
  try {
    await x.ok('/api/circles', { slug: 'hooks' });
    await x.ok('/api/hooks/ops/create', {
      element_type: 'sql',
      slug: 'one',
      spec: { query: 'select 1 as one' },
    });
    const created = await x.ok('/api/hooks/ops/create', {
      element_type: 'webhook',
      slug: 'hook',
      spec: { signing: 'standard', target: { element: 'one', op: 'invoke', input: {} } },
    });
    const wh = new Webhook(created.shown_once.secret as string);
    const run = randomBytes(4).toString('hex');
    let seq = 0;
    const deliver = async () => {
      const id = `msg_${run}_${seq++}`;
      const payload = JSON.stringify({ delivery: id });
      const at = new Date();
      const r = await fetch(`${x.server.url}/hooks/hooks/hook`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'webhook-id': id,
          'webhook-timestamp': String(Math.floor(at.getTime() / 1000)),
          'webhook-signature': wh.sign(id, at, payload),
        },
        body: payload,
      });
      const b: any = await r.json();
      if (r.status !== 202 || b.duplicate) throw new Error(`${r.status} ${JSON.stringify(b)}`);
      return b.run_id as string;
    };
    const invoke = async () => {
      const r = await x.post('/api/hooks/one/ops/invoke', {}, { prefer: 'respond-async' });
      const b: any = await r.json();
      if (r.status !== 202) throw new Error(`${r.status} ${JSON.stringify(b)}`);
      return b.run_id as string;
    };
    await phase(x, WARMUP, deliver);
    await phase(x, WARMUP, invoke);
    if (driver === 'pg') await x.server.db.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
    const rounds: WebhookPoint['rounds'] = [];
    for (let k = 0; k < ROUNDS; k++) {
      // The last round on PostgreSQL also breaks each phase down by statement.
      const st = driver === 'pg' && k === ROUNDS - 1;
      let hook: Phase;
      let inv: Phase;
      if (k % 2 === 0) {
        hook = await phase(x, DELIVERIES, deliver, st);
        inv = await phase(x, DELIVERIES, invoke, st);
      } else {
        inv = await phase(x, DELIVERIES, invoke, st);
        hook = await phase(x, DELIVERIES, deliver, st);
      }
      rounds.push({ hook, invoke: inv });
      const brief = (p: Phase) => ({ ...p, statements: undefined });
      console.log(driver, k, JSON.stringify({ hook: brief(hook), inv: brief(inv) }));
    }
    // Every delivery started exactly one run, recorded as a webhook run.
    const c = await x.server.db.query<{ d: number; r: number }>(
      `SELECT (SELECT count(*)::int FROM cairn.webhook_deliveries WHERE run_id IS NOT NULL) AS d,
              (SELECT count(*)::int FROM cairn.runs WHERE trigger->>'type' = 'webhook') AS r`,
    );
    const want = WARMUP + ROUNDS * DELIVERIES;
    if (c.rows[0]!.d !== want || c.rows[0]!.r !== want)
      throw new Error(`deliveries ${c.rows[0]!.d}, webhook runs ${c.rows[0]!.r}, expected ${want}`);
    return { driver, rounds };
  } finally {
    await x.stop();
  }
}

it('signed webhook deliveries against async invokes', async () => {
  const points: WebhookPoint[] = [];
  for (const d of DRIVERS) points.push(await webhookPoint(d));
  const perRound = points.flatMap((p) =>
    p.rounds.map(
      (r, k) =>
        `| ${label(p.driver)} | ${k + 1} | ${r.hook.perSec.toFixed(0)} | ${r.invoke.perSec.toFixed(0)} | ${f2(r.hook.perSec / r.invoke.perSec)} |`,
    ),
  );
  const summary = points.map((p) => {
    const m = (fn: (r: (typeof p.rounds)[number]) => number) => median(p.rounds.map(fn));
    const ratio = m((r) => r.hook.perSec / r.invoke.perSec);
    return `| ${label(p.driver)} | ${m((r) => r.hook.perSec).toFixed(0)} | ${m((r) => r.invoke.perSec).toFixed(0)} | **${f2(ratio)}×** | ≥ 0.90× | ${ok(ratio >= 0.9)} | ${m((r) => r.hook.acceptedPerSec).toFixed(0)} / ${m((r) => r.invoke.acceptedPerSec).toFixed(0)} | ${f2(m((r) => r.hook.nodeMs))} / ${f2(m((r) => r.invoke.nodeMs))} | ${p.driver === 'pg' ? `${f2(m((r) => r.hook.pgMs))} / ${f2(m((r) => r.invoke.pgMs))}` : '–'} |`;
  });
  const pgRounds = points.find((p) => p.driver === 'pg')?.rounds ?? [];
  const last = pgRounds.at(-1);
  const diff =
    last?.hook.statements && last.invoke.statements
      ? statementDiff(last.hook.statements, last.invoke.statements)
      : undefined;
  const statementTable = diff
    ? `\n\nPostgreSQL's statements per run, last round (pg_stat_statements, all statements nested ones included;
those the two paths make a different number of times, or that take ≥ 0.03 ms/run longer or shorter on one; by the
execution time the webhook path adds):

| webhook calls/run | invoke calls/run | webhook ms/run | invoke ms/run | statement |
|---|---|---|---|---|
${diff.rows.join('\n')}
${diff.totals}`
    : '';
  parts.set(
    'webhook',
    `${HEADINGS.webhook}

Parameters: BENCH_DELIVERIES=${DELIVERIES}, BENCH_ROUNDS=${ROUNDS}, BENCH_DRIVERS=${DRIVERS.join(',')}; worker concurrency 8.
A \`webhook\` element (signing: standard) targeting a \`sql\` element \`select 1\` (input \`{}\`): ${DELIVERIES} deliveries a
round, each with its own \`webhook-id\` and a small JSON body, signed with \`standardwebhooks\`' \`Webhook.sign\`, sent
${WIDTH} at a time to \`POST /hooks/hooks/hook\` (each verified, claimed once, answered 202). Against it, in the same
process, the order alternating by round: ${DELIVERIES} async invokes of the same element (\`Prefer: respond-async\`,
answered 202), ${WIDTH} at a time. Runs/s: from the first request to the last of the N runs ended (its \`finished_at\`; the
runs' terminal statuses polled every 50 ms). Medians of ${ROUNDS} rounds, after ${WARMUP} of each to warm up. Every
delivery started one run (checked).

| database | webhook runs/s | async invoke runs/s | ratio | goal | | requests answered/s, webhook / invoke | Node CPU ms/run, webhook / invoke | PostgreSQL CPU ms/run, webhook / invoke |
|---|---|---|---|---|---|---|---|---|
${summary.join('\n')}

| database | round | webhook runs/s | invoke runs/s | ratio |
|---|---|---|---|---|
${perRound.join('\n')}${statementTable}

${wrap(`${verdict(points.map((p) => ({ name: label(p.driver), pass: median(p.rounds.map((r) => r.hook.perSec / r.invoke.perSec)) >= 0.9 })))} ${diff ? WEBHOOK_NOTES(pgRounds, diff.raw, diff.extraCalls) : ''}`)}`,
  );
  flush();
}, 600_000);

// ---- 3. schedule lateness under load ------------------------------------------------------------------

/** A `sql` run of one circle holds one of that circle's PostgreSQL connections, and a circle has 2 (src/db/pg.ts). */
const LOAD_CIRCLES = 4;

interface ScheduleResult {
  variant: 'spread' | 'same';
  windowS: number;
  loadRuns: number;
  queued: number[];
  byStatus: Record<string, number>;
  late: number[];
  /** fired_at − nominal_at of the first occurrence after the schedule was created. */
  first: number;
  start: number[];
  notOk: number;
}

/**
 * `spread`: the load runs in LOAD_CIRCLES other circles (8 connections: all 8 worker slots execute);
 * `same`: in the schedule's own circle (its 2 connections: 2 execute, 6 slots wait for one).
 */
async function scheduleUnderLoad(variant: 'spread' | 'same'): Promise<ScheduleResult> {
  const x = await bench('pg', 'cairn_ts_');
  const db = x.server.db;
  try {
    const loadCircles =
      variant === 'same' ? ['sched'] : Array.from({ length: LOAD_CIRCLES }, (_, i) => `load-${i}`);
    for (const c of ['sched', ...loadCircles.filter((c) => c !== 'sched')])
      await x.ok('/api/circles', { slug: c });
    await x.ok('/api/sched/ops/create', {
      element_type: 'sql',
      slug: 'one',
      spec: { query: 'select 1 as one' },
    });
    for (const c of loadCircles)
      await x.ok(`/api/${c}/ops/create`, {
        element_type: 'sql',
        slug: 'slow',
        spec: { query: 'select pg_sleep(0.05) as slept' },
      });
    // The load: each submitter keeps LOAD_DEPTH async invokes of `slow` in flight, waiting for each to end.
    const ended = new Set<string>();
    const waiting = new Map<string, () => void>();
    const un = await db.listen('cairn_run_done', (id) => {
      const w = waiting.get(id);
      if (w) {
        waiting.delete(id);
        w();
      } else ended.add(id);
    });
    const untilEnded = (id: string) =>
      ended.delete(id) ? Promise.resolve() : new Promise<void>((r) => waiting.set(id, r));
    let loading = true;
    let loadRuns = 0;
    const load = Promise.all(
      Array.from({ length: LOAD_SUBMITTERS * LOAD_DEPTH }, async (_, j) => {
        const c = loadCircles[j % loadCircles.length]!;
        while (loading) {
          const r = await x.post(`/api/${c}/slow/ops/invoke`, {}, { prefer: 'respond-async' });
          const b: any = await r.json();
          if (r.status !== 202) throw new Error(`${r.status} ${JSON.stringify(b)}`);
          await untilEnded(b.run_id);
          loadRuns++;
        }
      }),
    );
    await sleep(2_000); // the queue reaches its steady depth
    const queued: number[] = [];
    const sampler = setInterval(() => {
      void db
        .query<{ n: number }>(`SELECT count(*)::int AS n FROM cairn.runs WHERE status = 'queued'`)
        .then((r) => queued.push(r.rows[0]!.n));
    }, 500);
    const loadBefore = loadRuns;
    const t0 = Date.now();
    await x.ok('/api/sched/ops/create', {
      element_type: 'schedule',
      slug: 'tick',
      spec: { cron: '* * * * * *', overlap: 'allow_all', target: { element: 'one', op: 'invoke' } },
    });
    await sleep(SCHEDULE_S * 1000);
    await x.ok('/api/sched/tick/ops/pause', {});
    const windowS = (Date.now() - t0) / 1000;
    const loadDuring = loadRuns - loadBefore;
    clearInterval(sampler);
    loading = false;
    await load;
    await un();
    // Wait for the last scheduled runs to end.
    for (let i = 0; i < 100; i++) {
      const r = await db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM cairn.schedule_occurrences o JOIN cairn.runs r ON r.id = o.run_id
          WHERE r.status NOT IN ${TERMINAL}`,
      );
      if (r.rows[0]!.n === 0) break;
      await sleep(100);
    }
    const occ = await db.query<{ status: string; fired: number | null; started: number | null; run: string }>(
      `SELECT o.status, (extract(epoch FROM o.fired_at - o.nominal_at) * 1000)::float8 AS fired,
              (extract(epoch FROM r.started_at - o.nominal_at) * 1000)::float8 AS started, r.status AS run
         FROM cairn.schedule_occurrences o LEFT JOIN cairn.runs r ON r.id = o.run_id ORDER BY o.nominal_at`,
    );
    const byStatus: Record<string, number> = {};
    for (const o of occ.rows) byStatus[o.status] = (byStatus[o.status] ?? 0) + 1;
    const fired = occ.rows.filter((o) => o.fired !== null && o.status !== 'skipped_paused');
    const result: ScheduleResult = {
      variant,
      windowS,
      loadRuns: loadDuring,
      queued: queued.length > 0 ? queued : [0],
      byStatus,
      late: fired.map((o) => Number(o.fired)),
      first: fired.length > 0 ? Number(fired[0]!.fired) : NaN,
      start: fired.filter((o) => o.started !== null).map((o) => Number(o.started)),
      notOk: fired.filter((o) => o.run !== 'succeeded').length,
    };
    console.log(JSON.stringify(result));
    return result;
  } finally {
    await x.stop();
  }
}

it('schedule lateness under a load of runs', async () => {
  const results = [await scheduleUnderLoad('spread'), await scheduleUnderLoad('same')];
  const p = (xs: number[], n: number) => f2(percentile(xs, n));
  const max = (xs: number[]) => f2(Math.max(...xs));
  const where = (r: ScheduleResult) =>
    r.variant === 'spread' ? `load in ${LOAD_CIRCLES} other circles` : "load in the schedule's own circle";
  const rows = results.flatMap((r) => [
    `| ${where(r)} | fired_at − nominal_at | ${r.late.length} | ${p(r.late, 50)} | ${p(r.late, 99)} | ${max(r.late)} | p99 ≤ 1000 | ${ok(percentile(r.late, 99) <= 1000)} |`,
    `| ${where(r)} | run started_at − nominal_at | ${r.start.length} | ${p(r.start, 50)} | ${p(r.start, 99)} | ${max(r.start)} | (firing is not starting) | |`,
  ]);
  const loads = results.map(
    (r) =>
      `| ${where(r)} | ${r.windowS.toFixed(1)} | ${f2(r.first)} / ${max(r.late.slice(1))} | ${r.loadRuns} | ${(r.loadRuns / r.windowS).toFixed(0)} | ${median(r.queued).toFixed(0)} / ${Math.max(...r.queued)} | ${Object.entries(
        r.byStatus,
      )
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')}${r.notOk === 0 ? '' : `; ${r.notOk} fired runs did not succeed`} |`,
  );
  parts.set(
    'schedule',
    `${HEADINGS.schedule}

Parameters: BENCH_SCHEDULE_S=${SCHEDULE_S}, BENCH_LOAD_SUBMITTERS=${LOAD_SUBMITTERS}, BENCH_LOAD_DEPTH=${LOAD_DEPTH}; PostgreSQL
only (PGlite refuses \`pg_sleep\`); worker concurrency 8, the scheduler in the same process, a fresh server per row.
A \`schedule\` element \`* * * * * *\` (overlap: allow_all, so every occurrence fires however late the run before it
starts) targeting a \`sql\` element \`select 1\`, for ~${SCHEDULE_S} s (then paused), while ${LOAD_SUBMITTERS} submitters each keep
${LOAD_DEPTH} async invokes of a \`sql\` element \`select pg_sleep(0.05)\` in flight over HTTP (${LOAD_SUBMITTERS * LOAD_DEPTH} runs for
the worker's 8 slots: a steady queue). A circle's \`sql\` runs share its 2 PostgreSQL connections, so the load is
measured twice: spread over ${LOAD_CIRCLES} other circles (8 connections: every worker slot executes a load run), and in the
schedule's own circle (2 execute, the other slots wait for a connection, and so does the scheduled run). Lateness from
\`cairn.schedule_occurrences\`: fired_at − nominal_at (the occurrence's run created and recorded); and the run's
started_at − nominal_at (claimed by the worker, behind the queued load runs; its statement may still wait for a
connection of its circle after that).

| load | | occurrences | p50 ms | p99 ms | max ms | goal | |
|---|---|---|---|---|---|---|---|
${rows.join('\n')}

| load | window s | fired_at − nominal_at ms: first occurrence / max of the others | load runs in the window | load runs/s | queued runs, median / max (sampled every 0.5 s) | occurrences by status |
|---|---|---|---|---|---|---|
${loads.join('\n')}

${wrap(
  `${verdict(
    results.map((r) => ({
      name: where(r).replace(/^load/, 'the load'),
      pass: percentile(r.late, 99) <= 1000,
    })),
    'with',
  )} ${SCHEDULE_NOTES(results)}`,
)}`,
  );
  flush();
}, 600_000);

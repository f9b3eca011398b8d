import { createServer, request as httpRequest, type Agent } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import OpenAI from 'openai';
import { expect, inject, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { startServer, type Server } from '../src/runtime.js';
import { silentLogger } from '../src/telemetry/log.js';
import { openRequest, request as guardedRequest } from '../src/net/http-client.js';
import { openaiAdapter } from '../src/elements/llm/wire/openai.js';
import { cloneTemplate } from '../test/helpers/pg-server.js';
import {
  reply,
  startOpenAiServer,
  type LlmServer,
  type OpenAiBehaviour,
} from '../test/support/llm-servers.js';
import { machine, percentile, writeSection } from './lib.js';

/**
 * The LLM gateway and the http element (issue 15), each against its baseline in the same process,
 * interleaved, against the same local server on 127.0.0.1:
 *  1. the official `openai` client calling a local OpenAI-wire server directly, against the same client
 *     calling Cairn's compatible endpoint for an llm element pointing at it (a durable run each, with its
 *     reservation and settlement); goal ≤ 3 ms added at p50. Also the native `ops/invoke`.
 *  2. streaming time to first content delta, the server holding its first chunk 20 ms (then deltas 10 ms
 *     apart, or in a burst); goal ≤ 1.1× at p50.
 *  3. a bare `http.request` GET against a sync invoke of an `http` element GETting the same URL through
 *     the API; goal ≤ 2 ms added at p50; the guarded client alone against the bare request too.
 */
const N = Number(process.env.BENCH_LLM_CALLS ?? 400); // per side
const ROUNDS = Number(process.env.BENCH_LLM_ROUNDS ?? 8);
const WARMUP = 50;
const FIRST_CHUNK_MS = 20;
const CHUNK_GAP_MS = 10;
const TOKEN = 'cairn_bench_' + randomBytes(12).toString('hex');
const OPENAI_KEY = 'sk-bench-' + randomBytes(8).toString('hex');
const COMMAND = 'npx vitest run --config bench/vitest.config.ts bench/llm.bench.ts';
const ANSWER = 'Hello from the local model.';
const STREAMED = 'one two three four';
const USAGE = { prompt_tokens: 12, completion_tokens: 6, total_tokens: 18 };
const MESSAGES = [{ role: 'user' as const, content: 'Say hello.' }];
const f2 = (x: number) => x.toFixed(2);
const ok = (pass: boolean) => (pass ? '✓' : '✗');
const signed = (x: number) => `${x >= 0 ? '+' : ''}${f2(x)}`;
const p50 = (xs: number[]) => percentile(xs, 50);
const p95 = (xs: number[]) => percentile(xs, 95);

/** A side answers the ms it measured (a whole call, or a time to first token). */
type Side = () => Promise<number>;
const call =
  (fn: () => Promise<unknown>): Side =>
  async () => {
    const t0 = performance.now();
    await fn();
    return performance.now() - t0;
  };

/**
 * Every side `WARMUP` times, then `N` each in `ROUNDS` rounds, the order reversed every other round
 * so each side sees the same machine. Answers the samples, and each round's p50 per side.
 */
async function sideBySide<K extends string>(
  sides: Record<K, Side>,
): Promise<{ all: Record<K, number[]>; rounds: Record<K, number>[] }> {
  const names = Object.keys(sides) as K[];
  for (const k of names) for (let i = 0; i < WARMUP; i++) await sides[k]();
  const all = Object.fromEntries(names.map((k) => [k, [] as number[]])) as Record<K, number[]>;
  const rounds: Record<K, number>[] = [];
  const per = Math.ceil(N / ROUNDS);
  for (let r = 0; r < ROUNDS; r++) {
    const round = {} as Record<K, number>;
    for (const k of r % 2 === 0 ? names : [...names].reverse()) {
      const xs: number[] = [];
      for (let i = 0; i < per; i++) xs.push(await sides[k]());
      all[k].push(...xs);
      round[k] = p50(xs);
    }
    rounds.push(round);
  }
  return { all, rounds };
}

/** "a–b" over the rounds of `f(round)`. */
function spread<K extends string>(rounds: Record<K, number>[], f: (r: Record<K, number>) => number): string {
  const xs = rounds.map(f);
  return `${f2(Math.min(...xs))}–${f2(Math.max(...xs))}`;
}

const headers = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
async function post(url: string, path: string, body: unknown, token = TOKEN): Promise<any> {
  const r = await fetch(url + path, {
    method: 'POST',
    headers: { ...headers, authorization: `Bearer ${token}` },
    body: JSON.stringify(body),
  });
  const b = await r.json();
  if (r.status >= 300) throw new Error(`${path}: ${r.status} ${JSON.stringify(b)}`);
  return b;
}

interface Setup {
  server: Server;
  ai: LlmServer<OpenAiBehaviour>;
  target: { url: string; close(): Promise<void> };
  execute: string;
  stop(): Promise<void>;
}

/** `cairn serve` in-process on a clone of the harness's PostgreSQL, a circle, a provider, an llm and an http element. */
async function setUp(): Promise<Setup> {
  const ai = await startOpenAiServer({ api_key: OPENAI_KEY });
  const target = await startTarget();
  const dir = mkdtempSync(join(tmpdir(), 'cairn-llm-bench-'));
  const dbUrl = (await cloneTemplate(inject('pgUrl'), 'bench_llm')).url;
  const config = loadConfig(
    { port: 0, dataDir: dir, databaseUrl: dbUrl, bootstrapToken: TOKEN, retentionIntervalMs: 0 },
    {},
  );
  const server = await startServer(config, silentLogger);
  const u = server.url;
  await post(u, '/api/circles', { slug: 'gw' });
  const create = (element_type: string, slug: string, spec: unknown) =>
    post(u, '/api/gw/ops/create', { element_type, slug, spec });
  await create('secret', 'openai-key', { value: OPENAI_KEY });
  await create('llm-provider', 'oai', { api: 'openai', base_url: ai.url, allow: ['127.0.0.1'] });
  await post(u, '/api/gw/openai-key/ops/attach', { target_id: 'oai', name: 'api_key' });
  await create('llm', 'chat', { model: 'oai/gpt-4o-mini', max_tokens: 100 });
  await create('http', 'get', { method: 'GET', url: target.url, allow: ['127.0.0.1'] });
  // The floor of any durable run on this machine: the sync-invoke bench's `select 1`.
  await create('sql', 'one', { query: 'select 1 as n' });
  const { token: execute } = await post(u, '/api/gw/tokens', { role: 'execute' });
  return {
    server,
    ai,
    target,
    execute,
    stop: async () => {
      await server.stop();
      await ai.close();
      await target.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const TARGET_BODY = JSON.stringify({ ok: true, items: [1, 2, 3], note: 'a small JSON answer' });

/** The http element's destination: a small JSON answer to every GET. */
async function startTarget(): Promise<{ url: string; close(): Promise<void> }> {
  const s = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': String(Buffer.byteLength(TARGET_BODY)),
      });
      res.end(TARGET_BODY);
    });
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const { port } = s.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/thing`,
    close: () =>
      new Promise<void>((r) => {
        s.closeAllConnections();
        s.close(() => r());
      }),
  };
}

/** A bare node:http GET, the whole body read; `agent: false` is a fresh connection each time. */
function bareGet(url: string, agent: Agent | false | undefined): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: 'GET', agent }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

const sections = new Map<string, string>();
function flush(): void {
  const order = ['gateway', 'stream', 'http'];
  writeSection(
    'llm',
    `## LLM gateway and the http element

Command: \`${COMMAND}\` (BENCH_LLM_CALLS=${N} per side, ${ROUNDS} interleaved rounds, order reversed every other round, after ${WARMUP} warm-up calls of each side)
Machine: ${machine()}; \`cairn serve\` in-process on a free port (its embedded worker included) on PostgreSQL (the test
harness's server, fsync off, a fresh clone of the migrated template database; the database the sync-invoke latency bench's
PostgreSQL row uses). The OpenAI-wire server is \`test/support/llm-servers.ts\`'s, and the http element's destination a
bare node:http server, both in this process on 127.0.0.1; every call one at a time.

${order
  .map((k) => sections.get(k))
  .filter((x): x is string => x !== undefined)
  .join('\n\n')}
`,
  );
}

let s: Setup;

it('set up', async () => {
  s = await setUp();
}, 120_000);

it('gateway overhead, non-streaming: the openai client direct against through Cairn', async () => {
  s.ai.setDefault(reply({ text: ANSWER, usage: USAGE }));
  const direct = new OpenAI({ apiKey: OPENAI_KEY, baseURL: s.ai.url, maxRetries: 0 });
  const viaCairn = new OpenAI({
    apiKey: s.execute,
    baseURL: `${s.server.url}/api/gw/chat/v1`,
    maxRetries: 0,
  });
  let bad = 0;
  const check = (content: unknown) => void (content === ANSWER || bad++);
  const endpoint = {
    api: 'openai' as const,
    base_url: s.ai.url,
    api_key: OPENAI_KEY,
    headers: {},
    allow: ['127.0.0.1'],
    timeout_ms: 120_000,
  };
  const chatReq = { model: 'gpt-4o-mini', messages: MESSAGES, max_tokens: 100, stream: false };
  const { all, rounds } = await sideBySide({
    direct: call(async () =>
      check(
        (await direct.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES, max_tokens: 100 }))
          .choices[0]!.message.content,
      ),
    ),
    fetchDirect: call(async () => {
      const r = await fetch(`${s.ai.url}/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${OPENAI_KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'gpt-4o-mini', messages: MESSAGES, max_tokens: 100 }),
      });
      check(((await r.json()) as any).choices[0].message.content);
    }),
    adapter: call(async () =>
      check((await openaiAdapter.chat(endpoint, chatReq, { transport: openRequest })).content),
    ),
    compat: call(async () =>
      check(
        (await viaCairn.chat.completions.create({ model: 'anything', messages: MESSAGES })).choices[0]!
          .message.content,
      ),
    ),
    native: call(async () => {
      const b = await post(s.server.url, '/api/gw/chat/ops/invoke', { messages: MESSAGES }, s.execute);
      check(b.status === 'succeeded' ? b.output.content : b.status);
    }),
    floor: call(async () => {
      const b = await post(s.server.url, '/api/gw/one/ops/invoke', {}, s.execute);
      check(b.status === 'succeeded' && b.output.rows[0].n === 1 ? ANSWER : b.status);
    }),
  });
  expect(bad).toBe(0);
  const added = p50(all.compat) - p50(all.direct);
  const addedNative = p50(all.native) - p50(all.fetchDirect);
  const row = (name: string, xs: number[], base?: number[]) =>
    `| ${name} | ${f2(p50(xs))} | ${f2(p95(xs))} | ${base ? `${signed(p50(xs) - p50(base))} ms` : '—'} |`;
  const text = `### Gateway overhead, non-streaming

${N} chat completions per side (a 6-token answer; usage sent), one at a time; "through Cairn" is a durable run each: the
run, its reservation of the most the call can cost, the provider call through the guarded client, the capture of the exact
cost and the release of the rest, its audit events and evidence.

| path | p50 ms | p95 ms | added at p50 |
|---|---|---|---|
${row('openai client → local server (direct, keep-alive)', all.direct)}
${row('openai client → Cairn `/v1/chat/completions` → local server', all.compat, all.direct)}
${row('baseline for the next: `fetch` POST → local server (direct, keep-alive)', all.fetchDirect)}
${row('`fetch` → Cairn `POST /api/gw/chat/ops/invoke` (native API) → local server', all.native, all.fetchDirect)}
${row('for the breakdown: our OpenAI adapter + guarded client alone, in process (fresh connection)', all.adapter, all.direct)}
${row('the floor of a durable run: `fetch` → Cairn `POST …/ops/invoke` of a sql `select 1` (no provider)', all.floor, all.fetchDirect)}

Goal ≤ 3 ms added at p50 (LiteLLM reports 12 ms median): ${ok(added <= 3)} (compatible endpoint +${f2(added)} ms; native
API +${f2(addedNative)} ms). Above the floor of any durable run here (the sql \`select 1\` row), the gateway adds
${signed(p50(all.native) - p50(all.floor) - p50(all.fetchDirect))} ms at p50: the provider call, pinning its provider and key,
and the capture and release. Added p50 per round: ${spread(rounds, (r) => r.compat - r.direct)} ms (compatible), ${spread(rounds, (r) => r.native - r.fetchDirect)} ms (native).
Between runs of this file it moved more than within one: +16.27 ms (another test file running on the machine), +8.86 and
+12.25 ms through the compatible endpoint in the first three runs; the rows' order never changed.

Where the time goes (a separate instrumented run, not this bench: 300 native invokes each, timing sections, every statement
the pool sent counted, and a CPU profile; on a busier machine, so larger absolute numbers). The provider call itself is not
it: our adapter with the guarded client's fresh connection is as fast as the SDK on keep-alive. The round trips to
PostgreSQL, one after another, are: the run's INSERT with its reservation (~1.7 ms: run, item, snapshot,
\`ledger_reserve\`, audit and live events), the settle (~2.7 ms: the outcome, \`ledger_capture\` and \`ledger_release\`,
audit and live events), and small reads of 0.15–0.5 ms each: the circle by slug and the element (the route), the policy
version (the policy check) and one pinning read (the llm's attachments, its providers and theirs, in one statement; it was
three before the instrumented run showed them). The secret's sealed version is read once per process and kept (versions
are immutable; the box is opened at each use). That is 6 statements a call, one more than the sql floor's; the CPU profile
agrees that they are the cost: its largest single item (~19 % of the samples) is \`writev\` under pg's query submit — on
2 cores, sending a statement hands the CPU to the PostgreSQL backend. The compatible endpoint makes the same statements as
the native API; its extra over the native row is the clients' difference (the SDK against \`fetch\`) and noise.

What would close the rest (not done here): caching the route's and the policy's reads (the circle by slug, the element,
the policy version, invalidated by NOTIFY) takes the call to the 2 statements of the durable run itself. Those alone cost
about the sql floor here, above the 3 ms goal by themselves; meeting it would take a cheaper settle (capture and release as
one movement, fewer live-event trigger inserts: 7 a run) or answering before the settle commits, which gives up "an
answered call is recorded".`;
  console.log(text);
  sections.set('gateway', text);
  flush();
}, 600_000);

it('streaming time to first token: the openai client direct against through Cairn', async () => {
  const direct = new OpenAI({ apiKey: OPENAI_KEY, baseURL: s.ai.url, maxRetries: 0 });
  const viaCairn = new OpenAI({
    apiKey: s.execute,
    baseURL: `${s.server.url}/api/gw/chat/v1`,
    maxRetries: 0,
  });
  let bad = 0;
  type K = 'direct' | 'compat' | 'directBurst' | 'compatBurst';
  const totals: Record<K, number[]> = { direct: [], compat: [], directBurst: [], compatBurst: [] };
  const ttft =
    (client: OpenAI, model: string, k: K, gapMs: number): Side =>
    async () => {
      // Each call's behaviour queued just before it (calls are one at a time): the sides can interleave.
      s.ai.enqueue(
        reply({
          text: STREAMED,
          chunks: 4,
          first_chunk_delay_ms: FIRST_CHUNK_MS,
          chunk_delay_ms: gapMs,
          usage: USAGE,
        }),
      );
      const t0 = performance.now();
      const stream = await client.chat.completions.create({
        model,
        messages: MESSAGES,
        max_tokens: 100,
        stream: true,
        stream_options: { include_usage: true },
      });
      let first = -1;
      let text = '';
      for await (const chunk of stream) {
        const d = chunk.choices[0]?.delta?.content;
        if (d) {
          if (first < 0) first = performance.now() - t0;
          text += d;
        }
      }
      totals[k].push(performance.now() - t0);
      if (text !== STREAMED || first < 0) bad++;
      return first;
    };
  const { all, rounds } = await sideBySide({
    direct: ttft(direct, 'gpt-4o-mini', 'direct', CHUNK_GAP_MS),
    compat: ttft(viaCairn, 'anything', 'compat', CHUNK_GAP_MS),
    directBurst: ttft(direct, 'gpt-4o-mini', 'directBurst', 0),
    compatBurst: ttft(viaCairn, 'anything', 'compatBurst', 0),
  });
  expect(bad).toBe(0);
  const ratio = p50(all.compat) / p50(all.direct);
  const ratioBurst = p50(all.compatBurst) / p50(all.directBurst);
  const added = p50(all.compat) - p50(all.direct);
  const row = (name: string, k: K) =>
    `| ${name} | ${f2(p50(all[k]))} | ${f2(p95(all[k]))} | ${f2(p50(totals[k]))} |`;
  const text = `### Streaming: time to first token

${N} streamed chat completions per side (\`stream: true\`, the openai client), the server holding its first content chunk
${FIRST_CHUNK_MS} ms, then "${STREAMED}" in 4 deltas ${CHUNK_GAP_MS} ms apart (as a model streams) or all at once (a burst);
time to first token = the request sent → the first chunk with content at the client. The four sides interleaved.

| path | TTFT p50 ms | TTFT p95 ms | whole stream p50 ms |
|---|---|---|---|
${row(`openai client → local server (direct), deltas ${CHUNK_GAP_MS} ms apart`, 'direct')}
${row(`openai client → Cairn \`/v1/chat/completions\` (stream) → local server, deltas ${CHUNK_GAP_MS} ms apart`, 'compat')}
${row('openai client → local server (direct), deltas in a burst', 'directBurst')}
${row('openai client → Cairn → local server, deltas in a burst', 'compatBurst')}

TTFT p50 through Cairn / direct: **${f2(ratio)}×** (${signed(added)} ms) — goal ≤ 1.1×: ${ok(ratio <= 1.1)}. Ratio per
round: ${spread(rounds, (r) => r.compat / r.direct)}×. In a burst: ${f2(ratioBurst)}× (${signed(p50(all.compatBurst) - p50(all.directBurst))} ms), per round
${spread(rounds, (r) => r.compatBurst / r.directBurst)}×.

Before its first token a call through Cairn waits for the route's reads, the pinning, the policy check, the run's INSERT
with its reservation and the secret's read (see above), then a fresh connection to the provider; the relay of a delta
itself is under 1 ms. In a burst the whole answer is in at once and the run settles right after the first delta: the
client, in this same process, reads its first chunk after the gateway has sent the settle (an instrumented run measured
the first delta's relay at ~4 ms in a burst, ~0.9 ms with 10 ms gaps), so the burst rows overstate what a client in
another process would see. The added milliseconds, not a ratio, are what the gateway costs: against a ${FIRST_CHUNK_MS} ms first
chunk they are a large fraction; against a hosted model's TTFT the same ${signed(added)} ms would be
${f2((200 + added) / 200)}× at 200 ms and ${f2((1000 + added) / 1000)}× at 1 s (arithmetic, not measured). The first three runs of this file: 1.46× and
1.40× (a burst only, the first with another test file running), then 1.34× with gaps and 1.49× in a burst. Caching the reads would leave the INSERT (~1.7 ms), which must
come first: the reservation is what refuses an over-budget call before it is spent.`;
  console.log(text);
  sections.set('stream', text);
  flush();
}, 600_000);

it('http element GET against a bare http.request of the same URL', async () => {
  const url = s.target.url;
  let bad = 0;
  const check = (body: string | unknown) =>
    void ((typeof body === 'string' ? body : JSON.stringify(body)) === TARGET_BODY || bad++);
  const { all, rounds } = await sideBySide({
    fresh: call(async () => check(await bareGet(url, false))),
    keepAlive: call(async () => check(await bareGet(url, undefined))),
    guarded: call(async () =>
      check(
        (await guardedRequest({ method: 'GET', url, allow: ['127.0.0.1'], timeoutMs: 10_000 })).body.toString(
          'utf8',
        ),
      ),
    ),
    healthz: call(async () => {
      await (await fetch(s.server.url + '/healthz')).arrayBuffer();
    }),
    element: call(async () => {
      const b = await post(s.server.url, '/api/gw/get/ops/invoke', {}, s.execute);
      check(b.status === 'succeeded' ? b.output.body : b.status);
    }),
  });
  expect(bad).toBe(0);
  const added = p50(all.element) - p50(all.fresh);
  const clientAdded = p50(all.guarded) - p50(all.fresh);
  const row = (name: string, xs: number[], base?: number[]) =>
    `| ${name} | ${f2(p50(xs))} | ${f2(p95(xs))} | ${base ? `${signed(p50(xs) - p50(base))} ms` : '—'} |`;
  const text = `### The http element: GET

${N} GETs per side of a local URL answering ${Buffer.byteLength(TARGET_BODY)} bytes of JSON, one at a time. The element's
number is a durable run each (run, reservation of its price, settlement, audit events, evidence with body hashes and
timings), asked for over HTTP; the guarded client (\`src/net/http-client.ts\` \`request\`, in process) is the element's
outbound request alone: URL and allow-list check, its own socket to the checked address, no agent.

| path | p50 ms | p95 ms | against the bare fresh request at p50 |
|---|---|---|---|
${row('bare `http.request`, `agent: false` (a fresh connection)', all.fresh)}
${row('bare `http.request`, the global keep-alive agent', all.keepAlive, all.fresh)}
${row('guarded client alone (a fresh connection)', all.guarded, all.fresh)}
${row('for the breakdown: `GET /healthz` of Cairn (the API hop + one `SELECT 1`)', all.healthz, all.fresh)}
${row('`fetch` → Cairn `POST /api/gw/get/ops/invoke` (http element, a run) → local URL', all.element, all.fresh)}

Goal ≤ 2 ms added at p50: ${ok(added <= 2)} for the element through the API (+${f2(added)} ms, a durable run included);
${ok(clientAdded <= 2)} for the guarded client alone (${signed(clientAdded)} ms; ${signed(p50(all.guarded) - p50(all.keepAlive))} ms against the keep-alive agent, which
the guarded client cannot use: it connects to the address it checked). Added p50 per round: ${spread(rounds, (r) => r.element - r.fresh)} ms (element),
${spread(rounds, (r) => r.guarded - r.fresh)} ms (guarded client). The first three runs of this file: the element +6.47, +6.93,
+8.44 ms; the guarded client +0.06, +0.05, +0.03 ms.

The element's own part is the guarded client; the rest is the API hop (\`/healthz\`'s row) and the durable run — 6
statements to PostgreSQL, the run's INSERT with its reservation and the settle the largest (see the gateway's breakdown
above). The goal, read as the element against the bare request, is met by the client and missed by the run around it.`;
  console.log(text);
  sections.set('http', text);
  flush();
}, 600_000);

it('tear down', async () => {
  await s?.stop();
});

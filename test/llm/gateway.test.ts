/**
 * The LLM gateway end to end (R-LLM): llm and llm-provider elements through the API, against local
 * servers that speak the OpenAI and Anthropic wire formats (test/support/llm-servers.ts). Costs are
 * checked to the micro-credit against the price table by hand, on the ledger too.
 */
import OpenAI from 'openai';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { expectTypedError, testApp, waitRun, type TestApp } from '../helpers/app.js';
import {
  fail,
  failMidStream,
  reply,
  startAnthropicServer,
  startOpenAiServer,
  type LlmServer,
  type AnthropicBehaviour,
  type OpenAiBehaviour,
} from '../support/llm-servers.js';

const OPENAI_KEY = 'sk-openai-test-9f8e7d6c5b4a';
const ANTHROPIC_KEY = 'sk-ant-test-1a2b3c4d5e6f';

describeEachDriver('the LLM gateway', ({ db }) => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  let ai: LlmServer<OpenAiBehaviour>;
  let an: LlmServer<AnthropicBehaviour>;
  const op = (slug: string, name: string) => `/api/${c.slug}/${slug}/ops/${name}`;
  const create = (element_type: string, slug: string, spec: unknown) =>
    t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type, slug, spec },
      element_type === 'secret' ? c.tokens.admin : c.tokens.write,
    );
  const ledger = async (runId: string) => {
    const r = await db().query<{ kind: string; total: string }>(
      'SELECT kind, sum(amount)::bigint AS total FROM cairn.ledger_transfers WHERE run_id = $1 GROUP BY kind',
      [runId],
    );
    const by = Object.fromEntries(r.rows.map((x) => [x.kind, Number(x.total)]));
    return { reserve: by.reserve ?? 0, capture: by.capture ?? 0, release: by.release ?? 0 };
  };

  beforeAll(async () => {
    ai = await startOpenAiServer({ api_key: OPENAI_KEY });
    an = await startAnthropicServer({ api_key: ANTHROPIC_KEY });
    t = await testApp(db());
    c = await t.circle('brains');
    for (const [slug, value] of [
      ['openai-key', OPENAI_KEY],
      ['anthropic-key', ANTHROPIC_KEY],
    ] as const)
      expect((await create('secret', slug, { value })).status).toBe(201);
    expect(
      (
        await create('llm-provider', 'oai', {
          api: 'openai',
          base_url: ai.url,
          allow: ['127.0.0.1'],
          max_retries: 1,
        })
      ).status,
    ).toBe(201);
    expect(
      (await create('llm-provider', 'claude', { api: 'anthropic', base_url: an.url, allow: ['127.0.0.1'] }))
        .status,
    ).toBe(201);
    for (const [secret, provider] of [
      ['openai-key', 'oai'],
      ['anthropic-key', 'claude'],
    ] as const) {
      const a = await t.call(
        'POST',
        op(secret, 'attach'),
        { target_id: provider, name: 'api_key' },
        c.tokens.execute,
      );
      expect(a.status).toBe(201);
    }
    expect(
      (
        await create('llm', 'ask', {
          model: 'oai/gpt-4o-mini',
          system: 'Answer briefly.',
          messages: [{ role: 'user', content: 'Q: ${{ input.q }}' }],
          max_tokens: 100,
        })
      ).status,
    ).toBe(201);
    expect(
      (
        await create('llm', 'ask-claude', {
          model: 'claude/claude-sonnet-4-5',
          messages: [{ role: 'user', content: '${{ input.q }}' }],
          max_tokens: 200,
          stream: true,
        })
      ).status,
    ).toBe(201);
  });
  afterAll(async () => {
    await t.close();
    await ai.close();
    await an.close();
  });

  it('answers through the OpenAI wire format at the exact price, cache reads included, reserved then settled', async () => {
    ai.enqueue(
      reply({
        text: 'Forty-two.',
        model: 'gpt-4o-mini-2024-07-18',
        usage: {
          prompt_tokens: 1200,
          completion_tokens: 80,
          total_tokens: 1280,
          prompt_tokens_details: { cached_tokens: 1000 },
        },
      }),
    );
    const before = ai.requests.length;
    const q = 'What is the answer? '.repeat(70);
    const r = await t.call('POST', op('ask', 'invoke'), { q }, c.tokens.execute);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.status).toBe('succeeded');
    // gpt-4o-mini: $0.15 input, $0.075 cached, $0.60 output per 1M (1 credit = $1):
    // 200 × 0.15 + 1000 × 0.075 + 80 × 0.60 = 30 + 75 + 48 = 153 micro-credits.
    expect(r.body.output).toMatchObject({
      content: 'Forty-two.',
      finish_reason: 'stop',
      model: 'gpt-4o-mini-2024-07-18',
      provider: 'oai',
      usage: {
        input_tokens: 1200,
        output_tokens: 80,
        buckets: { input: 200, cached_input: 1000, cache_write: 0, output: 80, reasoning: 0 },
        estimated: false,
      },
      cost: {
        micro_credits: 153,
        estimated: false,
        price_table_version: expect.any(String),
        priced_as: 'gpt-4o-mini',
      },
    });
    expect(r.body.credits_used).toBe(153);
    // The provider got the key from the attached secret, and the rendered template.
    const sent = ai.requests[before]!;
    expect(sent.headers.authorization).toBe(`Bearer ${OPENAI_KEY}`);
    expect(sent.body.messages).toEqual([
      { role: 'system', content: 'Answer briefly.' },
      { role: 'user', content: `Q: ${q}` },
    ]);
    // Reserved the most the call could cost, captured the exact cost, released the rest.
    const l = await ledger(r.body.run_id);
    expect(l.capture).toBe(153);
    expect(l.reserve).toBeGreaterThan(153);
    expect(l.release).toBe(l.reserve - 153);
    const items = await t.call('GET', `/api/runs/${r.body.run_id}/items`, undefined, c.tokens.read);
    const ev = items.body.items[0].evidence;
    expect(ev).toMatchObject({
      provider: 'oai',
      requested_model: 'gpt-4o-mini',
      served_model: 'gpt-4o-mini-2024-07-18',
      raw_usage: {
        prompt_tokens: 1200,
        completion_tokens: 80,
        total_tokens: 1280,
        prompt_tokens_details: { cached_tokens: 1000 },
      },
      tokens: { input: 200, cached_input: 1000, output: 80 },
      cost_micro_credits: 153,
      request_sha256: expect.stringMatching(/^sha256:[0-9a-f]{64}$/),
      response_sha256: expect.stringMatching(/^sha256:[0-9a-f]{64}$/),
    });
    expect(ev.latency_ms).toBeGreaterThanOrEqual(0);
    expect(typeof ev.ttft_ms).toBe('number');
    expect(JSON.stringify(items.body)).not.toContain(OPENAI_KEY);
  });

  it('streams through the Anthropic wire format: cache writes and reads priced, TTFT recorded', async () => {
    an.enqueue(
      reply({
        text: 'Streamed answer here.',
        chunks: 4,
        first_chunk_delay_ms: 60,
        usage: {
          input_tokens: 100,
          cache_creation_input_tokens: 2000,
          cache_read_input_tokens: 5000,
          output_tokens: 50,
        },
      }),
    );
    const before = an.requests.length;
    // A prompt as long as the usage says: a run is billed at most what it reserved for its prompt.
    const q = 'stream please, '.repeat(500);
    const r = await t.call('POST', op('ask-claude', 'invoke'), { q }, c.tokens.execute);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    // claude-sonnet-4-5: $3 input, $3.75 cache write, $0.30 cache read, $15 output per 1M:
    // 100 × 3 + 2000 × 3.75 + 5000 × 0.30 + 50 × 15 = 300 + 7500 + 1500 + 750 = 10050 micro-credits.
    expect(r.body.output.content).toBe('Streamed answer here.');
    expect(r.body.output.usage.buckets).toEqual({
      input: 100,
      cached_input: 5000,
      cache_write: 2000,
      output: 50,
      reasoning: 0,
    });
    expect(r.body.output.cost.micro_credits).toBe(10050);
    expect(r.body.credits_used).toBe(10050);
    const sent = an.requests[before]!;
    expect(sent.headers['x-api-key']).toBe(ANTHROPIC_KEY);
    expect(sent.body.stream).toBe(true);
    const items = await t.call('GET', `/api/runs/${r.body.run_id}/items`, undefined, c.tokens.read);
    expect(items.body.items[0].evidence.ttft_ms).toBeGreaterThanOrEqual(55);
    expect(items.body.items[0].evidence.latency_ms).toBeGreaterThanOrEqual(
      items.body.items[0].evidence.ttft_ms,
    );
    expect((await ledger(r.body.run_id)).capture).toBe(10050);
  });

  it('falls back along the route when the primary answers 429, honouring retry-after-ms', async () => {
    expect(
      (
        await create('llm', 'routed', {
          route: { primary: 'oai/gpt-4o', fallbacks: ['claude/claude-haiku-4-5'] },
          messages: [{ role: 'user', content: '${{ input.q }}' }],
          max_tokens: 64,
        })
      ).status,
    ).toBe(201);
    ai.enqueue(
      fail('rate_limit', { retry_after: null, retry_after_ms: '120' }),
      fail('rate_limit', { retry_after: null, retry_after_ms: '30' }),
    );
    an.enqueue(reply({ text: 'from the fallback', usage: { input_tokens: 10, output_tokens: 4 } }));
    const t0 = Date.now();
    const r = await t.call('POST', op('routed', 'invoke'), { q: 'hello' }, c.tokens.execute);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(120);
    expect(r.body.output).toMatchObject({ content: 'from the fallback', provider: 'claude' });
    // claude-haiku-4-5: 10 × $1 + 4 × $5 per 1M = 10 + 20 = 30 micro-credits.
    expect(r.body.credits_used).toBe(30);
    const items = await t.call('GET', `/api/runs/${r.body.run_id}/items`, undefined, c.tokens.read);
    expect(items.body.items[0].evidence.attempts).toEqual([
      expect.objectContaining({
        provider: 'oai',
        attempt: 1,
        code: 'LLM_RATE_LIMITED',
        http_status: 429,
        retry_after_ms: 120,
        waited_ms: 120,
      }),
      expect.objectContaining({ provider: 'oai', attempt: 2, code: 'LLM_RATE_LIMITED', http_status: 429 }),
    ]);
  });

  it('a provider reporting more than a call can cost is billed what was reserved, flagged', async () => {
    ai.enqueue(
      reply({
        text: 'x',
        usage: { prompt_tokens: 9_000_000, completion_tokens: 50, total_tokens: 9_000_050 },
      }),
    );
    const r = await t.call('POST', op('ask', 'invoke'), { q: 'tiny' }, c.tokens.execute);
    expect(r.body.status).toBe('succeeded');
    const l = await ledger(r.body.run_id);
    expect(r.body.credits_used).toBe(l.reserve);
    expect(l.capture).toBe(l.reserve);
    const run = await t.call('GET', `/api/runs/${r.body.run_id}`, undefined, c.tokens.read);
    expect(run.body.flags).toContain('cost_capped');
    const items = await t.call('GET', `/api/runs/${r.body.run_id}/items`, undefined, c.tokens.read);
    // 9,000,000 × 0.15 + 50 × 0.60 = 1,350,000 + 30: the reported cost, kept in the evidence.
    expect(items.body.items[0].evidence.cost_capped).toEqual({ reported: 1_350_030, reserved: l.reserve });
  });

  it('a call without usage is marked estimated, never recorded as 0', async () => {
    ai.enqueue(reply({ text: 'no usage from me', usage: null }));
    const r = await t.call('POST', op('ask', 'invoke'), { q: 'x' }, c.tokens.execute);
    expect(r.status).toBe(200);
    expect(r.body.output.usage.estimated).toBe(true);
    expect(r.body.output.cost.estimated).toBe(true);
    expect(r.body.credits_used).toBeGreaterThan(0);
    const run = await t.call('GET', `/api/runs/${r.body.run_id}`, undefined, c.tokens.read);
    expect(run.body.flags).toContain('cost_estimated');
  });

  it('types every provider failure, and a schema mismatch keeps what the call cost', async () => {
    const cases: [OpenAiBehaviour[], string][] = [
      [[fail('auth')], 'LLM_AUTH_FAILED'],
      [[fail('context_length')], 'LLM_CONTEXT_TOO_LONG'],
      [[fail('invalid_request')], 'LLM_INVALID_REQUEST'],
      [[fail('server'), fail('server')], 'LLM_PROVIDER_ERROR'],
      [[fail('overloaded', { status: 503 }), fail('overloaded', { status: 503 })], 'LLM_PROVIDER_ERROR'],
      [
        [failMidStream('server', { after_chunks: 1 }), failMidStream('server', { after_chunks: 1 })],
        'LLM_PROVIDER_ERROR',
      ],
    ];
    for (const [behaviours, code] of cases) {
      ai.enqueue(...behaviours);
      const r = await t.call('POST', op('ask', 'invoke'), { q: code }, c.tokens.execute);
      expect(r.body.status, code).toBe('failed');
      expect(r.body.error.code, JSON.stringify(r.body.error)).toBe(code);
      expectTypedError({ error: r.body.error });
      expect(r.body.credits_used).toBe(0);
    }
    an.enqueue(fail('overloaded'), fail('overloaded'), fail('overloaded'));
    const over = await t.call('POST', op('ask-claude', 'invoke'), { q: 'busy' }, c.tokens.execute);
    expect(over.body.error).toMatchObject({ code: 'LLM_PROVIDER_ERROR', retryable: true });
    expect(over.body.error.details.provider_code).toBe('overloaded_error');

    expect(
      (
        await create('llm', 'structured', {
          model: 'oai/gpt-4o-mini',
          messages: [{ role: 'user', content: '${{ input.q }}' }],
          response_format: { type: 'object', required: ['n'], properties: { n: { type: 'integer' } } },
        })
      ).status,
    ).toBe(201);
    ai.enqueue(
      reply({ json: { n: 7 }, usage: { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 } }),
    );
    const ok = await t.call('POST', op('structured', 'invoke'), { q: 'n?' }, c.tokens.execute);
    expect(ok.body.output.content).toEqual({ n: 7 });
    ai.enqueue(
      reply({ json: { n: 'seven' }, usage: { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 } }),
    );
    const bad = await t.call('POST', op('structured', 'invoke'), { q: 'n?' }, c.tokens.execute);
    expect(bad.body.error.code).toBe('LLM_OUTPUT_SCHEMA_MISMATCH');
    // 10 × 0.15 + 5 × 0.60 = 1.5 + 3 = 4.5 → 5 micro-credits (rounded up, never down).
    expect(bad.body.credits_used).toBe(5);
  });

  it('refuses bad definitions with typed 400s, before any run', async () => {
    const runs = async () =>
      (
        await db().query<{ n: number }>('SELECT count(*)::int AS n FROM cairn.runs WHERE circle_id = $1', [
          c.id,
        ])
      ).rows[0]!.n;
    const n0 = await runs();
    const cases: [string, unknown, string][] = [
      ['llm', { model: 'oai/no-such-model-x1' }, 'LLM_MODEL_NOT_PRICED'],
      ['llm', { model: 'nowhere/gpt-4o' }, 'LLM_PROVIDER_NOT_FOUND'],
      ['llm', { messages: [{ role: 'user', content: 'hi' }] }, 'LLM_NO_PROVIDER'],
      [
        'llm',
        { model: 'oai/gpt-4o', messages: [{ role: 'user', content: '${{ input. }}' }] },
        'INVALID_TEMPLATE',
      ],
      ['llm-provider', { api: 'openai', base_url: ai.url, api_key: OPENAI_KEY }, 'INVALID_SPEC'],
      ['llm-provider', { api: 'openai', base_url: 'http://10.1.2.3/v1' }, 'LLM_PROVIDER_URL_REFUSED'],
      ['llm-provider', { api: 'openai', base_url: ai.url }, 'LLM_PROVIDER_URL_REFUSED'],
      [
        'llm-provider',
        { api: 'openai', base_url: ai.url, allow: ['127.0.0.1'], headers: { Authorization: 'Bearer x' } },
        'LLM_SECRET_INLINE',
      ],
    ];
    for (const [type, spec, code] of cases) {
      const r = await create(
        type,
        `bad-${code.toLowerCase().replace(/_/g, '-')}-${Math.random().toString(36).slice(2, 6)}`,
        spec,
      );
      expect(r.status, `${code}: ${JSON.stringify(r.body)}`).toBe(400);
      expectTypedError(r.body);
      expect(r.body.error.code).toBe(code);
      expect(JSON.stringify(r.body)).not.toContain(OPENAI_KEY);
    }
    // A template that fails on this input: a 400 at invoke, no run.
    const missing = await t.call('POST', op('ask', 'invoke'), {}, c.tokens.execute);
    expect(missing.status).toBe(400);
    expect(missing.body.error.code).toBe('LLM_TEMPLATE_FAILED');
    // A self-hosted model is priced by its provider's declaration.
    expect(
      (
        await create('llm-provider', 'local', {
          api: 'openai',
          base_url: ai.url,
          allow: ['127.0.0.1/32'],
          models: { 'llama-3-8b': { input: 0.05, output: 0.1 } },
        })
      ).status,
    ).toBe(201);
    expect(
      (
        await create('llm', 'local-ask', {
          model: 'local/llama-3-8b',
          messages: [{ role: 'user', content: 'hi' }],
        })
      ).status,
    ).toBe(201);
    expect(await runs()).toBe(n0);
    // No key attached to "local": the request goes without one, and the server refuses it (401).
    const noKey = await t.call('POST', op('local-ask', 'invoke'), {}, c.tokens.execute);
    expect(noKey.body.error.code).toBe('LLM_AUTH_FAILED');
    await t.call(
      'POST',
      op('openai-key', 'attach'),
      { target_id: 'local', name: 'api_key' },
      c.tokens.execute,
    );
    ai.enqueue(
      reply({ text: 'local', usage: { prompt_tokens: 50, completion_tokens: 1000, total_tokens: 1050 } }),
    );
    const local = await t.call('POST', op('local-ask', 'invoke'), {}, c.tokens.execute);
    // 50 × 0.05 + 1000 × 0.10 = 2.5 + 100 = 102.5 → 103 micro-credits (rounded up).
    expect(local.body.credits_used).toBe(103);
  });

  it('a budget stops a run of many calls mid-flight (a column run over table rows)', async () => {
    const made = await create('table', 'questions', {
      fields: { q: { type: 'string', required: true } },
      columns: { answer: { element: 'ask', input: { q: 'q' }, concurrency: 1 } },
    });
    expect(made.status, JSON.stringify(made.body)).toBe(201);
    const rows = Array.from({ length: 10 }, (_, i) => ({ q: `question ${i}` }));
    expect((await t.call('POST', op('questions', 'rows'), { rows }, c.tokens.write)).status).toBe(201);
    // Every call: 50 prompt + 50 output tokens of gpt-4o-mini = 7.5 + 30 → 38 micro-credits.
    ai.setDefault(
      reply({ text: 'an answer', usage: { prompt_tokens: 50, completion_tokens: 50, total_tokens: 100 } }),
    );
    const budget = 250;
    const started = await t.call(
      'POST',
      op('questions', 'columns/answer/run'),
      { budget, on_budget_exceeded: 'stop' },
      c.tokens.execute,
    );
    expect(started.status, JSON.stringify(started.body)).toBe(202);
    const run = await waitRun(t, started.body.run_id, c.tokens.read, { ms: 30_000 });
    ai.setDefault(reply());
    expect(run.flags).toContain('budget_exceeded');
    expect(run.items_succeeded).toBeGreaterThan(0);
    expect(run.items_succeeded).toBeLessThan(rows.length);
    const items = await t.call('GET', `/api/runs/${run.id}/items?limit=100`, undefined, c.tokens.read);
    const skipped = items.body.items.filter((i: any) => i.status === 'skipped').length;
    expect(skipped).toBe(rows.length - run.items_succeeded);
    expect(run.credits_used).toBe(run.items_succeeded * 38);
    expect(run.credits_used).toBeLessThanOrEqual(budget);
    const l = await ledger(run.id);
    expect(l.capture).toBe(run.credits_used);
    expect(l.reserve - l.capture - l.release).toBe(0);
  });

  it('a workflow step calls the model: its task pins the providers and their keys, and bills the call', async () => {
    expect(
      (
        await create('workflow', 'think', {
          steps: [{ name: 'answer', element: 'ask', input: { q: '${{ parameters.q }}' } }],
          outputs: { text: '${{ steps.answer.output.content }}' },
        })
      ).status,
    ).toBe(201);
    ai.enqueue(
      reply({ text: 'from a task', usage: { prompt_tokens: 40, completion_tokens: 10, total_tokens: 50 } }),
    );
    const before = ai.requests.length;
    const r = await t.call('POST', op('think', 'trigger'), { parameters: { q: 'why?' } }, c.tokens.execute);
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    const run = await waitRun(t, r.body.run_id, c.tokens.read, { ms: 30_000 });
    expect(run.status, JSON.stringify(run.error)).toBe('succeeded');
    expect(run.output).toEqual({ text: 'from a task' });
    expect(ai.requests[before]!.headers.authorization).toBe(`Bearer ${OPENAI_KEY}`);
    // 40 × 0.15 + 10 × 0.60 = 6 + 6 = 12 micro-credits, on the workflow run.
    expect(run.credits_used).toBe(12);
    const tasks = await t.call('GET', `/api/runs/${run.id}/tasks`, undefined, c.tokens.read);
    const child = tasks.body.tasks[0].child_run_id;
    const snap = await t.call('GET', `/api/runs/${child}/snapshot`, undefined, c.tokens.read);
    expect(snap.body.snapshot.element.uses.oai.attachments).toEqual([
      expect.objectContaining({ name: 'api_key', modifier: expect.objectContaining({ slug: 'openai-key' }) }),
    ]);
    expect(JSON.stringify(snap.body)).not.toContain(OPENAI_KEY);
  });

  it('answers the official OpenAI client on the compatible endpoint, streaming and not', async () => {
    const base = await t.app.listen({ port: 0, host: '127.0.0.1' });
    expect((await create('llm', 'chat', { model: 'oai/gpt-4o-mini', system: 'You are Cairn.' })).status).toBe(
      201,
    );
    const client = new OpenAI({
      apiKey: c.tokens.execute,
      baseURL: `${base}/api/${c.slug}/chat/v1`,
      maxRetries: 0,
    });
    ai.enqueue(
      reply({
        text: 'Hi from the gateway',
        usage: { prompt_tokens: 20, completion_tokens: 5, total_tokens: 25 },
      }),
    );
    const done = await client.chat.completions.create({
      model: 'anything',
      messages: [{ role: 'user', content: 'hello there' }],
    });
    expect(done.choices[0]!.message.content).toBe('Hi from the gateway');
    expect(done.usage).toMatchObject({ prompt_tokens: 20, completion_tokens: 5, total_tokens: 25 });
    const runId = done.id.replace(/^chatcmpl-/, '');
    const run = await t.call('GET', `/api/runs/${runId}`, undefined, c.tokens.read);
    // 20 × 0.15 + 5 × 0.60 = 3 + 3 = 6 micro-credits.
    expect(run.body).toMatchObject({ status: 'succeeded', credits_used: 6 });
    const sent = ai.requests.at(-1)!;
    expect(sent.body.messages.at(-1)).toEqual({ role: 'user', content: 'hello there' });

    ai.enqueue(
      reply({
        text: 'one two three four',
        chunks: 4,
        usage: { prompt_tokens: 8, completion_tokens: 4, total_tokens: 12 },
      }),
    );
    const stream = await client.chat.completions.create({
      model: 'anything',
      messages: [{ role: 'user', content: 'count' }],
      stream: true,
      stream_options: { include_usage: true },
    });
    const deltas: string[] = [];
    let usage: unknown;
    let finish: string | null = null;
    for await (const chunk of stream) {
      if (chunk.choices[0]?.delta?.content) deltas.push(chunk.choices[0].delta.content);
      if (chunk.choices[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
      if (chunk.usage) usage = chunk.usage;
    }
    expect(deltas.length).toBeGreaterThan(1);
    expect(deltas.join('')).toBe('one two three four');
    expect(finish).toBe('stop');
    expect(usage).toMatchObject({ prompt_tokens: 8, completion_tokens: 4 });
    // A client that goes away mid-stream cancels the run (and with it the provider request).
    ai.enqueue(reply({ text: 'a b c d e f g h i j', chunks: 10, chunk_delay_ms: 150 }));
    const ctl = new AbortController();
    const res = await fetch(`${base}/api/${c.slug}/chat/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${c.tokens.execute}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'x', messages: [{ role: 'user', content: 'long' }], stream: true }),
      signal: ctl.signal,
    });
    const cancelledId = res.headers.get('x-cairn-run-id')!;
    await res.body!.getReader().read();
    ctl.abort();
    const cancelled = await waitRun(t, cancelledId, c.tokens.read, { ms: 10_000 });
    expect(cancelled.status).toBe('cancelled');
    // A failure is the client's typed error.
    ai.enqueue(fail('auth'));
    await expect(
      client.chat.completions.create({ model: 'x', messages: [{ role: 'user', content: 'no' }] }),
    ).rejects.toMatchObject({ status: 401 });
    // A token of another circle gets nothing.
    const other = await t.circle('elsewhere');
    const stranger = new OpenAI({
      apiKey: other.tokens.execute,
      baseURL: `${base}/api/${c.slug}/chat/v1`,
      maxRetries: 0,
    });
    await expect(
      stranger.chat.completions.create({ model: 'x', messages: [{ role: 'user', content: 'hi' }] }),
    ).rejects.toMatchObject({
      status: expect.any(Number),
    });
  });
});

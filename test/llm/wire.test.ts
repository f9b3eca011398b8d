/**
 * The LLM gateway's wire adapters (OpenAI Chat Completions, Anthropic Messages) against local
 * servers that speak each format: bodies on the wire, answers, streams, usage, errors, timings and
 * hashes. Every request goes to 127.0.0.1; the transports refuse anything else, and the last test
 * checks that nothing else was asked for.
 */
import { createHash } from 'node:crypto';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  anthropicAdapter,
  anthropicRequestBody,
  anthropicUsage,
} from '../../src/elements/llm/wire/anthropic.js';
import { parseRetryAfter } from '../../src/elements/llm/wire/exchange.js';
import { openaiAdapter, openaiRequestBody, openaiUsage } from '../../src/elements/llm/wire/openai.js';
import { SseParser, readSse, type SseEvent } from '../../src/elements/llm/wire/sse.js';
import {
  ProviderError,
  type ChatRequest,
  type ChatResult,
  type ProviderEndpoint,
  type WireApi,
} from '../../src/elements/llm/wire/types.js';
import type { OutboundRequest, Transport } from '../../src/net/transport.js';
import {
  fail,
  failMidStream,
  hang,
  raw,
  reply,
  startAnthropicServer,
  startOpenAiServer,
  type AnthropicBehaviour,
  type LlmServer,
  type OpenAiBehaviour,
} from '../support/llm-servers.js';

const sha256 = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');

// ---------------------------------------------------------------------------------------------
// Transports: a file-local one on node:http, and the platform's guarded client when present.

/** Every URL any transport was asked for (the last test checks they are all loopback). */
const asked: string[] = [];

function netError(code: string, message: string): Error & { code: string } {
  return Object.assign(new Error(message), { code });
}

const loopback: Transport = (req) =>
  new Promise((resolve, reject) => {
    const url = new URL(req.url);
    if (url.hostname !== '127.0.0.1') {
      reject(netError('NET_HOST_NOT_ALLOWED', `${url.hostname} is not loopback`));
      return;
    }
    const started = performance.now();
    let res: IncomingMessage | undefined;
    const r = httpRequest({
      host: '127.0.0.1',
      port: Number(url.port),
      path: url.pathname + url.search,
      method: req.method,
      headers: req.headers,
    });
    const abort = (e: Error) => {
      r.destroy(e);
      res?.destroy(e);
    };
    // The budget covers the body too, as the real client's does.
    const timer = setTimeout(
      () => abort(netError('NET_TIMEOUT', `no answer within ${req.timeoutMs} ms`)),
      req.timeoutMs,
    );
    req.signal?.addEventListener('abort', () => abort(netError('NET_ABORTED', 'aborted')), { once: true });
    r.on('error', (e: Error & { code?: string }) => {
      clearTimeout(timer);
      reject(
        e.code?.startsWith('NET_') ? e : netError('NET_CONNECT_FAILED', `${e.code ?? 'error'}: ${e.message}`),
      );
    });
    r.on('response', (m) => {
      res = m;
      m.on('close', () => clearTimeout(timer));
      resolve({
        status: m.statusCode ?? 0,
        headers: m.headers as Record<string, string | string[]>,
        finalUrl: req.url,
        address: '127.0.0.1',
        redirects: [],
        timings: {
          dns_ms: 0,
          connect_ms: 0,
          tls_ms: null,
          ttfb_ms: performance.now() - started,
          total_ms: 0,
        },
        body: m,
        close: () => m.destroy(),
      });
    });
    r.end(req.body);
  });

const recording =
  (t: Transport): Transport =>
  (req: OutboundRequest) => {
    asked.push(req.url);
    return t(req);
  };

const client = await import('../../src/net/http-client.js').catch(() => null);
const transports: { name: string; transport: Transport }[] = [
  { name: 'node:http transport', transport: recording(loopback) },
  ...(client && typeof client.openRequest === 'function'
    ? [{ name: 'guarded client (openRequest)', transport: recording(client.openRequest) }]
    : []),
];

// ---------------------------------------------------------------------------------------------
// Helpers

function endpoint(api: WireApi, base_url: string, o: Partial<ProviderEndpoint> = {}): ProviderEndpoint {
  return { api, base_url, api_key: 'sk-test', allow: ['127.0.0.1'], timeout_ms: 5_000, ...o };
}

function chatReq(o: Partial<ChatRequest> = {}): ChatRequest {
  return {
    model: 'test-model',
    system: 'You are terse.',
    messages: [{ role: 'user', content: 'hello there' }],
    temperature: 0.2,
    max_tokens: 256,
    stream: false,
    ...o,
  };
}

async function failure(p: Promise<unknown>): Promise<ProviderError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(ProviderError);
    return e as ProviderError;
  }
  throw new Error('expected a ProviderError, got an answer');
}

// ---------------------------------------------------------------------------------------------
// SSE parser

describe('the SSE parser', () => {
  const stream =
    ': keep-alive comment\r\n' +
    'event: message_start\r\ndata: {"a":1}\r\n\r\n' +
    'data: first line\ndata: second line\n\n' +
    'event: ping\rdata:no-space\r\r' +
    'id: 7\ndata: ünïcødé ✓ 🚀\n\n' +
    'event: lonely\n\n' +
    'retry: 100\nunknown: x\ndata\n\n' +
    'data: [DONE]\n\n' +
    'data: never closed';

  const expected: SseEvent[] = [
    { event: 'message_start', data: '{"a":1}', id: null },
    { event: null, data: 'first line\nsecond line', id: null },
    { event: 'ping', data: 'no-space', id: null },
    { event: null, data: 'ünïcødé ✓ 🚀', id: '7' },
    { event: null, data: '', id: null },
    { event: null, data: '[DONE]', id: null },
  ];

  it('parses comments, event names, multi-line data, \\n, \\r\\n and \\r, and drops an unclosed event', () => {
    const p = new SseParser();
    expect([...p.push(Buffer.from(stream)), ...p.end()]).toEqual(expected);
  });

  it('gives the same events whatever the chunk boundaries (multi-byte characters and \\r\\n split)', () => {
    const bytes = Buffer.from(stream);
    for (let cut = 1; cut < bytes.length; cut++) {
      const p = new SseParser();
      const got = [...p.push(bytes.subarray(0, cut)), ...p.push(bytes.subarray(cut)), ...p.end()];
      expect(got, `cut at ${cut}`).toEqual(expected);
    }
    const p = new SseParser();
    const oneByOne = [...bytes].flatMap((b) => p.push(Uint8Array.of(b)));
    expect([...oneByOne, ...p.end()]).toEqual(expected);
  });

  it('reads an async byte stream', async () => {
    async function* body() {
      yield Buffer.from('data: a\n');
      yield Buffer.from('\ndata: b\n\n');
    }
    const got: string[] = [];
    for await (const ev of readSse(body())) got.push(ev.data);
    expect(got).toEqual(['a', 'b']);
  });

  it('refuses an event past its size cap', () => {
    const p = new SseParser(100);
    expect(() => p.push('data: ' + 'x'.repeat(200))).toThrow(/larger than 100/);
    expect(() =>
      new SseParser(100).push('data: ' + 'x'.repeat(60) + '\ndata: ' + 'x'.repeat(60) + '\n'),
    ).toThrow(/larger than 100/);
  });
});

describe('Retry-After', () => {
  const now = Date.parse('2025-01-01T00:00:00Z');
  it('reads seconds, an HTTP-date and retry-after-ms (which wins)', () => {
    expect(parseRetryAfter({ 'retry-after': '3' }, now)).toBe(3000);
    expect(parseRetryAfter({ 'retry-after': '0.5' }, now)).toBe(500);
    expect(parseRetryAfter({ 'retry-after': 'Wed, 01 Jan 2025 00:00:30 GMT' }, now)).toBe(30_000);
    expect(parseRetryAfter({ 'retry-after': 'Tue, 31 Dec 2024 23:59:00 GMT' }, now)).toBe(0);
    expect(parseRetryAfter({ 'retry-after': '20', 'retry-after-ms': '1500' }, now)).toBe(1500);
    expect(parseRetryAfter({ 'retry-after': ['2', '9'] }, now)).toBe(2000);
    expect(parseRetryAfter({ 'retry-after': 'soon' }, now)).toBeUndefined();
    expect(parseRetryAfter({}, now)).toBeUndefined();
  });
});

describe('request bodies (no network)', () => {
  it('OpenAI: max_completion_tokens on api.openai.com, max_tokens elsewhere, or as configured', () => {
    const req = chatReq();
    const official = openaiRequestBody(endpoint('openai', 'https://api.openai.com/v1'), req) as any;
    expect(official.max_completion_tokens).toBe(256);
    expect(official.max_tokens).toBeUndefined();
    const local = openaiRequestBody(endpoint('openai', 'http://127.0.0.1:8000/v1'), req) as any;
    expect(local.max_tokens).toBe(256);
    expect(local.max_completion_tokens).toBeUndefined();
    const chosen = openaiRequestBody(
      endpoint('openai', 'http://127.0.0.1:8000/v1', { max_tokens_param: 'max_completion_tokens' }),
      req,
    ) as any;
    expect(chosen).toMatchObject({ max_completion_tokens: 256 });
    expect(chosen.max_tokens).toBeUndefined();
  });

  it('Anthropic: a non-object response schema is wrapped in {value}', () => {
    const body = anthropicRequestBody(
      chatReq({ response_format: { name: 'numbers', schema: { type: 'array', items: { type: 'number' } } } }),
    ) as any;
    expect(body.tools).toEqual([
      expect.objectContaining({
        name: 'numbers',
        input_schema: {
          type: 'object',
          properties: { value: { type: 'array', items: { type: 'number' } } },
          required: ['value'],
        },
      }),
    ]);
    expect(body.tool_choice).toEqual({ type: 'tool', name: 'numbers' });
  });

  it('a tool message without tool_call_id, or unparseable tool arguments for Anthropic, is refused before sending', () => {
    const noId = chatReq({ messages: [{ role: 'tool', content: 'x' }] });
    expect(() => openaiRequestBody(endpoint('openai', 'http://127.0.0.1/v1'), noId)).toThrow(ProviderError);
    expect(() => anthropicRequestBody(noId)).toThrow(ProviderError);
    const badArgs = chatReq({
      messages: [
        { role: 'user', content: 'q' },
        { role: 'assistant', content: '', tool_calls: [{ id: 'c1', name: 'f', arguments: '{not json' }] },
      ],
    });
    try {
      anthropicRequestBody(badArgs);
      expect.unreachable();
    } catch (e) {
      expect((e as ProviderError).code).toBe('LLM_INVALID_REQUEST');
    }
  });

  it('usage normalisers: missing numbers give null, never zeros', () => {
    expect(openaiUsage(undefined)).toBeNull();
    expect(openaiUsage({ total_tokens: 5 })).toBeNull();
    expect(anthropicUsage({ output_tokens: 3 })).toBeNull();
    expect(anthropicUsage(null)).toBeNull();
  });
});

// ---------------------------------------------------------------------------------------------
// OpenAI

describe.each(transports)('OpenAI adapter over the $name', ({ transport }) => {
  let ai: LlmServer<OpenAiBehaviour>;
  beforeAll(async () => {
    ai = await startOpenAiServer();
  });
  afterAll(() => ai.close());

  const ep = (o: Partial<ProviderEndpoint> = {}) => endpoint('openai', ai.url, o);
  const chat = (req: ChatRequest, o: Partial<ProviderEndpoint> = {}, onDelta?: (t: string) => void) =>
    openaiAdapter.chat(ep(o), req, { transport, onDelta });
  const last = () => ai.requests[ai.requests.length - 1]!;

  it('non-streamed: the echo comes back; the request on the wire is as the API defines it', async () => {
    const r = await chat(chatReq());
    expect(r.content).toBe('echo: hello there');
    expect(r.message).toEqual({ role: 'assistant', content: 'echo: hello there' });
    expect(r.finish_reason).toBe('stop');
    expect(r.served_model).toBe('test-model');
    expect(r.response_id).toMatch(/^chatcmpl-/);
    expect(r.http_status).toBe(200);
    expect(r.usage).not.toBeNull();

    const rec = last();
    expect(rec.method).toBe('POST');
    expect(rec.path).toBe('/v1/chat/completions');
    expect(rec.headers.authorization).toBe('Bearer sk-test');
    expect(rec.headers['content-type']).toBe('application/json');
    expect(rec.body).toEqual({
      model: 'test-model',
      messages: [
        { role: 'system', content: 'You are terse.' },
        { role: 'user', content: 'hello there' },
      ],
      max_tokens: 256,
      temperature: 0.2,
      stream: false,
    });
  });

  it('streamed: deltas in order, joined they are the content; stream_options.include_usage is asked for', async () => {
    ai.enqueue(reply({ text: 'one two three four five six', chunks: 4 }));
    const deltas: string[] = [];
    const r = await chat(chatReq({ stream: true }), {}, (t) => deltas.push(t));
    expect(deltas.length).toBe(4);
    expect(deltas.join('')).toBe('one two three four five six');
    expect(r.content).toBe('one two three four five six');
    expect(r.finish_reason).toBe('stop');
    expect(r.usage).not.toBeNull();
    expect(last().body).toMatchObject({ stream: true, stream_options: { include_usage: true } });
    expect(last().headers.accept).toBe('text/event-stream');
  });

  it('records the model the provider says served it', async () => {
    ai.enqueue(reply({ model: 'gpt-4o-2024-08-06' }), reply({ model: 'gpt-4o-mini-2024-07-18' }));
    expect((await chat(chatReq({ model: 'gpt-4o' }))).served_model).toBe('gpt-4o-2024-08-06');
    expect((await chat(chatReq({ model: 'gpt-4o', stream: true }))).served_model).toBe(
      'gpt-4o-mini-2024-07-18',
    );
    expect(last().body.model).toBe('gpt-4o');
  });

  it('usage: cached and reasoning tokens are taken out of prompt and completion; raw_usage is untouched', async () => {
    const usage = {
      prompt_tokens: 1200,
      completion_tokens: 300,
      total_tokens: 1500,
      prompt_tokens_details: { cached_tokens: 1000, audio_tokens: 0 },
      completion_tokens_details: {
        reasoning_tokens: 200,
        audio_tokens: 0,
        accepted_prediction_tokens: 0,
        rejected_prediction_tokens: 0,
      },
    };
    const buckets = { input: 200, cached_input: 1000, cache_write: 0, output: 100, reasoning: 200 };
    for (const stream of [false, true]) {
      ai.enqueue(reply({ usage }));
      const r = await chat(chatReq({ stream }));
      expect(r.usage, `stream ${stream}`).toEqual(buckets);
      expect(r.raw_usage).toEqual(usage);
    }
    // Without the details (vLLM, Ollama): everything is plain input and output.
    ai.enqueue(reply({ usage: { prompt_tokens: 7, completion_tokens: 3, total_tokens: 10 } }));
    expect((await chat(chatReq())).usage).toEqual({
      input: 7,
      cached_input: 0,
      cache_write: 0,
      output: 3,
      reasoning: 0,
    });
  });

  it('missing usage: usage and raw_usage are null, streamed or not', async () => {
    for (const stream of [false, true]) {
      ai.enqueue(reply({ usage: null }));
      const r = await chat(chatReq({ stream }));
      expect(r.content).toBe('echo: hello there');
      expect(r.usage).toBeNull();
      expect(r.raw_usage).toBeNull();
    }
  });

  it('tool calls: declared as functions, answered (and streamed by index), history sent back in shape', async () => {
    const tools = [
      {
        name: 'get_weather',
        description: 'Weather for a city',
        parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
      },
      { name: 'get_time', parameters: { type: 'object', properties: {} } },
    ];
    const tool_calls = [
      { id: 'call_a', name: 'get_weather', arguments: { city: 'Paris' } },
      { id: 'call_b', name: 'get_time', arguments: {} },
    ];
    for (const stream of [false, true]) {
      ai.enqueue(reply({ text: '', tool_calls }));
      const r = await chat(chatReq({ tools, stream }));
      expect(r.finish_reason).toBe('tool_calls');
      expect(r.message.tool_calls).toEqual([
        { id: 'call_a', name: 'get_weather', arguments: '{"city":"Paris"}' },
        { id: 'call_b', name: 'get_time', arguments: '{}' },
      ]);
      expect(last().body.tools).toEqual([
        {
          type: 'function',
          function: {
            name: 'get_weather',
            description: 'Weather for a city',
            parameters: tools[0]!.parameters,
          },
        },
        { type: 'function', function: { name: 'get_time', parameters: tools[1]!.parameters } },
      ]);
    }

    await chat(
      chatReq({
        messages: [
          { role: 'user', content: 'weather?' },
          {
            role: 'assistant',
            content: '',
            tool_calls: [{ id: 'call_a', name: 'get_weather', arguments: '{"city":"Paris"}' }],
          },
          { role: 'tool', tool_call_id: 'call_a', content: '18°C' },
        ],
      }),
    );
    expect(last().body.messages.slice(1)).toEqual([
      { role: 'user', content: 'weather?' },
      {
        role: 'assistant',
        content: '',
        tool_calls: [
          {
            id: 'call_a',
            type: 'function',
            function: { name: 'get_weather', arguments: '{"city":"Paris"}' },
          },
        ],
      },
      { role: 'tool', tool_call_id: 'call_a', content: '18°C' },
    ]);
  });

  it('response_format goes as a strict json_schema; the content is the JSON', async () => {
    const schema = {
      type: 'object',
      properties: { city: { type: 'string' } },
      required: ['city'],
      additionalProperties: false,
    };
    ai.enqueue(reply({ json: { city: 'Paris' } }));
    const r = await chat(chatReq({ response_format: { name: 'place', schema } }));
    expect(JSON.parse(r.content)).toEqual({ city: 'Paris' });
    expect(last().body.response_format).toEqual({
      type: 'json_schema',
      json_schema: { name: 'place', schema, strict: true },
    });
  });

  it('keyless local server: no Authorization; a trailing slash is dropped; endpoint headers pass (ours win)', async () => {
    await chat(chatReq(), {
      api_key: null,
      base_url: ai.url + '/',
      headers: { 'X-Custom': 'yes', 'Content-Type': 'text/plain' },
    });
    expect(last().path).toBe('/v1/chat/completions');
    expect(last().headers.authorization).toBeUndefined();
    expect(last().headers['x-custom']).toBe('yes');
    expect(last().headers['content-type']).toBe('application/json');
  });

  it('errors in OpenAI’s shape map to their codes, with status, provider code, message and Retry-After', async () => {
    const cases: [OpenAiBehaviour, string, number, string | undefined, number | undefined][] = [
      [fail('rate_limit', { retry_after: '3' }), 'LLM_RATE_LIMITED', 429, 'rate_limit_exceeded', 3000],
      [
        fail('rate_limit', { retry_after: null, retry_after_ms: '1250' }),
        'LLM_RATE_LIMITED',
        429,
        'rate_limit_exceeded',
        1250,
      ],
      [fail('server'), 'LLM_PROVIDER_ERROR', 500, 'server_error', undefined],
      [fail('overloaded'), 'LLM_PROVIDER_ERROR', 503, 'server_error', undefined],
      [fail('context_length'), 'LLM_CONTEXT_TOO_LONG', 400, 'context_length_exceeded', undefined],
      [fail('auth'), 'LLM_AUTH_FAILED', 401, 'invalid_api_key', undefined],
      [
        fail('auth', { status: 403, message: 'Project does not have access to model' }),
        'LLM_AUTH_FAILED',
        403,
        'invalid_api_key',
        undefined,
      ],
      [fail('invalid_request'), 'LLM_INVALID_REQUEST', 400, 'invalid_request_error', undefined],
      [
        fail('invalid_request', { status: 422 }),
        'LLM_INVALID_REQUEST',
        422,
        'invalid_request_error',
        undefined,
      ],
      [
        raw('<html><body>502 Bad Gateway</body></html>', { status: 502 }),
        'LLM_PROVIDER_ERROR',
        502,
        undefined,
        undefined,
      ],
    ];
    for (const [b, code, status, provider_code, retry] of cases) {
      ai.enqueue(b);
      const e = await failure(chat(chatReq()));
      expect({
        code: e.code,
        status: e.info.http_status,
        pc: e.info.provider_code,
        retry: e.info.retry_after_ms,
      }).toEqual({
        code,
        status,
        pc: provider_code,
        retry,
      });
      expect(e.info.request_sha256).toMatch(/^[0-9a-f]{64}$/);
    }
    ai.enqueue(fail('context_length'));
    expect((await failure(chat(chatReq()))).message).toMatch(/maximum context length is 128000 tokens/);
    ai.enqueue(raw('<html><body>502 Bad Gateway</body></html>', { status: 502 }));
    expect((await failure(chat(chatReq()))).message).toMatch(/502 Bad Gateway/);
  });

  it('Retry-After as an HTTP-date', async () => {
    ai.enqueue(fail('rate_limit', { retry_after: new Date(Date.now() + 10_000).toUTCString() }));
    const e = await failure(chat(chatReq()));
    expect(e.info.retry_after_ms).toBeGreaterThan(7_000);
    expect(e.info.retry_after_ms).toBeLessThanOrEqual(10_000);
  });

  it('the server refusing a wrong key (its own check) is LLM_AUTH_FAILED', async () => {
    const guarded = await startOpenAiServer({ api_key: 'sk-right' });
    try {
      const e = await failure(openaiAdapter.chat(endpoint('openai', guarded.url), chatReq(), { transport }));
      expect(e.code).toBe('LLM_AUTH_FAILED');
      const ok = await openaiAdapter.chat(
        endpoint('openai', guarded.url, { api_key: 'sk-right' }),
        chatReq(),
        {
          transport,
        },
      );
      expect(ok.content).toBe('echo: hello there');
    } finally {
      await guarded.close();
    }
  });

  it('a wrong path (base_url without /v1) is LLM_INVALID_REQUEST', async () => {
    const e = await failure(chat(chatReq(), { base_url: ai.url.replace(/\/v1$/, '') }));
    expect(e.code).toBe('LLM_INVALID_REQUEST');
    expect(e.info.http_status).toBe(404);
  });

  it('a body that is not JSON, or has no choices, is LLM_INVALID_RESPONSE', async () => {
    ai.enqueue(raw('this is not json', { status: 200, content_type: 'application/json' }));
    expect((await failure(chat(chatReq()))).code).toBe('LLM_INVALID_RESPONSE');
    ai.enqueue(
      raw('{"id":"x","object":"chat.completion","choices":[]}', { content_type: 'application/json' }),
    );
    expect((await failure(chat(chatReq()))).code).toBe('LLM_INVALID_RESPONSE');
    ai.enqueue(raw('data: {not json}\n\n', { content_type: 'text/event-stream' }));
    expect((await failure(chat(chatReq({ stream: true })))).code).toBe('LLM_INVALID_RESPONSE');
  });

  it('a stream cut before [DONE] and finish_reason is LLM_PROVIDER_ERROR', async () => {
    ai.enqueue(
      raw(
        'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"hal"}}]}\n\n',
        {
          content_type: 'text/event-stream',
        },
      ),
    );
    const e = await failure(chat(chatReq({ stream: true })));
    expect(e.code).toBe('LLM_PROVIDER_ERROR');
    expect(e.message).toMatch(/ended before/);
  });

  it('a mid-stream error chunk maps by its type; the deltas before it were delivered', async () => {
    ai.enqueue(failMidStream('server', { text: 'partial answer here', chunks: 3, after_chunks: 2 }));
    const deltas: string[] = [];
    const e = await failure(chat(chatReq({ stream: true }), {}, (t) => deltas.push(t)));
    expect(e.code).toBe('LLM_PROVIDER_ERROR');
    expect(e.info.provider_code).toBe('server_error');
    expect(deltas.length).toBe(2);
    ai.enqueue(failMidStream('rate_limit'));
    expect((await failure(chat(chatReq({ stream: true })))).code).toBe('LLM_RATE_LIMITED');
  });

  it('a server that never answers is LLM_TIMEOUT; one that refuses connections is LLM_PROVIDER_ERROR', async () => {
    ai.enqueue(hang());
    const t0 = performance.now();
    const e = await failure(chat(chatReq(), { timeout_ms: 300 }));
    expect(e.code).toBe('LLM_TIMEOUT');
    expect(performance.now() - t0).toBeLessThan(3_000);

    // A stream that stalls after its first delta times out too (the budget covers the body).
    ai.enqueue(reply({ text: 'slow stream', chunks: 2, chunk_delay_ms: 2_000 }));
    expect((await failure(chat(chatReq({ stream: true }), { timeout_ms: 300 }))).code).toBe('LLM_TIMEOUT');

    const dead = await startOpenAiServer();
    const url = dead.url;
    await dead.close();
    const refused = await failure(openaiAdapter.chat(endpoint('openai', url), chatReq(), { transport }));
    expect(refused.code).toBe('LLM_PROVIDER_ERROR');
    expect((refused.cause as { code?: string }).code).toBe('NET_CONNECT_FAILED');
  });

  it('ttft: from the request to the first content delta (streams) or the answer (non-streamed)', async () => {
    ai.enqueue(reply({ first_chunk_delay_ms: 50, chunks: 3, chunk_delay_ms: 20 }));
    const s = await chat(chatReq({ stream: true }));
    expect(s.ttft_ms).toBeGreaterThanOrEqual(45);
    expect(s.latency_ms).toBeGreaterThanOrEqual(s.ttft_ms! + 30);
    ai.enqueue(reply({ first_chunk_delay_ms: 50 }));
    const n = await chat(chatReq());
    expect(n.ttft_ms).toBeGreaterThanOrEqual(45);
    expect(n.latency_ms).toBeGreaterThanOrEqual(n.ttft_ms!);
  });

  it('hashes: request_sha256 is over the bytes sent and stable; response_sha256 over the bytes received', async () => {
    const a = await chat(chatReq());
    const sentA = last().raw;
    const b = await chat(chatReq());
    expect(a.request_sha256).toBe(b.request_sha256);
    expect(a.request_sha256).toBe(sha256(sentA));
    expect((await chat(chatReq({ temperature: 0.3 }))).request_sha256).not.toBe(a.request_sha256);

    const body = JSON.stringify({
      id: 'chatcmpl-fixed',
      object: 'chat.completion',
      created: 1,
      model: 'm',
      choices: [{ index: 0, message: { role: 'assistant', content: 'fixed' }, finish_reason: 'stop' }],
    });
    ai.enqueue(raw(body, { content_type: 'application/json' }));
    const r = await chat(chatReq());
    expect(r.content).toBe('fixed');
    expect(r.response_sha256).toBe(sha256(body));
    const sse =
      'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    ai.enqueue(raw(sse, { content_type: 'text/event-stream' }));
    expect((await chat(chatReq({ stream: true }))).response_sha256).toBe(sha256(sse));
  });

  it('a cancellation by the caller is not a provider failure: it is re-thrown as the transport raised it', async () => {
    ai.enqueue(reply({ text: 'a long answer in pieces', chunks: 4, chunk_delay_ms: 200 }));
    const ctl = new AbortController();
    const e = await openaiAdapter
      .chat(ep(), chatReq({ stream: true }), { transport, signal: ctl.signal, onDelta: () => ctl.abort() })
      .catch((x: unknown) => x);
    expect(e).not.toBeInstanceOf(ProviderError);
    expect(ctl.signal.aborted).toBe(true);
  });

  it('a configuration refusal by the transport is re-thrown unchanged', async () => {
    const refusal = netError('NET_HOST_NOT_ALLOWED', 'not on the allow list');
    const refusing: Transport = () => Promise.reject(refusal);
    await expect(openaiAdapter.chat(ep(), chatReq(), { transport: refusing })).rejects.toBe(refusal);
  });
});

// ---------------------------------------------------------------------------------------------
// Anthropic

describe.each(transports)('Anthropic adapter over the $name', ({ transport }) => {
  let an: LlmServer<AnthropicBehaviour>;
  beforeAll(async () => {
    an = await startAnthropicServer();
  });
  afterAll(() => an.close());

  const ep = (o: Partial<ProviderEndpoint> = {}) => endpoint('anthropic', an.url, o);
  const chat = (req: ChatRequest, o: Partial<ProviderEndpoint> = {}, onDelta?: (t: string) => void) =>
    anthropicAdapter.chat(ep(o), req, { transport, onDelta });
  const last = () => an.requests[an.requests.length - 1]!;

  it('non-streamed: the echo comes back; headers and body on the wire are as the API defines them', async () => {
    const r = await chat(chatReq());
    expect(r.content).toBe('echo: hello there');
    expect(r.finish_reason).toBe('stop');
    expect(r.response_id).toMatch(/^msg_/);
    expect(r.served_model).toBe('test-model');

    const rec = last();
    expect(rec.path).toBe('/v1/messages');
    expect(rec.headers['x-api-key']).toBe('sk-test');
    expect(rec.headers['anthropic-version']).toBe('2023-06-01');
    expect(rec.headers['content-type']).toBe('application/json');
    expect(rec.headers.authorization).toBeUndefined();
    expect(rec.body).toEqual({
      model: 'test-model',
      max_tokens: 256,
      system: 'You are terse.',
      messages: [{ role: 'user', content: 'hello there' }],
      temperature: 0.2,
      stream: false,
    });
  });

  it('a base_url that already ends in /v1 reaches the same path', async () => {
    await chat(chatReq(), { base_url: an.url + '/v1/' });
    expect(last().path).toBe('/v1/messages');
  });

  it('streamed: deltas in order, joined they are the content', async () => {
    an.enqueue(reply({ text: 'alpha beta gamma delta', chunks: 4 }));
    const deltas: string[] = [];
    const r = await chat(chatReq({ stream: true }), {}, (t) => deltas.push(t));
    expect(deltas.length).toBe(4);
    expect(deltas.join('')).toBe('alpha beta gamma delta');
    expect(r.content).toBe('alpha beta gamma delta');
    expect(r.finish_reason).toBe('stop');
    expect(last().body.stream).toBe(true);
  });

  it('system messages join the top-level system; tool results are tool_result blocks of one user turn', async () => {
    await chat(
      chatReq({
        messages: [
          { role: 'system', content: 'Use metric units.' },
          { role: 'user', content: 'weather and time?' },
          {
            role: 'assistant',
            content: 'Checking.',
            tool_calls: [
              { id: 'toolu_1', name: 'get_weather', arguments: '{"city":"Paris"}' },
              { id: 'toolu_2', name: 'get_time', arguments: '' },
            ],
          },
          { role: 'tool', tool_call_id: 'toolu_1', content: '18°C' },
          { role: 'tool', tool_call_id: 'toolu_2', content: '14:00' },
        ],
      }),
    );
    expect(last().body.system).toBe('You are terse.\n\nUse metric units.');
    expect(last().body.messages).toEqual([
      { role: 'user', content: 'weather and time?' },
      {
        role: 'assistant',
        content: [
          { type: 'text', text: 'Checking.' },
          { type: 'tool_use', id: 'toolu_1', name: 'get_weather', input: { city: 'Paris' } },
          { type: 'tool_use', id: 'toolu_2', name: 'get_time', input: {} },
        ],
      },
      {
        role: 'user',
        content: [
          { type: 'tool_result', tool_use_id: 'toolu_1', content: '18°C' },
          { type: 'tool_result', tool_use_id: 'toolu_2', content: '14:00' },
        ],
      },
    ]);
  });

  it('tool calls: declared with input_schema, answered as tool_use (streamed as input_json_delta)', async () => {
    const tools = [
      {
        name: 'get_weather',
        description: 'Weather for a city',
        parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
      },
    ];
    for (const stream of [false, true]) {
      an.enqueue(
        reply({
          text: 'Let me look.',
          tool_calls: [{ id: 'toolu_x', name: 'get_weather', arguments: { city: 'Oslo' } }],
        }),
      );
      const r = await chat(chatReq({ tools, stream }));
      expect(r.finish_reason, `stream ${stream}`).toBe('tool_calls');
      expect(r.content).toBe('Let me look.');
      expect(r.message.tool_calls).toEqual([
        { id: 'toolu_x', name: 'get_weather', arguments: '{"city":"Oslo"}' },
      ]);
      expect(last().body.tools).toEqual([
        { name: 'get_weather', description: 'Weather for a city', input_schema: tools[0]!.parameters },
      ]);
      expect(last().body.tool_choice).toBeUndefined();
    }
  });

  it('response_format: a forced tool; the content is its input as JSON; finish is stop, no tool call', async () => {
    const schema = { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] };
    for (const stream of [false, true]) {
      an.enqueue(reply({ json: { city: 'Lima' } }));
      const deltas: string[] = [];
      const r = await chat(chatReq({ response_format: { name: 'place', schema }, stream }), {}, (t) =>
        deltas.push(t),
      );
      expect(r.content, `stream ${stream}`).toBe('{"city":"Lima"}');
      expect(r.finish_reason).toBe('stop');
      expect(r.message.tool_calls).toBeUndefined();
      if (stream) expect(deltas).toEqual(['{"city":"Lima"}']);
      expect(last().body.tools).toEqual([expect.objectContaining({ name: 'place', input_schema: schema })]);
      expect(last().body.tool_choice).toEqual({ type: 'tool', name: 'place' });
    }
    // A non-object schema travels wrapped and comes back unwrapped.
    an.enqueue(reply({ json: { value: [1, 2, 3] } }));
    const r = await chat(chatReq({ response_format: { name: 'nums', schema: { type: 'array' } } }));
    expect(r.content).toBe('[1,2,3]');
  });

  it('usage: input, cache reads, cache writes and output, exactly; raw_usage untouched', async () => {
    const usage = {
      input_tokens: 100,
      cache_creation_input_tokens: 50,
      cache_read_input_tokens: 800,
      output_tokens: 40,
      service_tier: 'standard' as const,
    };
    const buckets = { input: 100, cached_input: 800, cache_write: 50, output: 40, reasoning: 0 };
    for (const stream of [false, true]) {
      an.enqueue(reply({ usage }));
      const r = await chat(chatReq({ stream }));
      expect(r.usage, `stream ${stream}`).toEqual(buckets);
      // Streams: message_start's usage under message_delta's cumulative output_tokens.
      expect(r.raw_usage).toEqual(usage);
    }
    an.enqueue(reply({ usage: { input_tokens: 9, output_tokens: 4 } }));
    expect((await chat(chatReq())).usage).toEqual({
      input: 9,
      cached_input: 0,
      cache_write: 0,
      output: 4,
      reasoning: 0,
    });
  });

  it('stream output_tokens: the last message_delta wins over message_start', async () => {
    an.enqueue(reply({ usage: { input_tokens: 12, output_tokens: 77 }, chunks: 5 }));
    const r = await chat(chatReq({ stream: true }));
    expect(r.usage?.output).toBe(77);
    expect(r.usage?.input).toBe(12);
  });

  it('missing usage: usage and raw_usage are null, streamed or not', async () => {
    for (const stream of [false, true]) {
      an.enqueue(reply({ usage: null }));
      const r = await chat(chatReq({ stream }));
      expect(r.content).toBe('echo: hello there');
      expect(r.usage).toBeNull();
      expect(r.raw_usage).toBeNull();
    }
  });

  it('stop reasons map: max_tokens → length, refusal → content_filter, stop_sequence → stop', async () => {
    const cases: [string, ChatResult['finish_reason']][] = [
      ['max_tokens', 'length'],
      ['refusal', 'content_filter'],
      ['stop_sequence', 'stop'],
      ['model_context_window_exceeded', 'length'],
      ['pause_turn', 'unknown'],
    ];
    for (const stream of [false, true])
      for (const [stop, finish] of cases) {
        an.enqueue(reply({ finish_reason: stop }));
        expect((await chat(chatReq({ stream }))).finish_reason, `${stop} stream ${stream}`).toBe(finish);
      }
  });

  it('records the model the provider says served it', async () => {
    an.enqueue(reply({ model: 'claude-sonnet-4-20250514' }), reply({ model: 'claude-sonnet-4-20250514' }));
    expect((await chat(chatReq({ model: 'claude-sonnet-4-0' }))).served_model).toBe(
      'claude-sonnet-4-20250514',
    );
    expect((await chat(chatReq({ model: 'claude-sonnet-4-0', stream: true }))).served_model).toBe(
      'claude-sonnet-4-20250514',
    );
  });

  it('errors in Anthropic’s shape map to their codes, with status, provider code, message and Retry-After', async () => {
    const cases: [AnthropicBehaviour, string, number, string, number | undefined][] = [
      [fail('rate_limit', { retry_after: '7' }), 'LLM_RATE_LIMITED', 429, 'rate_limit_error', 7000],
      [fail('overloaded'), 'LLM_PROVIDER_ERROR', 529, 'overloaded_error', undefined],
      [fail('server'), 'LLM_PROVIDER_ERROR', 500, 'api_error', undefined],
      [fail('auth'), 'LLM_AUTH_FAILED', 401, 'authentication_error', undefined],
      [fail('context_length'), 'LLM_CONTEXT_TOO_LONG', 400, 'invalid_request_error', undefined],
      [fail('invalid_request'), 'LLM_INVALID_REQUEST', 400, 'invalid_request_error', undefined],
    ];
    for (const [b, code, status, provider_code, retry] of cases) {
      an.enqueue(b);
      const e = await failure(chat(chatReq()));
      expect({
        code: e.code,
        status: e.info.http_status,
        pc: e.info.provider_code,
        retry: e.info.retry_after_ms,
      }).toEqual({
        code,
        status,
        pc: provider_code,
        retry,
      });
    }
    an.enqueue(fail('context_length'));
    expect((await failure(chat(chatReq()))).message).toMatch(
      /prompt is too long: 215438 tokens > 200000 maximum/,
    );
    // 529 without a parseable body is still the overload.
    an.enqueue(raw('', { status: 529 }));
    expect((await failure(chat(chatReq()))).info.provider_code).toBe('overloaded_error');
  });

  it('Retry-After as an HTTP-date', async () => {
    an.enqueue(fail('rate_limit', { retry_after: new Date(Date.now() + 20_000).toUTCString() }));
    const e = await failure(chat(chatReq()));
    expect(e.info.retry_after_ms).toBeGreaterThan(17_000);
    expect(e.info.retry_after_ms).toBeLessThanOrEqual(20_000);
  });

  it('the server refusing a missing or wrong key is LLM_AUTH_FAILED', async () => {
    const guarded = await startAnthropicServer({ api_key: 'sk-ant-right' });
    try {
      for (const api_key of [null, 'sk-ant-wrong']) {
        const e = await failure(
          anthropicAdapter.chat(endpoint('anthropic', guarded.url, { api_key }), chatReq(), { transport }),
        );
        expect(e.code).toBe('LLM_AUTH_FAILED');
        expect(e.info.provider_code).toBe('authentication_error');
      }
    } finally {
      await guarded.close();
    }
  });

  it('a mid-stream error event maps by its type; the deltas before it were delivered', async () => {
    an.enqueue(failMidStream('overloaded', { text: 'a partial answer', chunks: 4, after_chunks: 2 }));
    const deltas: string[] = [];
    const e = await failure(chat(chatReq({ stream: true }), {}, (t) => deltas.push(t)));
    expect(e.code).toBe('LLM_PROVIDER_ERROR');
    expect(e.info.provider_code).toBe('overloaded_error');
    expect(e.message).toMatch(/Overloaded/);
    expect(deltas.length).toBe(2);
    an.enqueue(failMidStream('rate_limit'));
    expect((await failure(chat(chatReq({ stream: true })))).code).toBe('LLM_RATE_LIMITED');
    an.enqueue(failMidStream('context_length', { after_chunks: 0 }));
    expect((await failure(chat(chatReq({ stream: true })))).code).toBe('LLM_CONTEXT_TOO_LONG');
  });

  it('a body that is not JSON, or has no content, is LLM_INVALID_RESPONSE', async () => {
    an.enqueue(raw('<html>oops</html>', { status: 200 }));
    expect((await failure(chat(chatReq()))).code).toBe('LLM_INVALID_RESPONSE');
    an.enqueue(
      raw('{"id":"msg_1","type":"message","role":"assistant"}', { content_type: 'application/json' }),
    );
    expect((await failure(chat(chatReq()))).code).toBe('LLM_INVALID_RESPONSE');
  });

  it('a server that never answers is LLM_TIMEOUT', async () => {
    an.enqueue(hang());
    expect((await failure(chat(chatReq({ stream: true }), { timeout_ms: 300 }))).code).toBe('LLM_TIMEOUT');
  });

  it('ttft: from the request to the first text delta (streams) or the answer (non-streamed)', async () => {
    an.enqueue(reply({ first_chunk_delay_ms: 50, chunks: 3, chunk_delay_ms: 20 }));
    const s = await chat(chatReq({ stream: true }));
    expect(s.ttft_ms).toBeGreaterThanOrEqual(45);
    expect(s.latency_ms).toBeGreaterThanOrEqual(s.ttft_ms! + 30);
    an.enqueue(reply({ first_chunk_delay_ms: 50 }));
    const n = await chat(chatReq());
    expect(n.ttft_ms).toBeGreaterThanOrEqual(45);
    expect(n.latency_ms).toBeGreaterThanOrEqual(n.ttft_ms!);
  });

  it('hashes: stable request_sha256 over the bytes sent; response_sha256 over the bytes received', async () => {
    const a = await chat(chatReq({ stream: true }));
    const sent = last().raw;
    const b = await chat(chatReq({ stream: true }));
    expect(a.request_sha256).toBe(b.request_sha256);
    expect(a.request_sha256).toBe(sha256(sent));
    const body = JSON.stringify({
      id: 'msg_fixed',
      type: 'message',
      role: 'assistant',
      model: 'm',
      content: [{ type: 'text', text: 'fixed' }],
      stop_reason: 'end_turn',
      stop_sequence: null,
      usage: { input_tokens: 1, output_tokens: 1 },
    });
    an.enqueue(raw(body, { content_type: 'application/json' }));
    const r = await chat(chatReq());
    expect(r.content).toBe('fixed');
    expect(r.response_sha256).toBe(sha256(body));
  });
});

describe('loopback only', () => {
  it('every request any transport was asked for went to 127.0.0.1', () => {
    expect(asked.length).toBeGreaterThan(50);
    for (const u of asked) expect(new URL(u).hostname).toBe('127.0.0.1');
  });

  it('the file-local transport refuses anything else (the adapter re-throws the refusal as is)', async () => {
    const e = await anthropicAdapter
      .chat(endpoint('anthropic', 'https://api.anthropic.com'), chatReq(), { transport: loopback })
      .catch((x: unknown) => x);
    expect((e as { code?: string }).code).toBe('NET_HOST_NOT_ALLOWED');
    expect(e).not.toBeInstanceOf(ProviderError);
  });
});

/**
 * Local LLM provider servers for tests: node:http on 127.0.0.1 (port 0), speaking the OpenAI Chat
 * Completions and Anthropic Messages wire formats as their API references define them — bodies,
 * SSE event sequences, usage objects and error shapes (the SDKs' types keep the field names honest).
 *
 *   const ai = await startOpenAiServer();
 *   ai.enqueue(reply({ text: 'hi', usage: { prompt_tokens: 10, completion_tokens: 2, total_tokens: 12 } }),
 *              fail('rate_limit', { retry_after: '3' }));
 *   // endpoint.base_url = ai.url; ai.requests[0].body is the parsed request body.
 *
 * Each request takes the next enqueued behaviour (FIFO), then the default (echo). Requests the real
 * API would refuse before any model runs (bad path, bad JSON, missing key or field) are refused in
 * its shape and consume no behaviour.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ChatCompletion, ChatCompletionChunk } from 'openai/resources/chat/completions';
import type { CompletionUsage } from 'openai/resources/completions';
import type {
  RawContentBlockDeltaEvent,
  RawContentBlockStopEvent,
  RawMessageStopEvent,
  Usage,
} from '@anthropic-ai/sdk/resources/messages';

export interface Recorded {
  method: string;
  path: string;
  headers: Record<string, string | string[] | undefined>;
  /** Parsed JSON body (the raw text when it is not JSON; undefined when empty). */
  body: any;
  raw: string;
}

export type ErrorKind =
  'rate_limit' | 'server' | 'overloaded' | 'auth' | 'context_length' | 'invalid_request';

export interface ReplyOptions<U> {
  /** The answer's text; default: "echo: " + the last user message. */
  text?: string;
  /**
   * A structured answer: OpenAI content = JSON text; Anthropic = the input of the forced tool when
   * the request forces one (tool_choice {type:'tool'}), text otherwise. Default when the request asks
   * for structured output: {echo: last user message}.
   */
  json?: unknown;
  /** Tool calls after the text; arguments as an object or as JSON text. */
  tool_calls?: { id?: string; name: string; arguments: unknown }[];
  /** The model the answer says served it (default: the requested one). */
  model?: string;
  /** In the provider's own shape, sent as is; null: no usage at all. Default: estimated from lengths. */
  usage?: U | null;
  /** Provider-native finish/stop reason (default: stop / end_turn, tool_calls / tool_use). */
  finish_reason?: string;
  id?: string;
  /** Streams: the text is sent in this many content deltas (default 3). */
  chunks?: number;
  /** Streams: pause between two deltas. */
  chunk_delay_ms?: number;
  /** Pause before the first content (streams: after the opening events; otherwise before answering). */
  first_chunk_delay_ms?: number;
  headers?: Record<string, string>;
}

export interface FailOptions {
  /** Overrides the kind's usual status (e.g. 503 for overloaded on OpenAI). */
  status?: number;
  message?: string;
  /** The retry-after header (seconds or an HTTP-date); rate_limit sends '1' unless null. */
  retry_after?: string | null;
  /** OpenAI's retry-after-ms header. */
  retry_after_ms?: string;
  headers?: Record<string, string>;
}

export type Behaviour<U> =
  | ({ kind: 'reply' } & ReplyOptions<U>)
  | ({ kind: 'error'; error: ErrorKind } & FailOptions)
  /** A 200 stream that sends `after_chunks` text deltas, then the provider's in-stream error. */
  | ({ kind: 'stream_error'; error: ErrorKind; after_chunks?: number } & Omit<FailOptions, 'status'> &
      Pick<ReplyOptions<U>, 'text' | 'chunks'>)
  /** Never answers (the request is read and recorded). */
  | { kind: 'hang' }
  /** Any status and body, sent as is (non-JSON, truncated, wrong shape). */
  | { kind: 'raw'; status?: number; body: string; content_type?: string; headers?: Record<string, string> };

export type OpenAiBehaviour = Behaviour<Partial<CompletionUsage>>;
export type AnthropicBehaviour = Behaviour<Partial<Usage>>;

export const reply = <U>(o: ReplyOptions<U> = {}): Behaviour<U> => ({ kind: 'reply', ...o });
export const fail = <U>(error: ErrorKind, o: FailOptions = {}): Behaviour<U> => ({
  kind: 'error',
  error,
  ...o,
});
export const failMidStream = <U>(
  error: ErrorKind,
  o: { after_chunks?: number; message?: string; text?: string; chunks?: number } = {},
): Behaviour<U> => ({ kind: 'stream_error', error, ...o });
export const hang = <U>(): Behaviour<U> => ({ kind: 'hang' });
export const raw = <U>(
  body: string,
  o: { status?: number; content_type?: string; headers?: Record<string, string> } = {},
): Behaviour<U> => ({ kind: 'raw', body, ...o });

export interface LlmServer<B> {
  /** The base_url to configure: http://127.0.0.1:port/v1 (OpenAI), http://127.0.0.1:port (Anthropic). */
  url: string;
  requests: Recorded[];
  enqueue(...b: B[]): void;
  setDefault(b: B): void;
  close(): Promise<void>;
}

export interface ServerOptions<B> {
  /** When set, a request without this key is refused as the provider refuses it (401). */
  api_key?: string;
  default?: B;
}

// ---------------------------------------------------------------------------------------------
// Shared machinery

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const estimate = (s: string) => Math.max(1, Math.ceil(s.length / 4));

/** `s` in n pieces (fewer when it is shorter than n). */
function pieces(s: string, n: number): string[] {
  if (s === '') return [];
  const k = Math.max(1, Math.min(n, s.length));
  const size = Math.ceil(s.length / k);
  const out: string[] = [];
  for (let i = 0; i < s.length; i += size) out.push(s.slice(i, i + size));
  return out;
}

function textOfContent(content: unknown): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  return content
    .map((p: any) =>
      typeof p?.text === 'string' ? p.text : p?.type === 'tool_result' ? textOfContent(p.content) : '',
    )
    .join('');
}

function lastUserText(messages: unknown): string {
  if (!Array.isArray(messages)) return '';
  for (let i = messages.length - 1; i >= 0; i--) {
    const m = messages[i] as any;
    if (m?.role === 'user' || m?.role === 'tool') return textOfContent(m.content);
  }
  return '';
}

function argsText(a: unknown): string {
  return typeof a === 'string' ? a : JSON.stringify(a);
}

function argsObject(a: unknown): unknown {
  return typeof a === 'string' ? JSON.parse(a) : a;
}

interface Ctx {
  req: IncomingMessage;
  res: ServerResponse;
  rec: Recorded;
  /** The next behaviour; called only once the request passed validation. */
  next(): unknown;
  seq: number;
}

async function startServer<B>(
  opts: ServerOptions<B>,
  fallback: B,
  pathPrefix: string,
  handle: (ctx: Ctx) => Promise<void>,
): Promise<LlmServer<B>> {
  const queue: B[] = [];
  let byDefault: B = opts.default ?? fallback;
  const requests: Recorded[] = [];
  let seq = 0;
  const server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      const text = Buffer.concat(parts).toString('utf8');
      let body: unknown = undefined;
      if (text !== '') {
        try {
          body = JSON.parse(text);
        } catch {
          body = text;
        }
      }
      const rec: Recorded = {
        method: req.method ?? '',
        path: req.url ?? '',
        headers: { ...req.headers },
        body,
        raw: text,
      };
      requests.push(rec);
      const ctx: Ctx = { req, res, rec, next: () => queue.shift() ?? byDefault, seq: ++seq };
      handle(ctx).catch((e: unknown) => {
        if (!res.headersSent) {
          res.writeHead(500, { 'content-type': 'text/plain' });
          res.end(`test server failed: ${String(e)}`);
        } else res.destroy();
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}${pathPrefix}`,
    requests,
    enqueue: (...b) => void queue.push(...b),
    setDefault: (b) => void (byDefault = b),
    close: () =>
      new Promise<void>((resolve) => {
        // Hanging requests hold their sockets: close them, or close() would wait for ever.
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(text)),
    ...headers,
  });
  res.end(text);
}

function startSse(res: ServerResponse, headers: Record<string, string> = {}) {
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
    ...headers,
  });
  res.flushHeaders();
}

/** Writes one SSE event; false once the client has gone. */
function sse(res: ServerResponse, data: unknown, event?: string): boolean {
  if (res.destroyed || res.writableEnded) return false;
  const payload = typeof data === 'string' ? data : JSON.stringify(data);
  res.write(`${event ? `event: ${event}\n` : ''}data: ${payload}\n\n`);
  return true;
}

function failHeaders(o: FailOptions, kind: ErrorKind): Record<string, string> {
  const h: Record<string, string> = { ...o.headers };
  const ra = o.retry_after === undefined ? (kind === 'rate_limit' ? '1' : undefined) : o.retry_after;
  if (ra !== null && ra !== undefined) h['retry-after'] = ra;
  if (o.retry_after_ms !== undefined) h['retry-after-ms'] = o.retry_after_ms;
  return h;
}

async function answerRaw(
  res: ServerResponse,
  b: { status?: number; body: string; content_type?: string; headers?: Record<string, string> },
) {
  res.writeHead(b.status ?? 200, { 'content-type': b.content_type ?? 'text/html', ...b.headers });
  res.end(b.body);
}

// ---------------------------------------------------------------------------------------------
// OpenAI Chat Completions

interface OpenAiError {
  error: { message: string; type: string; param: string | null; code: string | null };
}

const OPENAI_ERRORS: Record<ErrorKind, { status: number; error: OpenAiError['error'] }> = {
  rate_limit: {
    status: 429,
    error: {
      message:
        'Rate limit reached for gpt-4o in organization org-test on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.',
      type: 'requests',
      param: null,
      code: 'rate_limit_exceeded',
    },
  },
  server: {
    status: 500,
    error: {
      message: 'The server had an error while processing your request. Sorry about that!',
      type: 'server_error',
      param: null,
      code: null,
    },
  },
  overloaded: {
    status: 503,
    error: {
      message: 'The engine is currently overloaded, please try again later',
      type: 'server_error',
      param: null,
      code: null,
    },
  },
  auth: {
    status: 401,
    error: {
      message:
        'Incorrect API key provided: sk-test. You can find your API key at https://platform.openai.com/account/api-keys.',
      type: 'invalid_request_error',
      param: null,
      code: 'invalid_api_key',
    },
  },
  context_length: {
    status: 400,
    error: {
      message:
        "This model's maximum context length is 128000 tokens. However, your messages resulted in 130412 tokens. Please reduce the length of the messages.",
      type: 'invalid_request_error',
      param: 'messages',
      code: 'context_length_exceeded',
    },
  },
  invalid_request: {
    status: 400,
    error: {
      message: "Invalid value for 'temperature': expected a number between 0 and 2.",
      type: 'invalid_request_error',
      param: 'temperature',
      code: null,
    },
  },
};

function openAiError(kind: ErrorKind, message?: string): OpenAiError {
  const e = OPENAI_ERRORS[kind].error;
  return { error: { ...e, ...(message === undefined ? {} : { message }) } };
}

function openAiUsage(body: any, completionText: string): CompletionUsage {
  const prompt = estimate(
    (Array.isArray(body?.messages) ? body.messages : [])
      .map((m: any) => textOfContent(m?.content))
      .join('\n'),
  );
  const completion = estimate(completionText);
  return {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
    prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
    completion_tokens_details: {
      reasoning_tokens: 0,
      audio_tokens: 0,
      accepted_prediction_tokens: 0,
      rejected_prediction_tokens: 0,
    },
  };
}

async function openAiHandle(ctx: Ctx, apiKey: string | undefined): Promise<void> {
  const { req, res, rec } = ctx;
  const path = (req.url ?? '').split('?')[0];
  const invalid = (message: string, status = 400, code: string | null = null) =>
    sendJson(res, status, { error: { message, type: 'invalid_request_error', param: null, code } });
  if (apiKey !== undefined && req.headers.authorization !== `Bearer ${apiKey}`) {
    if (req.headers.authorization === undefined)
      return invalid(
        "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        401,
      );
    return sendJson(res, 401, openAiError('auth'));
  }
  if (req.method === 'GET' && path === '/v1/models')
    return sendJson(res, 200, {
      object: 'list',
      data: [{ id: 'test-model', object: 'model', created: 1700000000, owned_by: 'cairn-test' }],
    });
  if (req.method !== 'POST' || path !== '/v1/chat/completions')
    return invalid(`Invalid URL (${req.method ?? ''} ${path ?? ''})`, 404);
  const body = rec.body;
  if (typeof body !== 'object' || body === null)
    return invalid(
      'We could not parse the JSON body of your request. (HINT: This likely means you aren’t using your HTTP library correctly.)',
    );
  if (typeof body.model !== 'string') return invalid('you must provide a model parameter');
  if (!Array.isArray(body.messages)) return invalid("Missing required parameter: 'messages'.");

  const b = ctx.next() as OpenAiBehaviour;
  const stream = body.stream === true;
  switch (b.kind) {
    case 'hang':
      return;
    case 'raw':
      return answerRaw(res, b);
    case 'error':
      return sendJson(res, b.status ?? OPENAI_ERRORS[b.error].status, openAiError(b.error, b.message), {
        'x-request-id': `req_${ctx.seq}`,
        ...failHeaders(b, b.error),
      });
    case 'stream_error':
    case 'reply':
      break;
  }
  const o: ReplyOptions<Partial<CompletionUsage>> =
    b.kind === 'reply' ? b : { text: b.text, chunks: b.chunks };
  const structured =
    body.response_format?.type === 'json_schema' || body.response_format?.type === 'json_object';
  const text =
    o.json !== undefined || (structured && o.text === undefined)
      ? JSON.stringify(o.json ?? { echo: lastUserText(body.messages) })
      : (o.text ?? `echo: ${lastUserText(body.messages)}`);
  const calls = (o.tool_calls ?? []).map((c, i) => ({
    id: c.id ?? `call_${ctx.seq}_${i}`,
    type: 'function' as const,
    function: { name: c.name, arguments: argsText(c.arguments) },
  }));
  const id = o.id ?? `chatcmpl-test${ctx.seq}`;
  const model = o.model ?? body.model;
  const created = Math.floor(Date.now() / 1000);
  const finish = (o.finish_reason ?? (calls.length > 0 ? 'tool_calls' : 'stop')) as any;
  const usage = o.usage === null ? undefined : (o.usage ?? openAiUsage(body, text));
  const headers = { 'x-request-id': `req_${ctx.seq}`, 'openai-processing-ms': '1', ...o.headers };

  if (!stream) {
    if (b.kind === 'stream_error')
      return sendJson(res, OPENAI_ERRORS[b.error].status, openAiError(b.error, b.message), headers);
    if (o.first_chunk_delay_ms) await sleep(o.first_chunk_delay_ms);
    const completion: ChatCompletion = {
      id,
      object: 'chat.completion',
      created,
      model,
      choices: [
        {
          index: 0,
          message: {
            role: 'assistant',
            content: text === '' && calls.length > 0 ? null : text,
            refusal: null,
            annotations: [],
            ...(calls.length > 0 ? { tool_calls: calls } : {}),
          },
          logprobs: null,
          finish_reason: finish,
        },
      ],
      ...(usage === undefined ? {} : { usage: usage as CompletionUsage }),
      service_tier: 'default',
      system_fingerprint: 'fp_test',
    };
    return sendJson(res, 200, completion, headers);
  }

  const includeUsage = body.stream_options?.include_usage === true;
  const chunk = (
    choices: ChatCompletionChunk['choices'],
    extra: Partial<ChatCompletionChunk> = {},
  ): ChatCompletionChunk => ({
    id,
    object: 'chat.completion.chunk',
    created,
    model,
    system_fingerprint: 'fp_test',
    choices,
    // With include_usage, every chunk carries usage: null except the last.
    ...(includeUsage ? { usage: null } : {}),
    ...extra,
  });
  const delta = (d: ChatCompletionChunk.Choice.Delta, finish_reason: any = null) =>
    chunk([{ index: 0, delta: d, logprobs: null, finish_reason }]);

  startSse(res, headers);
  sse(res, delta({ role: 'assistant', content: '', refusal: null }));
  if (o.first_chunk_delay_ms) await sleep(o.first_chunk_delay_ms);
  const textPieces = pieces(text, o.chunks ?? 3);
  for (const [i, p] of textPieces.entries()) {
    if (b.kind === 'stream_error' && i === (b.after_chunks ?? 1)) break;
    if (i > 0 && o.chunk_delay_ms) await sleep(o.chunk_delay_ms);
    if (!sse(res, delta({ content: p }))) return;
  }
  if (b.kind === 'stream_error') {
    // OpenAI's mid-stream failure: a data line holding an error object, then the end.
    sse(res, openAiError(b.error, b.message));
    res.end();
    return;
  }
  for (const [index, c] of calls.entries()) {
    if (o.chunk_delay_ms) await sleep(o.chunk_delay_ms);
    sse(
      res,
      delta({
        tool_calls: [
          { index, id: c.id, type: 'function', function: { name: c.function.name, arguments: '' } },
        ],
      }),
    );
    for (const a of pieces(c.function.arguments, 2))
      sse(res, delta({ tool_calls: [{ index, function: { arguments: a } }] }));
  }
  sse(res, delta({}, finish));
  if (includeUsage && usage !== undefined) sse(res, chunk([], { usage: usage as CompletionUsage }));
  sse(res, '[DONE]');
  res.end();
}

export function startOpenAiServer(
  opts: ServerOptions<OpenAiBehaviour> = {},
): Promise<LlmServer<OpenAiBehaviour>> {
  return startServer(opts, reply(), '/v1', (ctx) => openAiHandle(ctx, opts.api_key));
}

// ---------------------------------------------------------------------------------------------
// Anthropic Messages

const ANTHROPIC_ERRORS: Record<ErrorKind, { status: number; type: string; message: string }> = {
  rate_limit: {
    status: 429,
    type: 'rate_limit_error',
    message:
      'This request would exceed the rate limit for your organization of 50 requests per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.',
  },
  overloaded: { status: 529, type: 'overloaded_error', message: 'Overloaded' },
  server: { status: 500, type: 'api_error', message: 'Internal server error' },
  auth: { status: 401, type: 'authentication_error', message: 'invalid x-api-key' },
  context_length: {
    status: 400,
    type: 'invalid_request_error',
    message: 'prompt is too long: 215438 tokens > 200000 maximum',
  },
  invalid_request: {
    status: 400,
    type: 'invalid_request_error',
    message: 'temperature: Input should be less than or equal to 1',
  },
};

function anthropicError(kind: ErrorKind, seq: number, message?: string) {
  const e = ANTHROPIC_ERRORS[kind];
  return {
    type: 'error',
    error: { type: e.type, message: message ?? e.message },
    request_id: `req_test${seq}`,
  };
}

function anthropicUsage(body: any, completionText: string): Partial<Usage> {
  const system = typeof body?.system === 'string' ? body.system : textOfContent(body?.system);
  const prompt = estimate(
    [
      system,
      ...(Array.isArray(body?.messages) ? body.messages : []).map((m: any) => textOfContent(m?.content)),
    ].join('\n'),
  );
  return {
    input_tokens: prompt,
    cache_creation_input_tokens: 0,
    cache_read_input_tokens: 0,
    output_tokens: estimate(completionText),
    service_tier: 'standard',
  };
}

async function anthropicHandle(ctx: Ctx, apiKey: string | undefined): Promise<void> {
  const { req, res, rec } = ctx;
  const path = (req.url ?? '').split('?')[0];
  const refuse = (status: number, type: string, message: string) =>
    sendJson(
      res,
      status,
      { type: 'error', error: { type, message }, request_id: `req_test${ctx.seq}` },
      {
        'request-id': `req_test${ctx.seq}`,
      },
    );
  if (apiKey !== undefined && req.headers['x-api-key'] !== apiKey)
    return refuse(
      401,
      'authentication_error',
      req.headers['x-api-key'] ? 'invalid x-api-key' : 'x-api-key header is required',
    );
  if (req.method !== 'POST' || path !== '/v1/messages') return refuse(404, 'not_found_error', 'Not Found');
  if (req.headers['anthropic-version'] === undefined)
    return refuse(400, 'invalid_request_error', 'anthropic-version: header is required');
  const body = rec.body;
  if (typeof body !== 'object' || body === null)
    return refuse(
      400,
      'invalid_request_error',
      'There was an issue with your request body: it is not valid JSON',
    );
  if (typeof body.model !== 'string') return refuse(400, 'invalid_request_error', 'model: Field required');
  if (typeof body.max_tokens !== 'number')
    return refuse(400, 'invalid_request_error', 'max_tokens: Field required');
  if (!Array.isArray(body.messages)) return refuse(400, 'invalid_request_error', 'messages: Field required');

  const b = ctx.next() as AnthropicBehaviour;
  const stream = body.stream === true;
  const headers = { 'request-id': `req_test${ctx.seq}` };
  switch (b.kind) {
    case 'hang':
      return;
    case 'raw':
      return answerRaw(res, b);
    case 'error':
      return sendJson(
        res,
        b.status ?? ANTHROPIC_ERRORS[b.error].status,
        anthropicError(b.error, ctx.seq, b.message),
        {
          ...headers,
          ...failHeaders(b, b.error),
        },
      );
    case 'stream_error':
    case 'reply':
      break;
  }
  const o: ReplyOptions<Partial<Usage>> = b.kind === 'reply' ? b : { text: b.text, chunks: b.chunks };
  const forcedTool: string | undefined =
    body.tool_choice?.type === 'tool' ? body.tool_choice.name : undefined;
  const echo = lastUserText(body.messages);
  const calls = [
    ...(forcedTool !== undefined ? [{ name: forcedTool, arguments: o.json ?? { echo } }] : []),
    ...(o.tool_calls ?? []),
  ].map((c, i) => ({
    type: 'tool_use' as const,
    id: (c as { id?: string }).id ?? `toolu_test${ctx.seq}_${i}`,
    name: c.name,
    input: argsObject(c.arguments),
  }));
  // A forced tool call is the whole answer; otherwise text (or the json as text) comes first.
  const text =
    forcedTool !== undefined
      ? ''
      : o.json !== undefined
        ? JSON.stringify(o.json)
        : (o.text ?? (calls.length > 0 ? '' : `echo: ${echo}`));
  const id = o.id ?? `msg_test${ctx.seq}`;
  const model = o.model ?? body.model;
  const stop = o.finish_reason ?? (calls.length > 0 ? 'tool_use' : 'end_turn');
  const usage =
    o.usage === null ? undefined : (o.usage ?? anthropicUsage(body, text + JSON.stringify(calls)));
  const allHeaders = { ...headers, ...o.headers };

  if (!stream) {
    if (b.kind === 'stream_error')
      return sendJson(
        res,
        ANTHROPIC_ERRORS[b.error].status,
        anthropicError(b.error, ctx.seq, b.message),
        headers,
      );
    if (o.first_chunk_delay_ms) await sleep(o.first_chunk_delay_ms);
    return sendJson(
      res,
      200,
      {
        id,
        type: 'message',
        role: 'assistant',
        model,
        content: [...(text === '' ? [] : [{ type: 'text', text }]), ...calls],
        stop_reason: stop,
        stop_sequence: null,
        ...(usage === undefined ? {} : { usage }),
      },
      allHeaders,
    );
  }

  startSse(res, allHeaders);
  sse(
    res,
    {
      type: 'message_start',
      message: {
        id,
        type: 'message',
        role: 'assistant',
        model,
        content: [],
        stop_reason: null,
        stop_sequence: null,
        // The opening usage holds the input counts; output_tokens is the count so far.
        ...(usage === undefined
          ? {}
          : { usage: { ...usage, output_tokens: Math.min(1, usage.output_tokens ?? 1) } }),
      },
    },
    'message_start',
  );
  let index = 0;
  if (text !== '' || calls.length === 0) {
    sse(
      res,
      { type: 'content_block_start', index, content_block: { type: 'text', text: '' } },
      'content_block_start',
    );
    sse(res, { type: 'ping' }, 'ping');
    if (o.first_chunk_delay_ms) await sleep(o.first_chunk_delay_ms);
    for (const [i, p] of pieces(text, o.chunks ?? 3).entries()) {
      if (b.kind === 'stream_error' && i === (b.after_chunks ?? 1)) break;
      if (i > 0 && o.chunk_delay_ms) await sleep(o.chunk_delay_ms);
      const ev: RawContentBlockDeltaEvent = {
        type: 'content_block_delta',
        index,
        delta: { type: 'text_delta', text: p },
      };
      if (!sse(res, ev, 'content_block_delta')) return;
    }
    if (b.kind === 'stream_error') {
      sse(res, anthropicError(b.error, ctx.seq, b.message), 'error');
      res.end();
      return;
    }
    const stopEv: RawContentBlockStopEvent = { type: 'content_block_stop', index };
    sse(res, stopEv, 'content_block_stop');
    index++;
  } else {
    sse(res, { type: 'ping' }, 'ping');
    if (o.first_chunk_delay_ms) await sleep(o.first_chunk_delay_ms);
    if (b.kind === 'stream_error') {
      sse(res, anthropicError(b.error, ctx.seq, b.message), 'error');
      res.end();
      return;
    }
  }
  for (const c of calls) {
    if (o.chunk_delay_ms) await sleep(o.chunk_delay_ms);
    sse(
      res,
      {
        type: 'content_block_start',
        index,
        content_block: { type: 'tool_use', id: c.id, name: c.name, input: {} },
      },
      'content_block_start',
    );
    for (const p of pieces(JSON.stringify(c.input), 3)) {
      const ev: RawContentBlockDeltaEvent = {
        type: 'content_block_delta',
        index,
        delta: { type: 'input_json_delta', partial_json: p },
      };
      sse(res, ev, 'content_block_delta');
    }
    const stopEv: RawContentBlockStopEvent = { type: 'content_block_stop', index };
    sse(res, stopEv, 'content_block_stop');
    index++;
  }
  sse(
    res,
    {
      type: 'message_delta',
      delta: { stop_reason: stop, stop_sequence: null },
      // Cumulative output count (the classic shape: output_tokens only).
      ...(usage === undefined ? {} : { usage: { output_tokens: usage.output_tokens } }),
    },
    'message_delta',
  );
  const end: RawMessageStopEvent = { type: 'message_stop' };
  sse(res, end, 'message_stop');
  res.end();
}

export function startAnthropicServer(
  opts: ServerOptions<AnthropicBehaviour> = {},
): Promise<LlmServer<AnthropicBehaviour>> {
  return startServer(opts, reply(), '', (ctx) => anthropicHandle(ctx, opts.api_key));
}

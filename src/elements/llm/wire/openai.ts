/**
 * The OpenAI Chat Completions wire format (POST {base_url}/chat/completions), which OpenAI and the
 * OpenAI-compatible servers (vLLM, Ollama, LM Studio, llama.cpp, gateways) speak. The SDK is used
 * for its types only: the bytes go through our guarded transport.
 *
 * Output budget: `max_tokens` everywhere except api.openai.com, which gets `max_completion_tokens`
 * (its reasoning models refuse `max_tokens`; the compatible servers mostly know only `max_tokens`).
 * ProviderEndpoint.max_tokens_param overrides the choice.
 */
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionCreateParams,
  ChatCompletionMessageParam,
  ChatCompletionTool,
} from 'openai/resources/chat/completions';
import type { CompletionUsage } from 'openai/resources/completions';
import {
  RESPONSE_BODY_CAP,
  baseHeaders,
  bodyFailure,
  chunks,
  invalidResponse,
  isEventStream,
  isObject,
  num,
  parseJson,
  readAll,
  send,
  toResult,
  trimSlash,
  type Exchange,
  type Outcome,
} from './exchange.js';
import { SSE_DONE, SseParser, type SseEvent } from './sse.js';
import {
  ProviderError,
  type ChatRequest,
  type ChatResult,
  type FinishReason,
  type OnDelta,
  type ProviderAdapter,
  type ProviderEndpoint,
  type TokenBuckets,
  type ToolCall,
} from './types.js';

const PROVIDER = 'OpenAI-compatible provider';

/**
 * OpenAI usage → disjoint buckets. prompt_tokens includes the cached ones and completion_tokens the
 * reasoning ones, so both are taken out. cache_write is 0: OpenAI bills no cache writes (a gateway's
 * prompt_tokens_details.cache_write_tokens stays in raw_usage). Null when the numbers are missing.
 */
export function openaiUsage(raw: unknown): TokenBuckets | null {
  if (!isObject(raw)) return null;
  const u = raw as Partial<CompletionUsage>;
  const prompt = num(u.prompt_tokens);
  const completion = num(u.completion_tokens);
  if (prompt === undefined || completion === undefined) return null;
  const cached = Math.min(prompt, num(u.prompt_tokens_details?.cached_tokens) ?? 0);
  const reasoning = Math.min(completion, num(u.completion_tokens_details?.reasoning_tokens) ?? 0);
  return {
    input: prompt - cached,
    cached_input: cached,
    cache_write: 0,
    output: completion - reasoning,
    reasoning,
  };
}

function maxTokensParam(endpoint: ProviderEndpoint): 'max_tokens' | 'max_completion_tokens' {
  if (endpoint.max_tokens_param) return endpoint.max_tokens_param;
  try {
    return new URL(endpoint.base_url).hostname === 'api.openai.com' ? 'max_completion_tokens' : 'max_tokens';
  } catch {
    return 'max_tokens';
  }
}

function messagesOf(req: ChatRequest): ChatCompletionMessageParam[] {
  const out: ChatCompletionMessageParam[] = [];
  if (req.system !== undefined && req.system !== '') out.push({ role: 'system', content: req.system });
  for (const m of req.messages) {
    switch (m.role) {
      case 'system':
      case 'user':
        out.push({ role: m.role, content: m.content });
        break;
      case 'assistant':
        out.push({
          role: 'assistant',
          content: m.content,
          ...(m.tool_calls && m.tool_calls.length > 0
            ? {
                tool_calls: m.tool_calls.map((c) => ({
                  id: c.id,
                  type: 'function' as const,
                  function: { name: c.name, arguments: c.arguments },
                })),
              }
            : {}),
        });
        break;
      case 'tool':
        if (m.tool_call_id === undefined)
          throw new ProviderError('LLM_INVALID_REQUEST', 'a tool message needs the tool_call_id it answers');
        out.push({ role: 'tool', tool_call_id: m.tool_call_id, content: m.content });
        break;
    }
  }
  return out;
}

/** The request body as sent (exported so tests and the gateway's dry run can show it). */
export function openaiRequestBody(endpoint: ProviderEndpoint, req: ChatRequest): ChatCompletionCreateParams {
  const tools: ChatCompletionTool[] | undefined = req.tools?.map((t) => ({
    type: 'function',
    function: {
      name: t.name,
      ...(t.description === undefined ? {} : { description: t.description }),
      parameters: t.parameters,
    },
  }));
  return {
    model: req.model,
    messages: messagesOf(req),
    [maxTokensParam(endpoint)]: req.max_tokens,
    ...(req.temperature === undefined ? {} : { temperature: req.temperature }),
    ...(req.response_format
      ? {
          response_format: {
            type: 'json_schema',
            json_schema: { name: req.response_format.name, schema: req.response_format.schema, strict: true },
          },
        }
      : {}),
    ...(tools && tools.length > 0 ? { tools } : {}),
    stream: req.stream,
    // Without it a stream carries no usage at all.
    ...(req.stream ? { stream_options: { include_usage: true } } : {}),
  };
}

function finishOf(reason: unknown, toolCalls: number, refusalOnly: boolean): FinishReason {
  if (refusalOnly) return 'content_filter';
  switch (reason) {
    case 'stop':
      // Some compatible servers (Ollama) say stop when the model called tools.
      return toolCalls > 0 ? 'tool_calls' : 'stop';
    case 'length':
      return 'length';
    case 'tool_calls':
    case 'function_call':
      return 'tool_calls';
    case 'content_filter':
      return 'content_filter';
    default:
      return toolCalls > 0 ? 'tool_calls' : 'unknown';
  }
}

function textOf(content: unknown): string {
  if (typeof content === 'string') return content;
  // A few compatible servers answer content as parts.
  if (Array.isArray(content))
    return content.map((p) => (isObject(p) && typeof p.text === 'string' ? p.text : '')).join('');
  return '';
}

function fromCompletion(x: Exchange, req: ChatRequest, parsed: unknown): Outcome {
  if (!isObject(parsed)) throw invalidResponse(x, `${PROVIDER}'s answer is not a JSON object`);
  if (parsed.error !== undefined && parsed.error !== null) throw bodyFailure(x, parsed, 'in its answer');
  const body = parsed as Partial<ChatCompletion>;
  const choice = Array.isArray(body.choices) ? body.choices[0] : undefined;
  if (!isObject(choice) || !isObject(choice.message))
    throw invalidResponse(x, `${PROVIDER}'s answer has no choices[0].message`);
  const msg = choice.message;
  const content = textOf(msg.content);
  const tool_calls: ToolCall[] = [];
  for (const [i, c] of (Array.isArray(msg.tool_calls) ? msg.tool_calls : []).entries()) {
    if (!isObject(c)) continue;
    if (c.type === 'custom' && isObject(c.custom))
      tool_calls.push({
        id: typeof c.id === 'string' ? c.id : `call_${i}`,
        name: String(c.custom.name ?? ''),
        arguments: typeof c.custom.input === 'string' ? c.custom.input : '',
      });
    else if (isObject(c.function))
      tool_calls.push({
        id: typeof c.id === 'string' ? c.id : `call_${i}`,
        name: String(c.function.name ?? ''),
        arguments: typeof c.function.arguments === 'string' ? c.function.arguments : '{}',
      });
  }
  const refusalOnly = content === '' && typeof msg.refusal === 'string' && msg.refusal !== '';
  const raw_usage = isObject(body.usage) ? body.usage : null;
  return {
    content,
    tool_calls,
    finish_reason: finishOf(choice.finish_reason, tool_calls.length, refusalOnly),
    served_model: typeof body.model === 'string' && body.model !== '' ? body.model : req.model,
    response_id: typeof body.id === 'string' ? body.id : null,
    raw_usage,
    usage: openaiUsage(raw_usage),
  };
}

/** The answer read from an SSE stream of ChatCompletionChunks. */
async function fromStream(
  x: Exchange,
  req: ChatRequest,
  onDelta: OnDelta | undefined,
): Promise<{ outcome: Outcome; firstAt: number | null }> {
  const parts: string[] = [];
  let refusal = '';
  const calls = new Map<number, { id: string | undefined; name: string; args: string }>();
  let finish: unknown = undefined;
  let model: string | undefined;
  let id: string | null = null;
  let raw_usage: unknown = null;
  let firstAt: number | null = null;
  let done = false;

  const take = (ev: SseEvent): void => {
    if (ev.data.trim() === SSE_DONE) {
      done = true;
      return;
    }
    const parsed = parseJson(ev.data);
    if (!isObject(parsed)) throw invalidResponse(x, `${PROVIDER} streamed an event that is not JSON`);
    // OpenAI reports a failure mid-answer as a chunk carrying `error` (some servers name the event).
    if ((parsed.error !== undefined && parsed.error !== null) || ev.event === 'error')
      throw bodyFailure(x, parsed, 'mid-stream');
    const chunk = parsed as Partial<ChatCompletionChunk>;
    if (typeof chunk.model === 'string' && chunk.model !== '') model = chunk.model;
    if (typeof chunk.id === 'string' && chunk.id !== '') id = chunk.id;
    if (isObject(chunk.usage)) raw_usage = chunk.usage;
    for (const choice of Array.isArray(chunk.choices) ? chunk.choices : []) {
      if (!isObject(choice) || (choice.index ?? 0) !== 0) continue;
      if (choice.finish_reason !== null && choice.finish_reason !== undefined) finish = choice.finish_reason;
      const delta = choice.delta;
      if (!isObject(delta)) continue;
      if (typeof delta.content === 'string' && delta.content !== '') {
        firstAt ??= performance.now();
        parts.push(delta.content);
        onDelta?.(delta.content);
      }
      if (typeof delta.refusal === 'string') refusal += delta.refusal;
      for (const tc of Array.isArray(delta.tool_calls) ? delta.tool_calls : []) {
        if (!isObject(tc)) continue;
        // The first delta of a call brings its id and name, the later ones pieces of arguments.
        firstAt ??= performance.now();
        const index = num(tc.index) ?? 0;
        const call = calls.get(index) ?? { id: undefined, name: '', args: '' };
        if (typeof tc.id === 'string' && tc.id !== '') call.id ??= tc.id;
        const fn: { name?: unknown; arguments?: unknown } = isObject(tc.function) ? tc.function : {};
        if (typeof fn.name === 'string' && call.name === '') call.name = fn.name;
        if (typeof fn.arguments === 'string') call.args += fn.arguments;
        calls.set(index, call);
      }
    }
  };

  const parser = new SseParser();
  try {
    for await (const chunk of chunks(x)) {
      let events: SseEvent[];
      try {
        events = parser.push(chunk);
      } catch (e) {
        throw invalidResponse(x, `${PROVIDER}'s stream: ${(e as Error).message}`);
      }
      for (const ev of events) {
        take(ev);
        if (done) break;
      }
      if (done) break;
    }
    if (!done) for (const ev of parser.end()) take(ev);
  } finally {
    x.res.close();
  }
  if (!done && finish === undefined)
    throw new ProviderError(
      'LLM_PROVIDER_ERROR',
      `${PROVIDER}'s stream ended before the answer was complete`,
      {
        http_status: x.res.status,
        request_sha256: x.request_sha256,
      },
    );
  const tool_calls = [...calls.entries()]
    .sort(([a], [b]) => a - b)
    .map(([index, c]) => ({ id: c.id ?? `call_${index}`, name: c.name, arguments: c.args }));
  const content = parts.join('');
  return {
    outcome: {
      content,
      tool_calls,
      finish_reason: finishOf(finish, tool_calls.length, content === '' && refusal !== ''),
      served_model: model ?? req.model,
      response_id: id,
      raw_usage,
      usage: openaiUsage(raw_usage),
    },
    firstAt,
  };
}

export const openaiAdapter: ProviderAdapter = {
  api: 'openai',
  async chat(endpoint, req, io): Promise<ChatResult> {
    const headers: Record<string, string> = {
      ...baseHeaders(endpoint),
      'content-type': 'application/json',
      accept: req.stream ? 'text/event-stream' : 'application/json',
      ...(endpoint.api_key ? { authorization: `Bearer ${endpoint.api_key}` } : {}),
    };
    const body = openaiRequestBody(endpoint, req);
    const x = await send(
      PROVIDER,
      endpoint,
      `${trimSlash(endpoint.base_url)}/chat/completions`,
      headers,
      body,
      io,
    );
    if (req.stream && isEventStream(x.res)) {
      const { outcome, firstAt } = await fromStream(x, req, io.onDelta);
      return toResult(x, outcome, firstAt);
    }
    // Not streamed (or a server that ignored `stream: true` and answered JSON).
    const text = (await readAll(x, RESPONSE_BODY_CAP)).toString('utf8');
    const arrived = performance.now();
    const parsed = parseJson(text);
    if (parsed === null) throw invalidResponse(x, `${PROVIDER}'s answer is not JSON`);
    const outcome = fromCompletion(x, req, parsed);
    if (req.stream && outcome.content !== '') io.onDelta?.(outcome.content);
    return toResult(x, outcome, arrived);
  },
};

/**
 * The Anthropic Messages wire format (POST {base_url}/v1/messages). The SDK is used for its types
 * only: the bytes go through our guarded transport.
 *
 * response_format: the classic Messages API has no JSON-schema mode, so the schema becomes a tool
 * the model is forced to call (tool_choice {type:'tool'}); the tool's input, JSON-encoded, is the
 * answer's content, and that call is not reported as a tool call. A schema whose top level is not an
 * object is wrapped as {value: schema} (input_schema must be an object) and unwrapped again. While a
 * response_format is forced, declared tools can be seen but not chosen.
 */
import type {
  ContentBlockParam,
  Message,
  MessageCreateParams,
  MessageDeltaUsage,
  MessageParam,
  RawMessageStreamEvent,
  Tool,
  Usage,
} from '@anthropic-ai/sdk/resources/messages';
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
import { SseParser, type SseEvent } from './sse.js';
import {
  ProviderError,
  type ChatRequest,
  type ChatResult,
  type FinishReason,
  type OnDelta,
  type ProviderAdapter,
  type TokenBuckets,
  type ToolCall,
} from './types.js';

const PROVIDER = 'Anthropic';
export const ANTHROPIC_VERSION = '2023-06-01';

/**
 * Anthropic usage → disjoint buckets: input_tokens already excludes cache reads and writes, and
 * output_tokens includes thinking (billed as output, not reported apart), so reasoning is 0.
 */
export function anthropicUsage(raw: unknown): TokenBuckets | null {
  if (!isObject(raw)) return null;
  const u = raw as Partial<Usage>;
  const input = num(u.input_tokens);
  const output = num(u.output_tokens);
  if (input === undefined || output === undefined) return null;
  return {
    input,
    cached_input: num(u.cache_read_input_tokens) ?? 0,
    cache_write: num(u.cache_creation_input_tokens) ?? 0,
    output,
    reasoning: 0,
  };
}

/** How a response_format travels: the forced tool, and whether its input is wrapped in {value}. */
interface Forced {
  name: string;
  wrapped: boolean;
}

function forcedOf(req: ChatRequest): Forced | null {
  const rf = req.response_format;
  return rf ? { name: rf.name, wrapped: rf.schema.type !== 'object' } : null;
}

function asBlocks(content: string | ContentBlockParam[]): ContentBlockParam[] {
  if (typeof content !== 'string') return content;
  return content === '' ? [] : [{ type: 'text', text: content }];
}

function parseArguments(c: ToolCall): unknown {
  try {
    const v = JSON.parse(c.arguments === '' ? '{}' : c.arguments) as unknown;
    if (isObject(v)) return v;
  } catch {
    // fall through
  }
  throw new ProviderError(
    'LLM_INVALID_REQUEST',
    `tool call ${c.id} (${c.name}): its arguments are not a JSON object, which Anthropic requires`,
  );
}

/**
 * Our messages as Anthropic turns: system messages go to the top-level system, tool results become
 * tool_result blocks of a user turn, and consecutive turns of one role merge (the parallel results
 * of one assistant turn must all be in the next user turn).
 */
function turnsOf(req: ChatRequest): { system: string; messages: MessageParam[] } {
  const system: string[] = req.system ? [req.system] : [];
  const messages: { role: 'user' | 'assistant'; content: string | ContentBlockParam[] }[] = [];
  const push = (role: 'user' | 'assistant', content: string | ContentBlockParam[]) => {
    const last = messages[messages.length - 1];
    if (last && last.role === role) last.content = [...asBlocks(last.content), ...asBlocks(content)];
    else messages.push({ role, content });
  };
  for (const m of req.messages) {
    switch (m.role) {
      case 'system':
        if (m.content !== '') system.push(m.content);
        break;
      case 'user':
        push('user', m.content);
        break;
      case 'assistant':
        if (m.tool_calls && m.tool_calls.length > 0)
          push('assistant', [
            ...asBlocks(m.content),
            ...m.tool_calls.map((c): ContentBlockParam => ({
              type: 'tool_use',
              id: c.id,
              name: c.name,
              input: parseArguments(c),
            })),
          ]);
        else push('assistant', m.content);
        break;
      case 'tool':
        if (m.tool_call_id === undefined)
          throw new ProviderError('LLM_INVALID_REQUEST', 'a tool message needs the tool_call_id it answers');
        push('user', [{ type: 'tool_result', tool_use_id: m.tool_call_id, content: m.content }]);
        break;
    }
  }
  return { system: system.join('\n\n'), messages };
}

/** The request body as sent (exported so tests and the gateway's dry run can show it). */
export function anthropicRequestBody(req: ChatRequest): MessageCreateParams {
  const { system, messages } = turnsOf(req);
  const tools: Tool[] = (req.tools ?? []).map((t) => ({
    name: t.name,
    ...(t.description === undefined ? {} : { description: t.description }),
    input_schema: t.parameters as Tool.InputSchema,
  }));
  const forced = forcedOf(req);
  if (req.response_format && forced) {
    const schema = req.response_format.schema;
    tools.push({
      name: forced.name,
      description: 'Give the answer as this tool’s input: JSON matching its schema.',
      input_schema: (forced.wrapped
        ? { type: 'object', properties: { value: schema }, required: ['value'] }
        : schema) as Tool.InputSchema,
    });
  }
  return {
    model: req.model,
    max_tokens: req.max_tokens,
    ...(system === '' ? {} : { system }),
    messages,
    ...(req.temperature === undefined ? {} : { temperature: req.temperature }),
    ...(tools.length > 0 ? { tools } : {}),
    ...(forced ? { tool_choice: { type: 'tool' as const, name: forced.name } } : {}),
    stream: req.stream,
  };
}

function finishOf(reason: unknown, forcedOnly: boolean): FinishReason {
  switch (reason) {
    case 'end_turn':
    case 'stop_sequence':
      return 'stop';
    case 'max_tokens':
    case 'model_context_window_exceeded':
      return 'length';
    case 'tool_use':
      // The forced response_format tool is the answer, not a call for us to run.
      return forcedOnly ? 'stop' : 'tool_calls';
    case 'refusal':
      return 'content_filter';
    default:
      return 'unknown';
  }
}

/** The response_format answer as content: the tool input, unwrapped when it was wrapped. */
function structuredContent(x: Exchange, forced: Forced, input: unknown): string {
  const value = forced.wrapped ? (isObject(input) ? input.value : undefined) : input;
  if (value === undefined) throw invalidResponse(x, `${PROVIDER}'s ${forced.name} call has no value`);
  return JSON.stringify(value);
}

function fromMessage(x: Exchange, req: ChatRequest, parsed: unknown): Outcome {
  if (!isObject(parsed)) throw invalidResponse(x, `${PROVIDER}'s answer is not a JSON object`);
  if (parsed.type === 'error') throw bodyFailure(x, parsed, 'in its answer');
  const msg = parsed as Partial<Message>;
  if (!Array.isArray(msg.content)) throw invalidResponse(x, `${PROVIDER}'s answer has no content array`);
  const forced = forcedOf(req);
  let text = '';
  let structured: string | undefined;
  const tool_calls: ToolCall[] = [];
  for (const [i, block] of msg.content.entries()) {
    if (!isObject(block)) continue;
    if (block.type === 'text' && typeof block.text === 'string') text += block.text;
    else if (block.type === 'tool_use') {
      if (forced && structured === undefined && block.name === forced.name)
        structured = structuredContent(x, forced, block.input);
      else
        tool_calls.push({
          id: typeof block.id === 'string' ? block.id : `toolu_${i}`,
          name: String(block.name),
          arguments: JSON.stringify(block.input ?? {}),
        });
    }
  }
  const raw_usage = isObject(msg.usage) ? msg.usage : null;
  return {
    content: structured ?? text,
    tool_calls,
    finish_reason: finishOf(msg.stop_reason, structured !== undefined && tool_calls.length === 0),
    served_model: typeof msg.model === 'string' && msg.model !== '' ? msg.model : req.model,
    response_id: typeof msg.id === 'string' ? msg.id : null,
    raw_usage,
    usage: anthropicUsage(raw_usage),
  };
}

interface StreamBlock {
  type: string;
  text: string;
  json: string;
  id?: string;
  name?: string;
  /** content_block_start's input (used when no input_json_delta follows). */
  input?: unknown;
}

/** The answer read from an SSE stream of message events. */
async function fromStream(
  x: Exchange,
  req: ChatRequest,
  onDelta: OnDelta | undefined,
): Promise<{ outcome: Outcome; firstAt: number | null }> {
  const forced = forcedOf(req);
  const blocks = new Map<number, StreamBlock>();
  let id: string | null = null;
  let model: string | undefined;
  let startUsage: Record<string, unknown> | null = null;
  let deltaUsage: Record<string, unknown> | null = null;
  let stop: unknown = undefined;
  let firstAt: number | null = null;
  let done = false;

  const blockAt = (index: number, type: string): StreamBlock => {
    let b = blocks.get(index);
    if (!b) blocks.set(index, (b = { type, text: '', json: '' }));
    return b;
  };
  const text = (piece: string): void => {
    if (piece === '') return;
    firstAt ??= performance.now();
    onDelta?.(piece);
  };

  const take = (ev: SseEvent): void => {
    const parsed = parseJson(ev.data);
    if (!isObject(parsed)) throw invalidResponse(x, `${PROVIDER} streamed an event that is not JSON`);
    const type = typeof parsed.type === 'string' ? parsed.type : ev.event;
    if (type === 'error') throw bodyFailure(x, parsed, 'mid-stream');
    const e = parsed as unknown as RawMessageStreamEvent;
    switch (e.type) {
      case 'message_start':
        if (isObject(e.message)) {
          if (typeof e.message.id === 'string') id = e.message.id;
          if (typeof e.message.model === 'string' && e.message.model !== '') model = e.message.model;
          if (isObject(e.message.usage)) startUsage = e.message.usage as unknown as Record<string, unknown>;
        }
        break;
      case 'content_block_start': {
        if (!isObject(e.content_block)) break;
        const b = blockAt(num(e.index) ?? 0, e.content_block.type);
        if (e.content_block.type === 'text') {
          b.text += e.content_block.text ?? '';
          text(e.content_block.text ?? '');
        } else if (e.content_block.type === 'tool_use') {
          b.id = e.content_block.id;
          b.name = e.content_block.name;
          b.input = e.content_block.input;
        }
        break;
      }
      case 'content_block_delta': {
        if (!isObject(e.delta)) break;
        if (e.delta.type === 'text_delta' && typeof e.delta.text === 'string') {
          blockAt(num(e.index) ?? 0, 'text').text += e.delta.text;
          text(e.delta.text);
        } else if (e.delta.type === 'input_json_delta' && typeof e.delta.partial_json === 'string') {
          // Tool input arrives as JSON text in pieces; it counts as the first token like text.
          if (e.delta.partial_json !== '') firstAt ??= performance.now();
          blockAt(num(e.index) ?? 0, 'tool_use').json += e.delta.partial_json;
        }
        // thinking_delta, signature_delta, citations_delta: not content.
        break;
      }
      case 'message_delta':
        if (isObject(e.delta) && e.delta.stop_reason !== undefined && e.delta.stop_reason !== null)
          stop = e.delta.stop_reason;
        // Cumulative: the last one holds the totals.
        if (isObject(e.usage)) deltaUsage = e.usage as unknown as Record<string, unknown>;
        break;
      case 'message_stop':
        done = true;
        break;
      default:
        // ping, content_block_stop, and event types added later.
        break;
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
  if (!done && stop === undefined)
    throw new ProviderError('LLM_PROVIDER_ERROR', `${PROVIDER}'s stream ended before message_stop`, {
      http_status: x.res.status,
      request_sha256: x.request_sha256,
    });

  let content = '';
  let structured: string | undefined;
  const tool_calls: ToolCall[] = [];
  for (const [index, b] of [...blocks.entries()].sort(([a], [c]) => a - c)) {
    if (b.type === 'text') content += b.text;
    else if (b.type === 'tool_use') {
      const json = b.json !== '' ? b.json : JSON.stringify(b.input ?? {});
      if (forced && structured === undefined && b.name === forced.name) {
        const input = parseJson(json);
        if (input === null) throw invalidResponse(x, `${PROVIDER}'s ${forced.name} input is not JSON`);
        structured = structuredContent(x, forced, input);
      } else tool_calls.push({ id: b.id ?? `toolu_${index}`, name: b.name ?? '', arguments: json });
    }
  }
  if (structured !== undefined) {
    // The forced tool's input was not passed on piece by piece (its pieces are not the content's
    // text): the whole answer goes out as one delta.
    content = structured;
    onDelta?.(content);
  }
  // Stream usage: message_start's (input and cache counts) under the last message_delta's (the
  // cumulative output; newer servers repeat the input counts there, null when they do not).
  // (Casts: TypeScript does not see the assignments made inside `take`.)
  const start = startUsage as Record<string, unknown> | null;
  const last = deltaUsage as Partial<MessageDeltaUsage> | null;
  let raw_usage: Record<string, unknown> | null = start ? { ...start } : null;
  if (last) {
    raw_usage ??= {};
    for (const [k, v] of Object.entries(last)) if (v !== null && v !== undefined) raw_usage[k] = v;
  }
  return {
    outcome: {
      content,
      tool_calls,
      finish_reason: finishOf(stop, structured !== undefined && tool_calls.length === 0),
      served_model: model ?? req.model,
      response_id: id,
      raw_usage,
      usage: anthropicUsage(raw_usage),
    },
    firstAt,
  };
}

function messagesUrl(base: string): string {
  const b = trimSlash(base);
  // Accept a base_url configured with the version segment too.
  return b.endsWith('/v1') ? `${b}/messages` : `${b}/v1/messages`;
}

export const anthropicAdapter: ProviderAdapter = {
  api: 'anthropic',
  async chat(endpoint, req, io): Promise<ChatResult> {
    const headers: Record<string, string> = {
      'anthropic-version': ANTHROPIC_VERSION,
      ...baseHeaders(endpoint),
      'content-type': 'application/json',
      accept: req.stream ? 'text/event-stream' : 'application/json',
      ...(endpoint.api_key ? { 'x-api-key': endpoint.api_key } : {}),
    };
    const body = anthropicRequestBody(req);
    const x = await send(PROVIDER, endpoint, messagesUrl(endpoint.base_url), headers, body, io);
    if (req.stream && isEventStream(x.res)) {
      const { outcome, firstAt } = await fromStream(x, req, io.onDelta);
      return toResult(x, outcome, firstAt);
    }
    const bodyText = (await readAll(x, RESPONSE_BODY_CAP)).toString('utf8');
    const arrived = performance.now();
    const parsed = parseJson(bodyText);
    if (parsed === null) throw invalidResponse(x, `${PROVIDER}'s answer is not JSON`);
    const outcome = fromMessage(x, req, parsed);
    if (req.stream && outcome.content !== '') io.onDelta?.(outcome.content);
    return toResult(x, outcome, arrived);
  },
};

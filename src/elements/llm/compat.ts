/**
 * The OpenAI Chat Completions wire format, answered by an llm element (R-LLM): an application that
 * already uses an OpenAI client points its base URL at /api/{circle}/{slug}/v1 and every call
 * becomes a run, with its cost, its budget and its policy check. The element decides the model; the
 * request's `messages` are appended after the element's own, and `max_tokens` is capped by its spec.
 */
import type { ChatCompletion, ChatCompletionChunk } from 'openai/resources/chat/completions';
import { errors } from '../../core/errors.js';
import type { ChatCompletionsCompat } from '../types.js';
import type { FinishReason, ToolCall } from './wire/types.js';

interface LlmOutput {
  content: unknown;
  message: { role: 'assistant'; content: string; tool_calls?: ToolCall[] };
  finish_reason: FinishReason;
  model: string;
  usage: {
    input_tokens: number;
    output_tokens: number;
    buckets: { cached_input: number; reasoning: number };
  };
  cost: unknown;
}

function text(content: unknown): string {
  if (typeof content === 'string') return content;
  // Content parts (text only; images are not forwarded).
  if (Array.isArray(content))
    return content
      .map((p) =>
        p && typeof p === 'object' && typeof (p as { text?: unknown }).text === 'string'
          ? (p as { text: string }).text
          : '',
      )
      .join('');
  if (content === null || content === undefined) return '';
  throw errors.invalidInput(
    'A message content is neither a string nor a list of text parts.',
    undefined,
    'Send content as a string.',
  );
}

function finish(f: FinishReason): ChatCompletion.Choice['finish_reason'] {
  return f === 'length' || f === 'tool_calls' || f === 'content_filter' ? f : 'stop';
}

function usageOf(o: LlmOutput): NonNullable<ChatCompletion['usage']> {
  return {
    prompt_tokens: o.usage.input_tokens,
    completion_tokens: o.usage.output_tokens,
    total_tokens: o.usage.input_tokens + o.usage.output_tokens,
    prompt_tokens_details: { cached_tokens: o.usage.buckets.cached_input },
    completion_tokens_details: { reasoning_tokens: o.usage.buckets.reasoning },
  };
}

function contentOf(o: LlmOutput): string {
  return typeof o.content === 'string' ? o.content : JSON.stringify(o.content);
}

export const chatCompat: ChatCompletionsCompat = {
  op: 'invoke',
  toInput(body) {
    const messages = body.messages;
    if (!Array.isArray(messages) || messages.length === 0)
      throw errors.invalidInput(
        'messages must be a non-empty list.',
        { path: 'messages' },
        'Send messages: [{"role": "user", "content": "…"}].',
      );
    const out = messages.map((m, i) => {
      if (!m || typeof m !== 'object')
        throw errors.invalidInput(`messages[${i}] is not an object.`, { path: `messages[${i}]` });
      const x = m as Record<string, unknown>;
      const role = x.role === 'developer' ? 'system' : x.role;
      if (role !== 'system' && role !== 'user' && role !== 'assistant' && role !== 'tool')
        throw errors.invalidInput(
          `messages[${i}].role "${String(x.role)}" is not system, developer, user, assistant or tool.`,
          { path: `messages[${i}].role` },
        );
      const calls = Array.isArray(x.tool_calls)
        ? (x.tool_calls as unknown[]).map((c, j) => {
            if (!c || typeof c !== 'object')
              throw errors.invalidInput(`messages[${i}].tool_calls[${j}] is not an object.`, {
                path: `messages[${i}].tool_calls[${j}]`,
              });
            const t = c as { id?: unknown; function?: { name?: unknown; arguments?: unknown } | null };
            return {
              id: String(t.id ?? ''),
              name: String(t.function?.name ?? ''),
              arguments: String(t.function?.arguments ?? ''),
            };
          })
        : undefined;
      return {
        role,
        content: text(x.content),
        ...(typeof x.tool_call_id === 'string' ? { tool_call_id: x.tool_call_id } : {}),
        ...(calls ? { tool_calls: calls } : {}),
      };
    });
    const maxTokens = body.max_completion_tokens ?? body.max_tokens;
    return {
      messages: out,
      ...(typeof maxTokens === 'number' ? { max_tokens: maxTokens } : {}),
      ...(typeof body.temperature === 'number' ? { temperature: body.temperature } : {}),
    };
  },
  toCompletion(output, meta) {
    const o = output as LlmOutput;
    const c: ChatCompletion = {
      id: meta.id,
      object: 'chat.completion',
      created: meta.created,
      model: o.model,
      choices: [
        {
          index: 0,
          message: {
            role: 'assistant',
            content: contentOf(o),
            refusal: null,
            ...(o.message.tool_calls?.length
              ? {
                  tool_calls: o.message.tool_calls.map((t) => ({
                    id: t.id,
                    type: 'function' as const,
                    function: { name: t.name, arguments: t.arguments },
                  })),
                }
              : {}),
          },
          finish_reason: finish(o.finish_reason),
          logprobs: null,
        },
      ],
      usage: usageOf(o),
    };
    return { ...c, cairn: { cost: o.cost } };
  },
  closingChunks(output, meta) {
    const o = output as LlmOutput;
    const base = {
      id: meta.id,
      object: 'chat.completion.chunk' as const,
      created: meta.created,
      model: o.model,
    };
    const chunks: ChatCompletionChunk[] = [];
    if (!meta.streamed)
      chunks.push({
        ...base,
        choices: [{ index: 0, delta: { role: 'assistant', content: contentOf(o) }, finish_reason: null }],
      });
    if (o.message.tool_calls?.length)
      chunks.push({
        ...base,
        choices: [
          {
            index: 0,
            delta: {
              tool_calls: o.message.tool_calls.map((t, index) => ({
                index,
                id: t.id,
                type: 'function' as const,
                function: { name: t.name, arguments: t.arguments },
              })),
            },
            finish_reason: null,
          },
        ],
      });
    chunks.push({ ...base, choices: [{ index: 0, delta: {}, finish_reason: finish(o.finish_reason) }] });
    if (meta.includeUsage) chunks.push({ ...base, choices: [], usage: usageOf(o) });
    return chunks as unknown as Record<string, unknown>[];
  },
  deltaChunk(t, meta) {
    const c: ChatCompletionChunk = {
      id: meta.id,
      object: 'chat.completion.chunk',
      created: meta.created,
      model: meta.model,
      choices: [
        {
          index: 0,
          delta: meta.first ? { role: 'assistant', content: t } : { content: t },
          finish_reason: null,
        },
      ],
    };
    return c as unknown as Record<string, unknown>;
  },
};

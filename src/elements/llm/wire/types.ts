/**
 * The LLM gateway's provider contract: one request shape in, one result shape out, whichever wire
 * format (OpenAI Chat Completions, Anthropic Messages) the provider speaks.
 */
import type { Transport } from '../../../net/transport.js';

export type WireApi = 'openai' | 'anthropic';

export interface ToolCall {
  id: string;
  name: string;
  /** JSON text of the arguments, as the model wrote it. */
  arguments: string;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string;
  /** tool messages: the call answered. */
  tool_call_id?: string;
  /** assistant messages: the calls it made. */
  tool_calls?: ToolCall[];
}

export interface ToolDecl {
  name: string;
  description?: string;
  /** JSON Schema of the arguments. */
  parameters: Record<string, unknown>;
}

export interface ChatRequest {
  model: string;
  system?: string;
  messages: ChatMessage[];
  temperature?: number;
  max_tokens: number;
  /** The output must be JSON matching this schema (OpenAI json_schema; Anthropic: instructed + tool). */
  response_format?: { name: string; schema: Record<string, unknown> };
  tools?: ToolDecl[];
  stream: boolean;
}

export interface ProviderEndpoint {
  api: WireApi;
  /** e.g. https://api.openai.com/v1 or http://127.0.0.1:8080/v1; https://api.anthropic.com */
  base_url: string;
  /** From the secret attached to the provider; null for a keyless local server. */
  api_key: string | null;
  headers?: Record<string, string>;
  /** Passed to the transport (SSRF guard). */
  allow: readonly string[];
  timeout_ms: number;
  /**
   * OpenAI wire only: the body field the output budget goes in. Default `max_completion_tokens` on
   * api.openai.com (its reasoning models refuse `max_tokens`), `max_tokens` elsewhere (vLLM, Ollama,
   * LM Studio and older gateways know only that one).
   */
  max_tokens_param?: 'max_tokens' | 'max_completion_tokens';
}

/** Token buckets, disjoint, so cost = Σ bucket × its price. */
export interface TokenBuckets {
  /** Input tokens billed at the input price (cache reads and writes excluded). */
  input: number;
  /** Input tokens read from the provider's prompt cache. */
  cached_input: number;
  /** Input tokens written to the prompt cache (Anthropic cache_creation_input_tokens). */
  cache_write: number;
  /** Output tokens, reasoning excluded. */
  output: number;
  /** Reasoning tokens (OpenAI completion_tokens_details.reasoning_tokens). */
  reasoning: number;
}

export type FinishReason = 'stop' | 'length' | 'tool_calls' | 'content_filter' | 'error' | 'unknown';

export interface ChatResult {
  content: string;
  message: { role: 'assistant'; content: string; tool_calls?: ToolCall[] };
  finish_reason: FinishReason;
  /** The model the provider says served it. */
  served_model: string;
  /** The provider's response id. */
  response_id: string | null;
  /** The provider's usage object, untouched (null when it sent none). */
  raw_usage: unknown;
  /** Normalised; null when the provider sent no usage (the gateway then estimates). */
  usage: TokenBuckets | null;
  http_status: number;
  /** First content token (streams), or the whole answer's arrival (non-streaming), from the request. */
  ttft_ms: number | null;
  latency_ms: number;
  /** sha256 hex of the request body sent, and of the response bytes received (all of a stream). */
  request_sha256: string;
  response_sha256: string;
}

/** Called with each piece of content as a stream delivers it. */
export type OnDelta = (text: string) => void;

export interface ProviderAdapter {
  api: WireApi;
  chat(
    endpoint: ProviderEndpoint,
    req: ChatRequest,
    io: { transport: Transport; signal?: AbortSignal; onDelta?: OnDelta },
  ): Promise<ChatResult>;
}

/**
 * A provider failure, classified. The adapter throws it for every non-2xx answer and every
 * malformed body, in each shape the real provider sends them.
 */
export type LlmFailure =
  | 'LLM_RATE_LIMITED'
  | 'LLM_PROVIDER_ERROR'
  | 'LLM_TIMEOUT'
  | 'LLM_AUTH_FAILED'
  | 'LLM_CONTEXT_TOO_LONG'
  | 'LLM_INVALID_REQUEST'
  | 'LLM_INVALID_RESPONSE';

export class ProviderError extends Error {
  constructor(
    readonly code: LlmFailure,
    message: string,
    readonly info: {
      http_status?: number;
      /** From Retry-After / retry-after-ms, when the provider sent one. */
      retry_after_ms?: number;
      /** The provider's own error type/code (e.g. rate_limit_error, context_length_exceeded). */
      provider_code?: string;
      request_sha256?: string;
    } = {},
  ) {
    super(message);
    this.name = 'ProviderError';
  }
}

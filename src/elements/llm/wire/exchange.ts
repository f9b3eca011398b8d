/**
 * What both wire adapters share: sending one JSON request through the transport (hashing the exact
 * bytes), reading the answer (hashing every byte), and classifying every failure — transport,
 * HTTP status, error body, in-stream error event — into a ProviderError.
 */
import { createHash, type Hash } from 'node:crypto';
import type { OpenResponse, Transport } from '../../../net/transport.js';
import {
  ProviderError,
  type ChatResult,
  type LlmFailure,
  type ProviderEndpoint,
  type ToolCall,
} from './types.js';

/** An error body is read this far: enough for any provider's message, never a whole HTML page. */
export const ERROR_BODY_CAP = 64 * 1024;
/** A non-streamed answer larger than this is not a chat completion. */
export const RESPONSE_BODY_CAP = 32 * 1024 * 1024;

/**
 * Transport failures that are not the provider's: configuration (SSRF guard, bad URL, a request the
 * client refuses to send) and cancellation. They reach the gateway unchanged.
 */
const PASS_THROUGH = new Set([
  'NET_ADDRESS_REFUSED',
  'NET_HOST_NOT_ALLOWED',
  'NET_URL_REFUSED',
  'NET_INVALID_REQUEST',
  'NET_ABORTED',
]);

export interface Exchange {
  provider: string;
  res: OpenResponse;
  /** performance.now() just before the request was handed to the transport. */
  t0: number;
  request_sha256: string;
  /** Running sha256 of the response bytes read so far. */
  hash: Hash;
  endpoint: ProviderEndpoint;
  signal: AbortSignal | undefined;
}

/**
 * Sends `body` as JSON and returns the open 2xx response; a non-2xx answer is read (up to
 * ERROR_BODY_CAP) and thrown as a ProviderError.
 */
export async function send(
  provider: string,
  endpoint: ProviderEndpoint,
  url: string,
  headers: Record<string, string>,
  body: unknown,
  io: { transport: Transport; signal?: AbortSignal },
): Promise<Exchange> {
  const bytes = Buffer.from(JSON.stringify(body), 'utf8');
  const request_sha256 = createHash('sha256').update(bytes).digest('hex');
  const t0 = performance.now();
  let res: OpenResponse;
  try {
    res = await io.transport({
      method: 'POST',
      url,
      headers,
      body: bytes,
      allow: endpoint.allow,
      timeoutMs: endpoint.timeout_ms,
      signal: io.signal,
    });
  } catch (e) {
    throw transportFailure(provider, endpoint, io.signal, request_sha256, e);
  }
  const x: Exchange = {
    provider,
    res,
    t0,
    request_sha256,
    hash: createHash('sha256'),
    endpoint,
    signal: io.signal,
  };
  if (res.status < 200 || res.status > 299) {
    const text = (await readAll(x, ERROR_BODY_CAP, true)).toString('utf8');
    throw httpFailure(provider, res.status, res.headers, text, request_sha256);
  }
  return x;
}

/** The body's chunks, hashed as they pass; a transport failure mid-body is classified too. */
export async function* chunks(x: Exchange): AsyncGenerator<Buffer> {
  try {
    for await (const chunk of x.res.body) {
      x.hash.update(chunk);
      yield chunk;
    }
  } catch (e) {
    throw transportFailure(x.provider, x.endpoint, x.signal, x.request_sha256, e);
  }
}

/**
 * The whole body, up to `cap` bytes. Past the cap an error body is cut (`truncate`); an answer is
 * refused as LLM_INVALID_RESPONSE.
 */
export async function readAll(x: Exchange, cap: number, truncate = false): Promise<Buffer> {
  const parts: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of chunks(x)) {
      if (size + chunk.length > cap) {
        if (truncate) {
          parts.push(chunk.subarray(0, cap - size));
          size = cap;
          break;
        }
        throw invalidResponse(x, `${x.provider}'s answer is larger than ${cap} bytes`);
      }
      parts.push(chunk);
      size += chunk.length;
    }
  } finally {
    x.res.close();
  }
  return Buffer.concat(parts, size);
}

export function responseSha256(x: Exchange): string {
  return x.hash.copy().digest('hex');
}

export function invalidResponse(x: Exchange, message: string): ProviderError {
  return new ProviderError('LLM_INVALID_RESPONSE', message, {
    http_status: x.res.status,
    request_sha256: x.request_sha256,
  });
}

/** Parses JSON, or null when the text is not JSON. */
export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return null;
  }
}

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * A count (tokens, an index): a whole number from 0 to 10¹², or undefined. A provider's negative,
 * fractional or absurd number is treated as missing (usage then estimated), never billed as is.
 */
export function num(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 1e12 ? v : undefined;
}

function transportFailure(
  provider: string,
  endpoint: ProviderEndpoint,
  signal: AbortSignal | undefined,
  request_sha256: string,
  e: unknown,
): unknown {
  // A cancellation is the caller's doing, and an SSRF refusal is configuration: neither is the
  // provider failing, so the gateway must see them as they are.
  if (e instanceof ProviderError || signal?.aborted) return e;
  const code = isObject(e) && typeof e.code === 'string' ? e.code : undefined;
  if (code !== undefined && PASS_THROUGH.has(code)) return e;
  const detail = e instanceof Error ? e.message : String(e);
  // The transport's own error stays reachable as `cause` (its code, e.g. NET_CONNECT_FAILED).
  const err =
    code === 'NET_TIMEOUT'
      ? new ProviderError('LLM_TIMEOUT', `${provider} did not answer within ${endpoint.timeout_ms} ms`, {
          request_sha256,
        })
      : new ProviderError('LLM_PROVIDER_ERROR', `${provider} could not be reached: ${detail}`, {
          request_sha256,
        });
  err.cause = e;
  return err;
}

/** Retry-After as seconds or an HTTP-date, or OpenAI's retry-after-ms; ms from now, or undefined. */
export function parseRetryAfter(
  headers: Record<string, string | string[] | undefined>,
  now = Date.now(),
): number | undefined {
  const first = (name: string): string | undefined => {
    const v = headers[name];
    return (Array.isArray(v) ? v[0] : v)?.trim();
  };
  const ms = first('retry-after-ms');
  if (ms !== undefined && /^\d+(\.\d+)?$/.test(ms)) return Math.round(Number(ms));
  const ra = first('retry-after');
  if (ra === undefined || ra === '') return undefined;
  if (/^\d+(\.\d+)?$/.test(ra)) return Math.round(Number(ra) * 1000);
  const at = Date.parse(ra);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/** The provider's own words from an error body in any of the shapes servers send. */
function errorFields(parsed: unknown): { message?: string; type?: string; code?: string } {
  if (!isObject(parsed)) return {};
  const e = parsed.error;
  const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
  // OpenAI {"error":{message,type,param,code}}; Anthropic {"type":"error","error":{type,message}}.
  if (isObject(e)) return { message: str(e.message), type: str(e.type), code: str(e.code) };
  // Some compatible servers: {"error":"…"}, {"object":"error","message":…,"type":…} or FastAPI's detail.
  if (typeof e === 'string') return { message: e };
  return {
    message: str(parsed.message) ?? (typeof parsed.detail === 'string' ? parsed.detail : undefined),
    type: str(parsed.type) === 'error' ? undefined : str(parsed.type),
    code: str(parsed.code),
  };
}

const CONTEXT_MESSAGE =
  /context[ _]length|context window|maximum context|prompt is too long|input is too long|too many (input )?tokens|exceeds the context/i;

function isContextTooLong(code: string | undefined, message: string | undefined): boolean {
  return code === 'context_length_exceeded' || (message !== undefined && CONTEXT_MESSAGE.test(message));
}

function byType(type: string | undefined, code: string | undefined, message: string | undefined): LlmFailure {
  const names = [code, type];
  const has = (...n: string[]) => names.some((x) => x !== undefined && n.includes(x));
  if (has('rate_limit_error', 'rate_limit_exceeded')) return 'LLM_RATE_LIMITED';
  if (has('authentication_error', 'permission_error', 'invalid_api_key', 'invalid_authentication'))
    return 'LLM_AUTH_FAILED';
  if (has('timeout_error')) return 'LLM_TIMEOUT';
  if (has('invalid_request_error', 'not_found_error', 'request_too_large', 'context_length_exceeded'))
    return isContextTooLong(code, message) ? 'LLM_CONTEXT_TOO_LONG' : 'LLM_INVALID_REQUEST';
  // overloaded_error, api_error, server_error and whatever else a stream reports mid-answer.
  return 'LLM_PROVIDER_ERROR';
}

function byStatus(status: number, code: string | undefined, message: string | undefined): LlmFailure {
  if (status === 429) return 'LLM_RATE_LIMITED';
  if (status === 401 || status === 403) return 'LLM_AUTH_FAILED';
  if (status === 408) return 'LLM_TIMEOUT';
  if (status >= 400 && status < 500)
    return isContextTooLong(code, message) ? 'LLM_CONTEXT_TOO_LONG' : 'LLM_INVALID_REQUEST';
  if (status >= 500) return 'LLM_PROVIDER_ERROR';
  return 'LLM_INVALID_RESPONSE';
}

function clip(s: string, n = 1000): string {
  return s.length > n ? s.slice(0, n) + '…' : s;
}

/** A non-2xx answer, classified by its status and the provider's error body. */
export function httpFailure(
  provider: string,
  status: number,
  headers: Record<string, string | string[] | undefined>,
  bodyText: string,
  request_sha256: string,
): ProviderError {
  const f = errorFields(parseJson(bodyText));
  const provider_code = f.code ?? f.type ?? (status === 529 ? 'overloaded_error' : undefined);
  const code = byStatus(status, provider_code, f.message);
  const said = f.message ?? (bodyText.trim() === '' ? 'no error body' : clip(bodyText.trim(), 200));
  const retry_after_ms = parseRetryAfter(headers);
  return new ProviderError(
    code,
    `${provider} answered HTTP ${status}${provider_code ? ` (${provider_code})` : ''}: ${clip(said)}`,
    {
      http_status: status,
      request_sha256,
      ...(provider_code === undefined ? {} : { provider_code }),
      ...(retry_after_ms === undefined ? {} : { retry_after_ms }),
    },
  );
}

/** An error carried inside a 2xx answer: an SSE error event, or an error object as the body. */
export function bodyFailure(x: Exchange, parsed: unknown, where: string): ProviderError {
  const f = errorFields(parsed);
  const provider_code = f.code ?? f.type;
  return new ProviderError(
    byType(f.type, f.code, f.message),
    `${x.provider} reported an error ${where}${provider_code ? ` (${provider_code})` : ''}: ${clip(f.message ?? 'no message')}`,
    {
      http_status: x.res.status,
      request_sha256: x.request_sha256,
      ...(provider_code === undefined ? {} : { provider_code }),
    },
  );
}

/** The response's content-type says SSE (servers that ignore `stream: true` answer JSON). */
export function isEventStream(res: OpenResponse): boolean {
  const ct = res.headers['content-type'];
  return (Array.isArray(ct) ? ct.join(',') : (ct ?? '')).toLowerCase().includes('text/event-stream');
}

/** `base` without trailing slashes. */
export function trimSlash(base: string): string {
  return base.replace(/\/+$/, '');
}

/** What an adapter made of the answer, before timings and hashes are attached. */
export interface Outcome {
  content: string;
  tool_calls: ToolCall[];
  finish_reason: ChatResult['finish_reason'];
  served_model: string;
  response_id: string | null;
  raw_usage: unknown;
  usage: ChatResult['usage'];
}

/** The ChatResult of an exchange; `firstAt` is when the first content arrived (performance.now()). */
export function toResult(x: Exchange, o: Outcome, firstAt: number | null): ChatResult {
  const latency_ms = Math.round(performance.now() - x.t0);
  return {
    content: o.content,
    message: {
      role: 'assistant',
      content: o.content,
      ...(o.tool_calls.length > 0 ? { tool_calls: o.tool_calls } : {}),
    },
    finish_reason: o.finish_reason,
    served_model: o.served_model,
    response_id: o.response_id,
    raw_usage: o.raw_usage,
    usage: o.usage,
    http_status: x.res.status,
    ttft_ms: firstAt === null ? null : Math.min(latency_ms, Math.round(firstAt - x.t0)),
    latency_ms,
    request_sha256: x.request_sha256,
    response_sha256: responseSha256(x),
  };
}

/** Endpoint headers with lower-case names, so ours replace theirs instead of doubling them. */
export function baseHeaders(endpoint: ProviderEndpoint): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(endpoint.headers ?? {})) out[k.toLowerCase()] = v;
  return out;
}

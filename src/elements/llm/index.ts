/**
 * The LLM gateway (R-LLM): `llm-provider` elements say where a provider is (its wire format, base
 * URL, allow-list, the prices of self-hosted models) and hold its key as an attached secret; an
 * `llm` element names `provider/model` (or a route with fallbacks) and its messages as templates.
 * Every call is a run: it reserves the most the call can cost, captures the exact cost from the
 * provider's usage (cache tokens included) and releases the rest.
 */
import { z } from 'zod';
import { sleepUnlessAborted } from '../../core/sleep.js';
import { CairnError } from '../../core/errors.js';
import { ExprError, exprsOf, renderTemplate, type Root, type Template } from '../../core/expr.js';
import { schemaIssues, validatorOf } from '../../core/json-schema.js';
import type { Queryable } from '../../db/types.js';
import { checkUrl, openRequest, parseAllowList } from '../../net/http-client.js';
import { getElement } from '../../store/elements.js';
import { withSpan } from '../../telemetry/tracing.js';
import { attachedScopes } from '../attachments.js';
import { CREDENTIAL_HEADERS } from '../http/index.js';
import { VARIABLE_MAX_BYTES } from '../secret/index.js';
import { specTemplate } from '../templates.js';
import {
  defineOp,
  defineType,
  executorFor,
  type ExecContext,
  type OperationDecl,
  type PinnedElement,
  type ResolvedUse,
} from '../types.js';
import { definitionError, llmError, LLM_ERRORS, type LlmCode } from './errors.js';
import { chatCompat } from './compat.js';
import { costOf, maxCostOf, PRICE_TABLE_VERSION, priceOf, type ModelPrice } from './prices.js';
import { anthropicAdapter } from './wire/anthropic.js';
import { openaiAdapter } from './wire/openai.js';
import {
  ProviderError,
  type ChatMessage,
  type ChatRequest,
  type ChatResult,
  type ProviderAdapter,
  type TokenBuckets,
  type WireApi,
} from './wire/types.js';

const ADAPTERS: Record<WireApi, ProviderAdapter> = { openai: openaiAdapter, anthropic: anthropicAdapter };
const LLM_ROOTS: readonly Root[] = ['input', 'vars'];

// ---------------------------------------------------------------------------------------------
// llm-provider

const usd = z.number().min(0).max(10_000);
const modelPrice = z
  .object({
    input: usd,
    cached_input: usd.optional(),
    cache_write: usd.optional(),
    output: usd,
    reasoning: usd.optional(),
  })
  .strict();

const providerSpec = z
  .object({
    api: z
      .enum(['openai', 'anthropic'])
      .describe('Wire format: OpenAI Chat Completions or Anthropic Messages'),
    base_url: z
      .string()
      .max(2048)
      .describe(
        'https://api.openai.com/v1, https://api.anthropic.com, or a self-hosted endpoint such as http://127.0.0.1:8000/v1',
      ),
    allow: z
      .array(z.string().min(1).max(255))
      .max(50)
      .default([])
      .describe(
        'Allow-list for the SSRF guard: a self-hosted endpoint on a private address needs its IP or CIDR here',
      ),
    models: z
      .record(z.string().min(1).max(200), modelPrice)
      .default({})
      .describe('Prices (USD per 1M tokens) of models the vendored table does not have, or overrides of it'),
    timeout_ms: z.number().int().min(1_000).max(600_000).default(120_000),
    max_retries: z.number().int().min(0).max(6).default(2),
    headers: z.record(z.string().regex(/^[A-Za-z0-9-]{1,128}$/), z.string().max(4096)).default({}),
  })
  .strict();
type ProviderSpec = z.output<typeof providerSpec>;

export const llmProviderType = defineType({
  type: 'llm-provider',
  category: 'intelligence',
  title: 'LLM provider',
  description:
    'Where the gateway reaches a model provider: an OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM, ' +
    'Ollama, LM Studio) or the Anthropic Messages API. Its key is a secret attached to it (name it api_key); its ' +
    'requests go through the SSRF guard. `models` declares the prices of models the vendored table does not know.',
  spec: providerSpec,
  accepts: {
    types: ['secret'],
    name: 'identifier',
    injects: 'the provider’s API key (the secret named api_key)',
  },
  operations: [],
  errors: [],
  rules: [],
  validateSpec(spec) {
    parseAllowList(spec.allow);
    const v = checkUrl(spec.base_url, spec.allow);
    if (!v.ok)
      throw definitionError(
        'LLM_PROVIDER_URL_REFUSED',
        `base_url is refused: ${v.reason}.`,
        'Use an http(s) URL; a self-hosted endpoint on a private or loopback address needs its IP or CIDR in allow.',
        { base_url: spec.base_url },
      );
    for (const k of Object.keys(spec.headers))
      if (CREDENTIAL_HEADERS.test(k))
        throw definitionError(
          'LLM_SECRET_INLINE',
          `Header ${k} would hold a credential in the spec.`,
          'Put the key in a secret and attach it to this provider with name api_key.',
          { header: k },
        );
  },
  executors: {},
});

// ---------------------------------------------------------------------------------------------
// llm

const modelRef = z
  .string()
  .regex(/^[a-z0-9][a-z0-9-]{0,62}\/\S{1,200}$/, 'a model is named "<llm-provider slug>/<model>"');
const template = z.string().max(200_000);
const llmSpec = z
  .object({
    model: modelRef.optional().describe('"<llm-provider slug>/<model>", e.g. "openai/gpt-4o-mini"'),
    route: z
      .object({ primary: modelRef, fallbacks: z.array(modelRef).max(5).default([]) })
      .strict()
      .optional()
      .describe('A primary model and fallbacks, tried in order when a call fails in a retryable way'),
    system: template.optional(),
    messages: z
      .array(z.object({ role: z.enum(['user', 'assistant', 'system']), content: template }).strict())
      .max(200)
      .default([])
      .describe('Templates over the input (${{ input.x }}) and attached variables (${{ vars.x }})'),
    temperature: z.number().min(0).max(2).optional(),
    max_tokens: z.number().int().min(1).max(200_000).default(1024),
    response_format: z
      .record(z.string(), z.unknown())
      .optional()
      .describe('A JSON Schema the output must match (the content is then parsed JSON)'),
    tools: z
      .array(
        z
          .object({
            name: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/),
            description: z.string().max(4000).optional(),
            parameters: z.record(z.string(), z.unknown()),
          })
          .strict(),
      )
      .max(64)
      .optional(),
    stream: z
      .boolean()
      .default(false)
      .describe('Stream from the provider (time to first token is recorded either way)'),
  })
  .strict();
type LlmSpec = z.output<typeof llmSpec>;

const chatMessage = z
  .object({
    role: z.enum(['system', 'user', 'assistant', 'tool']),
    content: z.string().max(1_000_000),
    tool_call_id: z.string().max(200).optional(),
    tool_calls: z
      .array(
        z
          .object({
            id: z.string().max(200),
            name: z.string().max(200),
            arguments: z.string().max(1_000_000),
          })
          .strict(),
      )
      .max(64)
      .optional(),
  })
  .strict();

/** The invoke input: template fields, plus `messages` appended after the spec's, and per-call overrides. */
const llmInput = z
  .object({
    messages: z.array(chatMessage).max(500).optional(),
    max_tokens: z.number().int().min(1).max(200_000).optional(),
    temperature: z.number().min(0).max(2).optional(),
  })
  .catchall(z.unknown());
type LlmInput = z.output<typeof llmInput>;

interface Candidate {
  ref: string;
  provider: string;
  model: string;
}

function candidates(spec: LlmSpec): Candidate[] {
  const refs = spec.route ? [spec.route.primary, ...spec.route.fallbacks] : spec.model ? [spec.model] : [];
  return refs.map((ref) => {
    const i = ref.indexOf('/');
    return { ref, provider: ref.slice(0, i), model: ref.slice(i + 1) };
  });
}

interface Compiled {
  system?: Template;
  messages: { role: 'user' | 'assistant' | 'system'; content: Template }[];
}
const compiledSpecs = new WeakMap<object, Compiled>();

function compile(spec: LlmSpec): Compiled {
  let c = compiledSpecs.get(spec);
  if (c) return c;
  const one = (where: string, v: string) =>
    specTemplate(
      where,
      v,
      LLM_ROOTS,
      'Templates are ${{ CEL }} over input and vars, e.g. ${{ input.question }}.',
    );
  c = {
    system: spec.system === undefined ? undefined : one('system', spec.system),
    messages: spec.messages.map((m, i) => ({ role: m.role, content: one(`messages[${i}]`, m.content) })),
  };
  compiledSpecs.set(spec, c);
  return c;
}

/** The chat request an input makes (templates rendered); throws LLM_TEMPLATE_FAILED. */
function buildRequest(
  spec: LlmSpec,
  input: LlmInput,
  vars: Record<string, string>,
  stream: boolean,
): Omit<ChatRequest, 'model'> {
  const c = compile(spec);
  const scope = { input, vars };
  const text = (where: string, t: Template): string => {
    try {
      const v = renderTemplate(t, scope);
      return typeof v === 'string' ? v : JSON.stringify(v);
    } catch (err) {
      if (err instanceof ExprError)
        throw llmError('LLM_TEMPLATE_FAILED', `The template of ${where} ${err.message}: ${err.expression}`, {
          where,
        });
      throw err;
    }
  };
  const messages: ChatMessage[] = c.messages.map((m, i) => ({
    role: m.role,
    content: text(`messages[${i}]`, m.content),
  }));
  for (const m of input.messages ?? []) messages.push(m as ChatMessage);
  return {
    system: c.system ? text('system', c.system) : undefined,
    messages,
    temperature: input.temperature ?? spec.temperature,
    max_tokens: Math.min(spec.max_tokens, input.max_tokens ?? spec.max_tokens),
    response_format: spec.response_format ? { name: 'output', schema: spec.response_format } : undefined,
    tools: spec.tools,
    stream,
  };
}

/**
 * An upper bound of a request's prompt tokens: every byte a token (no tokenizer makes a token of
 * less than a byte) plus each message's framing. Exact enough to reserve, never too little.
 */
function promptBound(req: Omit<ChatRequest, 'model'>): number {
  let bytes = Buffer.byteLength(req.system ?? '');
  for (const m of req.messages)
    bytes += Buffer.byteLength(m.content) + Buffer.byteLength(JSON.stringify(m.tool_calls ?? ''));
  if (req.tools) bytes += Buffer.byteLength(JSON.stringify(req.tools));
  if (req.response_format) bytes += Buffer.byteLength(JSON.stringify(req.response_format.schema));
  return bytes + 16 * (req.messages.length + 1) + 64;
}

/** A provider as a run pinned it: its spec and its key. */
function providerOf(uses: Record<string, PinnedElement>, slug: string): ProviderSpec | undefined {
  const u = uses[slug];
  return u && u.element_type === 'llm-provider' ? (u.spec as unknown as ProviderSpec) : undefined;
}

function priced(api: WireApi, model: string, p: ProviderSpec) {
  return priceOf(api, model, p.models as Record<string, ModelPrice>);
}

/** The most one call can cost, over every model of its route (micro-credits). */
function maxCost(spec: LlmSpec, input: unknown, uses: Record<string, PinnedElement>): number {
  const parsed = (llmInput.safeParse(input ?? {}).data ?? {}) as LlmInput;
  let req: Omit<ChatRequest, 'model'>;
  let extra = 0;
  try {
    req = buildRequest(spec, parsed, {}, false);
  } catch {
    // Templates that read what is not known yet (variables; a workflow step priced ahead): their
    // text, plus for each reference an expression makes the most it can stand for (the input, a
    // variable at its size limit).
    req = {
      system: spec.system,
      messages: [
        ...spec.messages.map((m) => ({ role: m.role, content: m.content })),
        ...((parsed.messages ?? []) as ChatMessage[]),
      ],
      max_tokens: Math.min(spec.max_tokens, parsed.max_tokens ?? spec.max_tokens),
      stream: false,
    };
    const data = Buffer.byteLength(JSON.stringify(input ?? null)) + VARIABLE_MAX_BYTES;
    const c = compile(spec);
    const texts = [c.system, ...c.messages.map((m) => m.content)].filter(
      (t): t is Template => t !== undefined,
    );
    for (const t of texts)
      for (const e of exprsOf(t))
        extra += Math.max(1, (e.source.match(/\b(input|vars)\b/g) ?? []).length) * data;
  }
  const bound = promptBound(req) + extra;
  let most = 0;
  for (const c of candidates(spec)) {
    const p = providerOf(uses, c.provider);
    const price = p && priced(p.api, c.model, p);
    // A provider changed since the llm was defined: refused before a run, never a free call.
    if (!price)
      throw definitionError(
        'LLM_MODEL_NOT_PRICED',
        `${c.ref}: the model "${c.model}" has no price in the table (version ${PRICE_TABLE_VERSION}) or in the models of provider "${c.provider}".`,
        `Declare its prices on the provider: models: {"${c.model}": {input, output}} (USD per 1M tokens).`,
        { model: c.ref },
      );
    most = Math.max(most, maxCostOf(bound, req.max_tokens, price.price));
  }
  return most;
}

/** An estimate when a provider sent no usage: ~4 bytes a token, at least one output token per answer. */
function estimateUsage(req: ChatRequest, content: string): TokenBuckets {
  const prompt = Math.ceil((promptBound(req) - 64) / 4) + 8;
  const out = content.length > 0 ? Math.max(1, Math.ceil(Buffer.byteLength(content) / 4)) : 1;
  return { input: prompt, cached_input: 0, cache_write: 0, output: out, reasoning: 0 };
}

const RETRYABLE = new Set(['LLM_RATE_LIMITED', 'LLM_PROVIDER_ERROR', 'LLM_TIMEOUT', 'LLM_INVALID_RESPONSE']);
const MAX_WAIT_MS = 30_000;

function backoffMs(attempt: number, retryAfter?: number): number {
  if (retryAfter !== undefined) return Math.min(retryAfter, MAX_WAIT_MS);
  const base = Math.min(8_000, 250 * 2 ** attempt);
  return Math.round(base * (0.5 + Math.random() / 2));
}

interface AttemptRecord {
  provider: string;
  model: string;
  attempt: number;
  code?: string;
  http_status?: number;
  provider_code?: string;
  retry_after_ms?: number;
  waited_ms?: number;
  ms: number;
}

function keyOf(use: ResolvedUse | undefined): string | null {
  const secrets = (use?.attachments ?? []).filter((a) => a.secret);
  return (secrets.find((a) => a.name === 'api_key') ?? secrets[0])?.value ?? null;
}

function genAiProvider(api: WireApi): string {
  return api === 'anthropic' ? 'anthropic' : 'openai';
}

async function callOnce(
  ctx: ExecContext,
  c: Candidate,
  p: ProviderSpec,
  key: string | null,
  req: ChatRequest,
  onFirstDelta: () => void,
): Promise<ChatResult> {
  const attrs = {
    'gen_ai.operation.name': 'chat',
    'gen_ai.provider.name': genAiProvider(p.api),
    'gen_ai.request.model': c.model,
    'gen_ai.request.max_tokens': req.max_tokens,
    ...(req.temperature !== undefined ? { 'gen_ai.request.temperature': req.temperature } : {}),
    'server.address': safeHost(p.base_url),
    'cairn.llm.provider': c.provider,
  };
  return withSpan(
    `chat ${c.model}`,
    attrs,
    async (span) => {
      const r = await ADAPTERS[p.api].chat(
        {
          api: p.api,
          base_url: p.base_url,
          api_key: key,
          headers: p.headers,
          allow: p.allow,
          timeout_ms: p.timeout_ms,
        },
        req,
        {
          transport: openRequest,
          signal: ctx.signal,
          onDelta: ctx.stream
            ? (text) => {
                onFirstDelta();
                ctx.stream!({ type: 'delta', text });
              }
            : undefined,
        },
      );
      span.setAttributes({
        'gen_ai.response.model': r.served_model,
        'gen_ai.response.finish_reasons': [r.finish_reason],
        ...(r.response_id ? { 'gen_ai.response.id': r.response_id } : {}),
        ...(r.usage
          ? {
              'gen_ai.usage.input_tokens': r.usage.input + r.usage.cached_input + r.usage.cache_write,
              'gen_ai.usage.output_tokens': r.usage.output + r.usage.reasoning,
              'gen_ai.usage.cache_read.input_tokens': r.usage.cached_input,
              'gen_ai.usage.cache_creation.input_tokens': r.usage.cache_write,
            }
          : {}),
        ...(r.ttft_ms !== null ? { 'cairn.llm.ttft_ms': r.ttft_ms } : {}),
      });
      return r;
    },
    (m) => (key ? m.split(key).join('[secret:api_key]') : m),
  );
}

function safeHost(u: string): string {
  try {
    return new URL(u).hostname;
  } catch {
    return '';
  }
}

const invoke = {
  name: 'invoke',
  method: 'POST',
  path: 'invoke',
  auth: 'execute',
  summary: 'Call the model (the messages rendered over the input)',
  description:
    'The input fills the templates; `messages` (OpenAI-style) are appended after the spec’s, and `max_tokens` ' +
    '(capped by the spec’s) and `temperature` override. Answers `{content, message, finish_reason, model, provider, ' +
    'usage, cost}`; the run reserves the most the call can cost and captures the exact cost.',
  input: llmInput,
  createsRun: true,
  retryOnLoss: true,
  // A call changes nothing outside its record (it costs; a replay is still gated by policy and budget).
  sideEffects: false,
  maxAttempts: 2,
} satisfies OperationDecl<typeof llmInput>;

async function execute(ctx: ExecContext<LlmSpec, LlmInput>) {
  const spec = ctx.spec;
  const vars = attachedScopes(ctx.attachments).vars;
  const stream = spec.stream || ctx.stream !== undefined;
  const base = buildRequest(spec, ctx.input, vars, stream);
  const attempts: AttemptRecord[] = [];
  let streamed = false;
  const pinnedUses = Object.fromEntries(Object.entries(ctx.uses).map(([k, u]) => [k, u.element]));
  let last: CairnError | undefined;
  for (const c of candidates(spec)) {
    const p = providerOf(pinnedUses, c.provider);
    if (!p) throw llmError('LLM_INVALID_REQUEST', `Provider "${c.provider}" is not pinned by this run.`);
    const price = priced(p.api, c.model, p);
    const key = keyOf(ctx.uses[c.provider]);
    const req: ChatRequest = { ...base, model: c.model };
    for (let attempt = 0; ; attempt++) {
      const t0 = performance.now();
      let r: ChatResult;
      try {
        r = await callOnce(ctx, c, p, key, req, () => (streamed = true));
      } catch (err) {
        if (!(err instanceof ProviderError)) {
          // The guard refused the endpoint, or something of ours broke: not the provider's failure.
          if (err instanceof CairnError) throw Object.assign(err, { evidence: { attempts } });
          throw err;
        }
        const rec: AttemptRecord = {
          provider: c.provider,
          model: c.model,
          attempt: attempt + 1,
          code: err.code,
          http_status: err.info.http_status,
          provider_code: err.info.provider_code,
          retry_after_ms: err.info.retry_after_ms,
          ms: Math.round(performance.now() - t0),
        };
        attempts.push(rec);
        last = llmError(err.code as LlmCode, `${c.provider}/${c.model}: ${err.message}`, {
          provider: c.provider,
          http_status: err.info.http_status,
          provider_code: err.info.provider_code,
        });
        // Tokens already went out to the caller: another attempt would send them twice.
        if (!RETRYABLE.has(err.code) || ctx.signal.aborted || streamed)
          throw Object.assign(last, { evidence: { attempts, partially_streamed: streamed || undefined } });
        if (attempt >= p.max_retries) break; // the next provider of the route
        const wait = backoffMs(attempt, err.info.retry_after_ms);
        // A Retry-After longer than we wait at most: go to the fallback instead.
        if (err.info.retry_after_ms !== undefined && err.info.retry_after_ms > MAX_WAIT_MS) break;
        rec.waited_ms = wait;
        await sleepUnlessAborted(wait, ctx.signal);
        continue;
      }
      // Outside the try: a refused output (response_format) keeps its own evidence and cost.
      return settle(ctx, spec, c, p, price?.price, price?.as, req, r, attempts);
    }
  }
  throw Object.assign(last ?? llmError('LLM_PROVIDER_ERROR', 'No provider answered.'), {
    evidence: { attempts },
  });
}

function settle(
  ctx: ExecContext<LlmSpec, LlmInput>,
  spec: LlmSpec,
  c: Candidate,
  p: ProviderSpec,
  requestedPrice: ModelPrice | undefined,
  pricedAs: string | undefined,
  req: ChatRequest,
  r: ChatResult,
  attempts: AttemptRecord[],
) {
  // Priced as the model that served it, when the table knows it; else as the one asked for.
  const served = r.served_model ? priced(p.api, r.served_model, p) : undefined;
  const price = served?.price ?? requestedPrice;
  const estimated = r.usage === null;
  const buckets = r.usage ?? estimateUsage(req, r.content);
  const cost = price ? costOf(buckets, price) : 0;
  const usage = {
    input_tokens: buckets.input + buckets.cached_input + buckets.cache_write,
    output_tokens: buckets.output + buckets.reasoning,
    buckets,
    estimated,
  };
  const costOut = {
    micro_credits: cost,
    estimated,
    price_table_version: PRICE_TABLE_VERSION,
    priced_as: served?.as ?? pricedAs ?? null,
    price_usd_per_mtok: price ?? null,
  };
  const evidence = {
    provider: c.provider,
    api: p.api,
    requested_model: c.model,
    served_model: r.served_model,
    response_id: r.response_id,
    stream: req.stream,
    http_status: r.http_status,
    request_sha256: 'sha256:' + r.request_sha256,
    response_sha256: 'sha256:' + r.response_sha256,
    raw_usage: r.raw_usage,
    tokens: buckets,
    usage_estimated: estimated,
    price_table_version: PRICE_TABLE_VERSION,
    cost_micro_credits: cost,
    latency_ms: r.latency_ms,
    ttft_ms: r.ttft_ms,
    finish_reason: r.finish_reason,
    attempts: attempts.length > 0 ? attempts : undefined,
  };
  const output = {
    content: r.content,
    message: r.message,
    finish_reason: r.finish_reason,
    model: r.served_model || c.model,
    provider: c.provider,
    usage,
    cost: costOut,
  };
  const flags = estimated ? ['cost_estimated'] : [];
  if (spec.response_format) {
    let parsed: unknown;
    let issues: { path: string; message: string }[] = [];
    try {
      parsed = JSON.parse(r.content);
      const v = validatorOf(spec.response_format);
      if (!v(parsed)) issues = schemaIssues(v.errors);
    } catch {
      issues = [{ path: '', message: 'the content is not JSON' }];
    }
    if (issues.length > 0) {
      // The call was made and billed: the failure keeps its cost and evidence.
      const err = llmError(
        'LLM_OUTPUT_SCHEMA_MISMATCH',
        `The output of ${c.ref} does not match response_format: ${issues.map((i) => `${i.path || '/'} ${i.message}`).join('; ')}`,
        { issues },
      );
      throw Object.assign(err, { evidence, credits: cost, flags });
    }
    return { output: { ...output, content: parsed }, evidence, credits: cost, flags };
  }
  return { output, evidence, credits: cost, flags };
}

export const llmType = defineType({
  type: 'llm',
  category: 'intelligence',
  title: 'LLM call',
  description:
    'Calls a model through the gateway: `model` ("<llm-provider>/<model>") or a `route` with fallbacks, `system` ' +
    'and `messages` as templates over the input, `temperature`, `max_tokens`, `response_format` (a JSON Schema the ' +
    'output must match) and `tools`. Retries 429/5xx/overloaded with backoff (honouring Retry-After), then falls ' +
    'back along the route. Each call reserves its most (prompt bound + max_tokens × the output price), captures the ' +
    'exact cost from the provider’s usage — input, cache reads, cache writes, output and reasoning tokens, priced by ' +
    'the vendored table — and releases the rest. An OpenAI-compatible endpoint, POST /api/{circle}/{slug}/v1/chat/completions, ' +
    'lets existing OpenAI clients call it.',
  spec: llmSpec,
  accepts: {
    types: ['variable'],
    name: 'identifier',
    injects: '${{ vars.<name> }} in the message templates',
  },
  operations: [defineOp(invoke)],
  errors: LLM_ERRORS,
  rules: [],
  validateSpec(spec) {
    if (!spec.model && !spec.route)
      throw definitionError(
        'LLM_NO_PROVIDER',
        'The spec names no model and no route.',
        'Set model: "<llm-provider slug>/<model>", or route: {primary, fallbacks}.',
      );
    if (spec.model && spec.route)
      throw definitionError(
        'INVALID_SPEC',
        'Set model or route, not both.',
        'Keep route (its primary is the model) or model.',
      );
    compile(spec);
    if (spec.response_format) {
      try {
        validatorOf(spec.response_format);
      } catch (e) {
        throw definitionError(
          'INVALID_SPEC',
          `response_format is not a valid JSON Schema: ${(e as Error).message}`,
          'Fix the schema (draft 2020-12).',
        );
      }
    }
  },
  async validateInCircle(db: Queryable, circle, spec) {
    for (const c of candidates(spec)) {
      const el = await getElement(db, circle.id, c.provider);
      if (!el || el.element_type !== 'llm-provider')
        throw definitionError(
          'LLM_PROVIDER_NOT_FOUND',
          `${c.ref}: "${c.provider}" is not an llm-provider element of this circle.`,
          'Create the provider first (element_type llm-provider, with api and base_url), then name it as "<slug>/<model>".',
          { model: c.ref },
        );
      const p = el.spec as unknown as ProviderSpec;
      if (!priced(p.api, c.model, p))
        throw definitionError(
          'LLM_MODEL_NOT_PRICED',
          `${c.ref}: the model "${c.model}" has no price in the table (version ${PRICE_TABLE_VERSION}) or in the models of provider "${c.provider}".`,
          `Declare its prices on the provider: models: {"${c.model}": {input, output, cached_input?, cache_write?, reasoning?}} (USD per 1M tokens).`,
          { model: c.ref, price_table_version: PRICE_TABLE_VERSION },
        );
    }
  },
  uses: (spec) =>
    [...new Set(candidates(spec).map((c) => c.provider))].map((slug) => ({ slug, type: 'llm-provider' })),
  chatCompletions: chatCompat,
  priceOf: (_op, spec, input, uses) => maxCost(spec, input, uses),
  checkInput(_op, spec, input) {
    // A template that fails on this input is a 400 before any run (variables are not read here).
    if (compile(spec).messages.some((m) => m.content.t !== 'lit') || spec.system?.includes('${{'))
      try {
        buildRequest(spec, input as LlmInput, {}, false);
      } catch (e) {
        if (e instanceof CairnError && e.code === 'LLM_TEMPLATE_FAILED' && !/\bvars\./.test(e.message))
          throw new CairnError({
            code: e.code,
            class: 'validation',
            message: e.message,
            suggestion: e.suggestion,
            details: e.details,
          });
      }
  },
  executors: { invoke: executorFor(invoke, execute) },
  telemetry: { prefix: 'llm' },
  timeoutMs: () => 600_000,
});

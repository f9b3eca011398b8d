/**
 * The vendored LLM price table (R-LLM): what the providers publish per model, in USD per million
 * tokens, for each token bucket. Cairn bills 1 credit = 1 USD, so a price of $2.50 / 1M tokens is
 * 2,500,000 micro-credits per million tokens: a call costs ⌈Σ tokens × micro-credits-per-Mtok / 10⁶⌉
 * micro-credits, computed in integers. Every call records the table version it was priced with.
 *
 * A self-hosted endpoint's models declare their prices in their llm-provider's `models`; a model
 * priced nowhere is refused when an llm element naming it is defined.
 */
import type { TokenBuckets, WireApi } from './wire/types.js';

export interface ModelPrice {
  /** USD per 1M input tokens (not cached). */
  input: number;
  /** USD per 1M input tokens read from the prompt cache (default: input). */
  cached_input?: number;
  /** USD per 1M input tokens written to the prompt cache (default: input). */
  cache_write?: number;
  /** USD per 1M output tokens. */
  output: number;
  /** USD per 1M reasoning tokens (default: output). */
  reasoning?: number;
}

/** Bumped whenever a price changes; recorded on every call. */
export const PRICE_TABLE_VERSION = '2026-12-01';

/** Published list prices (standard tier, 5-minute cache writes). */
export const PRICE_TABLE: Record<WireApi, Record<string, ModelPrice>> = {
  openai: {
    'gpt-5': { input: 1.25, cached_input: 0.125, output: 10 },
    'gpt-5-mini': { input: 0.25, cached_input: 0.025, output: 2 },
    'gpt-5-nano': { input: 0.05, cached_input: 0.005, output: 0.4 },
    'gpt-4.1': { input: 2, cached_input: 0.5, output: 8 },
    'gpt-4.1-mini': { input: 0.4, cached_input: 0.1, output: 1.6 },
    'gpt-4.1-nano': { input: 0.1, cached_input: 0.025, output: 0.4 },
    'gpt-4o': { input: 2.5, cached_input: 1.25, output: 10 },
    'gpt-4o-mini': { input: 0.15, cached_input: 0.075, output: 0.6 },
    o1: { input: 15, cached_input: 7.5, output: 60 },
    o3: { input: 2, cached_input: 0.5, output: 8 },
    'o3-mini': { input: 1.1, cached_input: 0.55, output: 4.4 },
    'o4-mini': { input: 1.1, cached_input: 0.275, output: 4.4 },
  },
  anthropic: {
    'claude-opus-4-5': { input: 5, cache_write: 6.25, cached_input: 0.5, output: 25 },
    'claude-opus-4-1': { input: 15, cache_write: 18.75, cached_input: 1.5, output: 75 },
    'claude-opus-4': { input: 15, cache_write: 18.75, cached_input: 1.5, output: 75 },
    'claude-sonnet-4-5': { input: 3, cache_write: 3.75, cached_input: 0.3, output: 15 },
    'claude-sonnet-4': { input: 3, cache_write: 3.75, cached_input: 0.3, output: 15 },
    'claude-3-7-sonnet': { input: 3, cache_write: 3.75, cached_input: 0.3, output: 15 },
    'claude-haiku-4-5': { input: 1, cache_write: 1.25, cached_input: 0.1, output: 5 },
    'claude-3-5-haiku': { input: 0.8, cache_write: 1, cached_input: 0.08, output: 4 },
  },
};

/**
 * The price of `model`: the provider's own declaration first, then the table — exactly, or by the
 * longest table name the model extends with a dated or versioned suffix (gpt-4o-2024-08-06 → gpt-4o,
 * claude-sonnet-4-20250514 → claude-sonnet-4).
 */
export function priceOf(
  api: WireApi,
  model: string,
  declared: Record<string, ModelPrice> | undefined,
): { price: ModelPrice; source: 'provider' | 'table'; as: string } | undefined {
  // Own keys only: a model named "constructor" or "__proto__" is priced nowhere.
  if (declared && Object.hasOwn(declared, model))
    return { price: declared[model]!, source: 'provider', as: model };
  const table = PRICE_TABLE[api];
  if (Object.hasOwn(table, model)) return { price: table[model]!, source: 'table', as: model };
  let best: string | undefined;
  for (const name of Object.keys(table))
    if (
      model.startsWith(name + '-') &&
      /^-(\d|latest)/.test(model.slice(name.length)) &&
      (!best || name.length > best.length)
    )
      best = name;
  return best ? { price: table[best]!, source: 'table', as: best } : undefined;
}

/** Micro-credits per million tokens, per bucket (integers). */
export function microPerMtok(p: ModelPrice): Record<keyof TokenBuckets, bigint> {
  const m = (usd: number) => BigInt(Math.round(usd * 1_000_000));
  return {
    input: m(p.input),
    cached_input: m(p.cached_input ?? p.input),
    cache_write: m(p.cache_write ?? p.input),
    output: m(p.output),
    reasoning: m(p.reasoning ?? p.output),
  };
}

/** ⌈Σ tokens × price / 10⁶⌉ micro-credits, exactly. */
export function costOf(usage: TokenBuckets, p: ModelPrice): number {
  const per = microPerMtok(p);
  let total = 0n;
  for (const k of Object.keys(per) as (keyof TokenBuckets)[]) total += BigInt(usage[k]) * per[k];
  return Number((total + 999_999n) / 1_000_000n);
}

/** The most a call can cost: every prompt token at the dearer input price, max_tokens at the dearer output price. */
export function maxCostOf(promptTokens: number, maxTokens: number, p: ModelPrice): number {
  const per = microPerMtok(p);
  const inP = [per.input, per.cache_write, per.cached_input].reduce((a, b) => (b > a ? b : a));
  const outP = per.output > per.reasoning ? per.output : per.reasoning;
  return Number((BigInt(promptTokens) * inP + BigInt(maxTokens) * outP + 999_999n) / 1_000_000n);
}

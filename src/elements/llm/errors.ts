import { CairnError } from '../../core/errors.js';
import type { ErrorCodeDecl } from '../types.js';
import { declaredError, errorCode as d } from '../errors.js';

/** The gateway's typed failures (R-LLM): every provider failure, in each shape it is sent, maps to one. */
export const LLM_ERRORS = [
  d(
    'LLM_RATE_LIMITED',
    'rate_limit',
    true,
    'The provider answered 429 (rate limited) on every attempt and fallback.',
    'Wait (the provider’s Retry-After is honoured between attempts), add a fallback to spec.route, or raise the provider’s limits.',
  ),
  d(
    'LLM_PROVIDER_ERROR',
    'unavailable',
    true,
    'The provider failed (5xx, overloaded, connection lost) on every attempt and fallback.',
    'Retry later, or add a fallback provider to spec.route.',
  ),
  d(
    'LLM_TIMEOUT',
    'timeout',
    true,
    'The provider did not answer within the timeout.',
    'Raise the provider’s timeout_ms or lower max_tokens.',
  ),
  d(
    'LLM_AUTH_FAILED',
    'auth',
    false,
    'The provider refused the key (401/403).',
    'Attach a secret with a valid API key to the llm-provider element (name it api_key).',
  ),
  d(
    'LLM_CONTEXT_TOO_LONG',
    'validation',
    false,
    'The prompt is longer than the model’s context window.',
    'Send less input, lower max_tokens, or use a model with a larger context.',
  ),
  d(
    'LLM_INVALID_REQUEST',
    'validation',
    false,
    'The provider refused the request as invalid (400/404/422).',
    'Check the model name and the parameters against the provider’s API reference.',
  ),
  d(
    'LLM_INVALID_RESPONSE',
    'unavailable',
    true,
    'The provider answered something that is not a valid response of its wire format.',
    'Check that base_url points at an endpoint of the declared api (openai or anthropic).',
  ),
  d(
    'LLM_OUTPUT_SCHEMA_MISMATCH',
    'validation',
    false,
    'The model’s output does not match spec.response_format.',
    'Loosen the schema, make the instructions clearer, or use a model with structured outputs.',
  ),
  d(
    'LLM_TEMPLATE_FAILED',
    'validation',
    false,
    'A message template failed on this input.',
    'Send the input fields the templates read.',
  ),
] as const satisfies readonly ErrorCodeDecl[];

export type LlmCode = (typeof LLM_ERRORS)[number]['code'];

export function llmError(code: LlmCode, message: string, details?: unknown): CairnError {
  return declaredError(LLM_ERRORS, code, message, details);
}

/** Definition-time refusals of an llm element. */
export function definitionError(
  code: string,
  message: string,
  suggestion: string,
  details?: unknown,
): CairnError {
  return new CairnError({ code, class: 'validation', message, suggestion, details });
}

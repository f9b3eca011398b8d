import type { ErrorCodeDecl } from '../types.js';

/** The webhook type's error codes, with the HTTP status the hook route answers each with. */
export const WEBHOOK_ERRORS: readonly (ErrorCodeDecl & { status: number })[] = [
  {
    code: 'WEBHOOK_SIGNATURE_MISSING',
    class: 'auth',
    status: 401,
    retryable: false,
    description: 'A delivery lacks the headers its signing preset requires (nothing is started).',
    suggestion:
      'standard: send webhook-id, webhook-timestamp and webhook-signature (Standard Webhooks); github: X-Hub-Signature-256 and X-GitHub-Delivery.',
  },
  {
    code: 'WEBHOOK_SIGNATURE_INVALID',
    class: 'auth',
    status: 401,
    retryable: false,
    description: 'The signature matches no secret valid now (nothing is started).',
    suggestion:
      'Sign the exact raw body with the secret shown when the webhook was created or rotated (ops/rotate_secret); a rotated-out secret stops verifying when its overlap ends.',
  },
  {
    code: 'WEBHOOK_TIMESTAMP_STALE',
    class: 'auth',
    status: 401,
    retryable: false,
    description:
      'standard: webhook-timestamp is more than 5 minutes from the server clock (replay protection).',
    suggestion: "Sign with the current time (Unix seconds) and check the sender's clock.",
  },
  {
    code: 'WEBHOOK_BODY_TOO_LARGE',
    class: 'validation',
    status: 413,
    retryable: false,
    description: "The body is larger than the webhook's max_body_bytes.",
    suggestion: 'Send a smaller payload, or raise spec.max_body_bytes (at most 10 MiB).',
  },
  {
    code: 'WEBHOOK_BODY_NOT_JSON',
    class: 'validation',
    status: 400,
    retryable: false,
    description: 'The body is not JSON (it is parsed as JSON whatever its Content-Type; empty is {}).',
    suggestion: 'Send a JSON document (UTF-8).',
  },
  {
    code: 'WEBHOOK_BODY_UNSTORABLE',
    class: 'validation',
    status: 400,
    retryable: false,
    description:
      'The body or query holds a value a run record cannot store (a NUL character, a lone surrogate).',
    suggestion: 'Remove NUL characters (\\u0000) and lone surrogates; encode binary data as base64.',
  },
  {
    code: 'WEBHOOK_MAPPING_FAILED',
    class: 'validation',
    status: 400,
    retryable: false,
    description: 'The input mapping failed on this delivery (e.g. it reads body.x and the body has no x).',
    suggestion: 'Send what the mapping reads, or make the mapping tolerant (has(body.x) ? body.x : null).',
  },
  {
    code: 'WEBHOOK_NOT_FOUND',
    class: 'not_found',
    status: 404,
    retryable: false,
    description: 'No ready webhook at /hooks/{circle}/{slug} (an unknown circle answers the same).',
    suggestion: 'Use the url shown when the webhook was created; a disabled or deleted webhook answers 404.',
  },
  {
    code: 'MISSING_TARGET',
    class: 'validation',
    status: 400,
    retryable: false,
    description: 'The webhook names no target.',
    suggestion: 'Add target: {element, op, input}.',
  },
  {
    code: 'INVALID_TARGET',
    class: 'validation',
    status: 400,
    retryable: false,
    description:
      'The target element does not exist or its op starts no run, or both target.input (or parameters) and input are given.',
    suggestion:
      'Target an element of the circle and an op that starts a run (invoke, trigger); give the mapping once, as input or as target.input.',
  },
  {
    code: 'INVALID_MAPPING',
    class: 'validation',
    status: 400,
    retryable: false,
    description: 'An expression of the input mapping does not compile (it may read body, headers and query).',
    suggestion: "Read body.<field>, headers['x-github-event'] or query.<name>.",
  },
];

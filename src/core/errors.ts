/**
 * One typed error for the whole platform (R-ERRORS). Every 4xx/5xx renders as
 * `{"error": {code, class, message, retryable, _suggestion}}` so callers learn
 * both what broke and how to fix it.
 */
export type ErrorClass =
  | 'validation'
  | 'auth'
  | 'permission'
  | 'not_found'
  | 'conflict'
  | 'payment'
  | 'rate_limit'
  | 'timeout'
  | 'internal'
  | 'unavailable';

export interface ErrorBody {
  code: string;
  class: ErrorClass;
  message: string;
  retryable: boolean;
  _suggestion: string;
  details?: unknown;
}

const defaultStatus: Record<ErrorClass, number> = {
  validation: 400,
  auth: 401,
  permission: 403,
  not_found: 404,
  conflict: 409,
  payment: 402,
  rate_limit: 429,
  timeout: 504,
  internal: 500,
  unavailable: 503,
};

export interface CairnErrorInit {
  code: string;
  class: ErrorClass;
  message: string;
  suggestion: string;
  retryable?: boolean;
  status?: number;
  details?: unknown;
  cause?: unknown;
}

export class CairnError extends Error {
  readonly code: string;
  readonly errorClass: ErrorClass;
  readonly retryable: boolean;
  readonly suggestion: string;
  readonly status: number;
  readonly details: unknown;

  constructor(init: CairnErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = 'CairnError';
    this.code = init.code;
    this.errorClass = init.class;
    this.retryable = init.retryable ?? false;
    this.suggestion = init.suggestion;
    this.status = init.status ?? defaultStatus[init.class];
    this.details = init.details;
  }

  /** The same error answered with another HTTP status (and optionally another code). */
  withStatus(status: number, code?: string): CairnError {
    return new CairnError({
      code: code ?? this.code,
      class: this.errorClass,
      message: this.message,
      suggestion: this.suggestion,
      retryable: this.retryable,
      details: this.details,
      status,
      cause: this.cause,
    });
  }

  toBody(): ErrorBody {
    const body: ErrorBody = {
      code: this.code,
      class: this.errorClass,
      message: this.message,
      retryable: this.retryable,
      _suggestion: this.suggestion,
    };
    if (this.details !== undefined) body.details = this.details;
    return body;
  }

  toJSON(): { error: ErrorBody } {
    return { error: this.toBody() };
  }

  /** Rebuild an error recorded on a run (e.g. to answer a sync invoke). */
  static fromBody(body: ErrorBody, status?: number): CairnError {
    return new CairnError({
      code: body.code,
      class: body.class,
      message: body.message,
      suggestion: body._suggestion,
      retryable: body.retryable,
      details: body.details,
      status,
    });
  }
}

/** Anything unknown becomes a typed 500; the original stays in `cause` for the log. */
export function toCairnError(e: unknown): CairnError {
  if (e instanceof CairnError) return e;
  return new CairnError({
    code: 'INTERNAL',
    class: 'internal',
    message: 'An internal error occurred; it has been logged.',
    suggestion: 'Retry the request; if it keeps failing, report it with the time and request id.',
    retryable: true,
    cause: e,
  });
}

// Frequently used constructors. Each says how to fix, not only what broke.
/** A run that the new run refers to (rerun, replay, parent) no longer exists: retention deleted it meanwhile. */
export function sourceGone(): CairnError {
  return new CairnError({
    code: 'RUN_NOT_FOUND',
    class: 'not_found',
    message:
      'The run this one refers to (its source, parent or root) no longer exists: retention deleted it.',
    suggestion:
      'Pin runs you mean to rerun or replay (POST /api/runs/{id}/pin); GET /api/{circle}/runs lists those kept.',
  });
}

export const errors = {
  invalidInput(message: string, details?: unknown, suggestion?: string): CairnError {
    return new CairnError({
      code: 'INVALID_INPUT',
      class: 'validation',
      message,
      details,
      suggestion: suggestion ?? 'Fix the fields listed in details and send the request again.',
    });
  },
  unauthenticated(message = 'A valid bearer token is required.'): CairnError {
    return new CairnError({
      code: 'UNAUTHENTICATED',
      class: 'auth',
      message,
      suggestion: 'Send `Authorization: Bearer <token>` with a token created by `cairn tokens create`.',
    });
  },
  forbidden(message: string, suggestion?: string): CairnError {
    return new CairnError({
      code: 'FORBIDDEN',
      class: 'permission',
      message,
      suggestion: suggestion ?? 'Use a token of this circle with a role high enough for this operation.',
    });
  },
  notFound(code: string, message: string, suggestion: string): CairnError {
    return new CairnError({ code, class: 'not_found', message, suggestion });
  },
  conflict(code: string, message: string, suggestion: string): CairnError {
    return new CairnError({ code, class: 'conflict', message, suggestion });
  },
  insufficientCredits(circleSlug: string, needed: number, available: number): CairnError {
    return new CairnError({
      code: 'INSUFFICIENT_CREDITS',
      class: 'payment',
      message: `This run needs ${needed} micro-credits reserved; the wallet of circle "${circleSlug}" has ${Math.max(0, available)} available.`,
      details: { needed, available },
      suggestion: `Add credit (POST /api/${circleSlug}/wallet/grants as instance admin, or \`cairn wallet grant\`), wait for running work to release its reservations, or run fewer items.`,
    });
  },
};

/** What a thrown value may carry (Node, pg, PGlite, child_process and libpg_query errors), read without `any`. */
export interface Thrown {
  message?: string;
  code?: string;
  stderr?: unknown;
  stdout?: unknown;
  statusCode?: number;
  sqlDetails?: { message?: string; cursorPosition?: number };
  [k: string]: unknown;
}

/** The thrown value as an object to read fields from (the same object when it is one). */
export function thrown(e: unknown): Thrown {
  return e !== null && typeof e === 'object' ? (e as Thrown) : { message: String(e) };
}

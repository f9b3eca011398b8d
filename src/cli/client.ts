import { CairnError, type ErrorBody, thrown } from '../core/errors.js';

/** Exit codes scripts can rely on (docs/cli.md). */
export const EXIT = {
  ok: 0,
  failed: 1, // the run failed or was cancelled; or an unexpected error
  usage: 2, // bad flags, bad file, invalid input (400)
  auth: 3, // 401 / 403
  notFound: 4, // 404
  conflict: 5, // 409
  payment: 6, // 402
  unavailable: 7, // server unreachable or 5xx
  pending: 8, // the run was accepted but has not finished (202)
} as const;

export function exitCodeFor(status: number): number {
  if (status === 401 || status === 403) return EXIT.auth;
  if (status === 404) return EXIT.notFound;
  if (status === 409) return EXIT.conflict;
  if (status === 402) return EXIT.payment;
  if (status >= 500) return EXIT.unavailable;
  if (status >= 400) return EXIT.usage;
  return EXIT.ok;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly body: ErrorBody,
  ) {
    super(body.message);
  }
}

export interface ClientOptions {
  url: string;
  token?: string;
}

/** A small typed client for the HTTP API (the CLI never touches the database). */
export class Client {
  constructor(readonly opts: ClientOptions) {}

  async request<T = unknown>(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<{ status: number; body: T; headers: Headers }> {
    let res: Response;
    try {
      res = await fetch(this.opts.url.replace(/\/$/, '') + path, {
        method,
        headers: {
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
          ...(this.opts.token ? { authorization: `Bearer ${this.opts.token}` } : {}),
          // Runs a person starts from the CLI are manual runs (R-TRIGGERS).
          'x-cairn-trigger': 'manual',
          ...headers,
        },
        body: body !== undefined ? JSON.stringify(body) : undefined,
      });
    } catch (caught) {
      const e = thrown(caught);
      throw new ApiError(0, {
        code: 'UNREACHABLE',
        class: 'unavailable',
        message: `Cannot reach Cairn at ${this.opts.url}: ${thrown(e.cause).code ?? e.message}`,
        retryable: true,
        _suggestion: 'Start it with `cairn serve`, or point --url / CAIRN_URL at a running server.',
      });
    }
    const text = await res.text();
    let parsed: unknown = undefined;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = {
        error: {
          code: 'BAD_RESPONSE',
          class: 'internal',
          message: text.slice(0, 200),
          retryable: true,
          _suggestion: 'Check --url.',
        },
      };
    }
    if (res.status >= 400) {
      const err: ErrorBody = sentError(parsed) ?? {
        code: 'HTTP_' + res.status,
        class: 'internal',
        message: text,
        retryable: false,
        _suggestion: '',
      };
      // The server speaks of HTTP headers; a CLI user passes a flag or an environment variable.
      if (res.status === 401)
        err._suggestion = this.opts.token
          ? 'The token was refused: pass a valid one with --token or CAIRN_TOKEN (`cairn tokens create` makes one).'
          : 'No token found: pass --token or set CAIRN_TOKEN (or run where --data-dir / CAIRN_DATA holds the bootstrap token).';
      throw new ApiError(res.status, err);
    }
    return { status: res.status, body: parsed as T, headers: res.headers };
  }
}

/** The `error` of an error answer as the server sent it (R-ERRORS: an ErrorBody), if it sent one. */
function sentError(parsed: unknown): ErrorBody | undefined {
  if (typeof parsed !== 'object' || parsed === null || !('error' in parsed)) return undefined;
  return (parsed.error ?? undefined) as ErrorBody | undefined;
}

export function localError(e: CairnError): ApiError {
  return new ApiError(e.status, e.toBody());
}

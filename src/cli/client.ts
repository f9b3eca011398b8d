import { CairnError, type ErrorBody, thrown } from '../core/errors.js';
import { followEvents, type SseEvent } from './sse.js';

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
    const res = await this.send(
      method,
      path,
      body !== undefined ? JSON.stringify(body) : undefined,
      body !== undefined ? { 'content-type': 'application/json', ...headers } : headers,
    );
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
    if (res.status >= 400) throw this.refused(res.status, parsed, text);
    return { status: res.status, body: parsed as T, headers: res.headers };
  }

  /** A request whose body or answer is raw bytes (a file upload or download); errors are typed the same way. */
  async requestBytes(
    method: string,
    path: string,
    body?: Buffer,
    headers: Record<string, string> = {},
  ): Promise<{ status: number; bytes: Buffer; headers: Headers }> {
    const res = await this.send(method, path, body, headers);
    const bytes = Buffer.from(await res.arrayBuffer());
    if (res.status >= 400) {
      const text = bytes.toString('utf8');
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
      throw this.refused(res.status, parsed, text);
    }
    return { status: res.status, bytes, headers: res.headers };
  }

  private async send(
    method: string,
    path: string,
    body: string | Buffer | undefined,
    headers: Record<string, string>,
  ): Promise<Response> {
    try {
      return await fetch(this.opts.url.replace(/\/$/, '') + path, {
        method,
        headers: {
          ...(this.opts.token ? { authorization: `Bearer ${this.opts.token}` } : {}),
          // Runs a person starts from the CLI are manual runs (R-TRIGGERS).
          'x-cairn-trigger': 'manual',
          ...headers,
        },
        body,
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
  }

  /**
   * A live event stream (Server-Sent Events), reconnecting with Last-Event-ID after a drop. A
   * refused stream (404 from a server without streams, 401, 403) ends it and calls `onRefused`.
   */
  events(
    path: string,
    opts: { signal?: AbortSignal; onRefused?: (e: ApiError) => void } = {},
  ): AsyncGenerator<SseEvent> {
    return followEvents(this.opts.url.replace(/\/$/, '') + path, {
      headers: this.opts.token ? { authorization: `Bearer ${this.opts.token}` } : {},
      signal: opts.signal,
      onRefused: (status, text) => {
        let parsed: unknown;
        try {
          parsed = JSON.parse(text);
        } catch {
          parsed = undefined;
        }
        opts.onRefused?.(this.refused(status, parsed, text));
      },
    });
  }

  /** An error answer as an ApiError: the server's typed error, or one made from what it sent. */
  private refused(status: number, parsed: unknown, text: string): ApiError {
    const err: ErrorBody = sentError(parsed) ?? {
      code: 'HTTP_' + status,
      class: 'internal',
      message: text,
      retryable: false,
      _suggestion: '',
    };
    // The server speaks of HTTP headers; a CLI user passes a flag or an environment variable.
    if (status === 401)
      err._suggestion = this.opts.token
        ? 'The token was refused: pass a valid one with --token or CAIRN_TOKEN (`cairn tokens create` makes one).'
        : 'No token found: pass --token or set CAIRN_TOKEN (or run where --data-dir / CAIRN_DATA holds the bootstrap token).';
    return new ApiError(status, err);
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

/**
 * `http` (R-HTTP): calls a URL from the platform process (never from a sandbox) through the
 * SSRF-guarded client (src/net/http-client.ts): loopback, private, link-local, multicast and
 * metadata addresses are refused unless allow-listed by IP or CIDR, DNS is resolved once and the
 * connection pinned to the checked address, every redirect is checked again. The URL, headers,
 * query and body are templates over the input and the attached secrets and variables.
 */
import { z } from 'zod';
import { sleepUnlessAborted } from '../../core/sleep.js';
import { CairnError } from '../../core/errors.js';
import { ExprError, exprsOf, renderTemplate, type Root, type Template } from '../../core/expr.js';
import { sha256Hex } from '../../core/hash.js';
import { scrubValues } from '../../core/sealed.js';
import { checkUrl, parseAllowList, request } from '../../net/http-client.js';
import { attachedScopes } from '../attachments.js';
import { declaredError, errorCode as e } from '../errors.js';
import { specTemplate } from '../templates.js';
import {
  defineOp,
  defineType,
  executorFor,
  type ErrorCodeDecl,
  type OperationDecl,
  type ResolvedAttachment,
} from '../types.js';

export const HTTP_ROOTS: readonly Root[] = ['input', 'secrets', 'vars'];
const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;
const IDEMPOTENT = new Set(['GET', 'HEAD', 'PUT', 'DELETE', 'OPTIONS']);
/** Headers that carry credentials: a literal value is refused (it belongs in a secret), and evidence never shows them. */
export const CREDENTIAL_HEADERS =
  /^(authorization|proxy-authorization|cookie|set-cookie|x-api-key|api-key|x-auth-token)$/i;

const template = z.string().max(16_384);
const httpSpec = z
  .object({
    method: z.enum(METHODS).default('GET'),
    url: template.describe('http: or https: URL; may hold ${{ input.… }}, ${{ vars.… }} templates'),
    headers: z.record(z.string().regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$/), template).default({}),
    query: z.record(z.string().min(1).max(256), template).default({}),
    body: z
      .unknown()
      .optional()
      .describe('A JSON value (sent as application/json) or a string; templates allowed'),
    allow: z
      .array(z.string().min(1).max(255))
      .max(100)
      .default([])
      .describe(
        'Hosts (api.example.com, *.example.com), IPs or CIDRs; a private address needs an IP/CIDR entry',
      ),
    timeout_ms: z.number().int().min(100).max(120_000).default(10_000),
    max_response_bytes: z
      .number()
      .int()
      .min(1)
      .max(10 * 1024 * 1024)
      .default(1024 * 1024),
    retry: z
      .object({
        attempts: z.number().int().min(1).max(5).default(1),
        backoff_ms: z.number().int().min(0).max(30_000).default(200),
      })
      .strict()
      .default({ attempts: 1, backoff_ms: 200 }),
    expect: z
      .array(z.number().int().min(100).max(599))
      .max(50)
      .default([])
      .describe('Accepted statuses (default: 2xx)'),
  })
  .strict();
export type HttpSpec = z.output<typeof httpSpec>;

export const HTTP_ERRORS = [
  e(
    'HTTP_URL_REFUSED',
    'validation',
    false,
    'The URL is not an http: or https: URL, or carries credentials.',
    'Use an absolute http(s) URL without user:password@.',
  ),
  e(
    'HTTP_ADDRESS_REFUSED',
    'permission',
    false,
    'The destination is a loopback, private, link-local, multicast or metadata address (the SSRF guard).',
    'Allow-list the address explicitly with an IP or CIDR entry in spec.allow if it is meant to be reached.',
  ),
  e(
    'HTTP_HOST_NOT_ALLOWED',
    'permission',
    false,
    'The destination is not in spec.allow.',
    'Add the host (or its CIDR) to spec.allow.',
  ),
  e('HTTP_DNS_FAILED', 'unavailable', true, 'The host name did not resolve.', 'Check the host name.'),
  e(
    'HTTP_CONNECT_FAILED',
    'unavailable',
    true,
    'The connection failed (refused, reset, TLS).',
    'Check that the server is up and reachable from Cairn.',
  ),
  e(
    'HTTP_TIMEOUT',
    'timeout',
    true,
    'The exchange took longer than timeout_ms.',
    'Raise spec.timeout_ms or make the endpoint faster.',
  ),
  e(
    'HTTP_RESPONSE_TOO_LARGE',
    'validation',
    false,
    'The response body is larger than max_response_bytes.',
    'Raise spec.max_response_bytes (at most 10 MiB) or ask for less.',
  ),
  e(
    'HTTP_TOO_MANY_REDIRECTS',
    'validation',
    false,
    'More redirects than allowed.',
    'Call the final URL directly.',
  ),
  e(
    'HTTP_UNEXPECTED_STATUS',
    'unavailable',
    false,
    'The server answered a status not in spec.expect (default 2xx).',
    'Check the request; add the status to spec.expect if it is a valid answer.',
  ),
  e(
    'HTTP_TEMPLATE_FAILED',
    'validation',
    false,
    'A template of the URL, headers, query or body failed on this input.',
    'Send the input fields the templates read.',
  ),
  e(
    'HTTP_SECRET_INLINE',
    'validation',
    false,
    'A credential header holds a literal value.',
    'Put the credential in a secret, attach it, and write ${{ secrets.<name> }}.',
  ),
] as const satisfies readonly ErrorCodeDecl[];

function fail(
  code: (typeof HTTP_ERRORS)[number]['code'],
  message: string,
  details?: unknown,
  retryable?: boolean,
) {
  return declaredError(HTTP_ERRORS, code, message, details, retryable);
}

interface Compiled {
  url: Template;
  headers: [string, Template][];
  query: [string, Template][];
  body?: Template;
}

const compiled = new WeakMap<object, Compiled>();

/** Compiles the spec's templates; throws HTTP_TEMPLATE_FAILED-shaped INVALID_SPEC at definition time. */
function compile(spec: HttpSpec): Compiled {
  let c = compiled.get(spec);
  if (c) return c;
  const one = (where: string, v: unknown) =>
    specTemplate(
      where,
      v,
      HTTP_ROOTS,
      'Templates are ${{ CEL }} over input, secrets and vars, e.g. ${{ input.id }} or ${{ secrets.token }}.',
    );
  c = {
    url: one('url', spec.url),
    headers: Object.entries(spec.headers).map(([k, v]) => [k, one(`headers.${k}`, v)]),
    query: Object.entries(spec.query).map(([k, v]) => [k, one(`query.${k}`, v)]),
    body: spec.body === undefined ? undefined : one('body', spec.body),
  };
  compiled.set(spec, c);
  return c;
}

function readsSecrets(t: Template): boolean {
  return exprsOf(t).some((x) => x.roots.has('secrets'));
}

/** One template rendered to a string; throws HTTP_TEMPLATE_FAILED. */
function renderString(where: string, t: Template, scope: Record<string, unknown>): string {
  let v: unknown;
  try {
    v = renderTemplate(t, scope);
  } catch (err) {
    if (err instanceof ExprError)
      throw fail('HTTP_TEMPLATE_FAILED', `The template of ${where} ${err.message}: ${err.expression}`, {
        where,
      });
    throw err;
  }
  return typeof v === 'string' ? v : JSON.stringify(v);
}

/** The URL template rendered and parsed; a string that is no URL is HTTP_URL_REFUSED (not a crash). */
function renderUrl(c: Compiled, scope: Record<string, unknown>): URL {
  const href = renderString('url', c.url, scope);
  try {
    return new URL(href);
  } catch {
    throw fail('HTTP_URL_REFUSED', `The URL is refused: "${href}" is not an absolute URL.`, { url: href });
  }
}

/** The request a spec and an input make (templates rendered); throws HTTP_TEMPLATE_FAILED. */
function render(spec: HttpSpec, scope: Record<string, unknown>) {
  const c = compile(spec);
  const str = (where: string, t: Template): string => renderString(where, t, scope);
  const url = renderUrl(c, scope);
  for (const [k, t] of c.query) url.searchParams.append(k, str(`query.${k}`, t));
  const headers: Record<string, string> = {};
  for (const [k, t] of c.headers) headers[k.toLowerCase()] = str(`headers.${k}`, t);
  let body: string | undefined;
  if (c.body !== undefined) {
    let v: unknown;
    try {
      v = renderTemplate(c.body, scope);
    } catch (err) {
      if (err instanceof ExprError)
        throw fail('HTTP_TEMPLATE_FAILED', `The template of body ${err.message}: ${err.expression}`, {
          where: 'body',
        });
      throw err;
    }
    if (typeof v === 'string') body = v;
    else {
      body = JSON.stringify(v);
      headers['content-type'] ??= 'application/json';
    }
  }
  return { url: url.href, headers, body };
}

/** A client's NET_* code as this type's HTTP_* code (an unknown one is HTTP_CONNECT_FAILED). */
function httpCode(netCode: string): string {
  const code = `HTTP_${netCode.slice(4)}`;
  return HTTP_ERRORS.some((x) => x.code === code) ? code : 'HTTP_CONNECT_FAILED';
}

/** NET_* from the client → this type's HTTP_* code (same class and retryability). */
function fromNet(err: unknown): never {
  if (err instanceof CairnError && err.code.startsWith('NET_')) {
    throw new CairnError({
      code: httpCode(err.code),
      class: err.errorClass,
      message: err.message,
      suggestion: err.suggestion,
      retryable: err.retryable,
      details: err.details,
    });
  }
  throw err;
}

function shownHeaders(h: Record<string, string | string[]>): Record<string, string | string[]> {
  return Object.fromEntries(
    Object.entries(h).map(([k, v]) => [k, CREDENTIAL_HEADERS.test(k) ? '[redacted]' : v]),
  );
}

function decodeBody(body: Buffer, contentType: string): unknown {
  if (/\bjson\b/i.test(contentType)) {
    try {
      return JSON.parse(body.toString('utf8'));
    } catch {
      /* not JSON after all: text */
    }
  }
  if (
    /^(text\/|application\/(xml|x-www-form-urlencoded|javascript))/i.test(contentType) ||
    contentType === ''
  )
    return body.toString('utf8');
  return { base64: body.toString('base64') };
}

/**
 * The forms a secret takes once a URL encodes it (a query value, a path segment). The engine scrubs
 * a secret's exact value from what a run records; the URL this element built (in the output, the
 * evidence and the client's error messages) holds these forms instead, so they are scrubbed here.
 */
function encodedSecrets(list: readonly ResolvedAttachment[]): { value: string; label: string }[] {
  const out: { value: string; label: string }[] = [];
  for (const a of list) {
    if (!a.secret || a.value === '') continue;
    const forms = new Set([
      encodeURIComponent(a.value),
      new URLSearchParams({ v: a.value }).toString().slice(2),
    ]);
    // What WHATWG URL makes of it in a path or a query (fewer characters escaped), when it keeps it whole.
    for (const [prefix, part] of [
      ['http://x/', 'pathname'],
      ['http://x/?', 'search'],
    ] as const) {
      try {
        const f = new URL(prefix + a.value)[part].slice(1);
        if (decodeURIComponent(f) === a.value) forms.add(f);
      } catch {
        /* not a URL part: nothing to scrub */
      }
    }
    for (const f of forms) if (f !== a.value) out.push({ value: f, label: a.slug });
  }
  return out;
}

/** An error with the encoded forms of the secrets scrubbed from its message, details and evidence. */
function scrubError(err: unknown, forms: readonly { value: string; label: string }[]): unknown {
  if (!(err instanceof CairnError) || forms.length === 0) return err;
  const evidence = (err as { evidence?: unknown }).evidence;
  const out = new CairnError({
    code: err.code,
    class: err.errorClass,
    message: scrubValues(err.message, forms),
    suggestion: err.suggestion,
    retryable: err.retryable,
    details: scrubValues(err.details, forms),
    status: err.status,
    cause: err.cause,
  });
  if (evidence !== undefined) (out as { evidence?: unknown }).evidence = scrubValues(evidence, forms);
  return out;
}

const invokeInput = z.record(z.string(), z.unknown());

const invoke = {
  name: 'invoke',
  method: 'POST',
  path: 'invoke',
  auth: 'execute',
  summary: 'Make the request (templates rendered over the input)',
  description:
    'Answers `{status, headers, body, url}`: a JSON body parsed, text as a string, anything else as `{base64}`. ' +
    'A status outside spec.expect (default 2xx) fails the run with HTTP_UNEXPECTED_STATUS (retryable for 429 and 5xx).',
  input: invokeInput,
  createsRun: true,
  price: 1_000,
  retryOnLoss: (spec: { method: string }) => IDEMPOTENT.has(spec.method),
  sideEffects: (spec: { method: string }) => spec.method !== 'GET' && spec.method !== 'HEAD',
  maxAttempts: 3,
} satisfies OperationDecl<typeof invokeInput>;

export const httpType = defineType({
  type: 'http',
  category: 'actions',
  title: 'HTTP request',
  description:
    'Calls a URL from the platform (not from a sandbox), with an allow-list and an SSRF guard: loopback, private, ' +
    'link-local, multicast and cloud-metadata addresses are refused unless an IP or CIDR entry of spec.allow covers ' +
    'them; DNS is resolved once and the connection pinned to the checked address; every redirect is checked again. ' +
    'Templates (${{ input.x }}, ${{ vars.x }}, ${{ secrets.x }}) fill the URL, headers, query and body; credentials ' +
    'come from attached secrets, never from literals. Evidence records the method, final URL, status, headers ' +
    '(credentials redacted), body hashes and sizes, and DNS/connect/TLS/TTFB timings.',
  spec: httpSpec,
  accepts: {
    types: ['secret', 'variable'],
    name: 'identifier',
    injects: '${{ secrets.<name> }} and ${{ vars.<name> }} in the templates',
  },
  operations: [defineOp(invoke)],
  errors: HTTP_ERRORS,
  rules: [
    {
      level: 'error',
      message: 'retry.attempts > 1 needs an idempotent method (GET, HEAD, PUT, DELETE, OPTIONS)',
      check: (s) => s.retry.attempts <= 1 || IDEMPOTENT.has(s.method),
    },
    {
      level: 'error',
      message: 'GET and HEAD requests carry no body',
      check: (s) => s.body === undefined || (s.method !== 'GET' && s.method !== 'HEAD'),
    },
  ],
  validateSpec(spec) {
    parseAllowList(spec.allow);
    const c = compile(spec);
    for (const [k, t] of c.headers)
      if (CREDENTIAL_HEADERS.test(k) && !readsSecrets(t))
        throw fail('HTTP_SECRET_INLINE', `Header ${k} holds a literal credential.`, { header: k });
    // A URL with nothing to render is checked now: a refused destination is refused at definition time.
    if (c.url.t === 'lit') {
      const v = checkUrl(String(c.url.v), spec.allow);
      if (!v.ok)
        throw fail(`HTTP_${v.code.slice(4)}` as never, `The URL is refused: ${v.reason}.`, { url: spec.url });
    }
  },
  checkInput(_op, spec, input) {
    // The URL from this input, checked before a run starts (secrets are not opened here).
    const c = compile(spec);
    if (c.url.t === 'lit' || readsSecrets(c.url) || exprsOf(c.url).some((x) => x.roots.has('vars'))) return;
    // Only the URL: the headers, query and body may read secrets and vars, which are not opened here.
    const url = renderUrl(c, { input }).href;
    const v = checkUrl(url, spec.allow);
    if (!v.ok) throw fail(`HTTP_${v.code.slice(4)}` as never, `The URL is refused: ${v.reason}.`, { url });
  },
  executors: {
    invoke: executorFor(invoke, async (ctx) => {
      const spec = ctx.spec as HttpSpec;
      // What the exchange records or throws holds the URL, with the secrets in it URL-encoded.
      const forms = encodedSecrets(ctx.attachments);
      const scope = { input: ctx.input, ...attachedScopes(ctx.attachments) };
      const req = render(spec, scope);
      // Its hash is of the body as recorded (a secret in it scrubbed), never an oracle for the secret.
      const reqBody = Buffer.from(ctx.scrub(req.body ?? ''), 'utf8');
      const expect = spec.expect.length ? new Set(spec.expect) : undefined;
      const attempts: Record<string, unknown>[] = [];
      for (let attempt = 1; ; attempt++) {
        const t0 = performance.now();
        let res;
        try {
          res = await request({
            method: spec.method,
            url: req.url,
            headers: req.headers,
            body: req.body,
            allow: spec.allow,
            timeoutMs: spec.timeout_ms,
            maxResponseBytes: spec.max_response_bytes,
            signal: ctx.signal,
          });
        } catch (err) {
          const retryable = err instanceof CairnError && err.retryable;
          attempts.push({
            attempt,
            // The code the run fails with, not the client's NET_* one.
            error:
              err instanceof CairnError
                ? err.code.startsWith('NET_')
                  ? httpCode(err.code)
                  : err.code
                : 'INTERNAL',
            ms: performance.now() - t0,
          });
          if (retryable && attempt < spec.retry.attempts && !ctx.signal.aborted) {
            await sleepUnlessAborted(spec.retry.backoff_ms * 2 ** (attempt - 1), ctx.signal);
            continue;
          }
          try {
            fromNet(err);
          } catch (mapped) {
            (mapped as { evidence?: unknown }).evidence = { method: spec.method, url: req.url, attempts };
            throw scrubError(mapped, forms);
          }
        }
        const ok = expect ? expect.has(res.status) : res.status >= 200 && res.status < 300;
        const contentType = String(res.headers['content-type'] ?? '');
        const evidence = {
          method: spec.method,
          url: req.url,
          final_url: res.finalUrl,
          address: res.address,
          status: res.status,
          redirects: res.redirects,
          request: {
            headers: shownHeaders(req.headers),
            body: { bytes: reqBody.length, sha256: 'sha256:' + sha256Hex(reqBody) },
          },
          response: {
            headers: shownHeaders(res.headers),
            body: { bytes: res.body.length, sha256: 'sha256:' + sha256Hex(res.body) },
          },
          timings: res.timings,
          attempts: attempts.length > 0 ? [...attempts, { attempt, status: res.status }] : undefined,
        };
        if (!ok) {
          const retryable = res.status === 429 || res.status >= 500;
          if (retryable && attempt < spec.retry.attempts && !ctx.signal.aborted) {
            attempts.push({ attempt, status: res.status, ms: performance.now() - t0 });
            await sleepUnlessAborted(spec.retry.backoff_ms * 2 ** (attempt - 1), ctx.signal);
            continue;
          }
          const err = fail(
            'HTTP_UNEXPECTED_STATUS',
            `${spec.method} ${res.finalUrl} answered ${res.status}${expect ? ` (expected ${[...expect].join(', ')})` : ''}.`,
            { status: res.status, body: res.body.subarray(0, 2048).toString('utf8') },
            retryable,
          );
          (err as unknown as { evidence: unknown }).evidence = evidence;
          throw scrubError(err, forms);
        }
        return scrubValues(
          {
            output: {
              status: res.status,
              headers: shownHeaders(res.headers),
              body: spec.method === 'HEAD' ? null : decodeBody(res.body, contentType),
              url: res.finalUrl,
            },
            evidence,
          },
          forms,
        );
      }
    }),
  },
  telemetry: { prefix: 'http' },
  // Every attempt's timeout, every backoff between them (doubling), and some room to settle.
  timeoutMs: (spec) => {
    const n = Math.max(1, spec.retry.attempts);
    return spec.timeout_ms * n + spec.retry.backoff_ms * (2 ** (n - 1) - 1) + 5_000;
  },
});

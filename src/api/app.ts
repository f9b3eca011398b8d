import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import sjson from 'secure-json-parse';
import { CairnError, errors, toCairnError, thrown } from '../core/errors.js';
import { parseInput } from '../core/zod.js';
import { findUnstorable, type Unstorable } from '../core/storable.js';
import { getCircleBySlug } from '../store/circles.js';
import type { Principal } from '../store/tokens.js';
import { authorize } from './auth.js';
import type { Deps } from './context.js';
import { LiveHub } from './live.js';
import { dispatchElementOp } from './element-ops.js';
import { idempotent } from './idempotency.js';
import { openApiDocument } from './openapi.js';
import type { RouteCtx, RouteDef } from './route.js';
import { ROUTES } from './routes.js';
import type { HttpMethod } from '../elements/types.js';
import { registry } from '../telemetry/metrics.js';
import { uiRoutes } from './ui-routes.js';

const BODY_LIMIT = 1024 * 1024;

/** Idempotency keys of the instance admin's requests that address no circle. */
const INSTANCE_SCOPE = '00000000-0000-0000-0000-000000000000';

function badJson(message: string): CairnError {
  return new CairnError({
    code: 'INVALID_JSON',
    class: 'validation',
    message: `The body is not valid JSON: ${message}`,
    suggestion: 'Send a JSON document with Content-Type: application/json.',
  });
}

function unstorableBody(bad: Unstorable): CairnError {
  return new CairnError({
    code: 'INVALID_INPUT',
    class: 'validation',
    message: `The body cannot be stored: at ${bad.path}, ${bad.reason}.`,
    details: { path: bad.path },
    suggestion:
      'Remove NUL characters (\\u0000) and lone surrogates, keep nesting under 64 levels; encode binary data as base64.',
  });
}

/** Fastify's own errors (bad media type, body too large, bad URL …) as typed Cairn errors. */
function frameworkError(caught: unknown, bodyLimit = BODY_LIMIT): CairnError {
  const e = thrown(caught);
  const code: string = e.code ?? '';
  if (code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
    return new CairnError({
      code: 'UNSUPPORTED_MEDIA_TYPE',
      class: 'validation',
      status: 415,
      message: `Content-Type ${e?.message?.split(': ').pop() ?? ''} is not supported.`,
      suggestion: 'Send the body as JSON with Content-Type: application/json.',
    });
  }
  if (code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
    return new CairnError({
      code: 'PAYLOAD_TOO_LARGE',
      class: 'validation',
      status: 413,
      message: `The body is larger than ${bodyLimit} bytes.`,
      suggestion: 'Send a smaller body; put large data in a table or a file element.',
    });
  }
  const status = Number(e?.statusCode);
  if (status >= 400 && status < 500) {
    return new CairnError({
      code: 'BAD_REQUEST',
      class: 'validation',
      status,
      message: String(e?.message ?? 'Bad request'),
      suggestion: 'Check the method, URL, headers and body against GET /openapi.json.',
    });
  }
  return toCairnError(e);
}

function send(reply: FastifyReply, err: CairnError): FastifyReply {
  const allow = (err.details as { allow?: unknown } | undefined)?.allow;
  if (err.status === 405 && Array.isArray(allow)) reply.header('Allow', allow.join(', '));
  return reply.code(err.status).type('application/json').send(err.toJSON());
}

/** Each platform route's path as a pattern of concrete paths, with its method (for 405 and Allow). */
const ROUTE_PATTERNS = ROUTES.map((r) => ({
  method: r.method,
  re: new RegExp('^' + r.url.replace(/:[a-z_]+/g, '[^/]+') + '/?$'),
}));

/** The methods platform routes serve at a concrete path. */
function methodsAt(path: string): string[] {
  return [...new Set(ROUTE_PATTERNS.filter((r) => r.re.test(path)).map((r) => r.method))];
}

export async function buildApp(deps: Deps): Promise<FastifyInstance> {
  const app = Fastify({
    logger: false,
    bodyLimit: BODY_LIMIT,
    routerOptions: { maxParamLength: 500 },
    return503OnClosing: true,
    frameworkErrors: (err, _req, reply) => {
      void send(reply, frameworkError(err));
    },
  });

  if (!deps.live) {
    const hub = new LiveHub(deps.db);
    deps.live = hub;
    // Before the server waits for its connections to end: open streams end here.
    app.addHook('preClose', () => hub.close());
  }

  app.removeAllContentTypeParsers();
  app.addContentTypeParser(
    /^application\/([a-z0-9.+-]*\+)?json(\s*;.*)?$/i,
    { parseAs: 'string', bodyLimit: BODY_LIMIT },
    (_req, body, done) => {
      const text = String(body);
      if (text.trim() === '') return done(null, undefined);
      try {
        const value: unknown = sjson.parse(text, undefined, {
          protoAction: 'error',
          constructorAction: 'error',
        });
        // The run record's boundary (core/storable.ts): what PostgreSQL cannot store is refused here, typed.
        const bad = findUnstorable(value);
        if (bad) return done(unstorableBody(bad), undefined);
        done(null, value);
      } catch (caught) {
        const e = thrown(caught);
        done(badJson(e?.message ?? 'parse error'), undefined);
      }
    },
  );

  const onError = (bodyLimit: number) => (e: unknown, req: FastifyRequest, reply: FastifyReply) => {
    const err = e instanceof CairnError ? e : frameworkError(e, bodyLimit);
    if (err.status >= 500)
      deps.log.error({ err: e, cause: err.cause, url: req.url, reqId: req.id }, 'request failed');
    return send(reply, err);
  };
  app.setErrorHandler(onError(BODY_LIMIT));
  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split('?')[0]!;
    const allow = methodsAt(path);
    if (allow.length > 0)
      return send(
        reply,
        new CairnError({
          code: 'METHOD_NOT_ALLOWED',
          class: 'validation',
          status: 405,
          message: `${path} does not take ${req.method}; it takes ${allow.join(', ')}.`,
          details: { allow },
          suggestion: 'Use one of the methods in the Allow header; GET /openapi.json lists every route.',
        }),
      );
    return send(
      reply,
      errors.notFound(
        'ROUTE_NOT_FOUND',
        `No route ${req.method} ${req.url.split('?')[0]}.`,
        'GET /openapi.json lists every route; element operations live at /api/{circle}/{slug}/ops/{operation}.',
      ),
    );
  });

  async function context(
    def: Pick<RouteDef, 'auth'>,
    req: FastifyRequest,
    reply: FastifyReply,
  ): Promise<RouteCtx> {
    const params = (req.params ?? {}) as Record<string, string>;
    let principal: Principal | undefined;
    if (def.auth !== 'none') principal = await deps.authn.principal(req.headers.authorization);
    let circle;
    // A public route (auth none) looks its circle up itself: it decides what an unknown circle
    // answers (a webhook answers the same 404 as for an unknown hook, so circles cannot be probed).
    if (params.circle !== undefined && def.auth !== 'none') {
      circle = await getCircleBySlug(deps.db, params.circle);
      // Membership first, on every circle route: to a circle token, another circle and a
      // missing one get the same 404 from authorize, so circle names cannot be probed.
      if (principal) authorize(principal, circle, 'read');
      if (!circle) {
        throw errors.notFound(
          'CIRCLE_NOT_FOUND',
          `No circle "${params.circle}".`,
          'Check the circle slug; GET /api/circles lists the circles your token sees.',
        );
      }
    }
    if (principal && def.auth !== 'token' && def.auth !== 'none') authorize(principal, circle, def.auth);
    return { deps, principal, circle, params, query: req.query ?? {}, body: req.body, req, reply };
  }

  function parseWith(what: string, schema: RouteDef['body'], value: unknown, suggestion?: string): unknown {
    if (!schema) return value;
    return parseInput(schema, value === undefined ? {} : value, `Invalid ${what}`, suggestion);
  }

  const mount = (target: FastifyInstance, def: RouteDef) =>
    target.route({
      method: def.method,
      url: def.url,
      handler: async (req, reply) => {
        const ctx = await context(def, req, reply);
        ctx.query = parseWith('query string', def.query ?? undefined, ctx.query, def.inputSuggestion);
        if (def.method !== 'GET') ctx.body = parseWith('body', def.body, ctx.body, def.inputSuggestion);
        if (def.status) reply.code(def.status); // the default; a handler may answer otherwise (a replay)
        if (def.method === 'GET' || def.idempotencyKey === false) return def.handler(ctx);
        // Every state-changing route honours Idempotency-Key the same way, scoped to the token's circle.
        const scope = ctx.circle?.id ?? ctx.principal?.circleId ?? INSTANCE_SCOPE;
        return idempotent(ctx, scope, `${def.method} ${def.url}`, () => def.handler(ctx));
      },
    });
  for (const def of ROUTES) {
    if (!def.rawBody) {
      mount(app, def);
      continue;
    }
    // A raw-body route (a file upload) takes any content type as bytes, in a scope of its own.
    const limit = def.rawBody.limit;
    await app.register(async (sub) => {
      sub.setErrorHandler(onError(limit));
      sub.removeAllContentTypeParsers();
      sub.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: limit }, (_req, body, done) =>
        done(null, body),
      );
      mount(sub, def);
    });
  }

  for (const method of ['GET', 'POST', 'PATCH', 'DELETE'] as HttpMethod[]) {
    app.route({
      method,
      url: '/api/:circle/:slug/ops/*',
      handler: async (req, reply) => dispatchElementOp(await context({ auth: 'token' }, req, reply), method),
    });
  }

  await app.register(uiRoutes, { log: deps.log });
  const doc = openApiDocument();
  app.get('/openapi.json', async () => doc);
  // Prometheus scrapes with the instance-admin token (metrics name circles and elements).
  app.get('/metrics', async (req, reply) => {
    authorize(await deps.authn.principal(req.headers.authorization), undefined, 'instance_admin');
    return reply.type(registry.contentType).send(await registry.metrics());
  });
  return app;
}

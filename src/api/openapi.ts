import { VERSION } from '../core/version.js';
import { listTypes, operationsOf } from '../elements/registry.js';
import type { OperationDecl } from '../elements/types.js';
import { jsonSchema } from '../elements/schema.js';
import { ROUTES } from './routes.js';

const errorSchema = {
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['code', 'class', 'message', 'retryable', '_suggestion'],
      properties: {
        code: { type: 'string' },
        class: { type: 'string' },
        message: { type: 'string' },
        retryable: { type: 'boolean' },
        _suggestion: { type: 'string' },
        details: {},
      },
    },
  },
};

const errorResponse = (description: string) => ({
  description,
  content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
});

/** What a route can answer besides its success, by what it does (every status declared, DESIGN). */
function errorResponsesFor(r: {
  auth: string;
  method: string;
  createsRun?: boolean;
  body?: boolean;
  /** false: Idempotency-Key is not honoured (no 422). */
  idempotent?: boolean;
  /** The body is raw bytes of any content type (no 415). */
  raw?: boolean;
}) {
  const out: Record<string, unknown> = {
    '400': errorResponse('Invalid input, query or JSON'),
    '404': errorResponse('Not found (the circle, element, run or route)'),
    '500': errorResponse('Internal error'),
  };
  if (r.auth !== 'none') {
    out['401'] = errorResponse('Missing or invalid token');
    out['403'] = errorResponse('Role too low');
  }
  if (r.method !== 'get') {
    out['409'] = errorResponse('Conflict (state, or an Idempotency-Key still in flight)');
    out['413'] = errorResponse('Body too large');
    if (!r.raw) out['415'] = errorResponse('Content-Type not JSON');
    if (r.idempotent !== false) out['422'] = errorResponse('Idempotency-Key reused for another request');
  }
  if (r.createsRun) out['402'] = errorResponse('The wallet cannot cover the reservation');
  return out;
}

/**
 * Schemas as the document holds them: each `$defs` entry a zod schema produced
 * (recursive JSON values, shared objects) moves to components.schemas under a
 * name of its content, and every `#/$defs/…` reference points there — no
 * reference dangles wherever the schema is embedded.
 */
class Schemas {
  readonly components: Record<string, unknown> = { Error: errorSchema };
  private readonly names = new Map<string, string>();

  add(schema: Record<string, unknown>): Record<string, unknown> {
    const defs = (schema.$defs ?? {}) as Record<string, Record<string, unknown>>;
    delete schema.$defs;
    const renamed = new Map<string, string>();
    for (const k of Object.keys(defs)) {
      const key = JSON.stringify(defs[k]);
      let name = this.names.get(key);
      if (!name) {
        name = `Def${this.names.size + 1}`;
        this.names.set(key, name);
      }
      renamed.set(k, name);
    }
    const rewrite = (v: unknown): unknown => {
      if (Array.isArray(v)) return v.map(rewrite);
      if (v === null || typeof v !== 'object') return v;
      const o: Record<string, unknown> = {};
      for (const [k, x] of Object.entries(v)) {
        if (k === '$ref' && typeof x === 'string' && x.startsWith('#/$defs/'))
          o[k] = `#/components/schemas/${renamed.get(x.slice(8)) ?? x.slice(8)}`;
        else o[k] = rewrite(x);
      }
      return o;
    };
    for (const [k, name] of renamed) this.components[name] = rewrite(defs[k]);
    return rewrite(schema) as Record<string, unknown>;
  }
}

const IDEMPOTENCY_KEY = {
  name: 'Idempotency-Key',
  in: 'header',
  required: false,
  description:
    'A replay of the same request answers the first answer (422 when the key was used for another)',
  schema: { type: 'string', minLength: 1, maxLength: 200 },
};

function toOpenApiPath(url: string): { path: string; params: string[] } {
  const params: string[] = [];
  const path = url.replace(/:([a-z_]+)/g, (_m, p: string) => {
    params.push(p);
    return `{${p}}`;
  });
  return { path, params };
}

function pathParams(names: string[]) {
  return names.map((n) => ({ name: n, in: 'path', required: true, schema: { type: 'string' } }));
}

function queryParams(schema: Record<string, unknown>) {
  const props = (schema.properties ?? {}) as Record<string, unknown>;
  const req = new Set((schema.required as string[] | undefined) ?? []);
  // A query value is text on the wire; a whole-number field (number | digits) is documented as the integer it is.
  const plain = (s: unknown) => {
    const alts = (s as { anyOf?: { type?: string }[] } | null)?.anyOf;
    return Array.isArray(alts) ? (alts.find((b) => b.type === 'integer' || b.type === 'number') ?? s) : s;
  };
  return Object.entries(props).map(([name, s]) => ({
    name,
    in: 'query',
    required: req.has(name),
    schema: plain(s),
  }));
}

/**
 * OpenAPI 3.1, generated from the same declarations that drive routing and
 * validation: the platform routes and every element type's operations. Ops of
 * several types that share a path are one operation whose body is `oneOf`.
 */
export function openApiDocument(): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  const schemas = new Schemas();
  const js = (z: Parameters<typeof jsonSchema>[0], io: 'input' | 'output' = 'input') =>
    schemas.add(jsonSchema(z, io));
  const bearer = [{ bearer: [] }];
  const put = (path: string, method: string, op: Record<string, unknown>) => {
    paths[path] ??= {};
    paths[path][method] = op;
  };

  for (const r of ROUTES) {
    const { path, params } = toOpenApiPath(r.url);
    const op: Record<string, unknown> = {
      operationId: `${r.method.toLowerCase()}_${path.replace(/[^a-z]+/gi, '_').replace(/^_|_$/g, '')}`,
      summary: r.summary,
      tags: [r.tag],
      parameters: [
        ...pathParams(params),
        ...(r.query ? queryParams(js(r.query)) : []),
        ...(r.headers ?? []).map((h) => ({
          name: h.name,
          in: 'header',
          required: false,
          description: h.description,
          schema: { type: 'string' },
        })),
      ],
      responses: {
        [String(r.status ?? 200)]: {
          description: 'OK',
          content: r.eventStream
            ? { 'text/event-stream': { schema: { type: 'string', description: 'Server-Sent Events' } } }
            : { 'application/json': { schema: r.response ? js(r.response, 'output') : {} } },
        },
        // A replay of a state-changing request answers what the first answered (its status too).
        ...(r.method !== 'GET' && r.idempotencyKey !== false && (r.status ?? 200) !== 200
          ? { '200': { description: 'OK' } }
          : {}),
        ...errorResponsesFor({
          auth: r.auth,
          method: r.method.toLowerCase(),
          body: Boolean(r.body),
          idempotent: r.idempotencyKey !== false,
          raw: Boolean(r.rawBody),
        }),
        ...Object.fromEntries(
          Object.entries(r.responses ?? {}).map(([status, description]) => [
            status,
            Number(status) >= 400 ? errorResponse(description) : { description },
          ]),
        ),
        ...(r.url === '/healthz'
          ? {
              '503': errorResponse(
                'Degraded: a shared statement keeps failing, or the embedded PostgreSQL is restarting',
              ),
            }
          : {}),
      },
      security: r.auth === 'none' ? [] : bearer,
      'x-cairn-auth': r.auth,
    };
    if (r.method !== 'GET' && r.method !== 'DELETE' && r.idempotencyKey !== false) {
      op.parameters = [...(op.parameters as unknown[]), IDEMPOTENCY_KEY];
    }
    if (r.body) op.requestBody = { required: false, content: { 'application/json': { schema: js(r.body) } } };
    if (r.rawBody)
      op.requestBody = {
        required: false,
        description: `The raw bytes, of any content type (at most ${r.rawBody.limit} bytes)`,
        content: { '*/*': { schema: {} } },
      };
    put(path, r.method.toLowerCase(), op);
  }

  // Element operations, grouped by (path, method) across types.
  const groups = new Map<
    string,
    { method: string; path: string; entries: { type: string; op: OperationDecl }[] }
  >();
  for (const t of listTypes()) {
    for (const op of operationsOf(t)) {
      const key = `${op.method} ${op.path}`;
      const g = groups.get(key) ?? { method: op.method.toLowerCase(), path: op.path, entries: [] };
      g.entries.push({ type: t.type, op });
      groups.set(key, g);
    }
  }
  for (const g of groups.values()) {
    const first = g.entries[0]!.op;
    const path = `/api/{circle}/{slug}/ops/${g.path}`;
    const names = ['circle', 'slug', ...[...g.path.matchAll(/\{([a-z_]+)\}/g)].map((m) => m[1]!)];
    const inputs = g.entries.map((e) => ({ title: e.type, ...js(e.op.input) }));
    const input = inputs.length === 1 ? inputs[0]! : { oneOf: inputs };
    const op: Record<string, unknown> = {
      operationId: `element_${first.name}`,
      summary: first.summary,
      description: g.entries
        .map(
          (e) =>
            `**${e.type}** — ${e.op.description ?? e.op.summary}${e.op.price ? ` (price: ${e.op.price} micro-credits)` : ''}`,
        )
        .join('\n\n'),
      tags: ['element operations'],
      parameters: [
        ...pathParams(names),
        ...(g.method === 'get' || g.method === 'delete' ? queryParams(input) : []),
      ],
      responses: {
        '200': { description: 'OK' },
        ...(g.entries.some((e) => e.op.status === 201) ? { '201': { description: 'Created' } } : {}),
        '405': errorResponse('The path exists, with another method (see the Allow header)'),
        ...errorResponsesFor({ auth: first.auth, method: g.method, createsRun: first.createsRun }),
      },
      security: bearer,
      'x-cairn-auth': first.auth,
      'x-cairn-element-types': g.entries.map((e) => e.type),
      'x-cairn-creates-run': Boolean(first.createsRun),
    };
    if (first.createsRun) {
      op.parameters = [
        ...(op.parameters as unknown[]),
        { name: 'async', in: 'query', required: false, schema: { type: 'string', enum: ['1', 'true'] } },
        {
          name: 'mode',
          in: 'query',
          required: false,
          description: 'dry_run: validate, resolve and estimate; record the run; execute and charge nothing',
          schema: { type: 'string', enum: ['live', 'dry_run'], default: 'live' },
        },
        {
          name: 'Prefer',
          in: 'header',
          required: false,
          schema: { type: 'string', example: 'respond-async' },
        },
      ];
      (op.responses as Record<string, unknown>)['202'] = { description: 'Accepted: the run is queued' };
      (op.responses as Record<string, unknown>)['409'] = errorResponse('Element disabled, or key in flight');
    }
    if (g.method !== 'get') op.parameters = [...(op.parameters as unknown[]), IDEMPOTENCY_KEY];
    if (g.method !== 'get' && g.method !== 'delete') {
      op.requestBody = { required: false, content: { 'application/json': { schema: input } } };
    }
    put(path, g.method, op);
  }

  return {
    openapi: '3.1.0',
    info: { title: 'Cairn', version: VERSION, description: 'Every execution becomes a run.' },
    servers: [{ url: '/' }],
    security: bearer,
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
      schemas: schemas.components,
    },
    paths,
  };
}

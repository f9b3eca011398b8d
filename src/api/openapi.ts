import { VERSION } from '../core/version.js';
import { listTypes, operationsOf } from '../elements/registry.js';
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

const errorResponses = {
  '400': errorResponse('Invalid input'),
  '401': errorResponse('Missing or invalid token'),
  '403': errorResponse('Role too low or another circle'),
  '404': errorResponse('Not found'),
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
  return Object.entries(props).map(([name, s]) => ({
    name,
    in: 'query',
    required: req.has(name),
    schema: s,
  }));
}

/**
 * OpenAPI 3.1, generated from the same declarations that drive routing and
 * validation: the platform routes and every element type's operations. Ops of
 * several types that share a path are one operation whose body is `oneOf`.
 */
export function openApiDocument(): Record<string, unknown> {
  const paths: Record<string, Record<string, any>> = {};
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
      parameters: [...pathParams(params), ...(r.query ? queryParams(jsonSchema(r.query)) : [])],
      responses: {
        [String(r.status ?? 200)]: {
          description: 'OK',
          content: { 'application/json': { schema: r.response ? jsonSchema(r.response, 'output') : {} } },
        },
        ...errorResponses,
      },
      'x-cairn-auth': r.auth,
    };
    if (r.auth === 'none') op.security = [];
    if (r.body)
      op.requestBody = { required: true, content: { 'application/json': { schema: jsonSchema(r.body) } } };
    put(path, r.method.toLowerCase(), op);
  }

  // Element operations, grouped by (path, method) across types.
  const groups = new Map<string, { method: string; path: string; entries: { type: string; op: any }[] }>();
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
    const schemas = g.entries.map((e) => ({ title: e.type, ...jsonSchema(e.op.input) }));
    const input = schemas.length === 1 ? schemas[0]! : { oneOf: schemas };
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
        ...(g.method === 'get' || g.method === 'delete' ? queryParams(input as any) : []),
      ],
      responses: { '200': { description: 'OK' }, ...errorResponses },
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
        {
          name: 'Idempotency-Key',
          in: 'header',
          required: false,
          schema: { type: 'string', maxLength: 200 },
        },
      ];
      (op.responses as Record<string, unknown>)['202'] = { description: 'Accepted: the run is queued' };
      (op.responses as Record<string, unknown>)['409'] = errorResponse('Element disabled');
    }
    if (g.method !== 'get' && g.method !== 'delete') {
      op.requestBody = { required: false, content: { 'application/json': { schema: input } } };
    }
    put(path, g.method, op);
  }

  return {
    openapi: '3.1.0',
    info: { title: 'Cairn', version: VERSION, description: 'Every execution becomes a run.' },
    servers: [{ url: '/' }],
    security: [{ bearer: [] }],
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
      schemas: { Error: errorSchema },
    },
    paths,
  };
}

import { errors } from '../core/errors.js';
import { BASE_OPS as CORE_OPS } from './base-ops.js';
import { ATTACH_OPS } from './attachments.js';
import { sqlType } from './sql/index.js';
import { goFnType } from './go-fn/index.js';
import { javascriptType, pythonType } from './script/index.js';
import { tableType } from './table/index.js';
import { workflowType } from './workflow/index.js';
import { hitlType } from './hitl/index.js';
import { scheduleType } from './schedule/index.js';
import { webhookType } from './webhook/index.js';
import { policyType } from './policy/index.js';
import { upstreamType } from './upstream/index.js';
import { secretType, variableType } from './secret/index.js';
import { httpType } from './http/index.js';
import { llmProviderType, llmType } from './llm/index.js';
import type { ElementTypeDecl, HttpMethod, OperationDecl, TypeLookup } from './types.js';

/** Every element type Cairn knows. Adding one is adding a folder and a line here. */
const TYPES: ElementTypeDecl[] = [
  sqlType,
  goFnType,
  pythonType,
  javascriptType,
  tableType,
  workflowType,
  hitlType,
  scheduleType,
  webhookType,
  policyType,
  upstreamType,
  secretType,
  variableType,
  httpType,
  llmProviderType,
  llmType,
];

const BASE_OPS = [...CORE_OPS, ...ATTACH_OPS];
const byName = new Map(TYPES.map((t) => [t.type, t]));

/** Adds a type at runtime (benchmarks, and later plugins). A name is registered once. */
export function registerType(t: ElementTypeDecl): void {
  if (byName.has(t.type)) throw new Error(`element type ${t.type} is already registered`);
  TYPES.push(t);
  byName.set(t.type, t);
}

export function listTypes(): ElementTypeDecl[] {
  return TYPES;
}

export function getType(name: string): ElementTypeDecl {
  const t = byName.get(name);
  if (!t) {
    throw errors.invalidInput(
      `Unknown element_type "${name}".`,
      { known: [...byName.keys()] },
      `Use one of: ${[...byName.keys()].join(', ')}.`,
    );
  }
  return t;
}

/** The registry as element code and the service see it (a port: they never import this module). */
export const typeLookup: TypeLookup = {
  get: (name) => getType(name),
  operationsOf: (t) => operationsOf(t),
  list: () => listTypes(),
};

export function getTypeOrUndefined(name: string | null): ElementTypeDecl | undefined {
  return name ? byName.get(name) : undefined;
}

/** All ops of a type: the base ops plus its own (its own win on a name clash). */
export function operationsOf(t: ElementTypeDecl): OperationDecl[] {
  const own = new Set(t.operations.map((o) => o.name));
  return [...BASE_OPS.filter((o) => !own.has(o.name)), ...t.operations];
}

interface Match {
  op: OperationDecl;
  params: Record<string, string>;
}

function matchPath(template: string, path: string): Record<string, string> | undefined {
  const a = template.split('/');
  const b = path.split('/');
  if (a.length !== b.length) return undefined;
  const params: Record<string, string> = {};
  for (let i = 0; i < a.length; i++) {
    const seg = a[i]!;
    if (seg.startsWith('{') && seg.endsWith('}')) params[seg.slice(1, -1)] = decodeURIComponent(b[i]!);
    else if (seg !== b[i]) return undefined;
  }
  return params;
}

/**
 * Finds the op an HTTP request addresses — by declared path and method only.
 * This is the one dispatch point; nothing here looks at which type it is.
 */
export function resolveOperation(t: ElementTypeDecl, method: HttpMethod, path: string): Match {
  const ops = operationsOf(t);
  let pathMatched: OperationDecl[] = [];
  for (const op of ops) {
    const params = matchPath(op.path, path);
    if (!params) continue;
    if (op.method === method) return { op, params };
    pathMatched = [...pathMatched, op];
  }
  if (pathMatched.length > 0) {
    throw errors
      .invalidInput(
        `Operation ${pathMatched[0]!.name} takes ${pathMatched.map((o) => o.method).join('/')}, not ${method}.`,
        { allow: pathMatched.map((o) => o.method) },
        `Call ${pathMatched[0]!.method} …/ops/${path}.`,
      )
      .withStatus(405, 'METHOD_NOT_ALLOWED');
  }
  throw errors.notFound(
    'OPERATION_NOT_FOUND',
    `A ${t.type} element has no operation at ops/${path}.`,
    `Its operations: ${ops.map((o) => o.name).join(', ')}. GET …/ops/schema describes the run-creating ones.`,
  );
}

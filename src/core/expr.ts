/**
 * `${{ … }}` expressions (R-WORKFLOW), evaluated by CEL, the Common Expression
 * Language (@marcbachmann/cel-js): an interpreter of a language made for
 * exactly this — untrusted expressions over JSON data. It is not
 * Turing-complete (no loops, no recursion, no user functions), evaluates
 * without `eval` or `Function`, and reads only the data it is given: no
 * prototype, no global, no I/O. Time is bounded by the size of the
 * expression (capped here at parse time) times the size of the data, since
 * the only iteration is a macro over a list (`map`, `filter`, `all`,
 * `exists`), and macros may not nest here. It is maintained, has no
 * dependencies, and its syntax (`steps.add.output.rows[0].n > 10`,
 * `steps.a.files['report.csv']`) is what workflow authors already write.
 *
 * JSON maps onto CEL types: an integral number is an `int`, any other a
 * `double`, so `parameters.n * 2` is integer arithmetic; results come back as
 * JSON (an int as a number).
 */
import { Environment, type ASTNode, type ParseResult } from '@marcbachmann/cel-js';

/**
 * A variable an expression may read; anything else is refused at definition time. A workflow
 * reads parameters, steps, item and run (the default); a trigger maps what it received
 * (a webhook's body, headers and query; an upstream run).
 */
export type Root =
  | 'parameters'
  | 'steps'
  | 'item'
  | 'run'
  | 'body'
  | 'headers'
  | 'query'
  | 'upstream'
  | 'schedule'
  | 'input'
  | 'secrets'
  | 'vars';
export const WORKFLOW_ROOTS: readonly Root[] = ['parameters', 'steps', 'item', 'run'];
const MACROS = new Set(['map', 'filter', 'all', 'exists', 'exists_one']);

const env = new Environment({
  unlistedVariablesAreDyn: true,
  homogeneousAggregateLiterals: false,
  limits: { maxAstNodes: 400, maxDepth: 32, maxListElements: 200, maxMapEntries: 200, maxCallArguments: 8 },
});

/** Why an expression was refused (definition time) or failed (run time). */
export class ExprError extends Error {
  constructor(
    message: string,
    readonly expression: string,
  ) {
    super(message);
  }
}

export interface Expr {
  source: string;
  run: ParseResult;
  /** Steps it reads (`steps.<name>…`). */
  steps: Set<string>;
  /** Roots it reads. */
  roots: Set<Root>;
}

function walk(node: unknown, visit: (n: ASTNode, inMacro: boolean) => void, inMacro = false): void {
  if (Array.isArray(node)) {
    for (const x of node) walk(x, visit, inMacro);
    return;
  }
  if (!node || typeof node !== 'object' || !('op' in node)) return;
  const n = node as ASTNode;
  visit(n, inMacro);
  const macro = n.op === 'rcall' && Array.isArray(n.args) && MACROS.has(String(n.args[0]));
  if (macro) {
    const args = n.args as unknown[];
    walk(args[1], visit, inMacro); // the receiver
    walk(args[2], visit, true); // the macro's variable and body
    return;
  }
  walk(n.args, visit, inMacro);
}

/** Compiles one expression (the text inside `${{ }}`) that may read `roots`; throws ExprError. */
export function compileExpr(source: string, roots: readonly Root[] = WORKFLOW_ROOTS): Expr {
  const allowed = new Set<string>(roots);
  let run: ParseResult;
  try {
    run = env.parse(source);
  } catch (e) {
    throw new ExprError(`does not parse: ${String((e as Error).message).split('\n')[0]}`, source);
  }
  const steps = new Set<string>();
  const found = new Set<Root>();
  const bound = new Set<string>();
  walk(run.ast, (n, inMacro) => {
    if (n.op === 'rcall' && Array.isArray(n.args) && MACROS.has(String(n.args[0]))) {
      if (inMacro) throw new ExprError(`nests ${String(n.args[0])}() inside another list macro`, source);
      const v = (n.args as unknown[])[2] as ASTNode[] | undefined;
      const id = v?.[0];
      if (id && id.op === 'id') bound.add(String(id.args));
    }
  });
  walk(run.ast, (n) => {
    if (n.op === 'id') {
      const name = String(n.args);
      if (bound.has(name)) return;
      if (!allowed.has(name))
        throw new ExprError(`reads "${name}", which is not ${[...allowed].join(', ')}`, source);
      found.add(name as Root);
    }
    if ((n.op === '.' || n.op === '[]' || n.op === '.?' || n.op === '[?]') && Array.isArray(n.args)) {
      const [obj, key] = n.args as [ASTNode, unknown];
      if (obj && obj.op === 'id' && obj.args === 'steps') {
        const name =
          typeof key === 'string'
            ? key
            : key && typeof key === 'object' && (key as ASTNode).op === 'value'
              ? String((key as ASTNode).args)
              : undefined;
        if (name === undefined) throw new ExprError('names a step by a computed value', source);
        steps.add(name);
      }
    }
  });
  return { source, run, steps, roots: found };
}

/** JSON → CEL values: integral numbers become ints (BigInt). */
function toCel(v: unknown): unknown {
  if (typeof v === 'number') return Number.isInteger(v) ? BigInt(v) : v;
  if (Array.isArray(v)) return v.map(toCel);
  if (v && typeof v === 'object') {
    const o: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
    for (const [k, x] of Object.entries(v)) o[k] = toCel(x);
    return o;
  }
  return v;
}

/** CEL values → JSON. */
function toJson(v: unknown, source: string): unknown {
  if (typeof v === 'bigint') {
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER))
      throw new ExprError(`gives an integer beyond ±2^53 (${v})`, source);
    return Number(v);
  }
  if (typeof v === 'number' && !Number.isFinite(v))
    throw new ExprError(`gives ${v}, which JSON cannot hold`, source);
  if (Array.isArray(v)) return v.map((x) => toJson(x, source));
  if (v instanceof Map) {
    const o: Record<string, unknown> = {};
    for (const [k, x] of v) o[String(k)] = toJson(x, source);
    return o;
  }
  if (v instanceof Uint8Array) return Buffer.from(v).toString('base64');
  if (v && typeof v === 'object') {
    if (typeof (v as { hasValue?: unknown }).hasValue === 'function') {
      const opt = v as { hasValue(): boolean; value(): unknown };
      return opt.hasValue() ? toJson(opt.value(), source) : null;
    }
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) o[k] = toJson(x, source);
    return o;
  }
  return v;
}

/** The data expressions read (JSON). */
export type ExprScope = Partial<Record<Root, unknown>>;

/** Evaluates a compiled expression over JSON data; throws ExprError. */
export function evalExpr(e: Expr, scope: ExprScope): unknown {
  const ctx: Record<string, unknown> = {};
  for (const r of e.roots) ctx[r] = toCel(scope[r] ?? null);
  let out: unknown;
  try {
    out = e.run(ctx);
  } catch (err) {
    throw new ExprError(`failed: ${String((err as Error).message).split('\n')[0]}`, e.source);
  }
  return toJson(out, e.source);
}

/** A JSON value with `${{ … }}` templates in its strings, compiled. */
export type Template =
  | { t: 'lit'; v: unknown }
  | { t: 'expr'; e: Expr }
  | { t: 'str'; parts: (string | Expr)[] }
  | { t: 'arr'; v: Template[] }
  | { t: 'obj'; v: [string, Template][] };

const OPEN = '${{';

/** Splits a string into literal parts and expressions; throws ExprError for an unclosed `${{`. */
function splitTemplate(s: string, roots: readonly Root[]): (string | Expr)[] {
  const parts: (string | Expr)[] = [];
  let i = 0;
  while (i < s.length) {
    const a = s.indexOf(OPEN, i);
    if (a < 0) {
      parts.push(s.slice(i));
      break;
    }
    if (a > i) parts.push(s.slice(i, a));
    const b = s.indexOf('}}', a + OPEN.length);
    if (b < 0) throw new ExprError('opens ${{ without a closing }}', s);
    const src = s.slice(a + OPEN.length, b).trim();
    if (src === '') throw new ExprError('is an empty ${{ }}', s);
    parts.push(compileExpr(src, roots));
    i = b + 2;
  }
  return parts;
}

/** Compiles the templates of a JSON value (a step's input, `when`, `for_each`, the outputs). */
export function compileTemplate(v: unknown, roots: readonly Root[] = WORKFLOW_ROOTS): Template {
  if (typeof v === 'string') {
    if (!v.includes(OPEN)) return { t: 'lit', v };
    const parts = splitTemplate(v, roots);
    // A value that is one whole expression keeps its JSON type.
    if (parts.length === 1 && typeof parts[0] !== 'string') return { t: 'expr', e: parts[0]! };
    return { t: 'str', parts };
  }
  if (Array.isArray(v)) return { t: 'arr', v: v.map((x) => compileTemplate(x, roots)) };
  if (v && typeof v === 'object')
    return { t: 'obj', v: Object.entries(v).map(([k, x]) => [k, compileTemplate(x, roots)]) };
  return { t: 'lit', v };
}

/** Every expression of a template. */
export function exprsOf(t: Template): Expr[] {
  switch (t.t) {
    case 'lit':
      return [];
    case 'expr':
      return [t.e];
    case 'str':
      return t.parts.filter((p): p is Expr => typeof p !== 'string');
    case 'arr':
      return t.v.flatMap(exprsOf);
    case 'obj':
      return t.v.flatMap(([, x]) => exprsOf(x));
  }
}

/** Renders a template over the data; throws ExprError. */
export function renderTemplate(t: Template, scope: ExprScope): unknown {
  switch (t.t) {
    case 'lit':
      return t.v;
    case 'expr':
      return evalExpr(t.e, scope);
    case 'str':
      return t.parts
        .map((p) => {
          if (typeof p === 'string') return p;
          const v = evalExpr(p, scope);
          return typeof v === 'string' ? v : JSON.stringify(v);
        })
        .join('');
    case 'arr':
      return t.v.map((x) => renderTemplate(x, scope));
    case 'obj': {
      const o: Record<string, unknown> = {};
      for (const [k, x] of t.v) o[k] = renderTemplate(x, scope);
      return o;
    }
  }
}

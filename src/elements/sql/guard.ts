import { thrown } from '../../core/errors.js';
import { loadModule, parseSync } from 'libpg-query';
import type { Db } from '../../db/types.js';
import { sqlError } from './errors.js';

/**
 * A statement allow-list over Postgres' own parser (libpg_query). It is the
 * second wall around a circle's SQL: the first is the circle role's
 * privileges. On PGlite — one superuser session — this wall is what stops
 * `RESET ROLE`, `SET SESSION AUTHORIZATION`, `COMMIT` (which would end the
 * `SET LOCAL ROLE` transaction) or a function body that does the same.
 */
const ALLOWED = new Set([
  'SelectStmt',
  'InsertStmt',
  'UpdateStmt',
  'DeleteStmt',
  'MergeStmt',
  'CreateStmt',
  'CreateTableAsStmt',
  'IndexStmt',
  'ViewStmt',
  'AlterTableStmt',
  'DropStmt',
  'TruncateStmt',
  'CreateSeqStmt',
  'AlterSeqStmt',
  'RenameStmt',
  'CommentStmt',
  'ExplainStmt',
  'CreateEnumStmt',
  'CompositeTypeStmt',
]);

/**
 * Built-ins that change identity, signal the platform, or touch other sessions —
 * and those that run SQL text of their own (`query_to_xml('select …')`,
 * `ts_stat('select …')`), which this guard would never see.
 */
const DENIED_FUNCTIONS = [
  /^set_config$/,
  /^pg_notify$/,
  /^pg_(try_)?advisory/,
  /^pg_(cancel|terminate)_backend$/,
  /^pg_reload_conf$/,
  /^pg_read_(binary_)?file$/,
  /^pg_ls_/,
  /^lo_(import|export)$/,
  /^dblink/,
  /^query_to_xml/,
  /^ts_stat$/,
];
/** Functions whose form with this many arguments runs SQL text (`ts_rewrite(tsquery, 'select …')`). */
const DENIED_FUNCTION_ARITY = new Map([['ts_rewrite', 2]]);

/**
 * What only waits: harmless where a statement can be interrupted (PostgreSQL:
 * statement_timeout, cancel), but on PGlite it holds the one session of every
 * circle until it ends.
 */
const STALL_FUNCTIONS = /^pg_sleep(_for|_until)?$/;

const WRITE_NODES = new Set([
  'InsertStmt',
  'UpdateStmt',
  'DeleteStmt',
  'MergeStmt',
  'IntoClause',
  'LockingClause',
]);
const WRITE_FUNCTIONS = new Set(['nextval', 'setval']);

let ready: Promise<void> | undefined;
/** The parser is WebAssembly; load it once before the first check. */
export function loadSqlParser(): Promise<void> {
  ready ??= loadModule();
  return ready;
}

export interface GuardOptions {
  /**
   * Can the database interrupt a running statement? PostgreSQL can
   * (statement_timeout, pg_cancel_backend); PGlite cannot — it runs one
   * session in WebAssembly in this process, so a statement there holds every
   * circle until it returns. Where it cannot, what can only stall is refused.
   */
  interruptible: boolean;
}

/** Whether a driver interrupts a running statement (anything but PostgreSQL is assumed not to). */
export function interruptibleDriver(kind: Db['kind']): boolean {
  return kind === 'pg';
}

export interface GuardedStatement {
  kind: string;
  params: number;
  readOnly: boolean;
  /** A plain SELECT can be read through a cursor, so the row cap never materialises more rows than it needs. */
  cursorable: boolean;
}

/**
 * A node of libpg_query's parse tree, as far as the guard reads it: every
 * field optional, everything else unknown (the tree is Postgres' own JSON).
 */
interface PgNode {
  number?: number;
  funcname?: { String?: { sval?: string } }[];
  args?: unknown[];
  recursive?: boolean;
  intoClause?: unknown;
  query?: unknown;
  options?: { DefElem?: { defname?: string } }[];
  [k: string]: unknown;
}

function visit(node: unknown, fn: (key: string, value: PgNode | undefined) => void): void {
  if (Array.isArray(node)) {
    for (const n of node) visit(n, fn);
  } else if (node !== null && typeof node === 'object') {
    for (const [k, v] of Object.entries(node)) {
      fn(k, v !== null && typeof v === 'object' ? (v as PgNode) : undefined);
      visit(v, fn);
    }
  }
}

/** Parses and checks one statement; throws a typed SQL_* error when it is not allowed. */
export function guardSql(query: string, opts: GuardOptions): GuardedStatement {
  let tree: { stmts?: { stmt?: unknown }[] };
  try {
    tree = parseSync(query);
  } catch (caught) {
    const e = thrown(caught);
    const pos = e?.sqlDetails?.cursorPosition;
    throw sqlError(
      'SQL_SYNTAX_ERROR',
      `Syntax error: ${e?.sqlDetails?.message ?? e?.message ?? 'unparseable query'}` +
        (typeof pos === 'number' ? ` (at character ${pos + 1})` : ''),
    );
  }
  const stmts = tree.stmts ?? [];
  if (stmts.length === 0) {
    throw sqlError('SQL_SYNTAX_ERROR', 'The query is empty.');
  }
  if (stmts.length > 1) {
    throw sqlError(
      'SQL_MULTIPLE_STATEMENTS',
      `The query holds ${stmts.length} statements; a sql element runs exactly one.`,
    );
  }
  // One statement node: { <Kind>Stmt: {...} }.
  const stmt = (stmts[0]!.stmt ?? {}) as Record<string, PgNode | undefined>;
  const kind = Object.keys(stmt)[0]!;
  const check = (k: string) => {
    if (!ALLOWED.has(k)) {
      throw sqlError(
        'SQL_STATEMENT_NOT_ALLOWED',
        `${k.replace(/Stmt$/, '')} statements are not allowed in a sql element.`,
      );
    }
  };
  check(kind);
  const inner = stmt[kind]?.query;
  if (inner && typeof inner === 'object' && Object.keys(inner).length === 1) check(Object.keys(inner)[0]!);

  let params = 0;
  let readOnly = kind === 'SelectStmt' || (kind === 'ExplainStmt' && !hasOption(stmt[kind], 'analyze'));
  visit(stmt, (key, value) => {
    if (key === 'ParamRef') params = Math.max(params, Number(value?.number ?? 0));
    if (WRITE_NODES.has(key)) readOnly = false;
    if (key === 'FuncCall') {
      const name: string = (value?.funcname ?? []).map((n) => n?.String?.sval ?? '').pop() ?? '';
      const lower = name.toLowerCase();
      if (
        DENIED_FUNCTIONS.some((re) => re.test(lower)) ||
        DENIED_FUNCTION_ARITY.get(lower) === (value?.args ?? []).length
      ) {
        throw sqlError('SQL_STATEMENT_NOT_ALLOWED', `The function ${name}() is not available to circle SQL.`);
      }
      if (!opts.interruptible && STALL_FUNCTIONS.test(lower)) {
        throw sqlError(
          'SQL_UNINTERRUPTIBLE',
          `${name}() only waits, and the embedded database (PGlite) cannot interrupt a statement: ` +
            'it would hold every circle until it ends.',
        );
      }
      if (WRITE_FUNCTIONS.has(lower)) readOnly = false;
    }
    if (!opts.interruptible && key === 'withClause' && value?.recursive === true) {
      throw sqlError(
        'SQL_UNINTERRUPTIBLE',
        'WITH RECURSIVE is refused on the embedded database (PGlite): it cannot interrupt a statement, ' +
          'and a recursive query has no bound Cairn can check, so it could hold every circle until it ends.',
      );
    }
    if (key === 'SelectStmt' && value?.intoClause) readOnly = false;
  });
  const cursorable = kind === 'SelectStmt' && !stmt[kind]?.intoClause && readOnly;
  return { kind, params, readOnly, cursorable };
}

function hasOption(explain: PgNode | undefined, name: string): boolean {
  return (explain?.options ?? []).some((o) => o?.DefElem?.defname === name);
}

/**
 * For retry-on-loss decisions: is re-running this query free of side effects?
 * (Side effects do not depend on the driver; whether it may run at all is
 * checked again when it executes.)
 */
export function isReadOnlyQuery(query: string): boolean {
  try {
    return guardSql(query, { interruptible: true }).readOnly;
  } catch {
    return false;
  }
}

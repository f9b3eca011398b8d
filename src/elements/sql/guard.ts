import { loadModule, parseSync } from 'libpg-query';
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

/** Built-ins that change identity, signal the platform, or touch other sessions. */
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
];

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

export interface GuardedStatement {
  kind: string;
  params: number;
  readOnly: boolean;
  /** A plain SELECT can be read through a cursor, so the row cap never materialises more rows than it needs. */
  cursorable: boolean;
}

function visit(node: unknown, fn: (key: string, value: any) => void): void {
  if (Array.isArray(node)) {
    for (const n of node) visit(n, fn);
  } else if (node !== null && typeof node === 'object') {
    for (const [k, v] of Object.entries(node)) {
      fn(k, v);
      visit(v, fn);
    }
  }
}

/** Parses and checks one statement; throws a typed SQL_* error when it is not allowed. */
export function guardSql(query: string): GuardedStatement {
  let tree: any;
  try {
    tree = parseSync(query);
  } catch (e: any) {
    const pos = e?.sqlDetails?.cursorPosition;
    throw sqlError(
      'SQL_SYNTAX_ERROR',
      `Syntax error: ${e?.sqlDetails?.message ?? e?.message ?? 'unparseable query'}` +
        (typeof pos === 'number' ? ` (at character ${pos + 1})` : ''),
    );
  }
  const stmts: any[] = tree.stmts ?? [];
  if (stmts.length === 0) {
    throw sqlError('SQL_SYNTAX_ERROR', 'The query is empty.');
  }
  if (stmts.length > 1) {
    throw sqlError(
      'SQL_MULTIPLE_STATEMENTS',
      `The query holds ${stmts.length} statements; a sql element runs exactly one.`,
    );
  }
  const stmt = stmts[0].stmt as Record<string, any>;
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
      const name: string = (value?.funcname ?? []).map((n: any) => n?.String?.sval ?? '').pop() ?? '';
      if (DENIED_FUNCTIONS.some((re) => re.test(name.toLowerCase()))) {
        throw sqlError('SQL_STATEMENT_NOT_ALLOWED', `The function ${name}() is not available to circle SQL.`);
      }
      if (WRITE_FUNCTIONS.has(name.toLowerCase())) readOnly = false;
    }
    if (key === 'SelectStmt' && value?.intoClause) readOnly = false;
  });
  const cursorable = kind === 'SelectStmt' && !stmt[kind].intoClause && readOnly;
  return { kind, params, readOnly, cursorable };
}

function hasOption(explain: any, name: string): boolean {
  return (explain?.options ?? []).some((o: any) => o?.DefElem?.defname === name);
}

/** For retry-on-loss decisions: is re-running this query free of side effects? */
export function isReadOnlyQuery(query: string): boolean {
  try {
    return guardSql(query).readOnly;
  } catch {
    return false;
  }
}

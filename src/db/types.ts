export interface QueryResult<T> {
  rows: T[];
  rowCount: number;
}

/** Hot statements, by text: the server driver prepares each once per connection (no re-planning per call). */
const PREPARED = new Map<string, string>();

/**
 * Marks a constant, hot SQL statement for a server-side prepared statement.
 * Only for fixed statement texts (never SQL built per request): every marked
 * text stays prepared on every connection of the pool.
 */
export function prepared(sql: string): string {
  if (!PREPARED.has(sql)) PREPARED.set(sql, `cairn_${PREPARED.size + 1}`);
  return sql;
}

/** The prepared statement's name for a marked statement text. */
export function preparedName(sql: string): string | undefined {
  return PREPARED.get(sql);
}

/** Anything that runs SQL: the pool itself or a transaction. Parameters are always `$n`. */
export interface Queryable {
  query<T = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<QueryResult<T>>;
  /** Run a multi-statement script without parameters (migrations only). */
  exec(sql: string): Promise<void>;
}

/** The identity a circle's own SQL runs under (see R-CIRCLE, R-SQL). */
export interface CircleIdentity {
  role: string;
  password: string;
  schema: string;
}

export interface CircleSessionOptions {
  /** statement_timeout for the transaction (ms). */
  statementTimeoutMs?: number;
  /** Aborting cancels the running statement where the driver can (pg: pg_cancel_backend). */
  signal?: AbortSignal;
}

/** The SET LOCAL lines that open a circle transaction (one round trip, no user input). */
export function circleSessionSql(id: CircleIdentity, opts: CircleSessionOptions, withRole: boolean): string {
  const lines = [`SET LOCAL search_path = ${ident(id.schema)}`];
  if (withRole) lines.unshift(`SET LOCAL ROLE ${ident(id.role)}`);
  if (opts.statementTimeoutMs !== undefined)
    lines.push(`SET LOCAL statement_timeout = ${Math.trunc(opts.statementTimeoutMs)}`);
  return lines.join(';\n');
}

/**
 * The thin database seam (DESIGN: "Embedded and distributed are one code path").
 * Two drivers implement it: PGlite (embedded) and pg (a PostgreSQL server).
 */
export interface Db extends Queryable {
  readonly kind: 'pglite' | 'pg';
  /** Runs `fn` in one transaction; rolls back if it throws. */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  /** Subscribes to NOTIFY on `channel`; returns the unsubscribe function. */
  listen(channel: string, cb: (payload: string) => void): Promise<() => Promise<void>>;
  /**
   * Runs `fn` in a transaction whose privileges are exactly the circle role's,
   * with search_path set to the circle schema. On pg the session *logs in* as
   * the role, so even `RESET ROLE` cannot leave it; on PGlite (one superuser
   * session) it is `SET LOCAL ROLE` and the caller must also apply the SQL guard.
   */
  asCircle<T>(
    identity: CircleIdentity,
    fn: (q: Queryable) => Promise<T>,
    opts?: CircleSessionOptions,
  ): Promise<T>;
  /** Whether a circle's session can escape `SET ROLE` by itself (true on PGlite). */
  readonly sharedSuperuserSession: boolean;
  close(): Promise<void>;
}

/** Quote an SQL identifier. Only used for names we generate (schemas, roles), never for input. */
export function ident(name: string): string {
  if (!/^[a-z_][a-z0-9_]*$/.test(name))
    throw new Error(`refusing to quote identifier ${JSON.stringify(name)}`);
  return '"' + name + '"';
}

/** Quote a string literal for the few statements that cannot take parameters (CREATE ROLE … PASSWORD). */
export function literal(value: string): string {
  if (!/^[A-Za-z0-9_-]*$/.test(value)) throw new Error('refusing to quote literal with special characters');
  return "'" + value + "'";
}

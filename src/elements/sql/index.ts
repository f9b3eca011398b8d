import { z } from 'zod';
import type { Db, Queryable } from '../../db/types.js';
import { defineOp, defineType, executorFor, type OperationDecl } from '../types.js';
import { sqlInvokeInput, sqlSpec } from './spec.js';
import { SQL_ERRORS } from './errors.js';
import { guardSql, interruptibleDriver, isReadOnlyQuery } from './guard.js';
import { invokeSql } from './executor.js';

/**
 * Whether the database behind `q` can interrupt a running statement. The pool
 * says so by its kind; a transaction handle (an update) does not carry it, and
 * there PGlite names itself in version().
 */
async function interruptible(q: Queryable): Promise<boolean> {
  const kind = (q as Partial<Db>).kind;
  if (kind) return interruptibleDriver(kind);
  const r = await q.query<{ v: string }>('SELECT version() AS v');
  return !/\bPGlite\b/.test(r.rows[0]?.v ?? '');
}

const invoke = {
  name: 'invoke',
  method: 'POST',
  path: 'invoke',
  auth: 'execute',
  summary: 'Run the query with params',
  description:
    'Body `{"params": [...]}` binds $1, $2, …. Answers `{"rows": [...], "row_count": n}` as the run output.',
  input: sqlInvokeInput,
  output: z.object({ rows: z.array(z.record(z.string(), z.unknown())), row_count: z.number().int() }),
  createsRun: true,
  price: 1_000,
  retryOnLoss: (spec: { query: string }) => isReadOnlyQuery(spec.query),
  sideEffects: (spec: { query: string }) => !isReadOnlyQuery(spec.query),
  maxAttempts: 3,
} satisfies OperationDecl<typeof sqlInvokeInput>;

export const sqlType = defineType({
  type: 'sql',
  category: 'data',
  title: 'SQL query',
  description:
    "Runs one parameterized SQL statement in the circle's own Postgres schema, as the circle's own role. " +
    'Queries, DML and DDL on the circle schema work; nothing outside it is reachable. ' +
    'On the embedded database (PGlite, no DATABASE_URL) a running statement cannot be interrupted, so ' +
    'pg_sleep and WITH RECURSIVE are refused there (SQL_UNINTERRUPTIBLE), and any other long statement ' +
    '(a large cross join or generate_series, a slow regular expression) holds every circle until it ends; ' +
    'spec.timeout_ms only rolls it back afterwards. Run untrusted or heavy SQL on PostgreSQL.',
  spec: sqlSpec,
  operations: [defineOp(invoke)],
  errors: SQL_ERRORS,
  rules: [],
  // What the guard refuses on every driver, when the spec is parsed…
  validateSpec(spec) {
    guardSql(spec.query, { interruptible: true });
  },
  // …and what it refuses only where a statement cannot be interrupted (PGlite).
  // The executor runs the guard again against the driver that executes it.
  async validateInCircle(db, _circle, spec) {
    if (!(await interruptible(db))) guardSql(spec.query, { interruptible: false });
  },
  executors: { invoke: executorFor(invoke, invokeSql) },
  telemetry: { prefix: 'sql' },
  timeoutMs: (spec) => spec.timeout_ms,
});
export { sqlSpec };

import type { ErrorCodeDecl } from '../types.js';
import { declaredError } from '../errors.js';

export const SQL_ERRORS: readonly ErrorCodeDecl[] = [
  {
    code: 'SQL_SYNTAX_ERROR',
    class: 'validation',
    retryable: false,
    description: 'The query does not parse.',
    suggestion: 'Fix the SQL near the position given; try it in psql against a scratch database first.',
  },
  {
    code: 'SQL_MULTIPLE_STATEMENTS',
    class: 'validation',
    retryable: false,
    description: 'spec.query holds more than one statement.',
    suggestion: 'Keep one statement per sql element, or combine the work with a CTE (WITH …).',
  },
  {
    code: 'SQL_STATEMENT_NOT_ALLOWED',
    class: 'permission',
    retryable: false,
    description: 'A session, role, transaction, function or privilege statement, or a denied built-in.',
    suggestion:
      'Use queries, DML and DDL on tables, views, indexes and sequences of your circle; Cairn manages roles, sessions and transactions.',
  },
  {
    code: 'SQL_UNINTERRUPTIBLE',
    class: 'validation',
    retryable: false,
    description:
      'On the embedded database (PGlite), which cannot interrupt a running statement: a call of pg_sleep, pg_sleep_for or pg_sleep_until, or a WITH RECURSIVE query.',
    suggestion:
      'Drop the wait; replace WITH RECURSIVE by generate_series with constant bounds; or run Cairn on PostgreSQL (DATABASE_URL), where spec.timeout_ms interrupts a statement and both are allowed.',
  },
  {
    code: 'SQL_PARAMS_MISMATCH',
    class: 'validation',
    retryable: false,
    description: 'The number of params does not match the $n placeholders.',
    suggestion: 'Send {"params": [...]} with one value per $1, $2, … placeholder in the query.',
  },
  {
    code: 'SQL_UNDEFINED_OBJECT',
    class: 'validation',
    retryable: false,
    description: 'A table, column, function or type the query names does not exist in the circle schema.',
    suggestion:
      "Create the object first, or check the name's spelling; unqualified names resolve to your circle's schema.",
  },
  {
    code: 'SQL_DUPLICATE_OBJECT',
    class: 'conflict',
    retryable: false,
    description: 'The object the statement creates already exists.',
    suggestion: 'Use CREATE … IF NOT EXISTS, or drop the old object first.',
  },
  {
    code: 'SQL_PERMISSION_DENIED',
    class: 'permission',
    retryable: false,
    description: "The statement touches something outside the circle's own schema.",
    suggestion:
      "A circle's SQL can only use its own schema; move the data into your circle or call an element that owns it.",
  },
  {
    code: 'SQL_DATA_ERROR',
    class: 'validation',
    retryable: false,
    description: 'A value is invalid for its type (bad cast, division by zero, out of range).',
    suggestion: 'Check the params and casts in the query; the message names the value that failed.',
  },
  {
    code: 'SQL_CONSTRAINT_VIOLATION',
    class: 'conflict',
    retryable: false,
    description: 'A unique, foreign-key, not-null or check constraint refused the write.',
    suggestion: 'Change the data so the constraint holds, or use INSERT … ON CONFLICT.',
  },
  {
    code: 'SQL_CONFLICT',
    class: 'conflict',
    retryable: true,
    description: 'A serialization failure, deadlock or lock timeout.',
    suggestion: 'Retry the run; concurrent writers touched the same rows.',
  },
  {
    code: 'SQL_TIMEOUT',
    class: 'timeout',
    retryable: true,
    description: 'The statement ran longer than spec.timeout_ms.',
    suggestion: 'Add an index or a narrower WHERE clause, or raise spec.timeout_ms (at most 300000).',
  },
  {
    code: 'SQL_TOO_MANY_ROWS',
    class: 'validation',
    retryable: false,
    description: 'The query returned more rows than spec.max_rows.',
    suggestion: 'Add LIMIT or a narrower WHERE clause, or raise spec.max_rows (at most 100000).',
  },
  {
    code: 'SQL_EXECUTION_FAILED',
    class: 'internal',
    retryable: false,
    description: 'Postgres refused the statement for another reason.',
    suggestion: 'Read the message and SQLSTATE in details; fix the statement and invoke again.',
  },
];

export function sqlError(code: string, message: string, details?: unknown) {
  return declaredError(SQL_ERRORS, code, message, details);
}

/** SQLSTATE → our code. Classes first, then the specific states that matter. */
export function codeForSqlState(state: string | undefined): string {
  if (!state) return 'SQL_EXECUTION_FAILED';
  switch (state) {
    case '42601':
      return 'SQL_SYNTAX_ERROR';
    case '42501':
      return 'SQL_PERMISSION_DENIED';
    case '57014':
      return 'SQL_TIMEOUT';
    case '42P01':
    case '42703':
    case '42883':
    case '42704':
    case '3F000':
    case '42P02':
      return 'SQL_UNDEFINED_OBJECT';
    case '42P07':
    case '42710':
    case '42P06':
    case '42723':
      return 'SQL_DUPLICATE_OBJECT';
    case '40001':
    case '40P01':
    case '55P03':
      return 'SQL_CONFLICT';
  }
  if (state.startsWith('22')) return 'SQL_DATA_ERROR';
  if (state.startsWith('23')) return 'SQL_CONSTRAINT_VIOLATION';
  return 'SQL_EXECUTION_FAILED';
}

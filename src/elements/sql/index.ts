import { z } from 'zod';
import type { ElementTypeDecl } from '../types.js';
import { SQL_ERRORS } from './errors.js';
import { guardSql, isReadOnlyQuery } from './guard.js';
import { invokeSql } from './executor.js';

const jsonValue = z.json();

export const sqlSpec = z
  .object({
    query: z.string().trim().min(1, 'spec.query is required'),
    params: z.array(jsonValue).max(100).optional().describe('Default params when an invoke sends none'),
    timeout_ms: z.number().int().min(100).max(300_000).default(5_000).describe('Statement timeout'),
    max_rows: z.number().int().min(1).max(100_000).default(1_000).describe('Most rows a run may return'),
  })
  .strict();

export const sqlType: ElementTypeDecl = {
  type: 'sql',
  category: 'data',
  title: 'SQL query',
  description:
    "Runs one parameterized SQL statement in the circle's own Postgres schema, as the circle's own role. " +
    'Queries, DML and DDL on the circle schema work; nothing outside it is reachable.',
  spec: sqlSpec,
  operations: [
    {
      name: 'invoke',
      method: 'POST',
      path: 'invoke',
      auth: 'execute',
      summary: 'Run the query with params',
      description:
        'Body `{"params": [...]}` binds $1, $2, …. Answers `{"rows": [...], "row_count": n}` as the run output.',
      input: z.object({ params: z.array(jsonValue).max(100).optional() }).strict(),
      output: z.object({ rows: z.array(z.record(z.string(), z.unknown())), row_count: z.number().int() }),
      createsRun: true,
      price: 1_000,
      retryOnLoss: (spec: { query: string }) => isReadOnlyQuery(spec.query),
      maxAttempts: 3,
    },
  ],
  errors: SQL_ERRORS,
  rules: [],
  validateSpec: (spec: { query: string }) => {
    guardSql(spec.query);
  },
  executors: { invoke: invokeSql },
  telemetry: { prefix: 'sql' },
  timeoutMs: (spec: { timeout_ms: number }) => spec.timeout_ms,
};

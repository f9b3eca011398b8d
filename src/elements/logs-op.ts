import { z } from 'zod';
import { qint } from '../core/zod.js';
import { readLogs } from '../store/logs.js';
import { defineOp, type OperationDecl } from './types.js';
import { runOfElement } from './base-ops.js';

/** The `logs` op every code action declares: stdout/stderr lines of its runs, with timestamps. */
export const LOGS_OP: OperationDecl = defineOp({
  name: 'logs',
  method: 'GET',
  path: 'logs',
  auth: 'read',
  summary: 'Fetch stdout/stderr lines of recent runs (filter by run_id; tail N lines; since a time)',
  input: z
    .object({
      run_id: z.string().optional(),
      tail: qint(1, 10_000).optional(),
      since: z.iso.datetime({ offset: true }).optional(),
    })
    .strict(),
  handler: async (ctx) => {
    const { run_id, tail, since } = ctx.input as { run_id?: string; tail?: number; since?: string };
    if (run_id !== undefined) await runOfElement(ctx, run_id);
    return { lines: await readLogs(ctx.db, { runId: run_id, elementId: ctx.element.id, tail, since }) };
  },
});

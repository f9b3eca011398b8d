import { z } from 'zod';
import { qbool, qint } from '../core/zod.js';
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
      follow: qbool
        .optional()
        .describe(
          "1: answer with a live stream (Server-Sent Events) of `log` events: the run's lines from its start (with run_id), or every new line of the element's runs; `status` events tell when a run ends",
        ),
    })
    .strict(),
  handler: async (ctx) => {
    const { run_id, tail, since, follow } = ctx.input as {
      run_id?: string;
      tail?: number;
      since?: string;
      follow?: boolean;
    };
    if (run_id !== undefined) await runOfElement(ctx, run_id);
    if (follow) return ctx.streamEvents({ runId: run_id, types: ['log', 'status'] });
    return { lines: await readLogs(ctx.db, { runId: run_id, elementId: ctx.element.id, tail, since }) };
  },
});

import { z } from 'zod';
import { errors } from '../core/errors.js';
import { isUuid } from '../core/ids.js';
import { qint } from '../core/zod.js';
import { readLogs } from '../store/logs.js';
import { getRun } from '../store/runs.js';
import type { OperationDecl } from './types.js';

/** The `logs` op every code action declares: stdout/stderr lines of its runs, with timestamps. */
export const LOGS_OP: OperationDecl = {
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
    if (run_id !== undefined) {
      const run = isUuid(run_id) ? await getRun(ctx.db, run_id) : undefined;
      if (!run || run.element_id !== ctx.element.id) {
        throw errors.notFound(
          'RUN_NOT_FOUND',
          `No run ${run_id} of element "${ctx.element.slug}".`,
          'List runs with GET …/ops/runs.',
        );
      }
    }
    return { lines: await readLogs(ctx.db, { runId: run_id, elementId: ctx.element.id, tail, since }) };
  },
};

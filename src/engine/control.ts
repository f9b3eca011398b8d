import { errors } from '../core/errors.js';
import type { Db } from '../db/types.js';
import { cancelRun, getRun, type RunRow } from '../store/runs.js';

/** Cancel (R-CONTROL): queued, running or paused → cancelled; the worker is told through NOTIFY. */
export async function cancel(db: Db, runId: string, actor: string, reason: string | null): Promise<RunRow> {
  const row = await cancelRun(db, runId, actor, reason);
  if (row) return row;
  const run = await getRun(db, runId);
  if (!run) throw errors.notFound('RUN_NOT_FOUND', `No run ${runId}.`, 'Check the run id.');
  throw errors.conflict(
    'RUN_ALREADY_FINISHED',
    `Run ${runId} already ended as ${run.status}; it cannot be cancelled.`,
    'Only queued, running or paused runs can be cancelled. Use rerun to start it again.',
  );
}

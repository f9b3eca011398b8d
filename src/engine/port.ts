import type { Db } from '../db/types.js';
import type { EnginePort, StartRequest, Started } from '../elements/types.js';
import { submitBatch } from './batch-submit.js';
import { cancel } from './control.js';
import { triggerWorkflow } from './workflow-submit.js';

/** The engine as element types reach it, on their op context (they never import src/engine). */
export function enginePort(db: Db, start: (req: StartRequest) => Promise<Started>): EnginePort {
  return {
    submitBatch: (req) => submitBatch(db, req),
    triggerWorkflow: (req) => triggerWorkflow(db, req),
    cancel: (runId, actor, reason) => cancel(db, runId, actor, reason),
    start,
  };
}

/**
 * Starting a trigger's target (R-TRIGGERS): a schedule's occurrence, a webhook delivery, an
 * upstream handoff each start a run of an element's op, like a request to
 * `/api/{circle}/{slug}/ops/{op}` would, with their own trigger and an idempotency key that
 * makes the start happen once however often it is asked.
 */
import { CairnError, errors } from '../core/errors.js';
import { parseInput } from '../core/zod.js';
import type { Db } from '../db/types.js';
import { getType, operationsOf, typeLookup } from '../elements/registry.js';
import type { EnginePort, StartRequest, Started } from '../elements/types.js';
import type { Sandbox } from '../sandbox/runner.js';
import { getElement } from '../store/elements.js';
import { submitRun } from './submit.js';

export interface StartEnv {
  db: Db;
  sandbox: Sandbox;
  snapshotExtra: Record<string, unknown>;
  port: () => EnginePort;
  workerId: string | null;
  /** Tell this process's worker a run was queued. */
  kick(): void;
}

export function targetGone(element: string, op: string): CairnError {
  return errors.notFound(
    'TARGET_NOT_FOUND',
    `The target ${element}.${op} does not exist (any more) or starts no run.`,
    'Update the trigger to target an element and op that starts a run.',
  );
}

export async function startTarget(env: StartEnv, req: StartRequest): Promise<Started> {
  const { db } = env;
  const { circle } = req;
  const element = await getElement(db, circle.id, req.target.element);
  if (!element) throw targetGone(req.target.element, req.target.op);
  const type = getType(element.element_type);
  const op = operationsOf(type).find((o) => o.name === req.target.op && (o.createsRun || o.startsRun));
  if (!op) throw targetGone(req.target.element, req.target.op);
  if (op.createsRun) {
    const { run, created } = await submitRun(
      db,
      {
        circle,
        element,
        type,
        op,
        input: req.input,
        trigger: req.trigger,
        idempotencyKey: req.idempotencyKey,
        fresh: req.fresh,
      },
      env.snapshotExtra,
    );
    env.kick();
    return { run_id: run.id, status: run.status, created };
  }
  const input = parseInput(
    op.input,
    req.input,
    `The input does not match ${type.type}.${op.name}`,
    `GET /api/${circle.slug}/${element.slug}/ops/schema shows the input schema.`,
  );
  const answer = (await op.handler!({
    db,
    circle,
    element,
    type,
    input,
    params: {},
    actor: req.trigger.actor,
    trigger: req.trigger,
    baseUrl: '',
    workerId: env.workerId,
    engine: env.port(),
    sandbox: env.sandbox,
    types: typeLookup,
    snapshotExtra: env.snapshotExtra,
    idempotencyKey: req.idempotencyKey,
    setStatus: () => undefined,
    setHeader: () => undefined,
    // A trigger starts runs; it never answers with a stream.
    streamEvents: () => Promise.reject(new Error('a trigger cannot stream events')),
  })) as { run_id?: unknown; status?: unknown };
  env.kick();
  if (typeof answer?.run_id !== 'string') throw targetGone(req.target.element, req.target.op);
  return { run_id: answer.run_id, status: String(answer.status ?? 'queued') };
}

import { CairnError, errors } from '../core/errors.js';
import { parseInput } from '../core/zod.js';
import { isPlainObject } from '../core/json.js';
import type { ElementTypeDecl, HttpMethod, OperationDecl } from '../elements/types.js';
import { getType, resolveOperation, typeLookup } from '../elements/registry.js';
import { elementNotFound } from '../elements/service.js';
import { getElement, type ElementRow } from '../store/elements.js';
import { findByIdempotencyKey, toRunView, type RunRow } from '../store/runs.js';
import { actorOf, authorize } from './auth.js';
import { baseUrlOf, requestTrigger } from './context.js';
import { unwrapEnvelope } from './envelope.js';
import type { RouteCtx } from './route.js';
import { idempotencyKeyOf, idempotent } from './idempotency.js';
import { answerWithEvents, lastEventId } from './live-routes.js';
import { START } from '../store/live.js';

type Mode = 'live' | 'dry_run' | 'smoke_test';

/** The base ops that change an element's definition or state. */
const DEFINITION_OPS = new Set(['update', 'restore', 'enable', 'disable', 'delete']);

/** `?mode=`: live (the default), dry_run, or (batch runs) smoke_test; anything else is a typed 400. */
/** The element-op route's query string: field by field, untyped (each op's own schema parses it). */
function queryOf(ctx: RouteCtx): Record<string, unknown> {
  return (ctx.query ?? {}) as Record<string, unknown>;
}

function modeOf<M extends Mode>(ctx: RouteCtx, allowed: readonly M[]): M | 'live' {
  const m: unknown = queryOf(ctx).mode;
  if (m === undefined || m === '') return 'live';
  if (!(allowed as readonly unknown[]).includes(m))
    throw new CairnError({
      code: 'INVALID_MODE',
      class: 'validation',
      message: `Unknown mode ${JSON.stringify(m)} for this operation.`,
      details: { allowed },
      suggestion:
        'Use ?mode=dry_run to validate and estimate without executing or charging, or leave mode out to run it.',
    });
  return m as M;
}

/** `?budget=<micro-credits>&on_budget_exceeded=flag|stop` of a run-creating op (typed 400 otherwise). */
export function budgetOf(ctx: RouteCtx): { budget?: number; budgetPolicy?: 'flag' | 'stop' } {
  const q = queryOf(ctx);
  const out: { budget?: number; budgetPolicy?: 'flag' | 'stop' } = {};
  if (q.budget !== undefined) {
    const n = Number(q.budget);
    if (!Number.isSafeInteger(n) || n < 0)
      throw errors.invalidInput(
        `budget must be a whole number of micro-credits ≥ 0, not ${JSON.stringify(q.budget)}.`,
        { field: 'budget' },
        'Send ?budget=<micro-credits> (1 credit = 1,000,000).',
      );
    out.budget = n;
  }
  if (q.on_budget_exceeded !== undefined) {
    if (q.on_budget_exceeded !== 'flag' && q.on_budget_exceeded !== 'stop')
      throw errors.invalidInput(
        'on_budget_exceeded is flag or stop.',
        { field: 'on_budget_exceeded' },
        'Send ?on_budget_exceeded=stop (the default) or flag.',
      );
    out.budgetPolicy = q.on_budget_exceeded;
  }
  return out;
}

function wantsAsync(ctx: RouteCtx): boolean {
  const prefer = String(ctx.req.headers.prefer ?? '');
  const q = queryOf(ctx).async;
  return /\brespond-async\b/i.test(prefer) || q === '1' || q === 'true';
}

/** The invoke answer of SPEC §7, from a terminal run. */
export function invokeAnswer(run: RunRow, baseUrl: string) {
  const v = toRunView(run, '', baseUrl);
  return {
    run_id: run.id,
    status: run.status,
    output: run.output ?? null,
    error: run.error ?? null,
    duration_ms: run.duration_ms,
    credits_used: run.credits_used,
    run_url: v.run_url,
    web_url: v.web_url,
  };
}

/**
 * `/api/{circle}/{slug}/ops/{path}`: resolves the element, finds the op its
 * type declares at that path and method, checks the op's auth level,
 * validates the input, then either answers directly or creates a run.
 */
export async function dispatchElementOp(ctx: RouteCtx, method: HttpMethod): Promise<unknown> {
  const { deps, circle } = ctx;
  const slug = String(ctx.params.slug);
  const path = String(ctx.params['*'] ?? '').replace(/\/+$/, '');
  // Circle membership was checked first (app.ts context): another circle's token learns nothing about elements.
  const element = await getElement(deps.db, circle!.id, slug);
  if (!element) throw elementNotFound(slug);
  const type = getType(element.element_type);
  const { op, params } = resolveOperation(type, method, path);
  authorize(ctx.principal!, circle, op.auth);
  // Changing the definition of a type that needs more than write (a policy, a trigger) needs that role.
  if (type.writeAuth && DEFINITION_OPS.has(op.name)) authorize(ctx.principal!, circle, type.writeAuth);
  const actor = actorOf(ctx.principal!);

  if (op.createsRun) {
    const key = idempotencyKeyOf(ctx);
    const submit = () => createRun(ctx, element, type, op, actor);
    // Replayed while the first is still waiting for its run: answer with that run (202).
    const inFlight = async () => {
      const run = key ? await findByIdempotencyKey(deps.db, circle!.id, key) : undefined;
      return run ? accepted(ctx, run.id, run.status) : undefined;
    };
    return idempotent(ctx, circle!.id, `${element.slug}:${op.name}`, submit, inFlight);
  }
  return answerOp(ctx, method, element, type, op, params, actor);
}

/** A run-creating op: submit (claimed at once when this process has a free slot), then wait or answer 202. */
async function createRun(
  ctx: RouteCtx,
  element: ElementRow,
  type: ElementTypeDecl,
  op: OperationDecl,
  actor: string,
): Promise<unknown> {
  const { deps, circle } = ctx;
  const outcome = await deps.engine.invoke(
    {
      circle: circle!,
      element,
      type,
      op,
      input: unwrapEnvelope(ctx.body === undefined ? {} : ctx.body),
      trigger: requestTrigger(ctx.req.headers, actor, ctx.principal!.role),
      idempotencyKey: idempotencyKeyOf(ctx),
      mode: modeOf(ctx, ['live', 'dry_run'] as const),
      ...budgetOf(ctx),
    },
    { waitMs: deps.config.syncWaitMs, async: wantsAsync(ctx) },
  );
  const { run } = outcome;
  if (outcome.state === 'finished') return invokeAnswer(run, baseUrlOf(deps));
  return accepted(ctx, run.id, 'queued');
}

/** 202: the run is queued or running; the answer (and Location) points at it. */
function accepted(ctx: RouteCtx, runId: string, status: string) {
  ctx.reply.code(202).header('Location', `/api/runs/${runId}`);
  return { run_id: runId, status, run_url: `/api/runs/${runId}` };
}

/** An op that answers directly (get, update, rows, a column run …). */
async function answerOp(
  ctx: RouteCtx,
  method: HttpMethod,
  element: ElementRow,
  type: ElementTypeDecl,
  op: OperationDecl,
  params: Record<string, string>,
  actor: string,
): Promise<unknown> {
  const { deps, circle } = ctx;

  let raw: unknown =
    method === 'GET' || method === 'DELETE' ? (ctx.query ?? {}) : ctx.body === undefined ? {} : ctx.body;
  // ?mode= is never ignored: an unknown mode is a 400, and a known one is the op's own `mode` (a column
  // run's dry_run); an op without a mode refuses it as an unknown field.
  if (method === 'POST' && queryOf(ctx).mode !== undefined) {
    const mode = modeOf(ctx, ['live', 'dry_run', 'smoke_test'] as const);
    if (isPlainObject(raw) && raw.mode === undefined) raw = { ...raw, mode };
  }
  const input = parseInput(
    op.input,
    raw,
    `Invalid input for ${op.name}`,
    `GET /openapi.json documents ${op.name}; ${op.summary}.`,
  );
  if (!op.handler) {
    throw new CairnError({
      code: 'OPERATION_NOT_IMPLEMENTED',
      class: 'internal',
      message: `Operation ${op.name} of ${type.type} has no handler.`,
      suggestion: 'Report this; the element type declares an operation it does not implement.',
    });
  }
  const call = () =>
    op.handler!({
      db: deps.db,
      circle: circle!,
      element,
      type,
      input,
      params,
      actor,
      // Only a request that may start runs is checked for the trigger it claims.
      trigger:
        method === 'GET'
          ? { type: 'api', source: null, actor }
          : requestTrigger(ctx.req.headers, actor, ctx.principal!.role),
      baseUrl: baseUrlOf(deps),
      workerId: deps.engine.worker?.id ?? null,
      engine: deps.engine.port,
      sandbox: deps.engine.sandbox,
      types: typeLookup,
      snapshotExtra: deps.snapshotExtra,
      idempotencyKey: idempotencyKeyOf(ctx),
      setStatus: (code) => void ctx.reply.code(code),
      setHeader: (name, value) => void ctx.reply.header(name, value),
      streamEvents: (f) => {
        const types = new Set(f.types);
        return answerWithEvents(ctx, circle!.id, lastEventId(ctx, f.runId ? START : undefined), {
          runId: f.runId,
          accepts: (row) => types.has(row.type) && row.element_id === element.id,
        });
      },
    });
  if (op.status) ctx.reply.code(op.status); // the default; the handler may answer otherwise
  // A state-changing op replayed with the same Idempotency-Key answers the first answer, with no second effect.
  if (method === 'GET') return call();
  return idempotent(ctx, circle!.id, `${element.slug}:${op.name}:${JSON.stringify(params)}`, call);
}

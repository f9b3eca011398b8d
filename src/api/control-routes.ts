/**
 * Run control (R-CONTROL), provider summaries and failures, and the wallet
 * (R-LEDGER), declared as data like the other platform routes. Every
 * state-changing request honours an Idempotency-Key: a replay answers what
 * the first request answered, with no second effect.
 */
import { z } from 'zod';
import { isUuid } from '../core/ids.js';
import { errors } from '../core/errors.js';
import { qint } from '../core/zod.js';
import { ITEM_STATUSES, type Role } from '../core/status.js';
import { getCircleById, type CircleRow } from '../store/circles.js';
import { getRun, listItems, toRunView, type RunRow } from '../store/runs.js';
import {
  GRANT_CATEGORIES,
  getWallet,
  grant,
  listGrants,
  listTransfers,
  runLedger,
  setSpendLimit,
} from '../store/ledger.js';
import { listFailures, providerSummary } from '../store/summary.js';
import { pause, resume, retryFailedItems, rerun } from '../engine/control.js';
import { replay } from '../engine/replay.js';
import { actorOf, authorize } from './auth.js';
import { baseUrlOf } from './context.js';
import { idempotencyKeyOf } from './idempotency.js';
import { defineRoute, type RouteCtx, type RouteDef } from './route.js';

/** Loads a run the caller may see. Another circle's run answers 404, so its existence does not leak. */
export async function visibleRun(ctx: RouteCtx, need: Role): Promise<{ run: RunRow; circle: CircleRow }> {
  const id = String(ctx.params.id);
  const notFound = errors.notFound(
    'RUN_NOT_FOUND',
    `No run ${id}.`,
    'Check the run id; GET /api/{circle}/runs lists runs.',
  );
  if (!isUuid(id)) throw notFound;
  const run = await getRun(ctx.deps.db, id);
  if (!run) throw notFound;
  const p = ctx.principal!;
  if (!p.instanceAdmin && p.circleId !== run.circle_id) throw notFound;
  const circle = await getCircleById(ctx.deps.db, run.circle_id);
  authorize(p, circle, need);
  return { run, circle: circle! };
}

function controlRoute(
  action: 'pause' | 'resume' | 'retry-failed' | 'rerun',
  summary: string,
  status = 200,
): RouteDef {
  return defineRoute({
    method: 'POST',
    url: `/api/runs/:id/${action}`,
    auth: 'token',
    tag: 'runs',
    summary,
    body:
      action === 'retry-failed'
        ? z
            .object({
              definition: z
                .enum(['pinned', 'latest'])
                .default('pinned')
                .describe(
                  'pinned: the definition the run was created with (the default); latest: the element as it is now',
                ),
            })
            .strict()
        : z.object({}).strict(),
    status,
    handler: async (ctx) => {
      const { run, circle } = await visibleRun(ctx, 'execute');
      const actor = actorOf(ctx.principal!);
      const base = baseUrlOf(ctx.deps);
      const view = (r: RunRow) => toRunView(r, circle.slug, base);
      // Idempotency-Key: app.ts wraps every state-changing route in the one mechanism (idempotency.ts).
      const db = ctx.deps.db;
      if (action === 'pause') return view(await pause(db, run.id, actor));
      if (action === 'resume') {
        const r = view(await resume(db, run.id, actor));
        ctx.deps.engine.kick();
        return r;
      }
      if (action === 'retry-failed') {
        const r = await retryFailedItems(db, run.id, actor, circle.slug, {
          definition: (ctx.body as { definition?: 'pinned' | 'latest' }).definition ?? 'pinned',
          role: ctx.principal!.role,
        });
        ctx.deps.engine.kick();
        return { retried: r.retried, message: r.message, run: view(r.run) };
      }
      const next = await rerun(
        db,
        run.id,
        actor,
        circle,
        ctx.deps.snapshotExtra,
        idempotencyKeyOf(ctx),
        ctx.principal!.role,
      );
      ctx.deps.engine.kick();
      ctx.reply.header('Location', `/api/runs/${next.id}`);
      return view(next);
    },
  });
}

const grantBody = z
  .object({
    amount: z.number().describe('Micro-credits (1 credit = 1,000,000)'),
    category: z.enum(GRANT_CATEGORIES).default('paid'),
    expires_at: z.iso.datetime({ offset: true }).optional(),
    note: z.string().max(500).optional(),
  })
  .strict();

export const CONTROL_ROUTES: RouteDef[] = [
  controlRoute('pause', 'Pause a queued or running run: no new item starts, running ones finish'),
  controlRoute('resume', 'Resume a paused run'),
  controlRoute('retry-failed', 'Run only the failed items again, in the same run'),
  controlRoute('rerun', 'Start a new run with the same inputs', 201),
  defineRoute({
    method: 'POST',
    url: '/api/runs/:id/replay',
    auth: 'token',
    tag: 'runs',
    summary:
      'Replay a finished run: a new run (trigger replay) re-executing its recorded input with the definitions of its snapshot, gated by policy (strict refuses to repeat side effects unless a policy permits it)',
    status: 202,
    body: z
      .object({
        policy: z
          .enum(['strict', 'permissive'])
          .default('strict')
          .describe('strict: refuse to repeat a side effect unless a policy explicitly permits the replay'),
        from_task: z
          .string()
          .min(1)
          .max(200)
          .optional()
          .describe(
            'A workflow run: re-execute from this step on, reusing the recorded outputs of the steps before it',
          ),
      })
      .strict(),
    handler: async (ctx) => {
      const { run, circle } = await visibleRun(ctx, 'execute');
      const body = ctx.body as { policy: 'strict' | 'permissive'; from_task?: string };
      const r = await replay(ctx.deps.db, {
        runId: run.id,
        policy: body.policy,
        fromTask: body.from_task,
        actor: actorOf(ctx.principal!),
        role: ctx.principal!.role,
        circle,
        snapshotExtra: ctx.deps.snapshotExtra,
        idempotencyKey: idempotencyKeyOf(ctx),
      });
      ctx.deps.engine.kick();
      ctx.reply.header('Location', `/api/runs/${r.run.id}`);
      return {
        run_id: r.run.id,
        status: r.run.status,
        replay_of: run.id,
        side_effect_tasks: r.side_effect_tasks,
        reused_tasks: r.reused_tasks,
        run_url: `/api/runs/${r.run.id}`,
      };
    },
  }),
  defineRoute({
    method: 'GET',
    url: '/api/runs/:id/items',
    auth: 'token',
    tag: 'runs',
    summary: "The run's items in row order, with their evidence (filter: status; paging: after, limit)",
    query: z
      .object({
        status: z.enum(ITEM_STATUSES).optional(),
        limit: qint(1, 10_000).optional(),
        after: qint(0, 1_000_000_000).optional().describe('The `ord` of the last item of the previous page'),
      })
      .strict(),
    handler: async (ctx) => {
      const { run } = await visibleRun(ctx, 'read');
      const limit = ctx.query.limit ?? 1000;
      const items = await listItems(ctx.deps.db, run.id, {
        status: ctx.query.status,
        limit,
        afterOrd: ctx.query.after,
      });
      return {
        run_id: run.id,
        items,
        next_after: items.length === limit ? items[items.length - 1]!.ord : null,
      };
    },
  }),
  defineRoute({
    method: 'GET',
    url: '/api/runs/:id/summary',
    auth: 'token',
    tag: 'runs',
    summary: 'Provider summary of a run: per element, items by status, cost, errors by code, durations',
    handler: async (ctx) => {
      const { run } = await visibleRun(ctx, 'read');
      return { run_id: run.id, providers: await providerSummary(ctx.deps.db, { runId: run.id }) };
    },
  }),
  defineRoute({
    method: 'GET',
    url: '/api/runs/:id/ledger',
    auth: 'token',
    tag: 'runs',
    summary: "The run's ledger movements (reserve, capture, release) and their totals",
    handler: async (ctx) => {
      const { run } = await visibleRun(ctx, 'read');
      return {
        run_id: run.id,
        totals: await runLedger(ctx.deps.db, run.id),
        transfers: (await listTransfers(ctx.deps.db, { circleId: run.circle_id, runId: run.id })).reverse(),
      };
    },
  }),
  defineRoute({
    method: 'GET',
    url: '/api/:circle/summary',
    auth: 'read',
    tag: 'runs',
    summary: 'Provider summary of the circle: per element, items by status, cost, errors, durations (since)',
    query: z.object({ since: z.iso.datetime({ offset: true }).optional() }).strict(),
    handler: async ({ deps, circle, query }) => ({
      providers: await providerSummary(deps.db, { circleId: circle!.id, since: query.since }),
    }),
  }),
  defineRoute({
    method: 'GET',
    url: '/api/:circle/failures',
    auth: 'read',
    tag: 'runs',
    summary: 'Failed items across runs, newest first (filters: since, element, code)',
    query: z
      .object({
        since: z.iso.datetime({ offset: true }).optional(),
        element: z.string().optional(),
        code: z.string().optional(),
        limit: qint(1, 1000).optional(),
      })
      .strict(),
    handler: async ({ deps, circle, query }) => ({
      failures: await listFailures(deps.db, {
        circleId: circle!.id,
        since: query.since,
        element: query.element,
        code: query.code,
        limit: query.limit ?? 100,
      }),
    }),
  }),
  defineRoute({
    method: 'GET',
    url: '/api/:circle/wallet',
    auth: 'read',
    tag: 'wallet',
    summary: "The circle's wallet: balance, reserved, available, floor (micro-credits)",
    handler: async ({ deps, circle }) => ({
      circle: circle!.slug,
      ...(await getWallet(deps.db, circle!.id)),
    }),
  }),
  defineRoute({
    method: 'PUT',
    url: '/api/:circle/wallet/spend-limit',
    auth: 'admin',
    tag: 'wallet',
    summary:
      "Set the circle's spending limit per UTC day or month (credits: null removes it); a run past it answers 402 SPEND_LIMIT_REACHED",
    body: z
      .object({
        period: z.enum(['day', 'month']).default('day'),
        credits: z
          .number()
          .int()
          .min(0)
          .nullable()
          .describe('Micro-credits captured or held per period; null: no limit'),
      })
      .strict(),
    handler: async (ctx) => {
      const c = ctx.circle!;
      const b = ctx.body as { period: 'day' | 'month'; credits: number | null };
      await setSpendLimit(
        ctx.deps.db,
        c.id,
        b.credits === null ? null : { period: b.period, credits: b.credits },
      );
      return { circle: c.slug, ...(await getWallet(ctx.deps.db, c.id)) };
    },
  }),
  defineRoute({
    method: 'GET',
    url: '/api/:circle/wallet/grants',
    auth: 'read',
    tag: 'wallet',
    summary: "The circle's grants and top-ups, with what is left of each",
    handler: async ({ deps, circle }) => ({ grants: await listGrants(deps.db, circle!.id) }),
  }),
  defineRoute({
    method: 'POST',
    url: '/api/:circle/wallet/grants',
    auth: 'instance_admin',
    tag: 'wallet',
    summary:
      'Grant credit (paid, promotional, topup; optional expiry). The Idempotency-Key is the transfer id.',
    body: grantBody,
    status: 201,
    handler: async (ctx) => {
      const c = ctx.circle!;
      const key = idempotencyKeyOf(ctx);
      const r = await grant(ctx.deps.db, {
        circleId: c.id,
        amount: ctx.body.amount,
        category: ctx.body.category,
        expiresAt: ctx.body.expires_at ?? null,
        note: ctx.body.note ?? null,
        actor: actorOf(ctx.principal!),
        transferId: key ? `grant:${c.id}:${key}` : undefined,
      });
      if (!r.created) ctx.reply.code(200).header('idempotent-replayed', 'true');
      return { grant: r.grant, wallet: await getWallet(ctx.deps.db, c.id) };
    },
  }),
  defineRoute({
    method: 'GET',
    url: '/api/:circle/wallet/ledger',
    auth: 'read',
    tag: 'wallet',
    summary: "The circle's ledger movements, newest first (filter: run_id; paging: before, limit)",
    query: z
      .object({
        run_id: z.uuid().optional(),
        before: z.iso.datetime({ offset: true }).optional(),
        limit: qint(1, 1000).optional(),
      })
      .strict(),
    handler: async ({ deps, circle, query }) => ({
      transfers: await listTransfers(deps.db, {
        circleId: circle!.id,
        runId: query.run_id,
        before: query.before,
        limit: query.limit ?? 100,
      }),
    }),
  }),
];

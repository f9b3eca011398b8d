/**
 * Run retention (issue 11): a circle's policy (GET/PUT /api/{circle}/retention,
 * circle admin or instance admin) and pinning runs that must stay whatever it
 * says (POST /api/runs/{id}/pin | unpin, execute).
 */
import { z } from 'zod';
import {
  effectiveRetention,
  RETENTION_MAX_DAYS,
  RETENTION_MIN_DAYS,
  RETENTION_SUGGESTION,
} from '../core/retention.js';
import type { CircleRow } from '../store/circles.js';
import {
  getRetentionPolicy,
  retentionHistory,
  retentionStanding,
  setRetentionPolicy,
} from '../store/retention.js';
import { setPinned, toRunView } from '../store/runs.js';
import { actorOf } from './auth.js';
import { baseUrlOf, type Deps } from './context.js';
import { visibleRun } from './control-routes.js';
import { defineRoute, type RouteDef } from './route.js';

const days = z
  .int(`a whole number of days from ${RETENTION_MIN_DAYS} to ${RETENTION_MAX_DAYS}`)
  .min(RETENTION_MIN_DAYS, `at least ${RETENTION_MIN_DAYS} day`)
  .max(RETENTION_MAX_DAYS, `at most ${RETENTION_MAX_DAYS} days (ten years)`);

const policyBody = z
  .object({
    days: days
      .nullable()
      .describe('Days a run is kept after it ends; null: the instance default (CAIRN_RETENTION_DAYS)'),
    failed_days: days
      .nullable()
      .optional()
      .describe('Days a failed run is kept instead (usually longer); absent or null: as days'),
  })
  .strict();

/** The policy as it applies now, what it keeps and what the collector deleted lately. */
async function retentionView(deps: Deps, circle: CircleRow) {
  const policy = await getRetentionPolicy(deps.db, circle.id);
  const effective = effectiveRetention(policy, deps.config.retentionDays);
  const standing = await retentionStanding(deps.db, circle.id, deps.config.retentionDays);
  return {
    circle: circle.slug,
    ...effective,
    instance_default_days: deps.config.retentionDays,
    policy: policy ? { days: policy.days, failed_days: policy.failed_days } : null,
    updated_at: policy?.updated_at ?? null,
    updated_by: policy?.updated_by ?? null,
    ...standing,
    history: await retentionHistory(deps.db, circle.id),
  };
}

function pinRoute(action: 'pin' | 'unpin', summary: string): RouteDef {
  return defineRoute({
    method: 'POST',
    url: `/api/runs/:id/${action}`,
    auth: 'token',
    tag: 'runs',
    summary,
    body: z.object({ reason: z.string().max(500).optional() }).strict(),
    handler: async (ctx) => {
      const { run, circle } = await visibleRun(ctx, 'execute');
      const row = await setPinned(
        ctx.deps.db,
        run.id,
        action === 'pin',
        actorOf(ctx.principal!),
        ctx.body.reason ?? null,
      );
      return toRunView(row ?? run, circle.slug, baseUrlOf(ctx.deps));
    },
  });
}

export const RETENTION_ROUTES: RouteDef[] = [
  defineRoute({
    method: 'GET',
    url: '/api/:circle/retention',
    auth: 'admin',
    tag: 'circles',
    summary:
      "The circle's run retention: days kept (failed runs: failed_days), the runs past it that stay (pinned, referenced), what was deleted",
    handler: ({ deps, circle }) => retentionView(deps, circle!),
  }),
  defineRoute({
    method: 'PUT',
    url: '/api/:circle/retention',
    auth: 'admin',
    tag: 'circles',
    summary:
      "Set the circle's run retention (days 1–3650; null: the instance default); answers what stays: kept.pinned, kept.referenced",
    body: policyBody,
    inputSuggestion: RETENTION_SUGGESTION,
    handler: async ({ deps, circle, body, principal }) => {
      await setRetentionPolicy(
        deps.db,
        circle!.id,
        { days: body.days, failed_days: body.failed_days ?? null },
        actorOf(principal!),
      );
      return retentionView(deps, circle!);
    },
  }),
  pinRoute('pin', 'Pin a run: retention never deletes it (nor the runs it points at)'),
  pinRoute('unpin', 'Unpin a run: it expires again with its circle’s retention'),
];

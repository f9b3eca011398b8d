import { z } from 'zod';
import { errors } from '../core/errors.js';
import { isUuid } from '../core/ids.js';
import { listOf, ROLES, RUN_KINDS, TRIGGER_TYPES } from '../core/status.js';
import { qint } from '../core/zod.js';
import { VERSION } from '../core/version.js';
import { createCircle, listCircles, publicCircle, RESERVED_SLUGS, type CircleRow } from '../store/circles.js';
import { createToken, listTokens, revokeToken, type Principal } from '../store/tokens.js';
import { listElements } from '../store/elements.js';
import { listRuns, loadSnapshot, runEvents, toRunView } from '../store/runs.js';
import { readLogs } from '../store/logs.js';
import { applyElement, createElement, SLUG_RE } from '../elements/service.js';
import { getTypeOrUndefined, typeLookup } from '../elements/registry.js';
import { toElementView } from '../elements/view.js';
import { redactSealed } from '../core/sealed.js';
import { cursorCodec, parseStatuses, runPage } from '../elements/base-ops.js';
import { cancel } from '../engine/control.js';
import { actorOf, authorize } from './auth.js';
import { baseUrlOf } from './context.js';
import { defineRoute, type RouteDef } from './route.js';
import { CONTROL_ROUTES, visibleRun } from './control-routes.js';
import { RETENTION_ROUTES } from './retention-routes.js';
import { WORKFLOW_ROUTES } from './workflow-routes.js';
import { awaitingApproval, getDefinition } from '../store/workflow.js';
import { LINEAGE_ROUTES } from './lineage-routes.js';
import { FILE_ROUTES } from './file-routes.js';
import { HOOK_ROUTES } from './hook-routes.js';
import { LIVE_ROUTES } from './live-routes.js';
import { SECRET_ROUTES } from './secrets-routes.js';
import { LLM_ROUTES } from './llm-routes.js';
import { WHOAMI_ROUTES } from './whoami-routes.js';
import { pinnedPolicySet } from '../engine/policy.js';
import { DEGRADED_AFTER } from '../engine/health.js';

const slug = z.string().regex(SLUG_RE, 'lowercase letters, digits and dashes');
const elementBody = z
  .object({
    element_type: z.string().min(1),
    slug,
    spec: z.record(z.string(), z.unknown()).optional(),
    name: z.string().min(1).max(200).optional(),
    intention: z.string().max(2000).nullable().optional(),
  })
  .strict();

const runList = z
  .object({
    status: z.string().optional(),
    kind: z.string().optional(),
    element: z.string().optional(),
    trigger: z.string().optional(),
    since: z.iso.datetime({ offset: true }).optional(),
    until: z.iso.datetime({ offset: true }).optional(),
    cursor: z.string().optional(),
    limit: qint(1, 500).optional(),
  })
  .strict();

/** A type may need more than write to be defined (a policy: admin; a trigger: execute). */
function authorizeDefinition(principal: Principal, circle: CircleRow, elementType: string): void {
  const need = getTypeOrUndefined(elementType)?.writeAuth;
  if (need) authorize(principal, circle, need);
}

export const ROUTES: RouteDef[] = [
  defineRoute({
    method: 'GET',
    url: '/healthz',
    auth: 'none',
    tag: 'platform',
    summary: 'Ready check',
    handler: async ({ deps, reply }) => {
      await deps.db.query('SELECT 1');
      // A shared statement that keeps failing (a settle, a claim) makes this process degraded: 503.
      const health = deps.engine.health();
      const failing = Object.entries(health?.statements ?? {})
        .filter(([, st]) => st.consecutive_failures >= DEGRADED_AFTER)
        .map(([statement, st]) => ({ statement, ...st }));
      // The embedded PostgreSQL being restarted (or given up on) is degraded too, even between its answers.
      const embedded = deps.database?.().embedded;
      const dbDown = embedded !== undefined && embedded !== null && embedded.state !== 'running';
      const degraded = Boolean(health?.degraded) || dbDown;
      if (degraded) reply.code(503);
      return {
        status: degraded ? 'degraded' : 'ok',
        version: VERSION,
        database: deps.db.kind,
        worker: deps.engine.worker?.id ?? null,
        ...(health?.degraded ? { failing, settle_backlog: health.settle_backlog } : {}),
        ...(dbDown ? { embedded_database: embedded.state } : {}),
      };
    },
  }),
  defineRoute({
    method: 'GET',
    url: '/api/diagnostics',
    auth: 'instance_admin',
    tag: 'platform',
    summary: "The process's health: its worker's shared statements and how the sandbox enforces limits",
    handler: async ({ deps }) => ({
      version: VERSION,
      database: deps.database?.() ?? { label: deps.db.kind, embedded: null },
      worker: deps.engine.health() ?? null,
      sandbox: deps.engine.sandbox.diagnostics(),
    }),
  }),
  defineRoute({
    method: 'POST',
    url: '/api/circles',
    auth: 'instance_admin',
    tag: 'circles',
    summary: 'Create a circle (its own schema and database role)',
    body: z.object({ slug }).strict(),
    status: 201,
    handler: async ({ deps, body }) => {
      if (RESERVED_SLUGS.has(body.slug)) {
        throw errors.invalidInput(`"${body.slug}" is reserved.`, undefined, 'Pick another circle slug.');
      }
      return publicCircle(await createCircle(deps.db, body.slug, deps.config.welcomeCredits));
    },
  }),
  defineRoute({
    method: 'GET',
    url: '/api/circles',
    auth: 'token',
    tag: 'circles',
    summary: 'List circles (an instance admin sees all; a circle token its own)',
    handler: async ({ deps, principal }) => ({
      circles: (await listCircles(deps.db, principal!.instanceAdmin ? undefined : principal!.circleId!)).map(
        publicCircle,
      ),
    }),
  }),
  defineRoute({
    method: 'POST',
    url: '/api/:circle/tokens',
    auth: 'admin',
    tag: 'circles',
    summary: 'Create a token for the circle (the secret is shown once)',
    body: z.object({ role: z.enum(ROLES), name: z.string().max(200).optional() }).strict(),
    status: 201,
    handler: async ({ deps, circle, body }) => {
      const { token, row } = await createToken(deps.db, {
        circleId: circle!.id,
        role: body.role,
        name: body.name,
      });
      return {
        token,
        id: row.id,
        role: row.role,
        name: row.name,
        circle: circle!.slug,
        created_at: row.created_at,
      };
    },
  }),
  defineRoute({
    method: 'GET',
    url: '/api/:circle/tokens',
    auth: 'admin',
    tag: 'circles',
    summary: "List the circle's tokens (never their secrets)",
    handler: async ({ deps, circle }) => ({ tokens: await listTokens(deps.db, circle!.id) }),
  }),
  defineRoute({
    method: 'DELETE',
    url: '/api/:circle/tokens/:id',
    auth: 'admin',
    tag: 'circles',
    summary: 'Revoke a token',
    handler: async ({ deps, circle, params }) => {
      const id = params.id ?? '';
      if (!isUuid(id) || !(await revokeToken(deps.db, circle!.id, id))) {
        throw errors.notFound(
          'TOKEN_NOT_FOUND',
          `No active token ${params.id} in this circle.`,
          'List tokens first.',
        );
      }
      deps.authn.forget();
      return { revoked: params.id };
    },
  }),
  defineRoute({
    method: 'POST',
    url: '/api/:circle/ops/create',
    auth: 'write',
    tag: 'elements',
    summary: 'Create an element (element_type and slug in the body)',
    body: elementBody,
    status: 201,
    handler: ({ deps, circle, body, principal }) => {
      authorizeDefinition(principal!, circle!, body.element_type);
      return createElement(deps.db, circle!, body, actorOf(principal!), typeLookup);
    },
  }),
  defineRoute({
    method: 'POST',
    url: '/api/:circle/ops/apply',
    auth: 'write',
    tag: 'elements',
    summary: 'Create or converge an element to this definition (idempotent; used by `cairn apply`)',
    body: elementBody,
    handler: ({ deps, circle, body, principal }) => {
      authorizeDefinition(principal!, circle!, body.element_type);
      return applyElement(deps.db, circle!, body, actorOf(principal!), typeLookup);
    },
  }),
  defineRoute({
    method: 'GET',
    url: '/api/:circle/elements',
    auth: 'read',
    tag: 'elements',
    summary: "List the circle's elements",
    handler: async ({ deps, circle }) => ({
      elements: (await listElements(deps.db, circle!.id)).map((e) => toElementView(e, circle!)),
    }),
  }),
  defineRoute({
    method: 'GET',
    url: '/api/:circle/runs',
    auth: 'read',
    tag: 'runs',
    summary: 'List runs, newest first (filters: status, kind, element, trigger, since, until; cursor paging)',
    query: runList,
    handler: async ({ deps, circle, query }) => {
      const limit = query.limit ?? 50;
      const rows = await listRuns(deps.db, {
        circleId: circle!.id,
        statuses: parseStatuses(query.status),
        kinds: listOf('kind', RUN_KINDS, query.kind),
        triggers: listOf('trigger', TRIGGER_TYPES, query.trigger),
        elementSlug: query.element,
        since: query.since,
        until: query.until,
        before: query.cursor ? cursorCodec.decode(query.cursor) : undefined,
        limit,
      });
      return runPage(rows, limit, circle!.slug, baseUrlOf(deps));
    },
  }),
  defineRoute({
    method: 'GET',
    url: '/api/runs/:id',
    auth: 'token',
    tag: 'runs',
    summary:
      'Get a run (every R-RUN field; a workflow run also says which tasks await approval, and for whom)',
    handler: async (ctx) => {
      const { run, circle } = await visibleRun(ctx, 'read');
      const view = toRunView(run, circle.slug, baseUrlOf(ctx.deps), await loadSnapshot(ctx.deps.db, run));
      if (run.kind !== 'workflow') return view;
      return { ...view, awaiting_approval: await awaitingApproval(ctx.deps.db, run.id) };
    },
  }),
  defineRoute({
    method: 'GET',
    url: '/api/runs/:id/snapshot',
    auth: 'token',
    tag: 'runs',
    summary:
      "The run's bill of materials: every definition it ran (a workflow's every step), the policy set, toolchains, engine version and prices — complete whatever was changed or deleted since",
    handler: async (ctx) => {
      const { run } = await visibleRun(ctx, 'read');
      const snapshot = await loadSnapshot(ctx.deps.db, run);
      const definition =
        run.kind === 'workflow' && run.definition_hash
          ? await getDefinition(ctx.deps.db, run.circle_id, run.definition_hash)
          : undefined;
      const policySet = await pinnedPolicySet(ctx.deps.db, snapshot.policy_set_hash as string | undefined);
      // A sealed value is never shown, wherever a definition holds one.
      return redactSealed({
        run_id: run.id,
        snapshot_hash: run.snapshot_hash ?? null,
        snapshot,
        ...(policySet ? { policy_set: { hash: snapshot.policy_set_hash, ...(policySet as object) } } : {}),
        ...(definition ? { workflow_definition: { hash: run.definition_hash, ...definition } } : {}),
      });
    },
  }),
  defineRoute({
    method: 'GET',
    url: '/api/runs/:id/audit',
    auth: 'token',
    tag: 'runs',
    summary: "The run's append-only audit trail",
    handler: async (ctx) => {
      const { run } = await visibleRun(ctx, 'read');
      return { run_id: run.id, events: await runEvents(ctx.deps.db, run.id) };
    },
  }),
  defineRoute({
    method: 'GET',
    url: '/api/runs/:id/logs',
    auth: 'token',
    tag: 'runs',
    summary: "The run's stdout/stderr lines with timestamps (tail, since)",
    query: z
      .object({ tail: qint(1, 10_000).optional(), since: z.iso.datetime({ offset: true }).optional() })
      .strict(),
    handler: async (ctx) => {
      const { run } = await visibleRun(ctx, 'read');
      return {
        run_id: run.id,
        lines: await readLogs(ctx.deps.db, { runId: run.id, tail: ctx.query.tail, since: ctx.query.since }),
      };
    },
  }),
  defineRoute({
    method: 'POST',
    url: '/api/runs/:id/cancel',
    auth: 'token',
    tag: 'runs',
    summary: 'Cancel a queued, running or paused run',
    body: z.object({ reason: z.string().max(500).optional() }).strict(),
    handler: async (ctx) => {
      const { run, circle } = await visibleRun(ctx, 'execute');
      const row = await cancel(ctx.deps.db, run.id, actorOf(ctx.principal!), ctx.body.reason ?? null);
      return toRunView(row, circle.slug, baseUrlOf(ctx.deps));
    },
  }),
  ...CONTROL_ROUTES,
  ...LIVE_ROUTES,
  ...LLM_ROUTES,
  ...SECRET_ROUTES,
  ...RETENTION_ROUTES,
  ...WORKFLOW_ROUTES,
  ...LINEAGE_ROUTES,
  ...FILE_ROUTES,
  ...HOOK_ROUTES,
  ...WHOAMI_ROUTES,
];

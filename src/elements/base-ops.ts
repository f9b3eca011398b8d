import { z } from 'zod';
import { errors } from '../core/errors.js';
import { isUuid } from '../core/ids.js';
import { normalizeStatus, type RunStatus } from '../core/status.js';
import { qbool, qint } from '../core/zod.js';
import * as store from '../store/elements.js';
import { getRun, listRuns, loadSnapshot, toRunView, type RunRow } from '../store/runs.js';
import { elementEvents, elementStats } from '../store/stats.js';
import { updateElement } from './service.js';
import { toElementView } from './view.js';
import { checkSpec } from './validate.js';
import { defineOp, type OperationDecl, type OpContext } from './types.js';
import { definitionHash } from '../core/hash.js';
import { toolsOf } from './schema.js';
import { redactSealed } from '../core/sealed.js';
import { deleteAttachmentsOf } from '../store/attachments.js';

const empty = z.object({}).strict();
const anyObject = z.record(z.string(), z.unknown());

/** A run of this element, or RUN_NOT_FOUND (also for ids that are not UUIDs: never a database error). */
export async function runOfElement(ctx: OpContext, id: string) {
  const run = isUuid(id) ? await getRun(ctx.db, id) : undefined;
  if (!run || run.element_id !== ctx.element.id) {
    throw errors.notFound(
      'RUN_NOT_FOUND',
      `No run ${id} of element "${ctx.element.slug}".`,
      'List runs with GET …/ops/runs.',
    );
  }
  return run;
}

export const cursorCodec = {
  encode: (id: string) => Buffer.from(id).toString('base64url'),
  decode: (c: string): string => {
    const id = Buffer.from(c, 'base64url').toString();
    if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(id)) {
      throw errors.invalidInput(
        'The cursor is not valid.',
        undefined,
        'Pass next_cursor from the previous page unchanged.',
      );
    }
    return id;
  },
};

/** One page of runs, newest first, with the cursor of the next page when there may be one. */
export function runPage(rows: RunRow[], limit: number, circleSlug: string, baseUrl: string) {
  return {
    runs: rows.map((r) => toRunView(r, circleSlug, baseUrl)),
    next_cursor: rows.length === limit ? cursorCodec.encode(rows[rows.length - 1]!.id) : null,
  };
}

export function parseStatuses(s: string | undefined): RunStatus[] | undefined {
  if (!s) return undefined;
  return s.split(',').map((x) => {
    const st = normalizeStatus(x);
    if (!st) {
      throw errors.invalidInput(
        `Unknown status "${x}".`,
        undefined,
        'Use queued, running, paused, succeeded, completed, failed or cancelled (pending, success, killed, canceled also work).',
      );
    }
    return st;
  });
}

/**
 * The operations every element has (seed 004's list, minus the git/attachment
 * families that arrive with their own issues). Types add their own on top.
 */
export const BASE_OPS: OperationDecl[] = [
  defineOp({
    name: 'get',
    method: 'GET',
    path: 'get',
    auth: 'read',
    summary: 'Get element details',
    input: empty,
    handler: async (ctx) => toElementView(ctx.element, ctx.circle),
  }),
  defineOp({
    name: 'update',
    method: 'PATCH',
    path: 'update',
    auth: 'write',
    summary: 'Update element (deep merge by default; `deep: false` replaces the spec; lists replace)',
    input: z
      .object({
        spec: anyObject.optional(),
        name: z.string().min(1).max(200).optional(),
        intention: z.string().max(2000).nullable().optional(),
        deep: z.boolean().default(true),
        note: z.string().max(500).optional(),
      })
      .strict(),
    handler: (ctx) => updateElement(ctx.db, ctx.circle, ctx.element.slug, ctx.input, ctx.actor, ctx.types),
  }),
  defineOp({
    name: 'update_meta',
    method: 'PATCH',
    path: 'update_meta',
    auth: 'write',
    summary: 'Shallow-merge into element.meta (no new version)',
    input: z.union([z.object({ meta: anyObject }).strict(), anyObject]),
    handler: async (ctx) => {
      const input: Record<string, unknown> = ctx.input;
      const patch =
        'meta' in input && Object.keys(input).length === 1 ? (input.meta as Record<string, unknown>) : input;
      return toElementView(await store.mergeMeta(ctx.db, ctx.element.id, patch), ctx.circle);
    },
  }),
  defineOp({
    name: 'version',
    method: 'GET',
    path: 'version',
    auth: 'read',
    summary: 'Current version, or the history with ?history=true&limit=N (default 50)',
    input: z.object({ history: qbool.optional(), limit: qint(1, 500).optional() }).strict(),
    handler: async (ctx) => {
      if (!ctx.input.history) {
        const v = await store.getVersion(ctx.db, ctx.element.id, ctx.element.version);
        return {
          version: ctx.element.version,
          definition_hash: ctx.element.definition_hash,
          current: v && { ...v, spec: redactSealed(v.spec) },
        };
      }
      const versions = await store.listVersions(ctx.db, ctx.element.id, ctx.input.limit ?? 50);
      return {
        version: ctx.element.version,
        versions: versions.map((v) => ({ ...v, spec: redactSealed(v.spec) })),
      };
    },
  }),
  defineOp({
    name: 'restore',
    method: 'POST',
    path: 'restore',
    auth: 'admin',
    summary: 'Restore a version (the current one is snapshotted first)',
    input: z.object({ version: z.number().int().min(1) }).strict(),
    handler: async (ctx) =>
      ctx.db.transaction(async (tx) => {
        const el = (await store.getElement(tx, ctx.circle.id, ctx.element.slug, true))!;
        const target = await store.getVersion(tx, el.id, ctx.input.version);
        if (!target) {
          throw errors.notFound(
            'VERSION_NOT_FOUND',
            `Element "${el.slug}" has no version ${ctx.input.version}.`,
            'GET …/ops/version?history=true lists the versions.',
          );
        }
        const { spec } = checkSpec(ctx.type, target.spec);
        await ctx.type.validateInCircle?.(tx, ctx.circle, spec, ctx.types);
        const snap = await store.writeVersion(
          tx,
          el,
          { spec: el.spec, name: el.name, intention: el.intention, definitionHash: el.definition_hash },
          `Before restore to v${target.version}`,
          ctx.actor,
        );
        const restored = await store.writeVersion(
          tx,
          snap,
          {
            spec,
            name: target.name,
            intention: target.intention,
            definitionHash: definitionHash(ctx.type.type, spec),
          },
          `Restored from v${target.version}`,
          ctx.actor,
        );
        // A trigger or policy type keeps what the engine reads in step with the restored version.
        await ctx.type.afterSave?.(tx, ctx.circle, restored, false, ctx.types);
        return toElementView(restored, ctx.circle);
      }),
  }),
  defineOp({
    name: 'enable',
    method: 'POST',
    path: 'enable',
    auth: 'admin',
    summary: 'Enable element (idempotent)',
    input: empty,
    handler: async (ctx) =>
      toElementView(await store.setState(ctx.db, ctx.element.id, 'ready', null), ctx.circle),
  }),
  defineOp({
    name: 'disable',
    method: 'POST',
    path: 'disable',
    auth: 'admin',
    summary: 'Disable element (idempotent); disabled elements cannot be invoked',
    input: z.object({ reason: z.string().max(500).optional() }).strict(),
    handler: async (ctx) =>
      toElementView(
        await store.setState(
          ctx.db,
          ctx.element.id,
          'disabled',
          ctx.input.reason ?? ctx.element.disabled_reason,
        ),
        ctx.circle,
      ),
  }),
  defineOp({
    name: 'delete',
    method: 'DELETE',
    path: 'delete',
    auth: 'admin',
    summary: 'Soft-delete (needs ?confirm=true; refused while runs are active)',
    input: z.object({ confirm: qbool.optional() }).strict(),
    handler: async (ctx) => {
      if (ctx.input.confirm !== true) {
        throw errors.invalidInput(
          'Deleting an element needs confirmation.',
          undefined,
          'Call DELETE …/ops/delete?confirm=true.',
        );
      }
      return ctx.db.transaction(async (tx) => {
        await store.getElement(tx, ctx.circle.id, ctx.element.slug, true);
        const active = await store.countActiveRuns(tx, ctx.element.id);
        if (active > 0) {
          throw errors.conflict(
            'ELEMENT_HAS_ACTIVE_RUNS',
            `Element "${ctx.element.slug}" has ${active} active run(s).`,
            'Wait for them to finish or cancel them (…/ops/runs?status=queued,running), then delete.',
          );
        }
        // A deleted element is attached nowhere and has nothing attached (runs keep their pins).
        await deleteAttachmentsOf(tx, ctx.element.id);
        return toElementView(await store.setState(tx, ctx.element.id, 'deleted', null), ctx.circle);
      });
    },
  }),
  defineOp({
    name: 'readme',
    method: 'GET',
    path: 'readme',
    auth: 'read',
    summary: 'Get the README (empty when none)',
    input: empty,
    handler: async (ctx) => ({ content: await store.getReadme(ctx.db, ctx.element.id), format: 'markdown' }),
  }),
  defineOp({
    name: 'readme_update',
    method: 'POST',
    path: 'readme_update',
    auth: 'write',
    summary: 'Create or replace the README',
    input: z.object({ content: z.string().max(1_000_000) }).strict(),
    handler: async (ctx) => {
      await store.setReadme(ctx.db, ctx.element.id, ctx.input.content);
      return { content: ctx.input.content, format: 'markdown' };
    },
  }),
  defineOp({
    name: 'schema',
    method: 'GET',
    path: 'schema',
    auth: 'read',
    summary: 'Input/output schemas of the element (MCP tools/list compatible)',
    input: empty,
    handler: async (ctx) => {
      const tools = toolsOf(ctx.type, ctx.element.slug);
      const invoke = tools[0];
      return {
        element: { slug: ctx.element.slug, element_type: ctx.type.type },
        input_schema: invoke?.inputSchema ?? null,
        output_schema: invoke?.outputSchema ?? null,
        tools,
      };
    },
  }),
  defineOp({
    name: 'runs',
    method: 'GET',
    path: 'runs',
    auth: 'read',
    summary: 'List recent runs of this element (cursor paging)',
    input: z
      .object({
        status: z.string().optional(),
        limit: qint(1, 500).optional(),
        cursor: z.string().optional(),
      })
      .strict(),
    handler: async (ctx) => {
      const limit = ctx.input.limit ?? 50;
      const rows = await listRuns(ctx.db, {
        circleId: ctx.circle.id,
        elementId: ctx.element.id,
        statuses: parseStatuses(ctx.input.status),
        before: ctx.input.cursor ? cursorCodec.decode(ctx.input.cursor) : undefined,
        limit,
      });
      return runPage(rows, limit, ctx.circle.slug, ctx.baseUrl);
    },
  }),
  defineOp({
    name: 'stats',
    method: 'GET',
    path: 'stats',
    auth: 'read',
    summary: 'Aggregate statistics with computed health (default period: day)',
    description:
      'Health: error if errors_per_day > 5 or success_rate < 0.8; warning if errors_per_day > 0 or success_rate < 0.95.',
    input: z.object({ period: z.enum(['hour', 'day', 'week']).default('day') }).strict(),
    handler: async (ctx) => {
      const days = { hour: 1 / 24, day: 1, week: 7 }[ctx.input.period as 'hour' | 'day' | 'week'];
      const since = new Date(Date.now() - days * 86_400_000).toISOString();
      const s = await elementStats(ctx.db, ctx.element.id, since);
      const finished = s.succeeded + s.failed;
      const successRate = finished > 0 ? s.succeeded / finished : null;
      const errorsPerDay = s.failed / days;
      const health =
        successRate === null
          ? 'unknown'
          : errorsPerDay > 5 || successRate < 0.8
            ? 'error'
            : errorsPerDay > 0 || successRate < 0.95
              ? 'warning'
              : 'healthy';
      return {
        period: ctx.input.period,
        since,
        ...s,
        runs_per_day: s.runs / days,
        errors_per_day: errorsPerDay,
        success_rate: successRate,
        health,
      };
    },
  }),
  defineOp({
    name: 'activity',
    method: 'GET',
    path: 'activity',
    auth: 'read',
    summary:
      "The element's events, newest first (e.g. go_fn.invoked, go_fn.completed, go_fn.build_completed)",
    input: z
      .object({ limit: qint(1, 1000).optional(), before: qint(1, Number.MAX_SAFE_INTEGER).optional() })
      .strict(),
    handler: async (ctx) => ({
      events: await elementEvents(ctx.db, ctx.element.id, ctx.input.limit ?? 100, ctx.input.before),
    }),
  }),
  defineOp({
    name: 'run_get',
    method: 'GET',
    path: 'runs/{run_id}',
    auth: 'read',
    summary: 'Get one run of this element',
    input: empty,
    handler: async (ctx) => {
      const run = await runOfElement(ctx, ctx.params.run_id ?? '');
      return toRunView(run, ctx.circle.slug, ctx.baseUrl, await loadSnapshot(ctx.db, run));
    },
  }),
  defineOp({
    name: 'run_cancel',
    method: 'POST',
    path: 'runs/{run_id}/cancel',
    auth: 'execute',
    summary: 'Cancel a queued or running run of this element',
    input: z.object({ reason: z.string().max(500).optional() }).strict(),
    handler: async (ctx) => {
      const run = await runOfElement(ctx, ctx.params.run_id ?? '');
      return toRunView(
        await ctx.engine.cancel(run.id, ctx.actor, ctx.input.reason ?? null),
        ctx.circle.slug,
        ctx.baseUrl,
      );
    },
  }),
];

/**
 * The live event stream as Server-Sent Events (R-LIVE): one run's events, or a circle's with
 * filters. Auth and circle scoping are the other routes' (a bearer token; another circle's run
 * is a 404). `Last-Event-ID` resumes after the event it names, with no gap and no duplicate.
 */
import { z } from 'zod';
import { errors } from '../core/errors.js';
import { listOf, RUN_KINDS, type RunStatus } from '../core/status.js';
import { parseStatuses } from '../elements/base-ops.js';
import { LIVE_TYPES, parsePos, START, type LivePos, type LiveRow, type LiveType } from '../store/live.js';
import { visibleRun } from './control-routes.js';
import type { LiveHub, Subscriber } from './live.js';
import { defineRoute, type RouteCtx, type RouteDef } from './route.js';

const HEARTBEAT_MS = 15_000;

const lastEventIdHeader = {
  name: 'Last-Event-ID',
  description: 'Resume after this event id (as the stream sent it): every later event, none twice',
};

export function lastEventId(ctx: RouteCtx, fallback: LivePos | undefined): LivePos | undefined {
  const h = ctx.req.headers['last-event-id'];
  const raw = (Array.isArray(h) ? h[0] : h) ?? (ctx.query as { after?: string }).after;
  if (raw === undefined || raw === '') return fallback;
  const pos = parsePos(raw);
  if (!pos)
    throw errors.invalidInput(
      `Last-Event-ID "${String(raw).slice(0, 60)}" is not an event id of this stream.`,
      { header: 'last-event-id' },
      'Send back the id of the last event you received, unchanged (ids look like 1234-5678), or omit it.',
    );
  return pos;
}

/** The hub of this app (app.ts creates one per app). */
function hubOf(ctx: RouteCtx): LiveHub {
  const hub = ctx.deps.live;
  if (!hub) throw new Error('live hub missing: buildApp creates it');
  return hub;
}

/**
 * Opens the stream on the raw response and joins the hub. A slow client (more than the hub's
 * buffer unsent) is cut off; it resumes from its last id.
 */
export async function answerWithEvents(
  ctx: RouteCtx,
  circleId: string,
  from: LivePos | undefined,
  filter: { runId?: string; accepts(row: LiveRow): boolean },
): Promise<void> {
  const hub = hubOf(ctx);
  const { reply } = ctx;
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
  });
  // The reconnection delay a client should use, and a first byte so proxies open the stream.
  res.write('retry: 1000\n: connected\n\n');
  let done = false;
  let unsubscribe: (() => void) | undefined;
  const heartbeatMs = ctx.deps.config.sseHeartbeatMs ?? HEARTBEAT_MS;
  const heartbeat = setInterval(() => {
    if (!done) res.write(': heartbeat\n\n');
  }, heartbeatMs);
  heartbeat.unref();
  const finish = () => {
    if (done) return;
    done = true;
    clearInterval(heartbeat);
    unsubscribe?.();
    if (!res.writableEnded) res.end();
  };
  res.on('close', finish);
  res.on('error', finish);
  // Frames are written once per turn of the event loop, not one write per event: the rows of one
  // read (a transaction, a batch settling) are one write per subscriber. (Waiting longer to write
  // less often would save CPU on a busy circle at the cost of every event's latency.)
  let pending = '';
  const writePending = () => {
    if (!done && pending) res.write(pending);
    pending = '';
  };
  const sub: Subscriber = {
    runId: filter.runId,
    accepts: filter.accepts,
    send: (_row, frame, live) => {
      if (done) return false;
      if (pending === '') setImmediate(writePending);
      pending += frame;
      // Live, unsent bytes past the limit: cut off rather than buffer without bound (it resumes
      // with Last-Event-ID). Catching up, the hub waits for `drained` between reads instead.
      return !live || res.writableLength + pending.length <= hub.opts.maxBufferBytes;
    },
    drained: () => {
      writePending();
      if (done || res.writableLength <= hub.opts.maxBufferBytes / 2) return Promise.resolve();
      return new Promise((resolve) => {
        const ok = () => {
          res.off('drain', ok);
          res.off('close', ok);
          resolve();
        };
        res.on('drain', ok);
        res.on('close', ok);
      });
    },
    close: () => {
      if (!done) {
        done = true;
        clearInterval(heartbeat);
        unsubscribe?.();
        res.destroy();
      }
    },
  };
  try {
    unsubscribe = await hub.subscribe(circleId, sub, from);
    if (done) unsubscribe();
  } catch (e) {
    ctx.deps.log.error({ err: e }, 'live stream failed to start');
    res.write(
      `event: error\ndata: ${JSON.stringify({ code: 'STREAM_FAILED', message: 'The stream could not start; reconnect.' })}\n\n`,
    );
    finish();
  }
}

const circleQuery = z
  .object({
    kind: z.string().optional().describe('Run kinds, comma-separated: invoke, batch, workflow'),
    element: z.string().max(200).optional().describe("Only this element's runs (its slug)"),
    status: z
      .string()
      .optional()
      .describe("Only events of runs in these statuses (the run's status when the event was written)"),
    types: z
      .string()
      .optional()
      .describe(`Event types, comma-separated: ${LIVE_TYPES.join(', ')}`),
    after: z.string().max(64).optional().describe('As Last-Event-ID, for clients that cannot send headers'),
  })
  .strict();

const runQuery = z
  .object({
    types: z
      .string()
      .optional()
      .describe(`Event types, comma-separated: ${LIVE_TYPES.join(', ')}`),
    after: z.string().max(64).optional().describe('As Last-Event-ID, for clients that cannot send headers'),
  })
  .strict();

function typeFilter(types: string | undefined): Set<LiveType> | undefined {
  const t = listOf('event type', LIVE_TYPES, types);
  return t ? new Set(t) : undefined;
}

export const LIVE_ROUTES: RouteDef[] = [
  defineRoute({
    method: 'GET',
    url: '/api/runs/:id/events',
    auth: 'token',
    tag: 'runs',
    summary:
      "The run's live events as Server-Sent Events (status, item, log, cost, audit, approval): its history first, then as they happen; Last-Event-ID resumes",
    query: runQuery,
    eventStream: true,
    headers: [lastEventIdHeader],
    handler: async (ctx) => {
      const { run } = await visibleRun(ctx, 'read');
      const types = typeFilter(ctx.query.types);
      const from = lastEventId(ctx, START);
      await answerWithEvents(ctx, run.circle_id, from, {
        runId: run.id,
        accepts: (row) => !types || types.has(row.type),
      });
    },
  }),
  defineRoute({
    method: 'GET',
    url: '/api/:circle/events',
    auth: 'read',
    tag: 'runs',
    summary:
      "The circle's live events as Server-Sent Events, from now on (filters: kind, element, status, types); Last-Event-ID resumes",
    query: circleQuery,
    eventStream: true,
    headers: [lastEventIdHeader],
    handler: async (ctx) => {
      const q = ctx.query;
      const kinds = listOf('kind', RUN_KINDS, q.kind);
      const statuses = parseStatuses(q.status);
      const types = typeFilter(q.types);
      const from = lastEventId(ctx, undefined);
      const kindSet = kinds ? new Set<string>(kinds) : undefined;
      const statusSet = statuses ? new Set<RunStatus | string>(statuses) : undefined;
      await answerWithEvents(ctx, ctx.circle!.id, from, {
        accepts: (row) =>
          (!types || types.has(row.type)) &&
          (!kindSet || (row.kind !== null && kindSet.has(row.kind))) &&
          (q.element === undefined || row.element_slug === q.element) &&
          (!statusSet || (row.run_status !== null && statusSet.has(row.run_status))),
      });
    },
  }),
];

/**
 * POST /api/{circle}/{slug}/v1/chat/completions (R-LLM): the OpenAI Chat Completions API, answered
 * by an element whose type declares `chatCompletions` (an llm). Every call is a run of its op, with
 * its reservation, budget, policy check and record; `stream: true` answers Server-Sent Events as the
 * provider streams, when the run executes in this process (else the whole answer as one chunk).
 */
import { z } from 'zod';
import { CairnError, errors, type ErrorBody } from '../core/errors.js';
import { typeLookup } from '../elements/registry.js';
import { elementNotFound } from '../elements/service.js';
import { getElement } from '../store/elements.js';
import { getRun } from '../store/runs.js';
import { requestTrigger } from './context.js';
import { budgetOf } from './element-ops.js';
import { actorOf } from './auth.js';
import { idempotencyKeyOf } from './idempotency.js';
import { defineRoute, type RouteDef } from './route.js';

const body = z
  .object({
    model: z.string().max(300).optional(),
    messages: z.array(z.unknown()).min(1).max(500),
    stream: z.boolean().optional(),
    stream_options: z.object({ include_usage: z.boolean().optional() }).passthrough().nullable().optional(),
    max_tokens: z.number().int().min(1).nullable().optional(),
    max_completion_tokens: z.number().int().min(1).nullable().optional(),
    temperature: z.number().min(0).max(2).nullable().optional(),
  })
  .passthrough();

/** The least a chat call waits for its run before answering 202 (a model may take minutes). */
const CHAT_WAIT_MS = 660_000; // past an llm run's own timeout (600 s): the run ends first

function runFailed(e: ErrorBody, runId: string): CairnError {
  return CairnError.fromBody({
    ...e,
    details: { ...(typeof e.details === 'object' && e.details ? e.details : {}), run_id: runId },
  });
}

export const LLM_ROUTES: RouteDef[] = [
  defineRoute({
    method: 'POST',
    url: '/api/:circle/:slug/v1/chat/completions',
    auth: 'execute',
    tag: 'elements',
    summary: 'OpenAI-compatible Chat Completions on an llm element (every call is a run)',
    body,
    responses: {
      '200': 'A ChatCompletion, or with stream: true a text/event-stream of chunks ending in [DONE]',
    },
    inputSuggestion:
      'Send an OpenAI Chat Completions request: {"messages": [{"role": "user", "content": "…"}]}.',
    handler: async (ctx) => {
      const { deps, circle } = ctx;
      const slug = String(ctx.params.slug);
      const el = await getElement(deps.db, circle!.id, slug);
      if (!el) throw elementNotFound(slug);
      const type = typeLookup.get(el.element_type);
      const compat = type.chatCompletions;
      if (!compat)
        throw errors.notFound(
          'CHAT_COMPLETIONS_NOT_SUPPORTED',
          `"${slug}" is a ${el.element_type} element; only an llm element answers chat completions.`,
          'Point the client at /api/{circle}/{llm slug}/v1.',
        );
      const op = typeLookup.operationsOf(type).find((o) => o.name === compat.op)!;
      const b = ctx.body as Record<string, unknown>;
      const input = compat.toInput(b);
      const actor = actorOf(ctx.principal!);
      const created = Math.floor(Date.now() / 1000);
      const requestedModel = typeof b.model === 'string' ? b.model : '';
      const includeUsage = Boolean((b.stream_options as { include_usage?: boolean } | null)?.include_usage);
      const invokeReq = {
        circle: circle!,
        element: el,
        type,
        op,
        input,
        trigger: requestTrigger(ctx.req.headers, actor, ctx.principal!.role),
        idempotencyKey: idempotencyKeyOf(ctx),
        ...budgetOf(ctx),
      };
      const waitMs = Math.max(deps.config.syncWaitMs, CHAT_WAIT_MS);

      if (b.stream !== true) {
        const outcome = await deps.engine.invoke(invokeReq, { waitMs });
        const run = outcome.state === 'finished' ? outcome.run : undefined;
        if (!run) {
          ctx.reply.code(202).header('Location', `/api/runs/${outcome.run.id}`);
          return { run_id: outcome.run.id, status: 'queued', run_url: `/api/runs/${outcome.run.id}` };
        }
        ctx.reply.header('x-cairn-run-id', run.id);
        if (run.status !== 'succeeded') throw runFailed(run.error!, run.id);
        return compat.toCompletion(run.output, { id: `chatcmpl-${run.id}`, created, requestedModel });
      }

      // Streaming: the status line waits for the first token (an error before it is a typed JSON error).
      const res = ctx.reply.raw;
      let id = '';
      let open = false;
      let streamed = false;
      const write = (obj: unknown) => res.write(`data: ${JSON.stringify(obj)}\n\n`);
      const openStream = () => {
        if (open) return;
        open = true;
        ctx.reply.hijack();
        res.writeHead(200, {
          'content-type': 'text/event-stream; charset=utf-8',
          'cache-control': 'no-cache, no-transform',
          connection: 'keep-alive',
          'x-cairn-run-id': id,
        });
      };
      const model = requestedModel;
      let done = false;
      // A client that goes away mid-stream stops the call, as the providers' own APIs do: the run
      // is cancelled and its provider request aborted.
      res.on('close', () => {
        if (!done && id)
          void deps.engine.port.cancel(id, actor, 'the client closed the stream').catch(() => undefined);
      });
      const outcome = await deps.engine.invoke(invokeReq, {
        waitMs,
        onStart: (s) => {
          id = s.runId;
        },
        stream: (ev) => {
          if (ev.type !== 'delta' || res.destroyed || res.writableEnded) return;
          openStream();
          write(compat.deltaChunk(ev.text, { id: `chatcmpl-${id}`, created, model, first: !streamed }));
          streamed = true;
        },
      });
      done = true;
      const run =
        outcome.state === 'finished' ? outcome.run : ((await getRun(deps.db, outcome.run.id)) ?? outcome.run);
      if (!open) {
        if (run.status !== 'succeeded' && run.status !== 'running' && run.status !== 'queued')
          throw runFailed(run.error!, run.id);
        if (run.status !== 'succeeded') {
          ctx.reply.code(202).header('Location', `/api/runs/${run.id}`);
          return { run_id: run.id, status: run.status, run_url: `/api/runs/${run.id}` };
        }
        id = run.id;
        openStream();
      }
      if (run.status === 'succeeded') {
        for (const c of compat.closingChunks(run.output, {
          id: `chatcmpl-${run.id}`,
          created,
          includeUsage,
          streamed,
        }))
          write(c);
      } else if (run.error) {
        // A failure after tokens went out: the OpenAI stream's error event, then the end.
        write({ error: { ...run.error, run_id: run.id } });
      }
      if (!res.writableEnded) res.end('data: [DONE]\n\n');
      return undefined;
    },
  }),
];

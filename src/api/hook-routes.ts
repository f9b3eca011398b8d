/**
 * The public address of webhook elements (R-TRIGGERS): POST /hooks/{circle}/{slug}. No token:
 * the signature is the authentication, verified on the raw bytes before anything of the request
 * is parsed. A verified delivery starts one run of the webhook's target per delivery id and is
 * answered 202 at once with the run's id; a replay of the id answers that same run.
 */
import { z } from 'zod';
import { ExprError } from '../core/expr.js';
import { sha256Hex } from '../core/hash.js';
import { findUnstorable } from '../core/storable.js';
import { HOOK_ROOTS } from '../elements/webhook/index.js';
import {
  bodyDeliveryId,
  header,
  HOOK_MAX_BODY_BYTES,
  hookError,
  parseHookBody,
  redactHeaders,
  verifyDelivery,
} from '../elements/webhook/verify.js';
import { mapInput } from '../elements/triggers/target.js';
import type { CircleRow } from '../store/circles.js';
import * as hooks from '../store/triggers.js';
import { findByIdempotencyKey, getRunsStatus } from '../store/runs.js';
import type { Deps } from './context.js';
import { defineRoute, type RouteDef } from './route.js';

const notFound = () =>
  hookError('WEBHOOK_NOT_FOUND', 'No webhook at this address (or it is disabled or deleted).');

interface Accepted {
  run_id: string;
  status: string;
  run_url: string;
  duplicate?: true;
}

/**
 * Starts the delivery's run once, however many deliveries of its id arrive, and at once: the run's
 * idempotency key (webhook:<element>:<id>) is the deduplication — of any number of concurrent
 * starts one inserts the run and the others answer it (its unique index) — and the delivery is
 * recorded after, with its run. The first record of an id is the delivery; later ones are
 * replays (`duplicate`: the key answered an earlier run). A start that failed records nothing,
 * so a retry may start it later.
 */
async function startOnce(
  deps: Deps,
  circle: CircleRow,
  hook: hooks.WebhookRow,
  deliveryId: string,
  bodySha256: string,
  input: unknown,
  headers: Record<string, string>,
): Promise<{ runId: string; status: string; duplicate: boolean }> {
  const key = `webhook:${hook.element_id}:${deliveryId}`;
  let started;
  try {
    started = await deps.engine.startTarget({
      circle,
      target: { element: hook.target.element, op: hook.target.op },
      input,
      trigger: {
        type: 'webhook',
        source: hook.slug,
        actor: `webhook:${hook.slug}`,
        webhook_id: deliveryId,
        body_sha256: bodySha256,
        headers,
      },
      idempotencyKey: key,
      // Nearly every delivery is a new one: insert at once (a replay still meets the key's index).
      fresh: true,
    });
  } catch (e) {
    // A replay racing its first delivery may be refused before it meets the key (the wallet holds
    // no second reservation, a policy changed): when the first run exists, that is the answer.
    const prior = await findByIdempotencyKey(deps.db, circle.id, key);
    if (!prior) throw e;
    started = { run_id: prior.id, status: prior.status, created: false };
  }
  const record = hooks.recordDelivery(
    deps.db,
    hook.element_id,
    circle.id,
    deliveryId,
    bodySha256,
    started.run_id,
  );
  if (started.created === undefined) {
    // A handler op's run (a workflow trigger) does not say whether the key found an earlier one:
    // the first record of the id tells.
    const first = await record;
    return { runId: started.run_id, status: started.status, duplicate: !first };
  }
  // The answer does not wait for the record (the run's key already made the delivery once).
  record.catch((e: unknown) => deps.log.warn({ err: e, webhook: hook.slug }, 'delivery not recorded'));
  return { runId: started.run_id, status: started.status, duplicate: !started.created };
}

async function runStatus(deps: Deps, runId: string): Promise<string> {
  const [s] = await getRunsStatus(deps.db, [runId]);
  return s?.status ?? 'deleted';
}

export const HOOK_ROUTES: RouteDef[] = [
  defineRoute({
    method: 'POST',
    url: '/hooks/:circle/:slug',
    auth: 'none',
    tag: 'webhooks',
    summary:
      'Deliver to a webhook element: verified by its signature (no token), it starts one run of the target per delivery id and answers 202 at once',
    rawBody: { limit: HOOK_MAX_BODY_BYTES },
    idempotencyKey: false,
    status: 202,
    headers: [
      { name: 'webhook-id', description: 'standard: the delivery id (a replay of it starts nothing)' },
      { name: 'webhook-timestamp', description: 'standard: Unix seconds, at most 5 minutes from now' },
      {
        name: 'webhook-signature',
        description: 'standard: v1,<base64 HMAC-SHA256 of "id.timestamp.body">, space-separated',
      },
      { name: 'X-Hub-Signature-256', description: 'github: sha256=<hex HMAC-SHA256 of the body>' },
      { name: 'X-GitHub-Delivery', description: 'github: the delivery id' },
    ],
    response: z.object({
      run_id: z.string(),
      status: z.string(),
      run_url: z.string(),
      duplicate: z
        .literal(true)
        .optional()
        .describe('A replay of a delivery id: the run its first delivery started'),
    }),
    responses: {
      '401': 'WEBHOOK_SIGNATURE_MISSING, WEBHOOK_SIGNATURE_INVALID or WEBHOOK_TIMESTAMP_STALE',
      '402': 'The wallet cannot cover the run of the target',
      '403': "A policy of the circle refuses the target's run (POLICY_DENIED, POLICY_ERROR)",
      '409': 'The target is disabled',
      '413': "The body is larger than the webhook's max_body_bytes (WEBHOOK_BODY_TOO_LARGE)",
    },
    handler: async (ctx): Promise<Accepted> => {
      const { deps, req, reply } = ctx;
      const raw: Buffer = Buffer.isBuffer(ctx.body) ? ctx.body : Buffer.alloc(0);
      const bodySha256 = sha256Hex(raw);
      // The delivery ids the request names, for the lookup of an earlier record (trusted only once verified).
      const hook = await hooks.findWebhook(deps.db, ctx.params.circle ?? '', ctx.params.slug ?? '', {
        webhookId: header(req.headers, 'webhook-id') ?? null,
        githubDelivery: header(req.headers, 'x-github-delivery') ?? null,
        bodyId: bodyDeliveryId(bodySha256),
      });
      // An unknown circle and an unknown hook answer alike: which circles exist stays unknown.
      if (!hook) throw notFound();
      const circle = hook.circle;
      if (raw.length > hook.max_body_bytes)
        throw hookError(
          'WEBHOOK_BODY_TOO_LARGE',
          `The body is ${raw.length} bytes; this webhook takes at most ${hook.max_body_bytes}.`,
          { size: raw.length, max_body_bytes: hook.max_body_bytes },
        );
      // The signature first, on the raw bytes: nothing of an unverified request is parsed.
      const deliveryId = verifyDelivery(hook.signing, raw, req.headers, hook.secrets, Date.now(), bodySha256);
      const body = parseHookBody(raw);
      const query: Record<string, unknown> = { ...(req.query as Record<string, unknown> | undefined) };
      const bad = findUnstorable({ body, query });
      if (bad)
        throw hookError(
          'WEBHOOK_BODY_UNSTORABLE',
          `The delivery cannot be stored: at ${bad.path.replace(/^\$/, '')}, ${bad.reason}.`,
          { path: bad.path },
        );
      const headers = redactHeaders(req.headers);
      let input: unknown;
      try {
        input = mapInput(hook.input, HOOK_ROOTS, { body, headers, query });
      } catch (e) {
        if (e instanceof ExprError)
          throw hookError(
            'WEBHOOK_MAPPING_FAILED',
            `The input mapping failed on this delivery: the expression "${e.expression}" ${e.message}.`,
            { expression: e.expression },
          );
        throw e;
      }
      // A delivery recorded already (a replay; its run may even be gone to retention): its run, nothing new.
      const s =
        hook.recorded_delivery === deliveryId && hook.recorded_run
          ? { runId: hook.recorded_run, status: await runStatus(deps, hook.recorded_run), duplicate: true }
          : await startOnce(deps, circle, hook, deliveryId, bodySha256, input, headers);
      const run_url = `/api/runs/${s.runId}`;
      reply.code(202).header('location', run_url);
      return s.duplicate
        ? { run_id: s.runId, status: s.status, run_url, duplicate: true }
        : { run_id: s.runId, status: s.status, run_url };
    },
  }),
];

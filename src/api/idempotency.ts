import { CairnError, errors } from '../core/errors.js';
import { canonicalJson, sha256Hex } from '../core/hash.js';
import type { RouteCtx } from './route.js';

/** The request's Idempotency-Key header, checked. */
export function idempotencyKeyOf(ctx: RouteCtx): string | undefined {
  const key = ctx.req.headers['idempotency-key'];
  if (key !== undefined && (typeof key !== 'string' || key.length === 0 || key.length > 200)) {
    throw errors.invalidInput(
      'Idempotency-Key must be 1–200 characters.',
      undefined,
      'Send one short unique key per logical request.',
    );
  }
  // The keys Cairn gives the runs its triggers start name their occurrence; a caller may not take
  // one (it would answer an occurrence with the caller's run).
  if (key !== undefined && /^(schedule|webhook|upstream):/i.test(key))
    throw errors.invalidInput(
      `Idempotency-Key "${key.slice(0, 40)}" uses a prefix Cairn keeps for its triggers.`,
      { reserved: ['schedule:', 'webhook:', 'upstream:'] },
      'Use a key without the schedule:, webhook: or upstream: prefix.',
    );
  return key;
}

/**
 * What a request is, for its key: method, path, query (but `async`, which only
 * changes how long the caller waits) and the canonical JSON of its body.
 */
function fingerprint(ctx: RouteCtx): string {
  const [path] = ctx.req.url.split('?');
  const query = Object.entries((ctx.req.query ?? {}) as Record<string, unknown>)
    .filter(([k]) => k !== 'async')
    .sort(([a], [b]) => (a < b ? -1 : 1));
  return sha256Hex(canonicalJson([ctx.req.method, path, query, ctx.body ?? null]));
}

function reused(key: string, first: string): CairnError {
  return new CairnError({
    code: 'IDEMPOTENCY_KEY_REUSED',
    class: 'validation',
    status: 422,
    message: `Idempotency-Key "${key}" was already used for a different request (${first}).`,
    details: { first_action: first },
    suggestion: 'Use a new key for each distinct request; replay a key only with the very same request.',
  });
}

/** A claimed key whose request never finished (its process died) is free again after this. */
const ABANDONED_AFTER_S = 300;

/**
 * Runs `fn` once per Idempotency-Key (per circle): the key is claimed first
 * (a row with status 0) with the request's fingerprint, so two racing requests
 * cannot both take effect; the winner stores its answer and every replay of
 * the same request answers it, with `Idempotent-Replayed: true`. The same key
 * with another request (body, path, method or query) is 422
 * IDEMPOTENCY_KEY_REUSED. While the first is still in flight, `inFlight` may
 * answer for it (a run-creating request: its run, 202); otherwise 409
 * IDEMPOTENCY_KEY_IN_USE. A failed request frees its key (only successful
 * answers are stored), and so does one abandoned for five minutes.
 */
export async function idempotent(
  ctx: RouteCtx,
  circleId: string,
  action: string,
  fn: () => Promise<unknown>,
  inFlight?: () => Promise<unknown>,
): Promise<unknown> {
  const key = idempotencyKeyOf(ctx);
  if (!key) return fn();
  const db = ctx.deps.db;
  const fp = fingerprint(ctx);
  const claimed = await db.query(
    `INSERT INTO cairn.idempotency AS i (circle_id, key, action, answer, status, fingerprint)
     VALUES ($1, $2, $3, 'null', 0, $4)
     ON CONFLICT (circle_id, key) DO UPDATE SET action = $3, fingerprint = $4, at = clock_timestamp()
       WHERE i.status = 0 AND i.at < clock_timestamp() - make_interval(secs => $5)
     RETURNING key`,
    [circleId, key, action, fp, ABANDONED_AFTER_S],
  );
  if (claimed.rows.length === 0) {
    const prior = await db.query<{ action: string; answer: unknown; status: number; fingerprint: string }>(
      'SELECT action, answer, status, fingerprint FROM cairn.idempotency WHERE circle_id = $1 AND key = $2',
      [circleId, key],
    );
    const hit = prior.rows[0]!;
    if (hit.action !== action || (hit.fingerprint !== '' && hit.fingerprint !== fp))
      throw reused(key, hit.action);
    if (hit.status === 0) {
      const answer = await inFlight?.();
      if (answer !== undefined) {
        ctx.reply.header('idempotent-replayed', 'true');
        return answer;
      }
      throw errors.conflict(
        'IDEMPOTENCY_KEY_IN_USE',
        `A request with Idempotency-Key "${key}" is still being processed.`,
        'Wait a moment, then send it again: it will answer what the first request answered.',
      );
    }
    ctx.reply.code(hit.status).header('idempotent-replayed', 'true');
    const runUrl = (hit.answer as { run_url?: unknown } | null)?.run_url;
    if (hit.status === 202 && typeof runUrl === 'string') ctx.reply.header('location', runUrl);
    return hit.answer;
  }
  let answer: unknown;
  try {
    answer = await fn();
  } catch (e) {
    await db
      .query('DELETE FROM cairn.idempotency WHERE circle_id = $1 AND key = $2 AND status = 0', [
        circleId,
        key,
      ])
      .catch(() => undefined);
    throw e;
  }
  await db.query(
    'UPDATE cairn.idempotency SET answer = $3::jsonb, status = $4 WHERE circle_id = $1 AND key = $2',
    [circleId, key, JSON.stringify(storable(answer) ?? null), ctx.reply.statusCode || 200],
  );
  return answer;
}

/**
 * What is kept of an answer to replay it: everything but what is shown once (a webhook's secret,
 * in a create answer's `shown_once` or a rotate_secret answer). A replay says it was left out.
 */
function storable(answer: unknown): unknown {
  if (answer === null || typeof answer !== 'object' || Array.isArray(answer)) return answer;
  const a = answer as Record<string, unknown>;
  if (!('shown_once' in a) && !('secret' in a)) return answer;
  const { shown_once: _once, secret: _secret, ...rest } = a;
  return { ...rest, shown_once_withheld: 'shown in the first answer only; a replay does not repeat it' };
}

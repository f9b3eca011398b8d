import { errors } from '../core/errors.js';
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
  return key;
}

/**
 * Runs `fn` once per Idempotency-Key (per circle and action): a replay answers
 * the stored answer. Only successful answers are stored.
 */
export async function idempotent(
  ctx: RouteCtx,
  circleId: string,
  action: string,
  fn: () => Promise<unknown>,
): Promise<unknown> {
  const key = idempotencyKeyOf(ctx);
  if (!key) return fn();
  const db = ctx.deps.db;
  const prior = await db.query<{ action: string; answer: unknown; status: number }>(
    'SELECT action, answer, status FROM cairn.idempotency WHERE circle_id = $1 AND key = $2',
    [circleId, key],
  );
  const hit = prior.rows[0];
  if (hit) {
    if (hit.action !== action) {
      throw errors.conflict(
        'IDEMPOTENCY_KEY_REUSED',
        `Idempotency-Key "${key}" was already used for ${hit.action}.`,
        'Use a new key for each distinct request.',
      );
    }
    ctx.reply.code(hit.status).header('idempotent-replayed', 'true');
    return hit.answer;
  }
  const answer = await fn();
  const status = ctx.reply.statusCode || 200;
  const stored = await db.query<{ answer: unknown; status: number }>(
    `INSERT INTO cairn.idempotency (circle_id, key, action, answer, status) VALUES ($1, $2, $3, $4::jsonb, $5)
     ON CONFLICT (circle_id, key) DO UPDATE SET key = EXCLUDED.key RETURNING answer, status`,
    [circleId, key, action, JSON.stringify(answer), status],
  );
  return stored.rows[0]!.answer;
}

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
 * Runs `fn` once per Idempotency-Key (per circle): the key is claimed first
 * (a row with status 0), so two racing requests cannot both take effect; the
 * winner stores its answer and every replay answers it. A request whose key
 * is still in flight gets 409 IDEMPOTENCY_KEY_IN_USE; a failed request frees
 * its key (only successful answers are stored).
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
  const claimed = await db.query(
    `INSERT INTO cairn.idempotency (circle_id, key, action, answer, status) VALUES ($1, $2, $3, 'null', 0)
     ON CONFLICT (circle_id, key) DO NOTHING RETURNING key`,
    [circleId, key, action],
  );
  if (claimed.rows.length === 0) {
    const prior = await db.query<{ action: string; answer: unknown; status: number }>(
      'SELECT action, answer, status FROM cairn.idempotency WHERE circle_id = $1 AND key = $2',
      [circleId, key],
    );
    const hit = prior.rows[0]!;
    if (hit.action !== action) {
      throw errors.conflict(
        'IDEMPOTENCY_KEY_REUSED',
        `Idempotency-Key "${key}" was already used for ${hit.action}.`,
        'Use a new key for each distinct request.',
      );
    }
    if (hit.status === 0) {
      throw errors.conflict(
        'IDEMPOTENCY_KEY_IN_USE',
        `A request with Idempotency-Key "${key}" is still being processed.`,
        'Wait a moment, then send it again: it will answer what the first request answered.',
      );
    }
    ctx.reply.code(hit.status).header('idempotent-replayed', 'true');
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
    [circleId, key, JSON.stringify(answer ?? null), ctx.reply.statusCode || 200],
  );
  return answer;
}

/**
 * The credit ledger (R-LEDGER). Every movement is a PL/pgSQL function in
 * migration 000003, so each is one atomic, idempotent call on either driver;
 * the wallet row's CHECK keeps the balance above its floor under any concurrency.
 */
import type { Queryable } from '../db/types.js';
import { CairnError, errors } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { isoFields } from './rows.js';

export const GRANT_CATEGORIES = ['paid', 'promotional', 'topup'] as const;
export type GrantCategory = (typeof GRANT_CATEGORIES)[number];

export interface Wallet {
  circle_id: string;
  /** Grants and top-ups, ever. */
  credits_posted: number;
  /** Captured and expired, ever. */
  debits_posted: number;
  /** Held by runs now. */
  debits_pending: number;
  floor: number;
  /** credits_posted − debits_posted. */
  balance: number;
  /** balance − debits_pending − floor: what a new reservation may take. */
  available: number;
  /** The circle's spending limit per period (null: none), and what it spent in the current one. */
  spend_limit: { period: 'day' | 'month'; credits: number; spent: number } | null;
  updated_at: string;
}

function toWallet(r: Record<string, unknown>): Wallet {
  const n = (k: string) => Number(r[k]);
  return {
    circle_id: String(r.circle_id),
    credits_posted: n('credits_posted'),
    debits_posted: n('debits_posted'),
    debits_pending: n('debits_pending'),
    floor: n('floor'),
    balance: n('credits_posted') - n('debits_posted'),
    available: n('credits_posted') - n('debits_posted') - n('debits_pending') - n('floor'),
    spend_limit:
      r.spend_limit === null || r.spend_limit === undefined
        ? null
        : {
            period: r.spend_period as 'day' | 'month',
            credits: n('spend_limit'),
            spent: n('period_spent') + n('debits_pending'),
          },
    updated_at: isoFields(r as { updated_at: string }, ['updated_at']).updated_at,
  };
}

export async function getWallet(q: Queryable, circleId: string): Promise<Wallet> {
  const r = await q.query(
    `SELECT w.*, CASE WHEN w.spend_limit IS NULL THEN 0 ELSE cairn.period_spent(w.circle_id, w.spend_period) END
       AS period_spent FROM cairn.wallets w WHERE w.circle_id = $1`,
    [circleId],
  );
  if (!r.rows[0]) {
    await q.query('INSERT INTO cairn.wallets (circle_id) VALUES ($1) ON CONFLICT DO NOTHING', [circleId]);
    return getWallet(q, circleId);
  }
  return toWallet(r.rows[0]);
}

/** Sets (or, with null, removes) the circle's spending limit per day or month. */
export async function setSpendLimit(
  q: Queryable,
  circleId: string,
  limit: { period: 'day' | 'month'; credits: number } | null,
): Promise<void> {
  await q.query(
    `UPDATE cairn.wallets SET spend_limit = $2, spend_period = $3, updated_at = clock_timestamp() WHERE circle_id = $1`,
    [circleId, limit?.credits ?? null, limit?.period ?? null],
  );
}

/** Why a reservation of `amount` was refused: the spending limit, or the wallet's balance. */
export async function reservationRefused(
  q: Queryable,
  circle: { id: string; slug: string },
  amount: number,
): Promise<CairnError> {
  const w = await getWallet(q, circle.id);
  const l = w.spend_limit;
  if (l && l.spent + amount > l.credits)
    return new CairnError({
      code: 'SPEND_LIMIT_REACHED',
      class: 'payment',
      message: `This run needs ${amount} micro-credits; circle "${circle.slug}" has spent ${l.spent} of its ${l.credits} limit this ${l.period}.`,
      details: { needed: amount, spent: l.spent, limit: l.credits, period: l.period },
      suggestion: `Wait for the next ${l.period} (UTC), or raise the limit (PUT /api/${circle.slug}/wallet/spend-limit, circle admin).`,
    });
  return errors.insufficientCredits(circle.slug, amount, w.available);
}

export interface GrantRow {
  id: string;
  circle_id: string;
  category: GrantCategory;
  amount: number;
  remaining: number;
  expires_at: string | null;
  transfer_id: string;
  actor: string;
  note: string | null;
  created_at: string;
}

function toGrant(r: GrantRow): GrantRow {
  const g = isoFields(r, ['expires_at', 'created_at']);
  return { ...g, amount: Number(g.amount), remaining: Number(g.remaining) };
}

export interface GrantInput {
  circleId: string;
  amount: number;
  category: GrantCategory;
  expiresAt?: string | null;
  actor: string;
  note?: string | null;
  /** The transfer id (idempotency key); a replay returns the first grant. */
  transferId?: string;
}

/** Adds credit. A replayed transfer id returns the grant it first created, with no new effect. */
export async function grant(q: Queryable, g: GrantInput): Promise<{ grant: GrantRow; created: boolean }> {
  if (!Number.isSafeInteger(g.amount) || g.amount <= 0) {
    throw errors.invalidInput(
      `A grant must be a positive whole number of micro-credits, got ${g.amount}.`,
      [{ path: 'amount', message: 'positive integer (micro-credits)' }],
      'Send e.g. {"amount": 1000000, "category": "promotional"} (1 credit = 1,000,000 micro-credits).',
    );
  }
  const transferId = g.transferId ?? `grant:${newId()}`;
  const r = await q.query<{ created: boolean }>(
    'SELECT cairn.ledger_grant($1, $2::uuid, $3::uuid, $4::bigint, $5, $6::timestamptz, $7, $8) AS created',
    [transferId, newId(), g.circleId, g.amount, g.category, g.expiresAt ?? null, g.actor, g.note ?? null],
  );
  const row = await q.query<GrantRow>('SELECT * FROM cairn.grants WHERE transfer_id = $1', [transferId]);
  const found = row.rows[0];
  if (!found || found.circle_id !== g.circleId) {
    throw errors.conflict(
      'TRANSFER_ID_REUSED',
      `Transfer id "${transferId}" was already used for another movement.`,
      'Use a new idempotency key for a new grant.',
    );
  }
  return { grant: toGrant(found), created: r.rows[0]!.created };
}

export async function listGrants(q: Queryable, circleId: string): Promise<GrantRow[]> {
  const r = await q.query<GrantRow>(
    'SELECT * FROM cairn.grants WHERE circle_id = $1 ORDER BY created_at DESC, id DESC',
    [circleId],
  );
  return r.rows.map(toGrant);
}

/** Holds `amount` for a run. False when the wallet cannot cover it (nothing changes). */
export async function reserve(
  q: Queryable,
  transferId: string,
  circleId: string,
  runId: string,
  amount: number,
  actor: string,
): Promise<boolean> {
  const r = await q.query<{ ok: boolean }>(
    'SELECT cairn.ledger_reserve($1, $2::uuid, $3::uuid, $4::bigint, $5) AS ok',
    [transferId, circleId, runId, amount, actor],
  );
  return r.rows[0]!.ok;
}

export async function capture(
  q: Queryable,
  transferId: string,
  runId: string,
  amount: number,
  actor: string,
): Promise<number> {
  const r = await q.query<{ n: string }>('SELECT cairn.ledger_capture($1, $2::uuid, $3::bigint, $4) AS n', [
    transferId,
    runId,
    amount,
    actor,
  ]);
  return Number(r.rows[0]!.n);
}

/** Releases `amount` of a run's hold, or all of it when `amount` is null. */
export async function release(
  q: Queryable,
  transferId: string,
  runId: string,
  amount: number | null,
  actor: string,
): Promise<number> {
  const r = await q.query<{ n: string }>('SELECT cairn.ledger_release($1, $2::uuid, $3::bigint, $4) AS n', [
    transferId,
    runId,
    amount,
    actor,
  ]);
  return Number(r.rows[0]!.n);
}

/** Expires what is left of grants past their expiry (as of `now`). Returns the micro-credits removed. */
export async function expireGrants(q: Queryable, now: Date | string, actor: string): Promise<number> {
  const r = await q.query<{ n: string }>('SELECT cairn.ledger_expire($1::timestamptz, $2) AS n', [
    typeof now === 'string' ? now : now.toISOString(),
    actor,
  ]);
  return Number(r.rows[0]!.n);
}

export async function heldBy(q: Queryable, runId: string): Promise<number> {
  const r = await q.query<{ held: string }>('SELECT held FROM cairn.run_holds WHERE run_id = $1', [runId]);
  return Number(r.rows[0]?.held ?? 0);
}

export interface Transfer {
  id: string;
  circle_id: string;
  kind: 'reserve' | 'capture' | 'release' | 'grant' | 'expire';
  amount: number;
  run_id: string | null;
  grant_id: string | null;
  actor: string;
  data: Record<string, unknown>;
  at: string;
}

export async function listTransfers(
  q: Queryable,
  f: { circleId: string; runId?: string; limit?: number; before?: string },
): Promise<Transfer[]> {
  const r = await q.query<Transfer>(
    `SELECT * FROM cairn.ledger_transfers
     WHERE circle_id = $1 AND ($2::uuid IS NULL OR run_id = $2) AND ($4::timestamptz IS NULL OR at < $4)
     ORDER BY at DESC, id DESC LIMIT $3`,
    [f.circleId, f.runId ?? null, f.limit ?? 500, f.before ?? null],
  );
  return r.rows.map((t) => ({ ...isoFields(t, ['at']), amount: Number(t.amount) }));
}

/** Per run: Σ reserved, Σ captured, Σ released, and what is still held. */
export async function runLedger(
  q: Queryable,
  runId: string,
): Promise<{ reserved: number; captured: number; released: number; held: number }> {
  const r = await q.query<{ kind: string; total: string }>(
    'SELECT kind, sum(amount)::bigint AS total FROM cairn.ledger_transfers WHERE run_id = $1 GROUP BY kind',
    [runId],
  );
  const by = Object.fromEntries(r.rows.map((x) => [x.kind, Number(x.total)]));
  return {
    reserved: by.reserve ?? 0,
    captured: by.capture ?? 0,
    released: by.release ?? 0,
    held: await heldBy(q, runId),
  };
}

import fc from 'fast-check';
import { expect, it } from 'vitest';
import { describeEachDriver } from '../../test/helpers/db.js';
import { newId } from '../core/ids.js';
import type { Db } from '../db/types.js';
import * as ledger from './ledger.js';

/**
 * Model-based test of the ledger: random sequences of grant / reserve /
 * capture / release / expire (with replayed transfer ids) run against the
 * database and against a plain in-memory model; after every step the wallet,
 * every grant and every hold must agree, and the invariants must hold.
 */

const BASE = Date.parse('2100-01-01T00:00:00Z');
const RUNS = 3;

type Op =
  | { t: 'grant'; key: number; amount: number; expiresIn: number | null; category: ledger.GrantCategory }
  | { t: 'reserve'; key: number; run: number; amount: number }
  | { t: 'capture'; key: number; run: number; amount: number }
  | { t: 'release'; key: number; run: number; amount: number | null }
  | { t: 'expire'; at: number };

const key = fc.integer({ min: 0, max: 12 }); // small: replays of a transfer id happen often
const amount = fc.integer({ min: 0, max: 5_000 });
const run = fc.integer({ min: 0, max: RUNS - 1 });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    t: fc.constant('grant' as const),
    key,
    amount: fc.integer({ min: 1, max: 10_000 }),
    expiresIn: fc.option(fc.integer({ min: 1, max: 5 }), { nil: null }),
    category: fc.constantFrom(...ledger.GRANT_CATEGORIES),
  }),
  fc.record({ t: fc.constant('reserve' as const), key, run, amount }),
  fc.record({ t: fc.constant('capture' as const), key, run, amount }),
  fc.record({ t: fc.constant('release' as const), key, run, amount: fc.option(amount, { nil: null }) }),
  fc.record({ t: fc.constant('expire' as const), at: fc.integer({ min: 0, max: 6 }) }),
);

interface ModelGrant {
  id: string;
  remaining: number;
  expiresAt: number | null;
  seq: number;
}

class Model {
  credits = 0;
  debits = 0;
  pending = 0;
  grants: ModelGrant[] = [];
  holds = new Map<string, number>();
  seen = new Set<string>();
  get available() {
    return this.credits - this.debits - this.pending;
  }
  consume(n: number) {
    const order = [...this.grants].sort(
      (a, b) => (a.expiresAt ?? Infinity) - (b.expiresAt ?? Infinity) || a.seq - b.seq,
    );
    for (const g of order) {
      if (n <= 0) break;
      const take = Math.min(g.remaining, n);
      g.remaining -= take;
      n -= take;
    }
  }
}

async function newCircle(db: Db): Promise<{ circle: string; runs: string[] }> {
  const circle = newId();
  const name = 'circle_' + circle.replace(/-/g, '');
  await db.query(
    `INSERT INTO cairn.circles (id, slug, schema_name, role_name, role_password) VALUES ($1, $2, $3, $3, 'x')`,
    [circle, 'm' + circle.slice(-12), name],
  );
  await db.query('INSERT INTO cairn.wallets (circle_id) VALUES ($1)', [circle]);
  const runs: string[] = [];
  for (let i = 0; i < RUNS; i++) {
    const id = newId();
    await db.query(
      `INSERT INTO cairn.runs (id, circle_id, kind, operation, status, trigger, engine_version, trace_id)
       VALUES ($1, $2, 'invoke', 'invoke', 'running', '{"type":"api","source":null,"actor":"t"}', 't', 't')`,
      [id, circle],
    );
    runs.push(id);
  }
  return { circle, runs };
}

describeEachDriver('ledger (model-based)', ({ db, driver }) => {
  it('agrees with the model after every step; Σ grants left = balance; holds = reserved − captured − released', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 40 }), async (ops) => {
        const d = db();
        const { circle, runs } = await newCircle(d);
        const m = new Model();
        let seq = 0;
        const tid = (prefix: string, k: number) => `${circle}:${prefix}:${k}`;
        for (const op of ops) {
          switch (op.t) {
            case 'grant': {
              const id = tid('g', op.key);
              const expiresAt = op.expiresIn === null ? null : BASE + op.expiresIn * 60_000;
              const r = await ledger.grant(d, {
                circleId: circle,
                amount: op.amount,
                category: op.category,
                expiresAt: expiresAt === null ? null : new Date(expiresAt).toISOString(),
                actor: 'model',
                transferId: id,
              });
              expect(r.created).toBe(!m.seen.has(id));
              if (!m.seen.has(id)) {
                m.seen.add(id);
                m.credits += op.amount;
                m.grants.push({ id: r.grant.id, remaining: op.amount, expiresAt, seq: seq++ });
              }
              break;
            }
            case 'reserve': {
              const id = tid('r', op.key);
              const runId = runs[op.run]!;
              const ok = await ledger.reserve(d, id, circle, runId, op.amount, 'model');
              if (m.seen.has(id) || op.amount === 0) expect(ok).toBe(true);
              else if (op.amount <= m.available) {
                expect(ok).toBe(true);
                m.seen.add(id);
                m.pending += op.amount;
                m.holds.set(runId, (m.holds.get(runId) ?? 0) + op.amount);
              } else expect(ok).toBe(false);
              break;
            }
            case 'capture': {
              const id = tid('c', op.key);
              const runId = runs[op.run]!;
              const held = m.holds.get(runId) ?? 0;
              const fromHold = Math.min(held, op.amount);
              const covered = op.amount - fromHold <= m.available;
              let threw = false;
              const n = await ledger.capture(d, id, runId, op.amount, 'model').catch((e) => {
                threw = true;
                expect(e.code).toBe('23514'); // the wallet's floor CHECK
                return 0;
              });
              if (m.seen.has(id) || op.amount === 0) {
                expect(threw).toBe(false);
                expect(n).toBe(0);
              } else if (covered) {
                expect(threw).toBe(false);
                expect(n).toBe(op.amount);
                m.seen.add(id);
                m.holds.set(runId, held - fromHold);
                m.pending -= fromHold;
                m.debits += op.amount;
                m.consume(op.amount);
              } else expect(threw).toBe(true);
              break;
            }
            case 'release': {
              const id = tid('l', op.key);
              const runId = runs[op.run]!;
              const held = m.holds.get(runId) ?? 0;
              const n = await ledger.release(d, id, runId, op.amount, 'model');
              const want = m.seen.has(id) ? 0 : Math.min(held, op.amount ?? held);
              expect(n).toBe(want);
              if (want > 0) {
                m.seen.add(id);
                m.holds.set(runId, held - want);
                m.pending -= want;
              }
              break;
            }
            case 'expire': {
              const now = BASE + op.at * 60_000;
              // Only this circle's grants: other properties' circles share the database.
              let total = 0;
              const due = m.grants
                .filter((g) => g.expiresAt !== null && g.expiresAt <= now && g.remaining > 0)
                .sort((a, b) => a.expiresAt! - b.expiresAt! || (a.id < b.id ? -1 : 1));
              for (const g of due) {
                const amt = Math.min(g.remaining, Math.max(0, m.available));
                g.remaining -= amt;
                m.debits += amt;
                total += amt;
              }
              const removed = await d.query<{ n: number }>(
                `SELECT coalesce(sum(amount), 0)::bigint AS n FROM cairn.ledger_transfers
                   WHERE circle_id = $1 AND kind = 'expire'`,
                [circle],
              );
              const before = Number(removed.rows[0]!.n);
              await ledger.expireGrants(d, new Date(now), 'model');
              const after = await d.query<{ n: number }>(
                `SELECT coalesce(sum(amount), 0)::bigint AS n FROM cairn.ledger_transfers
                   WHERE circle_id = $1 AND kind = 'expire'`,
                [circle],
              );
              expect(Number(after.rows[0]!.n) - before).toBe(total);
              break;
            }
          }
          // The database agrees with the model after every step.
          const w = await ledger.getWallet(d, circle);
          expect([w.credits_posted, w.debits_posted, w.debits_pending]).toEqual([
            m.credits,
            m.debits,
            m.pending,
          ]);
          expect(w.available).toBeGreaterThanOrEqual(0);
          const grants = await ledger.listGrants(d, circle);
          expect(grants.reduce((s, g) => s + g.remaining, 0)).toBe(w.balance);
          for (const g of m.grants) expect(grants.find((x) => x.id === g.id)?.remaining).toBe(g.remaining);
          for (const r of runs) {
            const l = await ledger.runLedger(d, r);
            expect(l.held).toBe(m.holds.get(r) ?? 0);
            const fromHold = await d.query<{ n: number }>(
              `SELECT coalesce(sum((data ->> 'from_hold')::bigint), 0)::bigint AS n FROM cairn.ledger_transfers
                 WHERE run_id = $1 AND kind = 'capture'`,
              [r],
            );
            expect(l.reserved).toBe(Number(fromHold.rows[0]!.n) + l.released + l.held);
          }
        }
      }),
      { numRuns: driver === 'pglite' ? 40 : 60 },
    );
  }, 300_000);

  it('refuses a negative or non-integer grant and changes nothing', async () => {
    const d = db();
    const { circle } = await newCircle(d);
    for (const amount of [-5, 0, 1.5, Number.NaN]) {
      await expect(
        ledger.grant(d, { circleId: circle, amount, category: 'paid', actor: 't' }),
      ).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    }
    const w = await ledger.getWallet(d, circle);
    expect(w.credits_posted).toBe(0);
  });
});

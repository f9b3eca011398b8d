import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver, freshDb } from '../helpers/db.js';
import { testApp, type TestApp } from '../helpers/app.js';
import { PgDb } from '../../src/db/pg.js';
import { createCircle } from '../../src/store/circles.js';
import { newId } from '../../src/core/ids.js';
import * as ledger from '../../src/store/ledger.js';
import { describe } from 'vitest';

const PRICE = 1_000; // sql invoke

describeEachDriver('wallet under concurrent invokes', ({ db }) => {
  let t: TestApp;
  beforeAll(async () => {
    t = await testApp(db(), { welcomeCredits: 0 });
  });
  afterAll(async () => {
    await t.close();
  });

  it('30 concurrent invokes against a wallet covering exactly 10: 10 succeed, 20 get 402', async () => {
    const c = await t.circle('ten');
    const A = c.tokens.admin;
    const g = await t.call(
      'POST',
      '/api/ten/wallet/grants',
      { amount: 10 * PRICE, category: 'paid' },
      t.admin,
      {
        'idempotency-key': 'grant-ten',
      },
    );
    expect(g.status).toBe(201);
    // Replaying the grant changes nothing.
    const again = await t.call(
      'POST',
      '/api/ten/wallet/grants',
      { amount: 10 * PRICE, category: 'paid' },
      t.admin,
      {
        'idempotency-key': 'grant-ten',
      },
    );
    expect(again.status).toBe(201); // the stored answer, replayed (one idempotency mechanism)
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.body.wallet.credits_posted).toBe(10 * PRICE);
    const posted = (await t.call('GET', '/api/ten/wallet', undefined, A)).body;
    expect(posted.credits_posted).toBe(10 * PRICE);
    await t.call(
      'POST',
      '/api/ten/ops/create',
      { element_type: 'sql', slug: 'one', spec: { query: 'select 1 as x' } },
      A,
    );

    const answers = await Promise.all(
      Array.from({ length: 30 }, () => t.call('POST', '/api/ten/one/ops/invoke', {}, c.tokens.execute)),
    );
    const ok = answers.filter((a) => a.status === 200);
    const refused = answers.filter((a) => a.status === 402);
    expect(ok).toHaveLength(10);
    expect(ok.every((a) => a.body.status === 'succeeded' && a.body.credits_used === PRICE)).toBe(true);
    expect(refused).toHaveLength(20);
    for (const r of refused) {
      expect(r.body.error).toMatchObject({
        code: 'INSUFFICIENT_CREDITS',
        class: 'payment',
        retryable: false,
      });
      expect(r.body.error._suggestion).toMatch(/wallet\/grants/);
    }
    const w = (await t.call('GET', '/api/ten/wallet', undefined, A)).body;
    expect(w).toMatchObject({
      credits_posted: 10 * PRICE,
      debits_posted: 10 * PRICE,
      debits_pending: 0,
      available: 0,
    });
    // No run was created for a refused request.
    expect((await t.call('GET', '/api/ten/runs?limit=500', undefined, A)).body.runs).toHaveLength(10);
    // The thresholds fired once each.
    const events = await db().query<{ name: string }>(
      "SELECT name FROM cairn.events WHERE circle_id = $1 AND name LIKE 'wallet.%' ORDER BY id",
      [c.id],
    );
    expect(events.rows.map((e) => e.name)).toEqual(['wallet.threshold_80', 'wallet.threshold_100']);
  });

  it('a grant past its expiry loses what is left of it when the worker sweeps', async () => {
    const c = await t.circle('expiring');
    const past = new Date(Date.now() - 1000).toISOString();
    await t.call(
      'POST',
      '/api/expiring/wallet/grants',
      { amount: 5_000, category: 'promotional', expires_at: past },
      t.admin,
    );
    await t.call('POST', '/api/expiring/wallet/grants', { amount: 2_000, category: 'paid' }, t.admin);
    expect((await t.call('GET', '/api/expiring/wallet', undefined, c.tokens.read)).body.balance).toBe(7_000);
    await t.worker!.reap();
    const w = (await t.call('GET', '/api/expiring/wallet', undefined, c.tokens.read)).body;
    expect(w).toMatchObject({ balance: 2_000, debits_posted: 5_000 });
    const grants = (await t.call('GET', '/api/expiring/wallet/grants', undefined, c.tokens.read)).body.grants;
    expect(grants.map((g: any) => [g.category, g.remaining]).sort()).toEqual([
      ['paid', 2_000],
      ['promotional', 0],
    ]);
    const l = (await t.call('GET', '/api/expiring/wallet/ledger', undefined, c.tokens.read)).body.transfers;
    expect(l.map((x: any) => x.kind)).toEqual(['expire', 'grant', 'grant']);
  });

  it('refuses a negative or non-integer grant, and a grant from a circle token', async () => {
    const c = await t.circle('refuse');
    for (const amount of [-1, 0, 2.5]) {
      const r = await t.call('POST', '/api/refuse/wallet/grants', { amount }, t.admin);
      expect(r.status).toBe(400);
      expect(r.body.error.code).toBe('INVALID_INPUT');
      expect(r.body.error._suggestion).toMatch(/micro-credits/);
    }
    const r = await t.call('POST', '/api/refuse/wallet/grants', { amount: 5 }, c.tokens.admin);
    expect(r.status).toBe(403);
    expect((await t.call('GET', '/api/refuse/wallet', undefined, c.tokens.read)).body.credits_posted).toBe(0);
  });
});

/**
 * Stress on real PostgreSQL: many connections race reservations, captures and
 * releases on one small wallet. The floor is never crossed (the database
 * refuses it), and once every run settles Σ reserved = Σ captured + Σ released
 * to the micro-credit.
 */
describe('ledger stress on PostgreSQL', () => {
  let handle: Awaited<ReturnType<typeof freshDb>>;
  beforeAll(async () => {
    handle = await freshDb('pg');
  }, 60_000);
  afterAll(async () => {
    await handle.drop();
  });

  it('many connections, many runs, a small wallet: floor held, books balance', async () => {
    const db = new PgDb(handle.url!, { max: 24 });
    try {
      const circle = await createCircle(db, 'stress');
      await ledger.grant(db, { circleId: circle.id, amount: 50_000, category: 'paid', actor: 't' });
      const RUNS = 400;
      const runIds: string[] = [];
      for (let i = 0; i < RUNS; i++) {
        const id = newId();
        runIds.push(id);
        await db.query(
          `INSERT INTO cairn.runs (id, circle_id, kind, operation, status, trigger, engine_version, trace_id)
           VALUES ($1, $2, 'batch', 'invoke', 'running', '{"type":"api","source":null,"actor":"t"}', 't', 't')`,
          [id, circle.id],
        );
      }
      let minAvailable = Infinity;
      let reservedOk = 0;
      const watch = setInterval(() => {
        void ledger
          .getWallet(db, circle.id)
          .then((w) => (minAvailable = Math.min(minAvailable, w.available)));
      }, 5);
      await Promise.all(
        runIds.map(async (id, i) => {
          const amount = 300 + (i % 7) * 100;
          const ok = await ledger.reserve(db, `${id}:reserve:0`, circle.id, id, amount, 't');
          if (!ok) return;
          reservedOk++;
          // Capture part of it in a few steps, some beyond the hold when the wallet allows.
          for (let k = 0; k < 3; k++) {
            const want = (i + k) % 5 === 0 ? amount : 100;
            await ledger.capture(db, `${id}:capture:${k}`, id, want, 't').catch((e) => {
              if (e.code !== '23514') throw e; // refused by the floor: fine, and nothing changed
            });
            // A replayed transfer id has no second effect.
            await ledger.capture(db, `${id}:capture:${k}`, id, want, 't').catch(() => undefined);
          }
          await ledger.release(db, `${id}:release`, id, null, 't');
        }),
      );
      clearInterval(watch);
      const w = await ledger.getWallet(db, circle.id);
      expect(minAvailable).toBeGreaterThanOrEqual(0);
      expect(w.available).toBeGreaterThanOrEqual(0);
      expect(w.debits_pending).toBe(0);
      expect(reservedOk).toBeGreaterThan(10);
      expect(reservedOk).toBeLessThan(RUNS); // the wallet could not cover everyone
      const sums = await db.query<{ kind: string; total: number; from_hold: number }>(
        `SELECT kind, sum(amount)::bigint AS total, coalesce(sum((data ->> 'from_hold')::bigint), 0)::bigint AS from_hold
         FROM cairn.ledger_transfers WHERE circle_id = $1 GROUP BY kind`,
        [circle.id],
      );
      const by = Object.fromEntries(sums.rows.map((r) => [r.kind, r]));
      const reserved = Number(by.reserve!.total);
      const captured = Number(by.capture!.total);
      const fromHold = Number(by.capture!.from_hold);
      const released = Number(by.release?.total ?? 0);
      // Every reserved micro-credit was either captured or released.
      expect(reserved).toBe(fromHold + released);
      // Posted debits are exactly the captures; the balance never went below the floor.
      expect(w.debits_posted).toBe(captured);
      expect(w.credits_posted - w.debits_posted).toBeGreaterThanOrEqual(0);
      const grants = await ledger.listGrants(db, circle.id);
      expect(grants.reduce((s, g) => s + g.remaining, 0)).toBe(w.balance);
    } finally {
      await db.close();
    }
  }, 120_000);
});

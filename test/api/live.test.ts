import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, type TestApp } from '../helpers/app.js';
import { followEvents, SseParser, type SseEvent } from '../../src/cli/sse.js';
import { PgDb } from '../../src/db/pg.js';
import { buildApp } from '../../src/api/app.js';
import { LiveHub, type Subscriber } from '../../src/api/live.js';
import { comparePos, parsePos, pruneLive, type LiveRow } from '../../src/store/live.js';
import { circleIdentity, getCircleBySlug } from '../../src/store/circles.js';

interface Ev {
  id: string;
  event: string;
  body: any;
}

/** Reads a stream until `done` says so (or the timeout), then closes it. */
async function collect(
  url: string,
  token: string,
  done: (evs: Ev[]) => boolean,
  opts: { lastEventId?: string; timeoutMs?: number } = {},
): Promise<Ev[]> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), opts.timeoutMs ?? 15_000);
  const out: Ev[] = [];
  try {
    for await (const e of followEvents(url, {
      headers: { authorization: `Bearer ${token}` },
      lastEventId: opts.lastEventId,
      signal: ac.signal,
      reconnect: false,
    })) {
      out.push({ id: e.id!, event: e.event, body: JSON.parse(e.data) });
      if (done(out)) break;
    }
  } catch (e) {
    if (!ac.signal.aborted) throw e;
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
  return out;
}

/** Reads until nothing new arrives for `quietMs`. */
async function collectQuiet(url: string, token: string, lastEventId?: string, quietMs = 600): Promise<Ev[]> {
  const ac = new AbortController();
  const out: Ev[] = [];
  let quiet = setTimeout(() => ac.abort(), quietMs * 3);
  try {
    for await (const e of followEvents(url, {
      headers: { authorization: `Bearer ${token}` },
      lastEventId,
      signal: ac.signal,
      reconnect: false,
    })) {
      out.push({ id: e.id!, event: e.event, body: JSON.parse(e.data) });
      clearTimeout(quiet);
      quiet = setTimeout(() => ac.abort(), quietMs);
    }
  } catch (e) {
    if (!ac.signal.aborted) throw e;
  } finally {
    clearTimeout(quiet);
  }
  return out;
}

function increasing(evs: Ev[]): boolean {
  for (let i = 1; i < evs.length; i++)
    if (comparePos(parsePos(evs[i - 1]!.id)!, parsePos(evs[i]!.id)!) >= 0) return false;
  return true;
}

const ended = (evs: Ev[]) => evs.some((e) => e.event === 'status' && e.body.data.to === 'succeeded');

describeEachDriver('live events', ({ db, url, driver }) => {
  let t: TestApp;
  let base: string;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  let other: Awaited<ReturnType<TestApp['circle']>>;
  beforeAll(async () => {
    t = await testApp(db());
    base = await t.app.listen({ port: 0, host: '127.0.0.1' });
    c = await t.circle('live-circle');
    other = await t.circle('live-other');
    for (const slug of ['one', 'two'])
      expect(
        (
          await t.call(
            'POST',
            `/api/${c.slug}/ops/create`,
            { element_type: 'sql', slug, spec: { query: 'select $1::int + 1 as n' } },
            c.tokens.write,
          )
        ).status,
      ).toBe(201);
  });
  afterAll(() => t.close());

  it("a run's stream replays its history in order, then a resume gives exactly the rest", async () => {
    const r = await t.call('POST', `/api/${c.slug}/one/ops/invoke`, { params: [1] }, c.tokens.execute);
    expect(r.body.status).toBe('succeeded');
    const all = await collectQuiet(`${base}/api/runs/${r.body.run_id}/events`, c.tokens.read);
    expect(increasing(all)).toBe(true);
    expect(all.every((e) => e.body.run_id === r.body.run_id && e.body.circle_id === c.id)).toBe(true);
    // A sync invoke is claimed as it is created (its audit says queued → running in one go).
    const statuses = all.filter((e) => e.event === 'status').map((e) => e.body.data.to);
    expect(statuses).toEqual(['running', 'succeeded']);
    // The audit trail's status transitions and ledger movements are the status and cost events.
    expect(all.filter((e) => e.event === 'audit' && ['status', 'ledger'].includes(e.body.data.type))).toEqual(
      [],
    );
    const types = new Set(all.map((e) => e.event));
    for (const ty of ['status', 'item', 'cost']) expect(types, ty).toContain(ty);
    const costs = all.filter((e) => e.event === 'cost').map((e) => e.body.data.kind);
    expect(costs).toContain('reserve');
    expect(costs).toContain('capture');
    const item = all.find((e) => e.event === 'item' && e.body.data.status === 'succeeded');
    expect(item?.body.data).toMatchObject({ key: expect.any(String), status: 'succeeded' });
    expect(all.find((e) => e.event === 'status')!.body).toMatchObject({
      kind: 'invoke',
      element_slug: 'one',
    });
    // A run's terminal status is the last event its transaction wrote.
    expect(all.at(-1)!.event).toBe('status');

    for (const k of [0, Math.floor(all.length / 2), all.length - 1]) {
      const rest = await collectQuiet(
        `${base}/api/runs/${r.body.run_id}/events`,
        c.tokens.read,
        all[k]!.id,
        400,
      );
      expect(rest.map((e) => e.id)).toEqual(all.slice(k + 1).map((e) => e.id));
    }
    // types= filters; the history is the same rows.
    const onlyStatus = await collectQuiet(
      `${base}/api/runs/${r.body.run_id}/events?types=status`,
      c.tokens.read,
    );
    expect(onlyStatus.map((e) => e.id)).toEqual(all.filter((e) => e.event === 'status').map((e) => e.id));
  });

  it("a circle's stream delivers changes as they happen, filtered, none before it opened", async () => {
    const before = await t.call('POST', `/api/${c.slug}/one/ops/invoke`, { params: [2] }, c.tokens.execute);
    const seen: Ev[] = [];
    const watching = collect(
      `${base}/api/${c.slug}/events?types=status&element=two&kind=invoke`,
      c.tokens.read,
      (evs) => {
        seen.length = 0;
        seen.push(...evs);
        return ended(evs);
      },
    );
    const elsewhere = collect(`${base}/api/${c.slug}/events?element=one`, c.tokens.read, () => false, {
      timeoutMs: 2_500,
    });
    // Subscribed before the invoke: wait until both streams are open.
    await new Promise((res) => setTimeout(res, 300));
    const r = await t.call('POST', `/api/${c.slug}/two/ops/invoke`, { params: [3] }, c.tokens.execute);
    const evs = await watching;
    expect(evs.map((e) => e.body.data.to)).toEqual(['running', 'succeeded']);
    expect(evs.every((e) => e.event === 'status' && e.body.run_id === r.body.run_id)).toBe(true);
    expect(evs.some((e) => e.body.run_id === before.body.run_id)).toBe(false);
    expect(await elsewhere).toEqual([]);
  });

  it('is scoped and authenticated like the rest of the API; a bad Last-Event-ID is a typed 400', async () => {
    const r = await t.call('POST', `/api/${c.slug}/one/ops/invoke`, { params: [4] }, c.tokens.execute);
    const get = (path: string, token?: string, headers: Record<string, string> = {}) =>
      fetch(base + path, { headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers } });
    const anon = await get(`/api/runs/${r.body.run_id}/events`);
    expect(anon.status).toBe(401);
    const foreign = await get(`/api/runs/${r.body.run_id}/events`, other.tokens.admin);
    expect(foreign.status).toBe(404);
    expect(((await foreign.json()) as any).error.code).toBe('RUN_NOT_FOUND');
    const foreignCircle = await get(`/api/${c.slug}/events`, other.tokens.admin);
    expect(foreignCircle.status).toBe(404);
    expect(((await foreignCircle.json()) as any).error.code).toBe('CIRCLE_NOT_FOUND');
    const bad = await get(`/api/runs/${r.body.run_id}/events`, c.tokens.read, { 'last-event-id': 'abc' });
    expect(bad.status).toBe(400);
    const body = (await bad.json()) as any;
    expect(body.error.code).toBe('INVALID_INPUT');
    expect(body.error._suggestion).toMatch(/id/);
    const badType = await get(`/api/${c.slug}/events?types=bogus`, c.tokens.read);
    expect(badType.status).toBe(400);
  });

  it('the logs op follows: follow=1 streams the log lines of a run as they are written', async () => {
    const created = await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      {
        element_type: 'python',
        slug: 'talker',
        spec: {
          source: {
            code: 'import sys\ndef handler(d):\n    print("hello", d["n"])\n    print("oops", file=sys.stderr)\n    return {}\n',
          },
        },
      },
      c.tokens.write,
    );
    expect(created.status).toBe(201);
    const r = await t.call('POST', `/api/${c.slug}/talker/ops/invoke?async=1`, { n: 5 }, c.tokens.execute);
    expect([200, 202]).toContain(r.status);
    const evs = await collect(
      `${base}/api/${c.slug}/talker/ops/logs?run_id=${r.body.run_id}&follow=1`,
      c.tokens.read,
      ended,
      { timeoutMs: 60_000 },
    );
    expect(evs.every((e) => e.event === 'log' || e.event === 'status')).toBe(true);
    expect(evs.at(-1)!.body.data.to).toBe('succeeded');
    const lines = evs.filter((e) => e.event === 'log').flatMap((e) => e.body.data.lines);
    // (Python buffers stdout until it exits, so the two streams' order is the sandbox's to tell.)
    expect(lines.map((l: [number, string, string]) => [l[1], l[2]]).sort()).toEqual([
      ['stderr', 'oops'],
      ['stdout', 'hello 5'],
    ]);
    // Without run_id it follows the element's new runs only, from now on.
    const next = collect(
      `${base}/api/${c.slug}/talker/ops/logs?follow=1`,
      c.tokens.read,
      (e) => e.some((x) => x.event === 'log'),
      {
        timeoutMs: 60_000,
      },
    );
    await new Promise((res) => setTimeout(res, 300));
    const r2 = await t.call('POST', `/api/${c.slug}/talker/ops/invoke`, { n: 6 }, c.tokens.execute);
    const got = await next;
    const log = got.find((e) => e.event === 'log')!;
    expect(log.body.run_id).toBe(r2.body.run_id);
    expect(log.body.data.lines.map((l: [number, string, string]) => l[2])).toContain('hello 6');
  }, 120_000);

  it('an approval asked inside a fan-out (its task written already waiting) is an approval event', async () => {
    const mk = async (body: unknown) =>
      expect((await t.call('POST', `/api/${c.slug}/ops/create`, body, c.tokens.write)).status).toBe(201);
    await mk({
      element_type: 'hitl',
      slug: 'ok-each',
      spec: { instructions: 'Check it.', approvers: { role: 'execute' } },
    });
    await mk({
      element_type: 'workflow',
      slug: 'fan-approve',
      spec: { steps: [{ name: 'each', element: 'ok-each', for_each: '${{ [1, 2] }}' }] },
    });
    const r = await t.call(
      'POST',
      `/api/${c.slug}/fan-approve/ops/trigger`,
      { parameters: {} },
      c.tokens.execute,
    );
    expect(r.status).toBe(202);
    const evs = await collect(
      `${base}/api/runs/${r.body.run_id}/events?types=approval`,
      c.tokens.read,
      (e) => e.filter((x) => x.body.data.requested === true).length >= 2,
      { timeoutMs: 20_000 },
    );
    expect(
      evs
        .filter((e) => e.body.data.requested === true)
        .map((e) => e.body.data.task)
        .sort(),
    ).toEqual(['each[0]', 'each[1]']);
    await t.call('POST', `/api/runs/${r.body.run_id}/cancel`, {}, c.tokens.execute);
  });

  it('the stream is a window: rows older than the retention are pruned, newer ones kept', async () => {
    await db().query(
      `INSERT INTO cairn.live_events (circle_id, type, data, at) VALUES ($1, 'audit', '{"old":true}', now() - interval '48 hours')`,
      [other.id],
    );
    const before = Number(
      (await db().query<{ n: string }>(`SELECT count(*) AS n FROM cairn.live_events`)).rows[0]!.n,
    );
    expect(await pruneLive(db(), 24)).toBe(1);
    const after = Number(
      (await db().query<{ n: string }>(`SELECT count(*) AS n FROM cairn.live_events`)).rows[0]!.n,
    );
    expect(after).toBe(before - 1);
  });

  it('a history longer than the send buffer is paced, not cut off', async () => {
    const r = await t.call('POST', `/api/${c.slug}/one/ops/invoke`, { params: [11] }, c.tokens.execute);
    const all = await collectQuiet(`${base}/api/runs/${r.body.run_id}/events`, c.tokens.read);
    const bytes = all.reduce((n, e) => n + JSON.stringify(e.body).length, 0);
    // A process whose buffer holds far less than the run's history.
    const hub = new LiveHub(db(), { maxBufferBytes: Math.floor(bytes / 8) });
    const small = await buildApp({ ...t.deps, live: hub });
    const smallBase = await small.listen({ port: 0, host: '127.0.0.1' });
    try {
      const got = await collectQuiet(`${smallBase}/api/runs/${r.body.run_id}/events`, c.tokens.read);
      expect(got.map((e) => e.id)).toEqual(all.map((e) => e.id));
    } finally {
      await small.close();
      await hub.close();
    }
  });

  it('a subscriber too slow to keep up is cut off, and resumes from its last id without a gap', async () => {
    const hub = new LiveHub(db(), { maxBufferBytes: 0 });
    const got: LiveRow[] = [];
    let closed = 0;
    const slow: Subscriber = {
      accepts: () => true,
      send: (row) => {
        got.push(row);
        return got.length < 2; // the second row finds its buffer over the limit
      },
      close: () => void closed++,
    };
    const off = await hub.subscribe(c.id, slow, undefined);
    for (let i = 0; i < 3; i++)
      await t.call('POST', `/api/${c.slug}/one/ops/invoke`, { params: [i] }, c.tokens.execute);
    await new Promise((res) => setTimeout(res, 500));
    expect(closed).toBe(1);
    expect(got.length).toBe(2); // nothing more was sent once it was cut off
    off();
    // Resuming from the last row it got, it receives the rest: the first new one follows directly.
    const rest: LiveRow[] = [];
    const again = await hub.subscribe(
      c.id,
      { accepts: () => true, send: (row) => (rest.push(row), true), close: () => undefined },
      got[1]!.pos,
    );
    await new Promise((res) => setTimeout(res, 300));
    again();
    await hub.close();
    expect(rest.length).toBeGreaterThan(0);
    expect(comparePos(rest[0]!.pos, got[1]!.pos)).toBeGreaterThan(0);
    const all = await collectQuiet(
      `${base}/api/${c.slug}/events`,
      c.tokens.read,
      `${got[0]!.pos.xid}-${got[0]!.pos.id}`,
    );
    expect(all.map((e) => e.id).slice(1, 1 + rest.length)).toEqual(
      rest.map((r) => `${r.pos.xid}-${r.pos.id}`),
    );
  });

  if (driver === 'pg') {
    it('an event of a transaction that commits late is delivered before later ones, never skipped', async () => {
      const r = await t.call('POST', `/api/${c.slug}/one/ops/invoke`, { params: [6] }, c.tokens.execute);
      const seen: Ev[] = [];
      const ac = new AbortController();
      const reading = (async () => {
        for await (const e of followEvents(`${base}/api/${c.slug}/events`, {
          headers: { authorization: `Bearer ${c.tokens.read}` },
          signal: ac.signal,
          reconnect: false,
        }))
          seen.push({ id: e.id!, event: e.event, body: JSON.parse(e.data) });
      })().catch(() => undefined);
      await new Promise((res) => setTimeout(res, 300));
      // A transaction writes an audit event (its xid is now the oldest running) and stays open…
      const slow = new pg.Client({ connectionString: url() });
      await slow.connect();
      await slow.query('BEGIN');
      await slow.query(
        `INSERT INTO cairn.run_events (run_id, circle_id, type, actor, data) VALUES ($1, $2, 'note', 'test', '{"late":true}')`,
        [r.body.run_id, c.id],
      );
      // …while a later run commits its events.
      const later = await t.call('POST', `/api/${c.slug}/two/ops/invoke`, { params: [7] }, c.tokens.execute);
      expect(later.body.status).toBe('succeeded');
      await new Promise((res) => setTimeout(res, 700));
      // Held back: nothing after the open transaction's position may be delivered before it.
      expect(seen.some((e) => e.body.run_id === later.body.run_id)).toBe(false);
      await slow.query('COMMIT');
      await slow.end();
      const deadline = Date.now() + 5_000;
      while (!ended(seen.filter((e) => e.body.run_id === later.body.run_id)) && Date.now() < deadline)
        await new Promise((res) => setTimeout(res, 50));
      ac.abort();
      await reading;
      const lateAt = seen.findIndex((e) => e.body.data.data?.late === true);
      const firstLater = seen.findIndex((e) => e.body.run_id === later.body.run_id);
      expect(lateAt).toBeGreaterThanOrEqual(0);
      expect(firstLater).toBeGreaterThan(lateAt);
      expect(increasing(seen)).toBe(true);
    });

    it("a circle's own SQL holding a writing transaction open stalls no other circle's stream", async () => {
      // The other circle's role, logged in as its SQL is, writes in its schema and does not commit.
      const row = (await getCircleBySlug(db(), other.slug))!;
      const id = circleIdentity(row);
      expect(
        (
          await t.call(
            'POST',
            `/api/${other.slug}/ops/create`,
            {
              element_type: 'sql',
              slug: 'ddl',
              spec: { query: 'create table if not exists scratch (x int)' },
            },
            other.tokens.write,
          )
        ).status,
      ).toBe(201);
      expect(
        (await t.call('POST', `/api/${other.slug}/ddl/ops/invoke`, {}, other.tokens.execute)).body.status,
      ).toBe('succeeded');
      const u = new URL(url()!);
      u.username = id.role;
      u.password = id.password;
      const tenant = new pg.Client({ connectionString: u.toString() });
      await tenant.connect();
      await tenant.query('BEGIN');
      await tenant.query(`INSERT INTO ${id.schema}.scratch VALUES (1)`);
      expect((await tenant.query('SELECT pg_current_xact_id_if_assigned() AS x')).rows[0].x).not.toBeNull();
      try {
        const t0 = Date.now();
        const watching = collect(`${base}/api/${c.slug}/events?types=status`, c.tokens.read, ended, {
          timeoutMs: 8_000,
        });
        await new Promise((res) => setTimeout(res, 300));
        await t.call('POST', `/api/${c.slug}/one/ops/invoke`, { params: [9] }, c.tokens.execute);
        const evs = await watching;
        expect(ended(evs)).toBe(true);
        expect(Date.now() - t0).toBeLessThan(4_000);
      } finally {
        await tenant.query('ROLLBACK');
        await tenant.end();
      }
    });

    it('events committed through another process reach this one, and a resume there loses nothing', async () => {
      // A second API process on the same database (its own pool, LISTEN connection and hub), no worker.
      const db2 = new PgDb(url()!, { max: 4 });
      const app2 = await buildApp({ ...t.deps, db: db2, live: undefined });
      const base2 = await app2.listen({ port: 0, host: '127.0.0.1' });
      try {
        const first: Ev[] = [];
        const ac = new AbortController();
        const reading = (async () => {
          for await (const e of followEvents(`${base2}/api/${c.slug}/events`, {
            headers: { authorization: `Bearer ${c.tokens.read}` },
            signal: ac.signal,
            reconnect: false,
          })) {
            first.push({ id: e.id!, event: e.event, body: JSON.parse(e.data) });
            if (first.length === 4) break; // drop mid-run
          }
          ac.abort();
        })().catch(() => undefined);
        await new Promise((res) => setTimeout(res, 300));
        const r = await t.call('POST', `/api/${c.slug}/one/ops/invoke`, { params: [8] }, c.tokens.execute);
        await reading;
        expect(first.length).toBe(4);
        // Reconnect to the first process with the last id: the rest, once each.
        const rest = await collectQuiet(`${base}/api/${c.slug}/events`, c.tokens.read, first.at(-1)!.id);
        const all = await collectQuiet(`${base}/api/runs/${r.body.run_id}/events`, c.tokens.read);
        const got = [...first, ...rest].filter((e) => e.body.run_id === r.body.run_id).map((e) => e.id);
        expect(got).toEqual(all.map((e) => e.id));
        expect(new Set(got).size).toBe(got.length);
      } finally {
        await app2.close();
        await db2.close();
      }
    });
  }
});

it('the SSE parser handles chunks split anywhere, comments, CRLF and multi-line data', () => {
  const text =
    'retry: 1000\r\n: hi\r\n\r\nid: 1-2\nevent: status\ndata: {"a":\ndata: 1}\n\n: heartbeat\n\nid: 1-3\ndata: x\r\n\r\n';
  for (let cut = 0; cut < text.length; cut++) {
    const p = new SseParser();
    const evs: SseEvent[] = [...p.push(text.slice(0, cut)), ...p.push(text.slice(cut))];
    expect(evs).toEqual([
      { id: '1-2', event: 'status', data: '{"a":\n1}' },
      { id: '1-3', event: 'message', data: 'x' },
    ]);
    expect(p.lastId).toBe('1-3');
  }
});

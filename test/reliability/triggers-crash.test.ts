import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pgWithCircle } from '../helpers/db.js';
import { cairn, ensureBuilt, until, type Proc } from '../helpers/bin.js';
import type { Db } from '../../src/db/types.js';
import type { CircleRow } from '../../src/store/circles.js';
import { getType, operationsOf, typeLookup } from '../../src/elements/registry.js';
import { createElement, updateElement } from '../../src/elements/service.js';
import { getElement } from '../../src/store/elements.js';
import { submitRun } from '../../src/engine/submit.js';
import { Engine } from '../../src/engine/engine.js';
import { Worker } from '../../src/engine/worker.js';
import { getRun, type RunRow } from '../../src/store/runs.js';
import { claimHandoffs } from '../../src/store/triggers.js';

/**
 * Triggers across real `bin/cairn` processes on one PostgreSQL (R-TRIGGERS, reliability):
 *
 * 1. Three `cairn serve` processes (each runs a worker, hence the engine's TriggerSystem) share an
 *    every-second schedule for DURATION_MS; midway one is SIGKILLed *while it fires an occurrence*
 *    (the test holds an uncommitted run row with that occurrence's idempotency key, so the firing
 *    process blocks inside its start; the blocked backend's application_name names the process).
 *    Every nominal second is recorded once and started exactly one run; the dead process's
 *    occurrence is finished by another process's stale sweep (15 s), still with one run.
 * 2. A crash between a source run's end and its upstream start loses nothing: the outbox row is
 *    written in the terminal transition's transaction; rows left unclaimed, or claimed and
 *    abandoned by a dead claimer (even after it started the target), are handed off by a fresh
 *    process exactly once; and a process SIGKILLed the instant its source run ended leaves
 *    nothing lost or doubled, whichever step it died in.
 *
 * NB: only `cairn serve` runs the TriggerSystem; `cairn worker` (src/runtime.ts startWorker)
 * builds a bare Worker, so these tests use `cairn serve` with DATABASE_URL.
 */

/** How long the schedule runs across the processes (override: CAIRN_TRIGGERS_CRASH_MS). */
const DURATION_MS = Number(process.env.CAIRN_TRIGGERS_CRASH_MS ?? 120_000);
/** TriggerSystem's STALE_FIRING_MS (not configurable). */
const STALE_FIRING_MS = 15_000;
const TOKEN = 'triggers-crash-bootstrap-token-0123456789';

interface Serve extends Proc {
  name: string;
  dir: string;
}

/** `cairn serve` processes against one PostgreSQL, each with its own application_name. */
function serveProcs(url: () => string) {
  const procs: Serve[] = [];
  return {
    procs,
    async start(name: string): Promise<Serve> {
      const dir = mkdtempSync(join(tmpdir(), 'cairn-trig-'));
      const p = cairn(['serve', '--port', '0', '--data', dir], {
        DATABASE_URL: `${url()}?application_name=${name}`,
        CAIRN_BOOTSTRAP_TOKEN: TOKEN,
        CAIRN_LOG_LEVEL: 'warn',
        CAIRN_LEASE_MS: '1500',
        CAIRN_SHUTDOWN_GRACE_MS: '300',
        CAIRN_PREWARM: '0',
        CAIRN_RETENTION_INTERVAL_MS: '0',
        CAIRN_EMBEDDED_WORKER: '1',
      });
      const s: Serve = { ...p, name, dir };
      procs.push(s);
      await until(
        async () => {
          if (p.child.exitCode !== null || p.child.signalCode !== null)
            throw new Error(`${name} exited before serving:\n${p.output()}`);
          return /serving on http/.test(p.output());
        },
        60_000,
        `${name} to serve`,
      );
      return s;
    },
    async kill(s: Serve): Promise<void> {
      s.child.kill('SIGKILL');
      expect(await s.exited).toBeNull(); // killed by the signal, no clean exit
    },
    killAll(): void {
      for (const p of procs) {
        if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
        rmSync(p.dir, { recursive: true, force: true });
      }
    },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]!;
}

describe('an every-second schedule on three server processes, one SIGKILLed mid-fire', () => {
  let db: Db;
  let url: string;
  let drop: () => Promise<void>;
  let circle: CircleRow;
  const servers = serveProcs(() => url);

  beforeAll(async () => {
    ensureBuilt();
    ({ db, url, drop, circle } = await pgWithCircle('ticks'));
    await createElement(
      db,
      circle,
      { element_type: 'sql', slug: 'one', spec: { query: 'select 1 as one' } },
      'test',
      typeLookup,
    );
  }, 120_000);

  afterAll(async () => {
    servers.killAll();
    await drop?.();
  });

  it(
    'fires each nominal second exactly once, nothing missed or left firing, on time',
    async () => {
      const [p1, p2, p3] = await Promise.all(['trig-p1', 'trig-p2', 'trig-p3'].map((n) => servers.start(n)));
      const el = await createElement(
        db,
        circle,
        {
          element_type: 'schedule',
          slug: 'tick',
          spec: {
            cron: '* * * * * *',
            target: { element: 'one', op: 'invoke' },
            overlap: 'allow_all',
            catchup_window_ms: 60_000,
          },
        },
        'test',
        typeLookup,
      );
      const scheduleId = el.id;
      const t0 = Date.now();
      await sleep(DURATION_MS / 2);

      // ---- SIGKILL the process that is firing the next occurrence, in the middle of its start.
      const blocker = new pg.Client({ connectionString: url });
      await blocker.connect();
      const blockerPid = (await blocker.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!
        .pid;
      const nominal = Math.ceil((Date.now() + 400) / 1000) * 1000;
      const key = `schedule:${scheduleId}:${new Date(nominal).toISOString()}`;
      await blocker.query('BEGIN');
      await blocker.query(
        `INSERT INTO cairn.runs (id, circle_id, kind, operation, status, trigger, engine_version, trace_id, idempotency_key)
         VALUES (gen_random_uuid(), $1, 'invoke', 'invoke', 'queued', '{}', 'test', 'blocker', $2)`,
        [circle.id, key],
      );
      // The process whose run insert waits for ours is the one that recorded `nominal` and is firing it.
      const firer = await until(
        async () => {
          const r = await db.query<{ application_name: string }>(
            `SELECT application_name FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))`,
            [blockerPid],
          );
          return r.rows[0]?.application_name;
        },
        5_000,
        'a process to block firing the occurrence',
      );
      const victim = [p1!, p2!, p3!].find((p) => p.name === firer)!;
      expect(victim, `blocked backend of ${firer}`).toBeDefined();
      const firing = await db.query<{ status: string }>(
        `SELECT status FROM cairn.schedule_occurrences WHERE schedule_id = $1 AND nominal_at = $2::timestamptz`,
        [scheduleId, new Date(nominal).toISOString()],
      );
      expect(firing.rows[0]?.status).toBe('firing');
      const killAt = Date.now();
      await servers.kill(victim);
      await blocker.query('ROLLBACK');
      await blocker.end();
      // A replacement joins (its boot overlaps the excluded window around the kill).
      await servers.start('trig-p4');

      await sleep(Math.max(0, t0 + DURATION_MS - Date.now()));

      // ---- Pause, let the runs settle and the stale sweep finish what the dead process left.
      await updateElement(db, circle, 'tick', { spec: { paused: true }, note: 'pause' }, 'test', typeLookup);
      const pausedAt = Date.now();
      await until(
        async () => {
          const r = await db.query<{ n: number }>(
            `SELECT count(*)::int AS n FROM cairn.runs
              WHERE circle_id = $1 AND trigger->>'type' = 'schedule' AND status NOT IN ('succeeded', 'failed', 'cancelled', 'completed')`,
            [circle.id],
          );
          return r.rows[0]!.n === 0;
        },
        60_000,
        'the scheduled runs to settle',
      );
      await until(
        async () => {
          const r = await db.query<{ n: number }>(
            `SELECT count(*)::int AS n FROM cairn.schedule_occurrences WHERE schedule_id = $1 AND status = 'firing'`,
            [scheduleId],
          );
          return r.rows[0]!.n === 0;
        },
        25_000,
        'no occurrence left firing (stale sweep)',
      );
      servers.killAll(); // freeze the record

      const occ = (
        await db.query<{
          nominal_ms: number;
          status: string;
          run_id: string | null;
          late_ms: number | null;
          recorded_ms: number;
        }>(
          `SELECT (extract(epoch FROM nominal_at) * 1000)::float8 AS nominal_ms, status, run_id,
                  (extract(epoch FROM fired_at - nominal_at) * 1000)::float8 AS late_ms,
                  (extract(epoch FROM recorded_at - nominal_at) * 1000)::float8 AS recorded_ms
             FROM cairn.schedule_occurrences WHERE schedule_id = $1 ORDER BY nominal_at`,
          [scheduleId],
        )
      ).rows;
      const runs = (
        await db.query<{ nominal: string; n: number; ids: string[]; statuses: string[]; attempts: number[] }>(
          `SELECT trigger->>'nominal_time' AS nominal, count(*)::int AS n, array_agg(id::text) AS ids,
                  array_agg(status) AS statuses, array_agg(attempt) AS attempts
             FROM cairn.runs WHERE circle_id = $1 AND trigger->>'type' = 'schedule' GROUP BY 1`,
          [circle.id],
        )
      ).rows;

      // (a) No gaps: every nominal second between the first and the last occurrence, once.
      expect(occ.length).toBeGreaterThan(0);
      for (let i = 1; i < occ.length; i++)
        expect(
          occ[i]!.nominal_ms - occ[i - 1]!.nominal_ms,
          `gap after ${new Date(occ[i - 1]!.nominal_ms).toISOString()}`,
        ).toBe(1000);
      const lastActive = occ.map((o) => o.status).findLastIndex((s) => s !== 'skipped_paused');
      const active = occ.slice(0, lastActive + 1);
      const after = occ.slice(lastActive + 1);
      expect(after.every((o) => o.status === 'skipped_paused')).toBe(true);
      expect(occ[0]!.nominal_ms).toBeGreaterThanOrEqual(t0 - 1000);
      expect(occ[0]!.nominal_ms).toBeLessThanOrEqual(t0 + 2000); // the first second after creation fired
      expect(active.at(-1)!.nominal_ms).toBeGreaterThanOrEqual(pausedAt - 2000);
      expect(active.length).toBeGreaterThanOrEqual(Math.floor(DURATION_MS / 1000) - 3);
      // (c) Every one of them fired (on time or caught up): none missed, failed, skipped.
      const byStatus: Record<string, number> = {};
      for (const o of occ) byStatus[o.status] = (byStatus[o.status] ?? 0) + 1;
      expect(
        active.filter((o) => o.status !== 'fired' && o.status !== 'caught_up'),
        JSON.stringify(byStatus),
      ).toEqual([]);
      // (b) Nothing was left firing (checked above, and so none here).
      expect(byStatus.firing ?? 0).toBe(0);
      // Exactly one run per fired occurrence, and it is the occurrence's run.
      expect(runs.filter((r) => r.n !== 1)).toEqual([]);
      expect(runs.length).toBe(active.length);
      const runOf = new Map(runs.map((r) => [Date.parse(r.nominal), r]));
      for (const o of active)
        expect(runOf.get(o.nominal_ms)?.ids[0], new Date(o.nominal_ms).toISOString()).toBe(o.run_id);
      expect(runs.filter((r) => r.statuses[0] !== 'succeeded')).toEqual([]);

      // The occurrence the dead process was firing: finished by another process's stale sweep, once.
      const killed = active.find((o) => o.nominal_ms === nominal)!;
      expect(killed).toBeDefined();
      expect(['fired', 'caught_up']).toContain(killed.status);
      expect(killed.late_ms!).toBeGreaterThanOrEqual(STALE_FIRING_MS - 1000);
      expect(runOf.get(nominal)!.n).toBe(1);

      // (d) Lateness, away from the kill (±3 s: the dead process's occurrence waits for the sweep).
      const near = (o: { nominal_ms: number }) => Math.abs(o.nominal_ms - killAt) <= 3_000;
      const fired = active.filter((o) => o.status === 'fired');
      const lates = fired
        .filter((o) => !near(o))
        .map((o) => o.late_ms!)
        .sort((a, b) => a - b);
      const nearKill = active.filter(near).map((o) => ({
        nominal: new Date(o.nominal_ms).toISOString(),
        status: o.status,
        late_ms: Math.round(o.late_ms ?? -1),
        runs: runOf.get(o.nominal_ms)?.n ?? 0,
      }));
      const summary = {
        duration_ms: DURATION_MS,
        occurrences: occ.length,
        by_status: byStatus,
        killed: firer,
        killed_nominal: new Date(nominal).toISOString(),
        killed_late_ms: Math.round(killed.late_ms!),
        late_ms: {
          n: lates.length,
          p50: Math.round(pct(lates, 0.5)),
          p90: Math.round(pct(lates, 0.9)),
          p99: Math.round(pct(lates, 0.99)),
          max: Math.round(lates.at(-1) ?? NaN),
        },
        caught_up: byStatus.caught_up ?? 0,
        near_kill: nearKill,
        runs_retried: runs.filter((r) => r.attempts[0]! > 1).length,
      };
      console.log('triggers-crash schedule:', JSON.stringify(summary, null, 2));
      for (const o of active.filter(near)) expect(runOf.get(o.nominal_ms)?.n).toBe(1);
      expect(lates.length).toBeGreaterThan(DURATION_MS / 1000 / 2);
      expect(pct(lates, 0.99)).toBeLessThanOrEqual(1_000);
    },
    DURATION_MS + 150_000,
  );
});

describe('upstream handoffs across a crash between the source run and the target start', () => {
  let db: Db;
  let url: string;
  let drop: () => Promise<void>;
  let circle: CircleRow;
  let engine: Engine;
  let upstreamId: string;
  const servers = serveProcs(() => url);

  const submitA = async () => {
    const el = (await getElement(db, circle.id, 'src-a'))!;
    const type = getType('sql');
    const op = operationsOf(type).find((o) => o.name === 'invoke')!;
    const { run } = await submitRun(
      db,
      { circle, element: el, type, op, input: {}, trigger: { type: 'manual', source: null, actor: 'test' } },
      {},
    );
    return run.id;
  };
  const outbox = async (sourceRunId: string) =>
    (
      await db.query<{
        id: string;
        claimed_until: number | null;
        done_at: number | null;
        run_id: string | null;
        error: unknown;
      }>(
        `SELECT id::text AS id, run_id, error,
                (extract(epoch FROM claimed_until) * 1000)::float8 AS claimed_until,
                (extract(epoch FROM done_at) * 1000)::float8 AS done_at
           FROM cairn.run_outbox WHERE source_run_id = $1`,
        [sourceRunId],
      )
    ).rows;
  const bRuns = async (sourceRunId: string): Promise<RunRow[]> => {
    const r = await db.query<{ id: string }>(
      `SELECT id FROM cairn.runs WHERE circle_id = $1 AND element_slug = 'tgt-b' AND trigger->>'upstream_run_id' = $2`,
      [circle.id, sourceRunId],
    );
    return Promise.all(r.rows.map(async (x) => (await getRun(db, x.id))!));
  };
  const handedOff = (sourceRunId: string, ms = 30_000) =>
    until(
      async () => {
        const [row] = await outbox(sourceRunId);
        return row?.done_at ? row : undefined;
      },
      ms,
      `the handoff of ${sourceRunId}`,
    );
  const ended = (id: string, ms = 30_000) =>
    until(
      async () => {
        const r = await getRun(db, id);
        return r && ['succeeded', 'failed', 'cancelled', 'completed'].includes(r.status) ? r : undefined;
      },
      ms,
      `run ${id} to end`,
    );
  /** Exactly one B run for the source run, the outbox row's, started by the handoff's trigger. */
  const expectOneB = async (sourceRunId: string, row: { run_id: string | null; error: unknown }) => {
    const bs = await bRuns(sourceRunId);
    expect(bs.map((b) => b.id)).toEqual([row.run_id]);
    expect(row.error).toBeNull();
    const b = await ended(bs[0]!.id);
    expect(b.trigger).toMatchObject({
      type: 'upstream',
      source: 'a-then-b',
      actor: 'upstream:a-then-b',
      upstream_run_id: sourceRunId,
      depth: 1,
    });
    expect(b.status).toBe('succeeded');
    expect(b.output).toEqual({ rows: [{ source_run: sourceRunId }], row_count: 1 });
  };

  beforeAll(async () => {
    ensureBuilt();
    ({ db, url, drop, circle } = await pgWithCircle('handoffs'));
    const mk = (slug: string, element_type: string, spec: Record<string, unknown>) =>
      createElement(db, circle, { element_type, slug, spec }, 'test', typeLookup);
    await mk('src-a', 'sql', { query: 'select 1 as a' });
    await mk('tgt-b', 'sql', { query: 'select $1::text as source_run' });
    upstreamId = (
      await mk('a-then-b', 'upstream', {
        source: 'src-a',
        on: ['succeeded'],
        target: { element: 'tgt-b', op: 'invoke' },
        input: { params: ['${{ upstream.run_id }}'] },
      })
    ).id;
    engine = new Engine({ db, snapshotExtra: {}, worker: false });
  }, 120_000);

  afterAll(async () => {
    servers.killAll();
    await engine?.stop(0);
    await drop?.();
  });

  it('writes the handoff with the source run end; a fresh process hands off unclaimed and abandoned rows exactly once', async () => {
    // No Cairn process is up: two source runs wait, queued.
    const first = await submitA();
    const second = await submitA();

    // The outbox row is the terminal transition's own: inside its transaction it exists, outside
    // it does not yet, and a rollback takes both back.
    const tx = new pg.Client({ connectionString: url });
    await tx.connect();
    await tx.query('BEGIN');
    await tx.query(
      `UPDATE cairn.runs SET status = 'succeeded', finished_at = clock_timestamp() WHERE id = $1`,
      [first],
    );
    const inside = await tx.query(
      `SELECT done_at, claimed_until FROM cairn.run_outbox WHERE source_run_id = $1`,
      [first],
    );
    expect(inside.rows).toEqual([{ done_at: null, claimed_until: null }]);
    expect(await outbox(first)).toEqual([]); // not visible before the commit
    await tx.query('ROLLBACK');
    await tx.end();
    expect(await outbox(first)).toEqual([]);
    expect((await getRun(db, first))!.status).toBe('queued');

    // The source runs end for real — in a worker that runs no trigger loops, i.e. the process
    // is gone the moment they ended: the rows are there, open, and nothing started B.
    const w = new Worker({ db, concurrency: 2, leaseMs: 5_000, pollMs: 100, retentionMs: 0 });
    await w.start();
    expect((await ended(first)).status).toBe('succeeded');
    expect((await ended(second)).status).toBe('succeeded');
    await w.stop(1_000);
    for (const id of [first, second]) {
      const rows = await outbox(id);
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatchObject({ done_at: null, claimed_until: null, run_id: null });
    }
    await sleep(1_000);
    expect(await bRuns(first)).toEqual([]);
    expect(await bRuns(second)).toEqual([]);

    // A dead claimer: the test claims the oldest open row with a lease, starts its target (twice:
    // the key makes the second answer the first run), and abandons it without finishing.
    const LEASE_MS = 10_000;
    const [claimed] = await claimHandoffs(db, 1, LEASE_MS);
    expect(claimed).toBeDefined();
    const x = claimed!.source_run_id; // the abandoned one
    const y = x === first ? second : first; // the unclaimed one
    const claimedUntil = (await outbox(x))[0]!.claimed_until!;
    expect(claimedUntil).toBeGreaterThan(Date.now() + LEASE_MS / 2);
    const start = () =>
      engine.startTarget({
        circle,
        target: { element: 'tgt-b', op: 'invoke' },
        input: { params: [x] },
        trigger: {
          type: 'upstream',
          source: 'a-then-b',
          actor: 'upstream:a-then-b',
          upstream_run_id: x,
          depth: 1,
        },
        idempotencyKey: `upstream:${upstreamId}:${x}`,
      });
    const s1 = await start();
    const s2 = await start();
    expect(s2.run_id).toBe(s1.run_id);
    expect((await bRuns(x)).map((b) => b.id)).toEqual([s1.run_id]);

    // A fresh process: it hands off the unclaimed row at once, the abandoned one after its lease.
    await servers.start('up-p1');
    const rowY = await handedOff(y);
    await expectOneB(y, rowY);
    const rowX = await handedOff(x, LEASE_MS + 30_000);
    expect(rowX.done_at!).toBeGreaterThanOrEqual(claimedUntil); // the lease held
    expect(rowX.run_id).toBe(s1.run_id); // the dead claimer's run, not a second one
    await expectOneB(x, rowX);
  }, 120_000);

  it('a process SIGKILLed the instant its source run ended: a fresh process finishes the handoff, once', async () => {
    const p = servers.procs.find((s) => s.name === 'up-p1' && s.child.exitCode === null)!;
    expect(p).toBeDefined();
    const source = await submitA();
    // Kill it as soon as the run's end is committed (cairn_run_done is notified with it).
    let killedAt = 0;
    const unlisten = await db.listen('cairn_run_done', (id) => {
      if (id === source && !killedAt) {
        p.child.kill('SIGKILL');
        killedAt = Date.now();
      }
    });
    // (A fallback should the notification be missed: kill it once the end is visible.)
    await until(
      async () =>
        killedAt > 0 ||
        ['succeeded', 'failed', 'cancelled', 'completed'].includes((await getRun(db, source))!.status),
      30_000,
      'the source run to end',
    );
    if (!killedAt) {
      p.child.kill('SIGKILL');
      killedAt = Date.now();
      console.log('triggers-crash upstream: the end notification was missed; killed after polling');
    }
    expect(await p.exited).toBeNull();
    await unlisten();
    const run = (await getRun(db, source))!;
    expect(run.status).toBe('succeeded');
    const [row] = await outbox(source);
    expect(row).toBeDefined(); // never lost: it came with the run's end
    const bs = await bRuns(source);
    const state = row!.done_at
      ? 'handed off before the kill'
      : bs.length > 0
        ? 'target started, handoff not recorded'
        : row!.claimed_until
          ? 'claimed, target not started'
          : 'not claimed yet';
    console.log(`triggers-crash upstream: killed with the handoff ${state}`);
    expect(bs.length).toBeLessThanOrEqual(1);
    if (!row!.done_at && row!.claimed_until) {
      // The dead process's claim holds for HANDOFF_LEASE_MS (30 s, a constant no setting
      // shortens); moving claimed_until to now stands in for waiting it out.
      await db.query(
        `UPDATE cairn.run_outbox SET claimed_until = clock_timestamp() WHERE id = $1::bigint AND done_at IS NULL`,
        [row!.id],
      );
    }
    await servers.start('up-p2');
    const done = await handedOff(source);
    if (bs.length === 1) expect(done.run_id).toBe(bs[0]!.id);
    await expectOneB(source, done);

    // Over the whole circle: one B run per source run that ended, no other.
    const all = await db.query<{ src: string; n: number }>(
      `SELECT trigger->>'upstream_run_id' AS src, count(*)::int AS n FROM cairn.runs
          WHERE circle_id = $1 AND element_slug = 'tgt-b' GROUP BY 1`,
      [circle.id],
    );
    expect(all.rows.every((r) => r.n === 1)).toBe(true);
    expect(all.rows).toHaveLength(3);
    const open = await db.query(`SELECT 1 FROM cairn.run_outbox WHERE done_at IS NULL`);
    expect(open.rows).toEqual([]);
  }, 90_000);
});

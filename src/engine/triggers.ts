/**
 * The trigger loops of a worker process (R-TRIGGERS): the scheduler and the upstream outbox.
 *
 * The scheduler is Cairn's own, on PostgreSQL (croner only computes times). A schedule's row holds
 * `next_at`, its next nominal time not yet recorded. Every process looks at the due rows; the one
 * whose compare-and-set of `next_at` lands first records the occurrences it passed (one row per
 * nominal time, unique) in the same statement, and starts the runs of those that fire with the
 * idempotency key `schedule:<id>:<nominal>`. So any number of processes fire an occurrence exactly
 * once; one that dies after recording leaves the occurrence `firing`, and a sweep of any process
 * finishes it (the key makes a second start answer the first run).
 *
 * The outbox is written by a source run's terminal transition itself (a row trigger); any process
 * claims its rows for a lease and starts each target with the key `upstream:<id>:<source run>`.
 */
import { CairnError, toCairnError } from '../core/errors.js';
import { cronClock } from '../core/cron.js';
import type { Db } from '../db/types.js';
import type { Started, StartRequest } from '../elements/types.js';
import { fireOccurrence } from '../elements/schedule/fire.js';
import { mapTriggerInput, transient } from '../elements/triggers/target.js';
import { getCircleById } from '../store/circles.js';
import { getRun } from '../store/runs.js';
import * as store from '../store/triggers.js';
import type { Logger } from '../telemetry/log.js';
import { cancel } from './control.js';

/** Occurrences one advance records at most (a long outage is recorded over several passes). */
const MAX_OCCURRENCES_PER_PASS = 1_000;
/** An occurrence still `firing` after this long lost its process: another one finishes it. */
const STALE_FIRING_MS = 15_000;
/** How long a claimed outbox row is held before another process may take it. */
const HANDOFF_LEASE_MS = 30_000;
/** Upper bound of the scheduler's sleep (it also wakes for the soonest due schedule). */
const IDLE_MS = 500;
/** A handoff that failed for a passing reason is tried again after this long. */
const RETRY_AFTER_MS = 5_000;

export interface TriggerEnv {
  db: Db;
  log: Logger;
  start(req: StartRequest): Promise<Started>;
}

export class TriggerSystem {
  private running = false;
  private wake: (() => void) | undefined;
  private loops: Promise<void>[] = [];
  private unlisten: (() => Promise<void>)[] = [];
  private outboxSignal = 0;
  private scheduleSignal = 0;
  private outboxWake: (() => void) | undefined;
  private lastSweep = 0;

  constructor(private readonly env: TriggerEnv) {}

  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    this.unlisten.push(await this.env.db.listen('cairn_outbox', () => this.kickOutbox()));
    this.unlisten.push(await this.env.db.listen('cairn_schedule', () => this.kickScheduler()));
    this.loops.push(this.schedulerLoop(), this.outboxLoop());
  }

  async stop(): Promise<void> {
    this.running = false;
    this.wake?.();
    this.outboxWake?.();
    for (const u of this.unlisten.splice(0)) await u().catch(() => undefined);
    await Promise.all(this.loops.splice(0));
  }

  /** A schedule changed here: look again now. */
  kickScheduler(): void {
    this.scheduleSignal++;
    this.wake?.();
  }

  kickOutbox(): void {
    this.outboxSignal++;
    this.outboxWake?.();
  }

  private sleep(ms: number, set: (w: () => void) => void): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      t.unref();
      set(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  // ---- the scheduler ----------------------------------------------------------------------------

  private async schedulerLoop(): Promise<void> {
    while (this.running) {
      const seen = this.scheduleSignal;
      let wait = IDLE_MS;
      try {
        await this.schedulerPass();
        const ms = await store.msToNextSchedule(this.env.db);
        if (ms !== null) wait = Math.max(0, Math.min(IDLE_MS, Math.ceil(ms)));
      } catch (e) {
        if (this.running) this.env.log.warn({ err: e }, 'scheduler pass failed');
      }
      if (!this.running) break;
      // A change that arrived during the pass is not slept through.
      if (seen === this.scheduleSignal) await this.sleep(wait, (w) => (this.wake = w));
    }
  }

  /** One pass: advance every due schedule, fire buffered ones whose turn came, sweep stale ones. */
  async schedulerPass(): Promise<void> {
    const due = await store.dueSchedules(this.env.db, 50);
    for (const s of due) {
      try {
        await this.advance(s);
      } catch (e) {
        this.env.log.warn({ err: e, schedule: s.slug }, 'schedule advance failed');
      }
    }
    for (const b of await store.claimBuffered(this.env.db))
      await this.fireById(b.schedule_id, b.nominal, false);
    if (Date.now() - this.lastSweep > 5_000) {
      this.lastSweep = Date.now();
      for (const f of await store.staleFiring(this.env.db, STALE_FIRING_MS))
        await this.fireById(f.schedule_id, f.nominal, f.backfill);
    }
  }

  private async advance(s: store.ScheduleRow & { db_now: number }): Promise<void> {
    const clock = cronClock(s.cron, s.timezone);
    // The database's clock, not this host's: every process agrees on what is due.
    const now = s.db_now;
    const times: Date[] = [];
    let t: Date | null = new Date(s.next_at!);
    while (t && t.getTime() <= now && times.length < MAX_OCCURRENCES_PER_PASS) {
      times.push(t);
      t = clock.next(t);
    }
    if (times.length === 0) return; // not due after all (a clock edge): nothing to record
    const active =
      s.paused || s.overlap === 'allow_all'
        ? { busy: false, run_id: null, buffered: false }
        : await store.activeScheduledRun(this.env.db, s.element_id);
    const plan = planOccurrences(s, times, now, active);
    const recorded = await store.advanceSchedule(this.env.db, s, t ? t.toISOString() : null, plan);
    if (recorded.length === 0) return; // another process advanced it first
    const firing = recorded.filter((o) => o.status === 'firing');
    if (firing.length > 0 && s.overlap === 'cancel_previous' && active.run_id)
      await cancel(
        this.env.db,
        active.run_id,
        `schedule:${s.slug}`,
        'cancel_previous: a newer occurrence fired',
      ).catch(
        () => undefined, // it ended meanwhile
      );
    for (const o of firing) await this.fire(s, o.nominal, false);
  }

  private async fireById(scheduleId: string, nominal: string, backfill: boolean): Promise<void> {
    const s = await store.getSchedule(this.env.db, scheduleId);
    if (s) await this.fire(s, nominal, backfill);
  }

  /** Starts the run of one recorded occurrence and records which it is (or why none started). */
  async fire(s: store.ScheduleRow, nominal: string, backfill: boolean): Promise<Started | undefined> {
    return fireOccurrence(this.env, s, nominal, backfill, { actor: `schedule:${s.slug}` });
  }

  // ---- the upstream outbox ----------------------------------------------------------------------

  private async outboxLoop(): Promise<void> {
    while (this.running) {
      const seen = this.outboxSignal;
      let more = false;
      try {
        more = await this.outboxPass();
      } catch (e) {
        if (this.running) this.env.log.warn({ err: e }, 'outbox pass failed');
      }
      if (!this.running) break;
      if (!more && seen === this.outboxSignal) await this.sleep(1_000, (w) => (this.outboxWake = w));
    }
  }

  /** Hands off one claimed batch of outbox rows; true when there may be more. */
  async outboxPass(): Promise<boolean> {
    const rows = await store.claimHandoffs(this.env.db, 20, HANDOFF_LEASE_MS);
    for (const h of rows) await this.handoff(h);
    return rows.length === 20;
  }

  private async handoff(h: store.HandoffRow): Promise<void> {
    const { db } = this.env;
    try {
      const source = await getRun(db, h.source_run_id);
      const circle = await getCircleById(db, h.circle_id);
      if (!source || !circle) throw new CairnError(GONE);
      const depth = Number((source.trigger as { depth?: unknown }).depth ?? 0) + 1;
      if (depth > h.max_depth)
        throw new CairnError({
          code: 'UPSTREAM_DEPTH_EXCEEDED',
          class: 'validation',
          message: `This handoff would make a chain of ${depth} upstream runs; the cap is ${h.max_depth}.`,
          details: { depth, max_depth: h.max_depth, source_run_id: source.id },
          suggestion:
            'A chain this deep is usually a loop (a target that is its own source); break it, or raise max_depth.',
        });
      const input = mapTriggerInput(h.input, ['upstream'], {
        upstream: {
          run_id: source.id,
          status: source.status,
          element: source.element_slug,
          input: source.input,
          output: source.output ?? null,
          error: source.error ?? null,
          trigger: source.trigger,
        },
      });
      const started = await this.env.start({
        circle,
        target: { element: h.target.element, op: h.target.op },
        input,
        trigger: {
          type: 'upstream',
          source: h.upstream_slug,
          actor: `upstream:${h.upstream_slug}`,
          upstream_run_id: source.id,
          depth,
        },
        idempotencyKey: `upstream:${h.upstream_id}:${source.id}`,
      });
      await store.finishHandoff(db, h.id, started.run_id, null);
    } catch (e) {
      const err = toCairnError(e);
      // A passing failure (the database, an internal error) is not an answer: the row stays open and
      // comes back when its claim lapses. Only a definite refusal (depth, target gone, credits, policy) is final.
      if (transient(err)) {
        this.env.log.warn({ err: e, upstream: h.upstream_slug }, 'handoff failed; it will be retried');
        await store.releaseHandoff(db, h.id, RETRY_AFTER_MS).catch(() => undefined);
        return;
      }
      await store.finishHandoff(db, h.id, null, err.toBody());
    }
  }
}

const GONE = {
  code: 'UPSTREAM_SOURCE_GONE',
  class: 'not_found' as const,
  message: 'The source run of this handoff no longer exists.',
  suggestion: 'Nothing to do: retention deleted it before it was handed off.',
};

/** How each nominal time of one advance is recorded: fired, skipped (paused, overlap) or missed. */
export function planOccurrences(
  s: Pick<store.ScheduleRow, 'paused' | 'overlap' | 'catchup_window_ms'>,
  times: Date[],
  now: number,
  active: { busy: boolean; buffered: boolean },
): store.OccurrencePlan[] {
  let busy = active.busy;
  let buffered = active.buffered;
  const plan: store.OccurrencePlan[] = times.map((t) => {
    const nominal = t.toISOString();
    if (s.paused) return { nominal, status: 'skipped_paused' };
    // On time is within 1 s; later than that is caught up while inside the window, else missed.
    if (now - t.getTime() > Math.max(1_000, s.catchup_window_ms)) return { nominal, status: 'missed' };
    switch (s.overlap) {
      case 'allow_all':
      case 'cancel_previous':
        return { nominal, status: 'firing' };
      case 'skip':
        if (busy) return { nominal, status: 'skipped_overlap' };
        busy = true;
        return { nominal, status: 'firing' };
      case 'buffer_one':
        if (!busy) {
          busy = true;
          return { nominal, status: 'firing' };
        }
        if (buffered) return { nominal, status: 'skipped_overlap' };
        buffered = true;
        return { nominal, status: 'buffered' };
    }
  });
  if (s.overlap === 'cancel_previous') {
    // Of several due at once only the newest fires: each would cancel the one before it.
    const last = plan.map((p) => p.status).lastIndexOf('firing');
    plan.forEach((p, i) => {
      if (p.status === 'firing' && i !== last) p.status = 'skipped_overlap';
    });
  }
  return plan;
}

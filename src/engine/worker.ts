import { hostname } from 'node:os';
import { toCairnError, type ErrorBody } from '../core/errors.js';
import { newId } from '../core/ids.js';
import type { Db } from '../db/types.js';
import { getCircleById, type CircleRow } from '../store/circles.js';
import {
  claimRuns,
  handBack,
  heartbeat,
  recoverExpired,
  settleRuns,
  type Outcome,
  type SettledRun,
  type Settlement,
} from '../store/queue.js';
import type { RunRow } from '../store/runs.js';
import { getType, getTypeOrUndefined, operationsOf } from '../elements/registry.js';
import { recordInvocation, watchHealth } from '../telemetry/metrics.js';
import { BatchControl, runBatch, type BatchHost } from './batch.js';
import { expireGrants } from '../store/ledger.js';
import { silentLogger, type Logger } from '../telemetry/log.js';
import { findUnstorable, storable, unstorableOutputMessage } from '../core/storable.js';
import { applyIsolated, isRowError, sqlState } from '../store/isolate.js';
import { WorkerHealth, type WorkerHealthReport } from './health.js';

export interface WorkerOptions {
  db: Db;
  id?: string;
  host?: string;
  /** Runs executed at once. */
  concurrency?: number;
  /** How long a claim holds without a heartbeat. */
  leaseMs?: number;
  /** Fallback poll when no NOTIFY arrives. */
  pollMs?: number;
  /** How often this worker looks for runs whose lease expired. */
  reapMs?: number;
  log?: Logger;
}

interface InFlight {
  run: RunRow;
  controller: AbortController;
  /** Batch runs: told when the run is paused (or its control state changed). */
  control?: BatchControl;
}

export type { Outcome };

/**
 * The database refused a run's (or item's) settlement on its own: the run
 * fails alone with this error, recorded without what was refused, so one
 * tenant's value never holds up anyone else's work.
 */
export function recordRejected(e: unknown): ErrorBody {
  const state = sqlState(e) ?? 'unknown';
  const detail = String((e as { message?: unknown } | null)?.message ?? e).slice(0, 300);
  return storable({
    code: 'RUN_RECORD_REJECTED',
    class: 'internal',
    message: `The database refused to record this run's result (SQLSTATE ${state}: ${detail}); the run failed on its own and its output was not kept.`,
    retryable: false,
    _suggestion:
      'Return plain JSON (no NUL characters, no lone surrogates, no numbers beyond ±1.8e308); the evidence kept on the item shows what ran. If the output was plain JSON, report this with the run id.',
    details: { sqlstate: state },
  });
}

/** The settlement written instead of one the database refused alone. */
function rejectedSettlement<
  T extends { output: unknown; error: ErrorBody | null; evidence: Record<string, unknown> },
>(s: T, e: unknown, where: { host: string; worker: string }): T {
  return {
    ...s,
    status: 'failed',
    output: null,
    error: recordRejected(e),
    credits: 0,
    evidence: {
      ...where,
      record_rejected: { sqlstate: sqlState(e) ?? null, original_error: s.error?.code ?? null },
    },
    events: [],
  };
}

/** A run settled by this worker: what the settle wrote, and what the execution produced. */
export interface Settled {
  row: SettledRun;
  settlement: Settlement;
}

/**
 * A slot of this worker taken for a run the caller is about to create already
 * claimed (`claim`), so it skips the queue; `run` executes it and resolves once
 * it is settled (undefined when the settle found the run changed, e.g. cancelled).
 */
export interface DirectSlot {
  claim: { workerId: string; host: string; leaseMs: number };
  run(run: RunRow): Promise<Settled | undefined>;
  /** The run was not created after all: the slot is free again. */
  release(): void;
}

/**
 * A worker claims queued runs (FOR UPDATE SKIP LOCKED), executes them through
 * their type's executor, and settles them in batches. It holds each claim by
 * heartbeat, recovers runs whose worker died, and on stop finishes or hands
 * back what it holds. Any number of workers may run against one database.
 */
export class Worker {
  readonly id: string;
  readonly host: string;
  private readonly db: Db;
  private readonly concurrency: number;
  private readonly leaseMs: number;
  private readonly pollMs: number;
  private readonly reapMs: number;
  private readonly log: Logger;
  /** Claimed and not yet settled (heartbeats cover these). */
  private readonly inflight = new Map<string, InFlight>();
  /** Executors running now; `concurrency` bounds this, not the settle backlog. */
  private executing = 0;
  private readonly circles = new Map<string, CircleRow>();
  private pending: Settlement[] = [];
  private flushing: Promise<void> | undefined;
  private running = false;
  private claiming = false;
  private loopDone: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  private kicked = false;
  /**
   * Bumped by every sign that runs may be queued (kick, NOTIFY, the poll).
   * A claim that came back short with no new sign meanwhile means the queue is
   * empty: freed slots then do not query it again until the next sign.
   */
  private queueSignals = 1;
  private queueSeenEmptyAt = 0;
  private timers: NodeJS.Timeout[] = [];
  private unlisten: (() => Promise<void>)[] = [];
  private idleWaiters: (() => void)[] = [];
  /** Callers waiting for a run of theirs to be settled (direct slots). */
  private readonly settledWaiters = new Map<string, (s: Settled | undefined) => void>();
  private readonly batchHost: BatchHost;
  /** How the shared statements fare (diagnostics, /metrics, /healthz). */
  readonly health = new WorkerHealth();
  /** Set by stop(): a settle retry loop gives up at this time. */
  private stopDeadline = Infinity;
  private readonly stopWaiters = new Set<() => void>();

  constructor(opts: WorkerOptions) {
    this.db = opts.db;
    this.host = opts.host ?? hostname();
    this.id = opts.id ?? `${this.host}:${process.pid}:${newId().slice(-8)}`;
    this.concurrency = opts.concurrency ?? 8;
    this.leaseMs = opts.leaseMs ?? 30_000;
    this.pollMs = opts.pollMs ?? 1_000;
    this.reapMs = opts.reapMs ?? Math.min(this.leaseMs, 5_000);
    this.log = (opts.log ?? silentLogger).child({ worker: this.id });
    this.batchHost = {
      db: this.db,
      workerId: this.id,
      log: this.log,
      runOnce: (run, input, signal) => this.runOnce(run, input, signal),
      health: this.health,
      rejected: (item, e) => rejectedSettlement(item, e, { host: this.host, worker: this.id }),
    };
  }

  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    this.unlisten.push(await this.db.listen('cairn_run_queued', () => this.kick()));
    this.unlisten.push(
      await this.db.listen('cairn_run_cancel', (id) => {
        const f = this.inflight.get(id);
        if (f) f.controller.abort(new Error('cancelled'));
      }),
    );
    this.unlisten.push(
      await this.db.listen('cairn_run_control', (id) => this.inflight.get(id)?.control?.poke()),
    );
    this.timers.push(setInterval(() => void this.beat(), Math.max(50, Math.floor(this.leaseMs / 3))));
    this.timers.push(setInterval(() => void this.reap(), this.reapMs));
    for (const t of this.timers) t.unref();
    watchHealth(this.id, () => this.healthReport());
    this.loopDone = this.loop();
    this.log.info({ concurrency: this.concurrency, leaseMs: this.leaseMs }, 'worker started');
  }

  /** Something may have been queued (here, or NOTIFY from elsewhere): claim now. */
  kick(): void {
    this.queueSignals++;
    this.wakeUp();
  }

  /** Wake the loop (a slot freed); it claims only if the queue may hold runs. */
  private wakeUp(): void {
    this.kicked = true;
    this.wake?.();
  }

  get inFlight(): number {
    return this.inflight.size;
  }

  private async loop(): Promise<void> {
    while (this.running) {
      // A slot frees when its executor returns, so claims overlap the batched settles;
      // the settle backlog is bounded too.
      const backlog = this.inflight.size - this.executing;
      const free = backlog >= this.concurrency * 2 ? 0 : this.concurrency - this.executing;
      let claimed = 0;
      const signals = this.queueSignals;
      if (free > 0 && signals !== this.queueSeenEmptyAt) {
        this.claiming = true;
        let backoff = 0;
        try {
          const runs = await claimRuns(this.db, this.id, this.host, free, this.leaseMs);
          this.health.statements.claim.succeeded();
          claimed = runs.length;
          if (claimed < free) this.queueSeenEmptyAt = signals;
          for (const run of runs) this.start1(run);
        } catch (e) {
          backoff = this.health.statements.claim.failed(e);
          this.log.error({ err: e, retry_in_ms: backoff }, 'claim failed');
        } finally {
          this.claiming = false;
        }
        // A failing claim backs off instead of spinning on the database.
        if (backoff > 0) await this.sleepUnlessStopped(backoff);
      }
      if (!this.running) break;
      if (free > 0 && claimed === free) continue; // the queue may hold more
      if (this.kicked) {
        this.kicked = false;
        if (this.executing < this.concurrency) continue;
      }
      if (this.inflight.size === 0) for (const w of this.idleWaiters.splice(0)) w();
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          this.queueSignals++; // the fallback poll: runs due later, or a lost notification
          resolve();
        }, this.pollMs);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = undefined;
      this.kicked = false;
    }
  }

  /**
   * Takes a slot for a sync invoke this process will wait for, when one is free:
   * the run is then created claimed by this worker and executed here at once,
   * skipping the queue's claim and the wake-up by notification. Undefined when
   * busy (the run goes through the queue, as every other).
   */
  directSlot(): DirectSlot | undefined {
    const backlog = this.inflight.size - this.executing;
    if (!this.running || this.executing >= this.concurrency || backlog >= this.concurrency * 2)
      return undefined;
    this.executing++;
    let used = false;
    return {
      claim: { workerId: this.id, host: this.host, leaseMs: this.leaseMs },
      run: (run) => {
        used = true;
        return new Promise((resolve) => {
          this.settledWaiters.set(run.id, resolve);
          this.executeInSlot(run, new AbortController());
        });
      },
      release: () => {
        if (used) return;
        used = true;
        this.executing--;
        this.wakeUp();
      },
    };
  }

  private async circle(id: string): Promise<CircleRow> {
    let c = this.circles.get(id);
    if (!c) {
      c = await getCircleById(this.db, id);
      if (!c) throw new Error(`circle ${id} not found`);
      this.circles.set(id, c);
    }
    return c;
  }

  private start1(run: RunRow): void {
    const controller = new AbortController();
    if (run.kind === 'batch') {
      // A batch run settles its items itself, in batches, and ends itself.
      const control = new BatchControl();
      this.inflight.set(run.id, { run, controller, control });
      this.executing++;
      void runBatch(this.batchHost, run, controller.signal, control)
        .catch((e) => this.log.error({ err: e, run: run.id }, 'batch run crashed; its lease will expire'))
        .finally(() => {
          this.executing--;
          this.inflight.delete(run.id);
          this.wakeUp();
        });
      return;
    }
    this.executing++;
    this.executeInSlot(run, controller);
  }

  /** Executes an invoke run in a slot already counted in `executing`, then queues its settle. */
  private executeInSlot(run: RunRow, controller: AbortController): void {
    this.inflight.set(run.id, { run, controller });
    void this.execute(run, controller.signal).then((s) => {
      this.executing--;
      this.enqueueSettle(s);
      this.wakeUp();
    });
  }

  private async execute(run: RunRow, signal: AbortSignal): Promise<Settlement> {
    const o = await this.runOnce(run, run.input, signal);
    const s: Settlement = { id: run.id, ...o };
    // Metrics and events, named by the type's declared prefix (go_fn_invocation_count, go_fn.invoked …).
    const prefix = getTypeOrUndefined(run.element_type)?.telemetry?.prefix;
    if (prefix) {
      const started = Date.parse(run.started_at ?? '') || Date.now();
      const ms = Date.now() - started;
      s.events = [
        [`${prefix}.invoked`, started, { attempt: run.attempt, worker: this.id }],
        ...(s.events ?? []),
        s.status === 'succeeded'
          ? [`${prefix}.completed`, Date.now(), { duration_ms: ms }]
          : [`${prefix}.failed`, Date.now(), { duration_ms: ms, error_code: s.error?.code ?? null }],
      ];
    }
    return s;
  }

  /**
   * Executes the run's operation once on `input` through its type's executor
   * (an invoke run's input, or one item of a batch run). Never throws: a
   * failure is an outcome with a typed error and the evidence seen so far.
   */
  async runOnce(run: RunRow, input: unknown, signal: AbortSignal): Promise<Outcome> {
    const started = Date.now();
    const o = await this.runOnce1(run, input, signal);
    const prefix = getTypeOrUndefined(run.element_type)?.telemetry?.prefix;
    if (prefix)
      recordInvocation(
        prefix,
        run.circle_id,
        run.element_slug ?? '',
        o.status === 'succeeded',
        Date.now() - started,
      );
    return o;
  }

  private async runOnce1(run: RunRow, input: unknown, signal: AbortSignal): Promise<Outcome> {
    try {
      const type = getType(run.element_type ?? '');
      const op = operationsOf(type).find((o) => o.name === run.operation);
      const exec = type.executors[run.operation];
      if (!op || !exec) throw new Error(`type ${type.type} has no executor for ${run.operation}`);
      // The run executes the definition it was created with (its snapshot), not whatever is current.
      const spec = (run.snapshot.element as { spec?: unknown } | undefined)?.spec ?? {};
      const result = await exec({
        db: this.db,
        circle: await this.circle(run.circle_id),
        run,
        spec,
        input,
        signal,
        host: this.host,
      });
      // The run record's boundary: an output it cannot hold fails the run with the type's own code.
      const bad = findUnstorable(result.output ?? null);
      if (bad) {
        const code = type.errors.find((x) => x.code.endsWith('INVALID_OUTPUT'))?.code ?? 'INVALID_OUTPUT';
        const err: ErrorBody = {
          code,
          class: 'validation',
          message: unstorableOutputMessage(bad),
          retryable: false,
          _suggestion: 'Return only JSON values that hold no NUL characters or lone surrogates.',
          details: { path: bad.path },
        };
        return storable({
          status: 'failed',
          output: null,
          error: err,
          credits: 0,
          evidence: { ...result.evidence, worker: this.id },
          events: result.events,
          flags: result.flags,
        });
      }
      return {
        status: 'succeeded',
        output: result.output ?? null,
        error: null,
        credits: result.credits ?? op.price ?? 0,
        evidence: storable({ ...result.evidence, worker: this.id }),
        events: storable(result.events),
        flags: storable(result.flags),
      };
    } catch (e) {
      const err = toCairnError(e);
      if (err.code === 'INTERNAL') this.log.error({ err: e, run: run.id }, 'executor crashed');
      const body: ErrorBody = err.toBody();
      // Executors attach what they saw (exit code, logs, hashes, events) to the error: a failed item keeps its evidence.
      const seen = (e ?? {}) as {
        evidence?: Record<string, unknown>;
        events?: Settlement['events'];
        flags?: string[];
      };
      // Error messages, stacks and evidence are escaped, never refused: a failure must be recorded.
      return storable({
        status: 'failed',
        output: null,
        error: body,
        credits: 0,
        evidence: { ...(seen.evidence ?? {}), host: this.host, worker: this.id },
        events: seen.events,
        flags: seen.flags,
      });
    }
  }

  private enqueueSettle(s: Settlement): void {
    this.pending.push(s);
    this.flushing ??= this.flush();
  }

  /**
   * Settles everything finished so far in one statement; what finishes
   * meanwhile goes in the next. A batch the database refuses is applied row
   * by row: a row refused alone for its content fails its run on its own
   * (RUN_RECORD_REJECTED, without the refused values); rows that fail because
   * the database is unavailable wait for a retry, with backoff, and make the
   * worker degraded. A stopping worker gives up at its deadline.
   */
  private async flush(): Promise<void> {
    await new Promise((r) => setImmediate(r));
    const where = { host: this.host, worker: this.id };
    const health = this.health.statements.settle;
    while (this.pending.length > 0) {
      const batch = this.pending;
      this.pending = [];
      const settle = (b: Settlement[]) => settleRuns(this.db, this.id, b);
      const first = await applyIsolated(batch, settle);
      const done = new Map(first.done.map((r) => [r.id, r]));
      const written = new Map(batch.map((s) => [s.id, s]));
      const retry: Settlement[] = [];
      const refused = first.rejected.filter((r) => isRowError(r.error));
      for (const r of first.rejected) if (!isRowError(r.error)) retry.push(r.row);
      if (refused.length > 0) {
        health.rowsRejected(refused.length);
        for (const r of refused)
          this.log.error(
            { err: r.error, run: r.row.id },
            'the database refused a settlement; the run fails alone',
          );
        const fallback = refused.map((r) => rejectedSettlement(r.row, r.error, where));
        const second = await applyIsolated(fallback, settle);
        for (const row of second.done) done.set(row.id, row);
        for (const f of fallback) written.set(f.id, f);
        // Even the bare record failed: the database itself is the problem, so the original waits.
        const back = new Set(second.rejected.map((r) => r.row.id));
        for (const r of refused) if (back.has(r.row.id)) retry.push(r.row);
      }
      const retried = new Set(retry.map((s) => s.id));
      for (const s of batch) {
        if (retried.has(s.id)) continue;
        this.inflight.delete(s.id);
        const w = this.settledWaiters.get(s.id);
        if (!w) continue;
        this.settledWaiters.delete(s.id);
        const row = done.get(s.id);
        w(row ? { row, settlement: written.get(s.id)! } : undefined);
      }
      if (retry.length === 0) {
        health.succeeded();
        continue;
      }
      const wait = health.failed(first.rejected.find((r) => retried.has(r.row.id))?.error ?? 'settle failed');
      this.log.error(
        { runs: retry.map((s) => s.id), retry_in_ms: wait, failures: health.state().consecutive_failures },
        'settle failed; retrying',
      );
      this.pending = retry.concat(this.pending);
      if (Date.now() + wait > this.stopDeadline) break; // stopping: these runs' leases expire and recovery takes them
      await new Promise((r) => setTimeout(r, wait));
    }
    this.flushing = undefined;
    this.wakeUp();
  }

  /** Diagnostics: the shared statements' health and the settle backlog. */
  healthReport(): WorkerHealthReport {
    return this.health.report(this.id, this.pending.length);
  }

  /** Waits `ms`, or less when the worker stops (not on every kick: a failing claim must back off). */
  private sleepUnlessStopped(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.stopWaiters.delete(done);
        resolve();
      };
      const t = setTimeout(done, ms);
      this.stopWaiters.add(done);
    });
  }

  private async beat(): Promise<void> {
    const ids = [...this.inflight.keys()];
    if (ids.length === 0) return;
    try {
      const rows = await heartbeat(this.db, this.id, ids, this.leaseMs);
      this.health.statements.heartbeat.succeeded();
      const held = new Set(rows.map((r) => r.id));
      for (const r of rows) if (r.status === 'paused') this.inflight.get(r.id)?.control?.poke();
      for (const id of ids) {
        // Lost (cancelled, or recovered elsewhere): stop work nobody will record.
        if (!held.has(id) && !this.pending.some((p) => p.id === id))
          this.inflight.get(id)?.controller.abort();
      }
    } catch (e) {
      this.health.statements.heartbeat.failed(e);
      this.log.warn({ err: e }, 'heartbeat failed');
    }
  }

  async reap(): Promise<number> {
    try {
      const recovered = await recoverExpired(this.db, `reaper:${this.id}`);
      for (const r of recovered)
        this.log.warn({ run: r.id, status: r.status }, 'recovered run whose lease expired');
      // Grants past their expiry lose what is left of them (never what running work holds).
      const expired = await expireGrants(this.db, new Date(), `reaper:${this.id}`);
      if (expired > 0) this.log.info({ micro_credits: expired }, 'expired grants');
      this.health.statements.reap.succeeded();
      return recovered.length;
    } catch (e) {
      this.health.statements.reap.failed(e);
      this.log.warn({ err: e }, 'reap failed');
      return 0;
    }
  }

  /** Resolves when nothing is in flight (tests, benchmarks). */
  idle(): Promise<void> {
    if (this.inflight.size === 0 && !this.claiming) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /**
   * Graceful stop: claim nothing new, let in-flight runs finish for up to
   * `graceMs`, then hand the rest back to the queue for another worker.
   */
  async stop(graceMs = 10_000): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.wake?.();
    for (const w of [...this.stopWaiters]) w();
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    await this.loopDone;
    const deadline = Date.now() + graceMs;
    this.stopDeadline = deadline;
    while (this.inflight.size > this.pending.length && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20));
    // A settle that keeps failing cannot hold the stop past its grace period.
    await Promise.race([
      this.flushing,
      new Promise((r) => setTimeout(r, Math.max(0, deadline - Date.now())).unref()),
    ]);
    if (this.pending.length > 0)
      this.log.error(
        { runs: this.pending.map((p) => p.id) },
        'stopping with settlements the database did not take; their leases expire and recovery takes them',
      );
    const left = [...this.inflight.keys()].filter((id) => !this.pending.some((p) => p.id === id));
    if (left.length > 0) {
      const back = await handBack(this.db, this.id, left).catch(() => []);
      for (const id of left) this.inflight.get(id)?.controller.abort();
      this.log.warn({ runs: back }, 'handed back unfinished runs');
    }
    for (const u of this.unlisten.splice(0)) await u().catch(() => undefined);
    // Callers of handed-back runs wait for them the usual way.
    for (const w of this.settledWaiters.values()) w(undefined);
    this.settledWaiters.clear();
    for (const w of this.idleWaiters.splice(0)) w();
    watchHealth(this.id, undefined);
    this.log.info('worker stopped');
  }
}

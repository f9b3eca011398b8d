import { hostname } from 'node:os';
import { newId } from '../core/ids.js';
import type { Db } from '../db/types.js';
import { claimRuns, handBack, type Outcome, type SettledRun, type Settlement } from '../store/queue.js';
import type { RunRow } from '../store/runs.js';
import type { StreamSink } from '../elements/types.js';
import { recordRun, watchHealth } from '../telemetry/metrics.js';
import { endRunSpan, inSpan, startChildSpan, startRunSpan, tracingEnabled } from '../telemetry/tracing.js';
import type { Span } from '@opentelemetry/api';
import { getRun } from '../store/runs.js';
import { silentLogger, type Logger } from '../telemetry/log.js';
import { BatchControl, runBatch, type BatchHost } from './batch.js';
import { ExecutionSystem } from './execution.js';
import { runWorkflow, type WorkflowHost } from './workflow.js';
import { WorkerHealth, type WorkerHealthReport } from './health.js';
import { expireDueGrants, LeaseSystem } from './leases.js';
import { RetentionSystem, type RetentionPass } from './retention.js';
import { Sandbox } from '../sandbox/runner.js';
import type { EngineResources } from './resources.js';
import { rejectedSettlement, SettlementSystem } from './settlement.js';
import { MaintenanceSystem } from './maintenance.js';

export { recordRejected } from './settlement.js';

/** Workflow runs one worker orchestrates at most, per execution slot. */
const ORCHESTRATIONS_PER_SLOT = 16;
export type { Outcome };

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
  /** How often this worker deletes expired runs (retention); 0 or unset: it does not. */
  retentionMs?: number;
  /** Days a run is kept in circles without a policy of their own (default 30). */
  retentionDays?: number;
  /** Hours live events stay resumable (default 24). */
  liveRetentionHours?: number;
  /** How often this worker folds the element statistics deltas into their rollups. */
  foldMs?: number;
  /** How often this worker maintains the database (PGlite: vacuum and checkpoint; PostgreSQL: report). */
  maintenanceMs?: number;
  log?: Logger;
  /** The sandbox executors run code in; without one, the worker builds its own from the settings and closes it on stop. */
  sandbox?: Sandbox;
}

interface InFlight {
  run: RunRow;
  controller: AbortController;
  /** Batch runs: told when the run is paused (or its control state changed). */
  control?: BatchControl;
  /** The run's ops.execute span: ended by the settle (invoke runs) or by the loop that finishes the run. */
  span?: Span;
  /** Invoke runs: the span of their settle, from enqueue to the settle's commit. */
  settleSpan?: Span;
  /** A later loop of this worker took the run (and its span) over. */
  spanTaken?: boolean;
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
  /** Executes it here; `stream` receives what the execution streams (an LLM's tokens). */
  run(run: RunRow, stream?: StreamSink): Promise<Settled | undefined>;
  /** The run was not created after all: the slot is free again. */
  release(): void;
}

/**
 * A worker is the loop over the engine's systems: it claims queued runs (FOR
 * UPDATE SKIP LOCKED) into its slots, has the execution system run them, the
 * settlement system write them, and the lease system hold and recover them;
 * on stop it finishes or hands back what it holds. Any number of workers may
 * run against one database.
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
  /** Workflow runs this worker orchestrates (in flight, but neither executing nor waiting to settle). */
  private orchestrating = 0;
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
  /** Child runs this worker settled and told their orchestrator about (their NOTIFY is skipped). */
  private readonly selfSettled = new Set<string>();
  /** Callers waiting for a run of theirs to be settled (direct slots). */
  private readonly settledWaiters = new Map<string, (s: Settled | undefined) => void>();
  private readonly batchHost: BatchHost & WorkflowHost;
  /** How the shared statements fare (diagnostics, /metrics, /healthz). */
  readonly health = new WorkerHealth();
  private readonly stopWaiters = new Set<() => void>();
  private readonly resources: EngineResources;
  private readonly execution: ExecutionSystem;
  private readonly settlement: SettlementSystem;
  private readonly leases: LeaseSystem;
  private readonly retention: RetentionSystem;
  private readonly retentionMs: number;
  /** The retention pass under way, if any (passes never overlap; stop waits for it). */
  private retaining: Promise<RetentionPass> | undefined;
  readonly maintenance: MaintenanceSystem;
  private readonly foldMs: number;
  private readonly maintenanceMs: number;
  /** Runs settled since the last maintenance pass (bulk work brings the next pass forward). */
  private settledSinceMaintenance = 0;
  readonly sandbox: Sandbox;
  private readonly ownsSandbox: boolean;

  constructor(opts: WorkerOptions) {
    this.db = opts.db;
    this.host = opts.host ?? hostname();
    this.id = opts.id ?? `${this.host}:${process.pid}:${newId().slice(-8)}`;
    this.concurrency = opts.concurrency ?? 8;
    this.leaseMs = opts.leaseMs ?? 30_000;
    this.pollMs = opts.pollMs ?? 1_000;
    this.reapMs = opts.reapMs ?? Math.min(this.leaseMs, 5_000);
    this.log = (opts.log ?? silentLogger).child({ worker: this.id });
    this.ownsSandbox = !opts.sandbox;
    this.sandbox = opts.sandbox ?? new Sandbox();
    this.resources = {
      db: this.db,
      host: this.host,
      workerId: this.id,
      log: this.log,
      health: this.health,
      sandbox: this.sandbox,
    };
    this.execution = new ExecutionSystem(this.resources);
    this.settlement = new SettlementSystem(this.resources, (s, row) => this.settled(s, row));
    this.leases = new LeaseSystem(this.resources, this.leaseMs);
    this.retentionMs = opts.retentionMs ?? 0;
    this.retention = new RetentionSystem(this.resources, { defaultDays: opts.retentionDays ?? 30 });
    this.maintenance = new MaintenanceSystem(this.resources, opts.liveRetentionHours ?? 24);
    this.foldMs = opts.foldMs ?? 2_000;
    this.maintenanceMs = opts.maintenanceMs ?? 60_000;
    this.batchHost = {
      db: this.db,
      workerId: this.id,
      log: this.log,
      runOnce: (run, input, signal) => this.runOnce(run, input, signal),
      health: this.health,
      rejected: (item, e) => rejectedSettlement(item, e, { host: this.host, worker: this.id }),
      directSlot: () => this.directSlot(),
    };
  }

  /** The settlement system wrote `s` (row: what changed; undefined when the run had changed meanwhile). */
  private settled(s: Settlement, row: SettledRun | undefined): void {
    // A child of a workflow this worker orchestrates: its orchestrator absorbs the end from here
    // (no read), and this worker skips the NOTIFY the settle sends about it.
    const flight = this.inflight.get(s.id);
    const parent = flight?.run.parent_run_id;
    if (flight && row)
      recordRun(flight.run.kind, row.status, row.duration_ms, flight.run.queued_at, flight.run.started_at);
    if (flight?.span && !flight.control) {
      flight.settleSpan?.end();
      // undefined: the settle found the run changed meanwhile (cancelled, recovered elsewhere).
      endRunSpan(flight.span, row?.status ?? 'superseded', s.error?.code);
    }
    this.inflight.delete(s.id);
    const control = parent ? this.inflight.get(parent)?.control : undefined;
    if (control && row) {
      if (this.selfSettled.size > 10_000) this.selfSettled.clear(); // notifications lost: at worst one extra read
      this.selfSettled.add(s.id);
      control.childSettled({
        id: s.id,
        status: row.status,
        output: s.output,
        error: s.error,
        credits: row.credits_used,
        evidence: s.evidence,
      });
    } else control?.wake();
    // After bulk work on the embedded database, maintain it now rather than at the next tick.
    if (++this.settledSinceMaintenance >= 10_000 && this.db.kind === 'pglite') void this.maintain();
    const w = this.settledWaiters.get(s.id);
    if (w) {
      this.settledWaiters.delete(s.id);
      w(row ? { row, settlement: s } : undefined);
    }
    this.wakeUp();
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
    // A child run of a workflow this worker orchestrates ended (or a task was decided): look now.
    this.unlisten.push(
      await this.db.listen('cairn_run_child', (payload) => {
        const [parent, child] = payload.split(':');
        if (child && this.selfSettled.delete(child)) return; // settled here: its orchestrator knows
        this.inflight.get(parent!)?.control?.wake();
      }),
    );
    this.timers.push(setInterval(() => void this.beat(), Math.max(50, Math.floor(this.leaseMs / 3))));
    this.timers.push(setInterval(() => void this.reap(), this.reapMs));
    if (this.retentionMs > 0) this.timers.push(setInterval(() => void this.retain(), this.retentionMs));
    this.timers.push(setInterval(() => void this.maintenance.fold(), this.foldMs));
    this.timers.push(setInterval(() => void this.maintain(), this.maintenanceMs));
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
      const backlog = this.inflight.size - this.executing - this.orchestrating;
      const free = backlog >= this.concurrency * 2 ? 0 : this.concurrency - this.executing;
      let claimed = 0;
      const signals = this.queueSignals;
      if (free > 0 && signals !== this.queueSeenEmptyAt) {
        this.claiming = true;
        let backoff = 0;
        try {
          // Workflow runs only while this worker orchestrates fewer than its cap (each polls its children).
          const runs = await claimRuns(
            this.db,
            this.id,
            this.host,
            free,
            this.leaseMs,
            this.orchestrating < this.concurrency * ORCHESTRATIONS_PER_SLOT,
          );
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
    const backlog = this.inflight.size - this.executing - this.orchestrating;
    if (!this.running || this.executing >= this.concurrency || backlog >= this.concurrency * 2)
      return undefined;
    this.executing++;
    let used = false;
    return {
      claim: { workerId: this.id, host: this.host, leaseMs: this.leaseMs },
      run: (run, stream) => {
        used = true;
        return new Promise((resolve) => {
          this.settledWaiters.set(run.id, resolve);
          this.executeInSlot(run, new AbortController(), stream);
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

  private start1(run: RunRow): void {
    const controller = new AbortController();
    if (run.kind === 'batch' || run.kind === 'workflow') {
      // A batch run settles its items itself, in batches, and ends itself; a workflow run
      // orchestrates its tasks (child runs in the queue) and ends itself.
      const control = new BatchControl();
      // Claimed again while this worker's earlier loop over it had not let go yet (a resume right
      // after a pause): that loop stops starting items, the new one takes over. A batch's earlier
      // loop lets the items it runs finish and settle (a pause lets running items finish); a
      // workflow's only orchestrates (its tasks are runs of their own), so it simply stops.
      const earlier = this.inflight.get(run.id);
      if (earlier?.control && run.kind === 'batch') {
        earlier.control.retire();
        // A cancel, a lost lease or a stop reaches the new loop's controller: the retired loop's
        // running items stop with it.
        controller.signal.addEventListener('abort', () => earlier.controller.abort(), { once: true });
      } else earlier?.controller.abort();
      // One run, one ops.execute span: the new loop carries on the earlier loop's.
      const span = earlier?.span ?? this.runSpan(run);
      if (earlier) earlier.spanTaken = true;
      const entry: InFlight = { run, controller, control, span };
      this.inflight.set(run.id, entry);
      // An orchestration waits on its children more than it computes: it takes no execution slot.
      const slot = run.kind === 'batch';
      if (slot) this.executing++;
      else this.orchestrating++;
      const body = inSpan(span, () =>
        run.kind === 'batch'
          ? runBatch(this.batchHost, run, controller.signal, control)
          : runWorkflow(this.batchHost, run, controller.signal, control),
      );
      void body
        .catch((e) =>
          this.log.error({ err: e, run: run.id }, `${run.kind} run crashed; its lease will expire`),
        )
        .finally(() => {
          if (slot) this.executing--;
          else this.orchestrating--;
          if (this.inflight.get(run.id) === entry) this.inflight.delete(run.id);
          this.wakeUp();
          if (tracingEnabled() && !entry.spanTaken)
            void getRun(this.db, run.id)
              .catch(() => undefined)
              .then((r) => endRunSpan(span, r?.status ?? 'unknown', r?.error?.code));
        });
      return;
    }
    this.executing++;
    this.executeInSlot(run, controller);
  }

  /** Executes an invoke run in a slot already counted in `executing`, then queues its settle. */
  private executeInSlot(run: RunRow, controller: AbortController, stream?: StreamSink): void {
    const entry: InFlight = { run, controller, span: this.runSpan(run) };
    this.inflight.set(run.id, entry);
    void inSpan(entry.span!, () => this.execution.execute(run, controller.signal, stream)).then((s) => {
      this.executing--;
      entry.settleSpan = startChildSpan('settle', entry.span!);
      this.settlement.enqueue(s);
      this.wakeUp();
    });
  }

  /** A run's ops.execute span (a no-op without an OTLP endpoint), named by its circle's slug. */
  private runSpan(run: RunRow): Span {
    const span = startRunSpan(run);
    if (tracingEnabled())
      void this.execution
        .circle(run.circle_id)
        .then((c) => span.setAttribute('cairn.circle', c.slug))
        .catch(() => undefined);
    return span;
  }

  /** One execution of a run's operation (an invoke's input, or one item of a batch run); never throws. */
  runOnce(run: RunRow, input: unknown, signal: AbortSignal): Promise<Outcome> {
    return this.execution.runOnce(run, input, signal);
  }

  /** Diagnostics: the shared statements' health and the settle backlog. */
  healthReport(): WorkerHealthReport {
    return { ...this.health.report(this.id, this.settlement.backlog), maintenance: this.maintenance.state() };
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
    const rows = await this.leases.beat(ids);
    if (!rows) return;
    const held = new Set(rows.map((r) => r.id));
    for (const r of rows) if (r.status === 'paused') this.inflight.get(r.id)?.control?.poke();
    for (const id of ids) {
      // Lost (cancelled, or recovered elsewhere): stop work nobody will record.
      if (!held.has(id) && !this.settlement.isPending(id)) this.inflight.get(id)?.controller.abort();
    }
  }

  /** A maintenance pass (the timer's, or after bulk work). */
  async maintain(): Promise<void> {
    this.settledSinceMaintenance = 0;
    await this.maintenance.maintain();
  }

  /** Recovers runs whose lease expired, and expires grants past their date. */
  async reap(): Promise<number> {
    const n = await this.leases.recover();
    await expireDueGrants(this.resources);
    return n;
  }

  /** Deletes expired runs (one retention pass); a pass already under way is joined, not doubled. */
  retain(): Promise<RetentionPass> {
    this.retaining ??= this.retention.collect(() => this.running).finally(() => (this.retaining = undefined));
    return this.retaining;
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
    await this.retaining; // a pass under way ends after its current batch, before the database closes
    const deadline = Date.now() + graceMs;
    while (this.inflight.size > this.settlement.backlog && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20));
    // A settle that keeps failing cannot hold the stop past its grace period.
    await this.settlement.drain(deadline);
    if (this.settlement.backlog > 0)
      this.log.error(
        { runs: this.settlement.pendingIds() },
        'stopping with settlements the database did not take; their leases expire and recovery takes them',
      );
    const left = [...this.inflight.keys()].filter((id) => !this.settlement.isPending(id));
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
    if (this.ownsSandbox) this.sandbox.close();
    this.log.info('worker stopped');
  }
}

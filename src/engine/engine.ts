import type { StreamSink } from '../elements/types.js';
import type { Db } from '../db/types.js';
import type { EnginePort } from '../elements/types.js';
import { getRun, type RunRow } from '../store/runs.js';
import { silentLogger, type Logger } from '../telemetry/log.js';
import type { WorkerHealthReport } from './health.js';
import { Sandbox } from '../sandbox/runner.js';
import { enginePort } from './port.js';
import { submitRun, type SubmitRequest } from './submit.js';
import { RunWaiter } from './waiter.js';
import { startTarget } from './start.js';
import { TriggerSystem } from './triggers.js';
import type { StartRequest, Started } from '../elements/types.js';
import { Worker, type WorkerOptions } from './worker.js';

export interface EngineOptions {
  db: Db;
  log?: Logger;
  /** Facts pinned into every run snapshot (toolchains, database version). */
  snapshotExtra: Record<string, unknown>;
  /** Run a worker in this process (claims, executes, settles); none: runs wait for another process's. */
  worker?: Omit<WorkerOptions, 'db' | 'log'> | false;
  /** Fallback poll of the runs a sync caller waits for. */
  waitPollMs?: number;
  /** The sandbox (built from the settings when not given; the engine then closes it on stop). */
  sandbox?: Sandbox;
}

/** How an invoke ended for its caller: finished (its final row), or accepted and still queued or running. */
export type InvokeOutcome = { state: 'finished'; run: RunRow } | { state: 'accepted'; run: RunRow };

export interface InvokeOptions {
  /** Wait for the run at most this long (0 or `async`: answer at once). */
  waitMs: number;
  async?: boolean;
  /**
   * Receives what the execution streams (an LLM's tokens) when it runs in this process's worker;
   * `local` tells at once whether it does (if not, only the end arrives).
   */
  stream?: StreamSink;
  onStart?: (info: { runId: string; local: boolean }) => void;
}

/**
 * The engine, as the API and the CLI's server see it: one facade over the
 * systems (submit, execution, settlement, leases and recovery, control,
 * batch, grants expiry) that share one set of resources. It owns the
 * orchestration of a sync invoke — a free slot of this process's worker takes
 * the run at once, else it is queued and waited for — so the HTTP layer only
 * translates.
 */
export class Engine {
  readonly db: Db;
  readonly worker: Worker | undefined;
  readonly waiter: RunWaiter;
  readonly port: EnginePort;
  readonly sandbox: Sandbox;
  /** The scheduler and the upstream outbox (in processes that run a worker). */
  readonly triggers: TriggerSystem | undefined;
  private readonly ownsSandbox: boolean;
  private readonly snapshotExtra: Record<string, unknown>;

  constructor(opts: EngineOptions) {
    this.db = opts.db;
    this.snapshotExtra = opts.snapshotExtra;
    this.ownsSandbox = !opts.sandbox;
    this.sandbox = opts.sandbox ?? new Sandbox();
    this.worker =
      opts.worker === false || opts.worker === undefined
        ? undefined
        : new Worker({ ...opts.worker, db: opts.db, log: opts.log ?? silentLogger, sandbox: this.sandbox });
    this.waiter = new RunWaiter(opts.db, opts.waitPollMs ?? 1_000);
    this.port = enginePort(opts.db, (req) => this.startTarget(req));
    this.triggers = this.worker
      ? new TriggerSystem({
          db: opts.db,
          log: opts.log ?? silentLogger,
          start: (req) => this.startTarget(req),
        })
      : undefined;
  }

  /** Starts a trigger's target run (once per idempotency key). */
  startTarget(req: StartRequest): Promise<Started> {
    return startTarget(
      {
        db: this.db,
        sandbox: this.sandbox,
        snapshotExtra: this.snapshotExtra,
        port: () => this.port,
        workerId: this.worker?.id ?? null,
        kick: () => this.kick(),
      },
      req,
    );
  }

  async start(): Promise<void> {
    await this.waiter.start();
    await this.worker?.start();
    await this.triggers?.start();
  }

  /** Stops the worker (in-flight runs get `graceMs` to finish, the rest is handed back), then the waiter. */
  async stop(graceMs: number): Promise<void> {
    await this.triggers?.stop();
    await this.worker?.stop(graceMs);
    await this.waiter.stop();
    if (this.ownsSandbox) this.sandbox.close();
  }

  /** Something was queued or changed: this process's worker claims now (others hear NOTIFY). */
  kick(): void {
    this.worker?.kick();
  }

  health(): WorkerHealthReport | undefined {
    return this.worker?.healthReport();
  }

  /**
   * Creates a run of a run-creating op and, unless async, waits up to `waitMs`
   * for it to end. A sync invoke that finds a free slot in this process's
   * worker is created already claimed and executed at once (no queue round
   * trip); otherwise it is queued for any worker. A dry run ends as it is recorded.
   */
  async invoke(req: Omit<SubmitRequest, 'claim'>, opts: InvokeOptions): Promise<InvokeOutcome> {
    const sync = !opts.async && opts.waitMs > 0;
    const slot = sync && req.mode !== 'dry_run' ? this.worker?.directSlot() : undefined;
    let submitted;
    try {
      submitted = await submitRun(
        this.db,
        { ...req, ...(slot ? { claim: slot.claim } : {}) },
        this.snapshotExtra,
      );
    } catch (e) {
      slot?.release();
      throw e;
    }
    const { run, created } = submitted;
    if (run.mode === 'dry_run') return { state: 'finished', run };
    const local = Boolean(slot && created && run.status === 'running');
    opts.onStart?.({ runId: run.id, local });
    if (slot && created && run.status === 'running') {
      let timer: NodeJS.Timeout | undefined;
      const settled = await Promise.race([
        slot.run(run, opts.stream),
        new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), opts.waitMs))),
      ]);
      clearTimeout(timer);
      if (settled === 'late') return { state: 'accepted', run }; // it keeps running
      if (settled) {
        const { row, settlement } = settled;
        return {
          state: 'finished',
          run: {
            ...run,
            status: row.status,
            output: settlement.output ?? null,
            error: settlement.error,
            duration_ms: row.duration_ms,
            credits_used: row.credits_used,
          },
        };
      }
    } else {
      slot?.release();
      this.kick();
    }
    if (!sync) return { state: 'accepted', run };
    if (!(await this.waiter.wait(run.id, opts.waitMs))) return { state: 'accepted', run };
    return { state: 'finished', run: (await getRun(this.db, run.id))! };
  }
}

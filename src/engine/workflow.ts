/**
 * Orchestrates a claimed workflow run (R-WORKFLOW). The worker holding the
 * run's lease is its one orchestrator: it reads the tasks, decides which are
 * ready (their dependencies ended; `when` holds; a `for_each` list fans out),
 * renders their inputs, and starts each as a child run in the queue, which
 * any worker claims. A child that ends wakes it (a trigger NOTIFYs the
 * parent); it records the task, retries it when its error is retryable and
 * the step allows, skips what depends on a failure, and ends the run with its
 * outputs. Its state is in the database only: a worker that takes the run
 * over after a crash goes on from the tasks as recorded.
 */
import { CairnError, toCairnError, type ErrorBody } from '../core/errors.js';
import type { PinnedElement } from '../elements/types.js';
import { ExprError, renderTemplate, type ExprScope, type Template } from '../core/expr.js';
import { newId } from '../core/ids.js';
import { describeIssues } from '../core/zod.js';
import type { Db } from '../db/types.js';
import { getType, operationsOf } from '../elements/registry.js';
import { compilePlan, type Plan, type StepPlan } from '../elements/workflow/plan.js';
import { workflowSpec } from '../elements/workflow/spec.js';
import type { Logger } from '../telemetry/log.js';
import { fileRefOf, PgFileStore, type FileRef } from '../store/files.js';
import { flagRun, letGoPaused } from '../store/batch.js';
import { getRunsStatus, loadSnapshot, type RunRow } from '../store/runs.js';
import {
  decideTask,
  endedChildren,
  finishWorkflow,
  getDefinition,
  loadTasks,
  advanceTasks,
  type Decision,
  type NewChild,
  type TaskRow,
  type TaskUpdate,
  type WorkflowDefinition,
} from '../store/workflow.js';
import type { BatchControl, ChildEnd } from './batch.js';
import { TASK_ORD_STRIDE } from './workflow-submit.js';
import { cancel } from './control.js';

export interface WorkflowHost {
  db: Db;
  workerId: string;
  log: Logger;
  /** A free slot of this worker for a child run it starts already claimed (no queue round trip). */
  directSlot?: () => DirectSlot | undefined;
}

/** A slot of the orchestrating worker (the worker's DirectSlot, as the orchestrator uses it). */
export interface DirectSlot {
  claim: { workerId: string; host: string; leaseMs: number };
  run(run: RunRow): Promise<unknown>;
  release(): void;
}

const TERMINAL = new Set(['succeeded', 'failed', 'skipped', 'cancelled']);

function workflowError(code: string, message: string, suggestion: string, details?: unknown): ErrorBody {
  return { code, class: 'validation', message, retryable: false, _suggestion: suggestion, details };
}

function exprFailed(where: string, e: unknown): ErrorBody {
  const msg = e instanceof ExprError ? `the expression "${e.expression}" ${e.message}` : String(e);
  return workflowError(
    'WORKFLOW_EXPRESSION_FAILED',
    `${where}: ${msg}.`,
    'Check what the steps it reads returned (GET /api/runs/{id}/tasks); a step skipped or failed has no output.',
  );
}

/** The key of a for_each step's i-th task. */
export const fanKey = (step: string, i: number) => `${step}[${i}]`;

class Orchestration {
  private readonly tasks = new Map<string, TaskRow>();
  private readonly updates = new Map<string, TaskUpdate>();
  private readonly toStart: NewChild[] = [];
  private readonly fan = new Map<string, string[]>();
  private paused = false;
  /** The budget stopped the run (on_exceeded: stop): why, and the running children to cancel. */
  private budgetStop: ErrorBody | null = null;
  private readonly toCancel: string[] = [];
  /** The budget was passed (on_exceeded: flag): flag the run once. */
  private flagBudget: { budget: number; committed: number } | null | 'done' = null;

  constructor(
    private readonly h: WorkflowHost,
    private run: RunRow,
    private readonly def: WorkflowDefinition,
    private readonly plan: Plan,
    private readonly concurrency: number,
  ) {}

  load(rows: TaskRow[]): void {
    for (const t of rows) this.tasks.set(t.key, t);
    for (const t of rows) {
      const m = /^(.*)\[(\d+)\]$/.exec(t.key);
      if (m && this.plan.byName.has(m[1]!)) {
        const list = this.fan.get(m[1]!) ?? [];
        list[Number(m[2])] = t.key;
        this.fan.set(m[1]!, list);
      }
    }
    // A budget stop recorded by an earlier orchestration (another worker, a reload) still holds:
    // nothing more starts, and what it had not cancelled yet is cancelled now.
    const stopped = rows.find((t) => t.evidence?.skipped_because === 'budget_exceeded');
    if (stopped && !this.budgetStop)
      this.stopForBudget(
        `The run reached its budget of ${this.run.budget}; it stopped (on_exceeded: stop).`,
        { budget: this.run.budget, task: stopped.key },
      );
  }

  /** Stops the run for its budget: why (the run's error), and its executing children to cancel. */
  private stopForBudget(message: string, details: Record<string, unknown>): void {
    this.budgetStop = {
      code: 'BUDGET_EXCEEDED',
      class: 'payment',
      message,
      retryable: false,
      _suggestion:
        'Raise the budget (the trigger’s budget, or the workflow’s spec.budget), then rerun or retry-failed.',
      details,
    };
    for (const r of this.tasks.values())
      if (r.status === 'running' && r.child_run_id && !this.fan.has(r.key) && !this.isAwaiting(r))
        this.toCancel.push(r.child_run_id);
  }

  private set(t: TaskRow, u: Omit<TaskUpdate, 'id' | 'key'>): void {
    const prev = this.updates.get(t.key);
    const next: TaskUpdate = { ...prev, ...u, id: t.id, key: t.key };
    this.updates.set(t.key, next);
    Object.assign(t, {
      status: u.status,
      ...(u.outputs !== undefined ? { outputs: u.outputs } : {}),
      ...(u.error !== undefined ? { error: u.error } : {}),
      ...(u.inputs !== undefined ? { inputs: u.inputs } : {}),
      ...(u.credits !== undefined ? { credits_used: u.credits } : {}),
      ...(u.retry_in_ms !== undefined
        ? { retry_at: new Date(Date.now() + u.retry_in_ms).toISOString() }
        : {}),
    });
  }

  private stepOf(key: string): StepPlan {
    const name = /^(.*)\[\d+\]$/.exec(key)?.[1] ?? key;
    return this.plan.byName.get(name)!;
  }

  /** What expressions read: the parameters, the ended steps' outputs, the run. */
  private scope(item?: unknown): ExprScope {
    const steps: Record<string, unknown> = {};
    for (const p of this.plan.steps) {
      const t = this.tasks.get(p.step.name);
      if (!t) continue;
      steps[p.step.name] = {
        status: t.status,
        output: t.status === 'succeeded' || t.status === 'failed' ? (t.outputs ?? null) : null,
        error: t.error ?? null,
        files: Object.fromEntries(
          ((t.evidence?.output_files as FileRef[] | undefined) ?? []).map((f) => [f.name, f]),
        ),
      };
    }
    const input = (this.run.input ?? {}) as { parameters?: unknown };
    return {
      parameters: input.parameters ?? {},
      steps,
      run: { id: this.run.id, trigger: this.run.trigger, definition_hash: this.run.definition_hash },
      ...(item === undefined ? {} : { item }),
    };
  }

  /** A child run for a task (the step's pinned element, its rendered input). */
  private child(t: TaskRow, p: StepPlan, input: unknown): NewChild | ErrorBody {
    const pinned = this.def.steps[p.step.name]!;
    const type = getType(pinned.element.element_type);
    const op = operationsOf(type).find((o) => o.name === pinned.op);
    if (!op)
      return workflowError(
        'WORKFLOW_STEP_UNAVAILABLE',
        `Step "${p.step.name}": ${pinned.element.element_type} has no operation ${pinned.op} any more.`,
        'Update the workflow.',
      );
    const parsed = op.input.safeParse(input);
    if (!parsed.success)
      return {
        code: 'INVALID_INPUT',
        class: 'validation',
        message: `Step "${p.step.name}": its input does not match ${type.type}.${op.name}: ${describeIssues(parsed.error)}`,
        retryable: false,
        _suggestion: `Fix the step's input mapping; GET /api/{circle}/${pinned.element.slug}/ops/schema shows the input schema.`,
        details: { input },
      };
    // A step's timeout overrides its element's (pinned into the child's definition as it runs).
    const spec =
      p.step.timeout_ms !== undefined && 'timeout_ms' in pinned.element.spec
        ? { ...pinned.element.spec, timeout_ms: p.step.timeout_ms }
        : pinned.element.spec;
    const wanted: { name: string; sha256: string }[] = [];
    for (const [name, tpl] of p.files) {
      let v: unknown;
      try {
        v = renderTemplate(tpl, this.scope());
      } catch (e) {
        return exprFailed(`step "${p.step.name}" files.${name}`, e);
      }
      const sha256 = fileRefOf(v);
      if (!sha256)
        return workflowError(
          'WORKFLOW_FILE_INVALID',
          `Step "${p.step.name}": files.${name} gave ${JSON.stringify(v)?.slice(0, 200)}, which is not a file.`,
          'Map a file: ${{ steps.<step>.files[\'<name>\'] }}, a parameter {"$file": "sha256:<hex>"}, or "sha256:<hex>".',
        );
      wanted.push({ name, sha256 });
    }
    const extra = { ...(this.run.snapshot as Record<string, unknown>) };
    delete extra.workflow_definition;
    delete extra.workflow;
    // A price that depends on the input (an LLM call's most) is the input's, not the definition's estimate.
    let price = pinned.price;
    try {
      price =
        type.priceOf?.(
          op.name,
          pinned.element.spec,
          parsed.data,
          (pinned.element as PinnedElement).uses ?? {},
        ) ?? price;
    } catch (e) {
      return toCairnError(e).toBody();
    }
    return {
      id: newId(),
      item_id: newId(),
      task: t.id,
      key: t.key,
      element_id: pinned.element.id,
      element_slug: pinned.element.slug,
      element_type: pinned.element.element_type,
      element_version: pinned.element.version,
      definition_hash: pinned.element.definition_hash,
      operation: pinned.op,
      input: parsed.data,
      max_attempts: pinned.max_attempts,
      retryable_on_loss: pinned.retry_on_loss,
      price,
      snapshot: {
        ...extra,
        element: { ...pinned.element, spec },
        operation: { name: pinned.op, price, retry_on_loss: pinned.retry_on_loss },
        workflow_task: { run_id: this.run.id, task: t.key, definition_hash: this.run.definition_hash },
      },
      timeout_ms: pinned.timeout_ms,
      attempt: t.attempt_count + 1,
      files: wanted,
    };
  }

  private elementOf(p: StepPlan) {
    const pinned = this.def.steps[p.step.name]!;
    return {
      slug: pinned.element.slug,
      element_type: pinned.element.element_type,
      version: pinned.element.version,
      definition_hash: pinned.element.definition_hash,
      op: pinned.op,
    };
  }

  private isAwaiting(t: TaskRow): boolean {
    return t.status === 'running' && !!t.evidence?.awaiting && !t.evidence?.decision;
  }

  /** Tasks waiting for a decision. */
  awaitingKeys(): string[] {
    return [...this.tasks.values()].filter((t) => this.isAwaiting(t)).map((t) => t.key);
  }

  /** Awaiting tasks past their deadline. */
  overdue(): { key: string; on_timeout: 'approve' | 'reject' }[] {
    const now = Date.now();
    return [...this.tasks.values()]
      .filter((t) => this.isAwaiting(t))
      .map((t) => ({ t, a: t.evidence.awaiting as { deadline: string; on_timeout: 'approve' | 'reject' } }))
      .filter(({ a }) => Date.parse(a.deadline) <= now)
      .map(({ t, a }) => ({ key: t.key, on_timeout: a.on_timeout }));
  }

  /** Decisions recorded meanwhile (by the API, or a timeout), read back. */
  absorbDecisions(rows: TaskRow[]): void {
    for (const row of rows) {
      const t = this.tasks.get(row.key);
      if (!t || row.status === 'running') continue;
      Object.assign(t, {
        status: row.status,
        outputs: row.outputs,
        error: row.error,
        evidence: row.evidence,
        finished_at: row.finished_at,
      });
    }
  }

  /** Children this worker settled itself: the same as a read of them, from memory. */
  absorbLocal(ends: ChildEnd[]): void {
    const byChild = new Map<string, TaskRow>();
    for (const t of this.tasks.values()) if (t.child_run_id) byChild.set(t.child_run_id, t);
    const rows: TaskRow[] = [];
    for (const c of ends) {
      const t = byChild.get(c.id);
      if (!t) continue;
      rows.push({
        ...t,
        child_status: c.status,
        child_output: c.output,
        child_error: c.error,
        child_credits: c.credits,
        child_duration_ms: null,
        child_evidence: c.evidence,
      });
    }
    this.absorb(rows);
  }

  /** Records what ended children did to their tasks. */
  absorb(ended: TaskRow[]): void {
    for (const row of ended) {
      const t = this.tasks.get(row.key);
      if (!t || t.status !== 'running') continue;
      const p = this.stepOf(t.key);
      const evidence = {
        ...(row.child_evidence ?? {}),
        child_run_id: row.child_run_id,
        element: this.elementOf(p),
        runs: [...((t.evidence?.runs as string[] | undefined) ?? []), row.child_run_id],
      };
      t.evidence = { ...t.evidence, ...evidence };
      const credits = Number(t.credits_used ?? 0) + Number(row.child_credits ?? 0);
      if (row.child_status === 'succeeded') {
        this.set(t, {
          status: 'succeeded',
          outputs: row.child_output ?? null,
          credits,
          evidence,
          error: null,
        });
        continue;
      }
      const err: ErrorBody =
        row.child_error ?? workflowError('TASK_FAILED', `Task ${t.key} failed.`, 'See its child run.');
      const retry = p.step.retry;
      if (
        row.child_status !== 'cancelled' &&
        retry &&
        err.retryable &&
        t.attempt_count < retry.max_attempts
      ) {
        const wait = retry.backoff_ms * 2 ** Math.max(0, t.attempt_count - 1);
        this.set(t, {
          status: 'retrying',
          error: err,
          credits,
          evidence,
          retry_in_ms: wait,
          reason: 'retryable_error',
        });
        continue;
      }
      this.set(t, {
        status: row.child_status === 'cancelled' ? 'cancelled' : 'failed',
        outputs: row.child_output ?? null,
        error: err,
        credits,
        evidence,
      });
    }
  }

  /** Did this task end in a way that fails its dependents (and the run)? */
  private blocks(t: TaskRow): boolean {
    if (t.status !== 'failed' && t.status !== 'cancelled') return false;
    return !this.stepOf(t.key).step.continue_on_error;
  }

  /** Tasks executing (child runs) as of this round, against the concurrency (counted once a round, then kept). */
  private busy = 0;

  /** Tasks executing (child runs); a fan-out's step and a wait for approval are not. */
  private countRunning(): number {
    let n = 0;
    for (const t of this.tasks.values())
      if (t.status === 'running' && !this.fan.has(t.key) && !this.isAwaiting(t)) n++;
    return n + this.toStart.length;
  }

  private running(): number {
    return this.busy;
  }

  /**
   * What the run has spent or may still spend: the credits its tasks captured plus the price of
   * each task executing now. A task starts only while this plus its price fits the budget, so a
   * stopped run never captures more than its budget, at any concurrency.
   */
  private committed(): number {
    let c = 0;
    for (const t of this.tasks.values()) {
      c += Number(t.credits_used ?? 0);
      if (t.status === 'running' && t.child_run_id && !this.fan.has(t.key))
        c += this.def.steps[this.stepOf(t.key).step.name]?.price ?? 0;
    }
    return c;
  }

  /** May a task of this price start? (stop: no, once it would pass the budget; flag: yes, flagged.) */
  private fits(t: TaskRow, price: number): boolean {
    const budget = this.run.budget;
    if (budget === null || budget === undefined || price <= 0) return true;
    const committed = this.committed();
    if (committed + price <= budget) return true;
    if (this.run.budget_policy !== 'stop') {
      if (this.flagBudget === null) this.flagBudget = { budget, committed: committed + price };
      return true;
    }
    this.stopForBudget(
      `Task ${t.key} (${price} micro-credits) would take the run past its budget of ${budget} (${committed} spent or committed); the run stopped (on_exceeded: stop).`,
      { budget, committed, price, task: t.key },
    );
    return false;
  }

  /** The budget stopped the run: nothing more starts; what waits is skipped. */
  private stopAll(): void {
    for (const t of this.tasks.values()) {
      if (t.status === 'pending' || t.status === 'retrying' || this.isAwaiting(t))
        this.set(t, {
          status: 'skipped',
          reason: 'budget_exceeded',
          evidence: { skipped_because: 'budget_exceeded' },
        });
      else if (t.status === 'running' && this.fan.has(t.key)) {
        const open = (this.fan.get(t.key) ?? []).some((k) => !TERMINAL.has(this.tasks.get(k)!.status));
        if (!open) this.set(t, { status: 'failed', error: this.budgetStop });
      }
    }
  }

  /** Children to cancel (the budget stopped the run), once. */
  takeCancels(): string[] {
    return this.toCancel.splice(0);
  }

  /** The budget was passed under on_exceeded: flag — what to flag the run with, once. */
  takeFlag(): { budget: number; committed: number } | null {
    const f = this.flagBudget;
    if (f === null || f === 'done') return null;
    this.flagBudget = 'done';
    return f;
  }

  /** Starts what is ready, up to the concurrency. */
  advance(): void {
    if (this.paused) return;
    if (this.budgetStop) return this.stopAll();
    this.busy = this.countRunning();
    for (const p of this.plan.steps) {
      const t = this.tasks.get(p.step.name);
      if (!t) continue;
      if (t.status === 'running' && this.fan.has(p.step.name)) this.advanceFan(t, p);
      if (t.status !== 'pending' && t.status !== 'retrying') continue;
      if (t.status === 'retrying') {
        if (t.retry_at && Date.parse(t.retry_at) > Date.now()) continue;
        if (this.running() >= this.concurrency) continue;
        this.startWith(t, p, t.inputs);
        continue;
      }
      const deps = p.deps.map((d) => this.tasks.get(d)!);
      if (deps.some((d) => !TERMINAL.has(d.status))) continue;
      const failed = deps.find((d) => this.blocks(d));
      if (failed) {
        this.set(t, {
          status: 'skipped',
          reason: 'dependency_failed',
          evidence: { skipped_because: failed.key },
        });
        continue;
      }
      const skippedDep = deps.find((d) => d.status === 'skipped');
      if (skippedDep) {
        this.set(t, {
          status: 'skipped',
          reason: 'dependency_skipped',
          evidence: { skipped_because: skippedDep.key },
        });
        continue;
      }
      const scope = this.scope();
      if (p.when) {
        let ok: unknown;
        try {
          ok = renderTemplate(p.when, scope);
        } catch (e) {
          this.set(t, { status: 'failed', error: exprFailed(`step "${p.step.name}" when`, e) });
          continue;
        }
        if (ok !== true) {
          this.set(t, {
            status: 'skipped',
            reason: 'when_false',
            evidence: { when: p.step.when, value: ok ?? null },
          });
          continue;
        }
      }
      if (p.forEach) {
        this.expand(t, p, scope);
        continue;
      }
      if (this.running() >= this.concurrency) continue;
      let input: unknown;
      try {
        input = renderTemplate(p.input, scope);
      } catch (e) {
        this.set(t, { status: 'failed', error: exprFailed(`step "${p.step.name}" input`, e) });
        continue;
      }
      this.startWith(t, p, input);
    }
  }

  private startWith(t: TaskRow, p: StepPlan, input: unknown): void {
    const pinned = this.def.steps[p.step.name]!;
    const type = getType(pinned.element.element_type);
    if (type.approval) {
      // An approval runs no code: the task waits for a decision (the API's approve/reject, or its timeout).
      const gate = type.approval(type.spec.parse(pinned.element.spec));
      const awaiting = { ...gate, deadline: new Date(Date.now() + gate.timeout_ms).toISOString() };
      this.set(t, {
        status: 'running',
        inputs: input ?? {},
        reason: 'awaiting_approval',
        evidence: { awaiting, element: this.elementOf(p) },
      });
      t.evidence = { ...t.evidence, awaiting };
      return;
    }
    const c = this.child(t, p, input);
    if ('code' in c) {
      if (!this.fits(t, pinned.price)) return this.stopAll();
      this.set(t, { status: 'failed', error: c, inputs: input });
      return;
    }
    if (!this.fits(t, c.price)) return this.stopAll();
    this.toStart.push(c);
    this.busy++;
    // The start statement writes the task as running; only the in-memory state changes here
    // (a new task's insert stays queued: it is written first, as pending).
    t.status = 'running';
    t.inputs = c.input;
    t.attempt_count = c.attempt;
    t.child_run_id = c.id;
    // A retrying change (the failed attempt, its error and evidence) is written before the start.
    const pending = this.updates.get(t.key);
    if (pending && !pending.isNew && pending.status !== 'retrying') this.updates.delete(t.key);
  }

  /** Fans a for_each step out: one pending task per element, inputs rendered now. */
  private expand(t: TaskRow, p: StepPlan, scope: ExprScope): void {
    let list: unknown;
    try {
      list = renderTemplate(p.forEach as Template, scope);
    } catch (e) {
      this.set(t, { status: 'failed', error: exprFailed(`step "${p.step.name}" for_each`, e) });
      return;
    }
    if (!Array.isArray(list)) {
      this.set(t, {
        status: 'failed',
        error: workflowError(
          'WORKFLOW_FOR_EACH_NOT_A_LIST',
          `Step "${p.step.name}": for_each gave ${list === null ? 'null' : typeof list}, not a list.`,
          'Make for_each an expression that gives a list, e.g. ${{ steps.list.output.rows }}.',
        ),
      });
      return;
    }
    if (list.length > p.step.max_items) {
      this.set(t, {
        status: 'failed',
        error: workflowError(
          'WORKFLOW_FOR_EACH_CAP',
          `Step "${p.step.name}": for_each gave ${list.length} items; at most ${p.step.max_items} tasks may fan out from one step.`,
          'Raise max_items (up to 10000), or give the step a shorter list.',
          { items: list.length, max_items: p.step.max_items },
        ),
      });
      return;
    }
    const keys: string[] = [];
    for (let i = 0; i < list.length; i++) {
      let input: unknown;
      let error: ErrorBody | null = null;
      try {
        input = renderTemplate(p.input, { ...scope, item: list[i] });
      } catch (e) {
        error = exprFailed(`step "${p.step.name}" input of item ${i}`, e);
      }
      const key = fanKey(p.step.name, i);
      const row: TaskRow = {
        id: newId(),
        key,
        ord: p.index * TASK_ORD_STRIDE + i + 1,
        status: 'pending',
        attempt_count: 0,
        inputs: input ?? null,
        outputs: null,
        error: null,
        evidence: {},
        credits_used: 0,
        child_run_id: null,
        retry_at: null,
        started_at: null,
        finished_at: null,
        duration_ms: null,
        child_status: null,
        child_output: null,
        child_error: null,
        child_credits: null,
        child_duration_ms: null,
        child_evidence: null,
      };
      this.tasks.set(key, row);
      keys.push(key);
      this.updates.set(key, {
        id: row.id,
        key,
        ord: row.ord,
        isNew: true,
        status: 'pending',
        inputs: input ?? null,
      });
      if (error) this.set(row, { status: 'failed', error });
    }
    this.fan.set(p.step.name, keys);
    this.set(t, { status: 'running', evidence: { for_each: { items: list.length } } });
    this.advanceFan(t, p);
  }

  /** Starts a fan-out's pending tasks; ends its step when they all have. */
  private advanceFan(group: TaskRow, p: StepPlan): void {
    const keys = this.fan.get(p.step.name) ?? [];
    for (const k of keys) {
      const t = this.tasks.get(k)!;
      if (this.running() >= this.concurrency) break;
      if (t.status === 'pending') this.startWith(t, p, t.inputs);
      else if (t.status === 'retrying' && !(t.retry_at && Date.parse(t.retry_at) > Date.now()))
        this.startWith(t, p, t.inputs);
    }
    const all = keys.map((k) => this.tasks.get(k)!);
    if (all.some((t) => !TERMINAL.has(t.status))) return;
    const bad = all.filter((t) => t.status === 'failed' || t.status === 'cancelled');
    const outputs = all.map((t) => t.outputs ?? null);
    const credits = all.reduce((s, t) => s + Number(t.credits_used ?? 0), 0);
    if (bad.length > 0 && !p.step.continue_on_error)
      this.set(group, {
        status: 'failed',
        outputs,
        error: workflowError(
          'WORKFLOW_FOR_EACH_FAILED',
          `Step "${p.step.name}": ${bad.length} of ${all.length} tasks failed (first: ${bad[0]!.key}: ${bad[0]!.error?.message ?? 'failed'}).`,
          'See the failed tasks (GET /api/runs/{id}/tasks), fix them, then retry-failed.',
          { failed: bad.map((t) => t.key) },
        ),
        evidence: { for_each: { items: all.length, failed: bad.length, credits } },
      });
    else
      this.set(group, {
        status: bad.length > 0 ? 'failed' : 'succeeded',
        outputs,
        evidence: { for_each: { items: all.length, failed: bad.length, credits } },
      });
  }

  done(): boolean {
    for (const t of this.tasks.values()) if (!TERMINAL.has(t.status)) return false;
    return this.toStart.length === 0;
  }

  /** Changes made after the last write (a task that could not start): write them before waiting. */
  unwritten(): boolean {
    return this.updates.size > 0 || this.toStart.length > 0;
  }

  setPaused(p: boolean): void {
    this.paused = p;
  }

  /** Are child runs of this run still executing? (A wait for approval holds nothing.) */
  hasRunning(): boolean {
    for (const t of this.tasks.values())
      if (t.status === 'running' && !this.fan.has(t.key) && !this.isAwaiting(t)) return true;
    return false;
  }

  /** When the next retry is due (ms from now), if any. */
  nextDue(): number | undefined {
    // Nothing can start now (paused, or at the concurrency): a child's end or a control wakes the loop.
    if (this.paused || this.countRunning() >= this.concurrency) {
      let deadline: number | undefined;
      for (const t of this.tasks.values())
        if (this.isAwaiting(t)) {
          const ms = Date.parse((t.evidence.awaiting as { deadline: string }).deadline) - Date.now();
          deadline = deadline === undefined ? ms : Math.min(deadline, ms);
        }
      return deadline;
    }
    let min: number | undefined;
    const due = (at: string) => {
      const ms = Date.parse(at) - Date.now();
      min = min === undefined ? ms : Math.min(min, ms);
    };
    for (const t of this.tasks.values()) {
      if (t.status === 'retrying' && t.retry_at) due(t.retry_at);
      if (this.isAwaiting(t)) due((t.evidence.awaiting as { deadline: string }).deadline);
    }
    return min;
  }

  counters() {
    let total = 0,
      succeeded = 0,
      failed = 0,
      pending = 0,
      credits = 0;
    for (const t of this.tasks.values()) {
      if (this.fan.has(t.key)) continue; // a fan-out's step counts through its tasks
      total++;
      if (t.status === 'succeeded') succeeded++;
      else if (t.status === 'failed' || t.status === 'cancelled') failed++;
      else if (!TERMINAL.has(t.status)) pending++;
      credits += Number(t.credits_used ?? 0);
    }
    return { total, succeeded, failed, pending, credits };
  }

  /** Writes what changed and starts what is ready; false when the lease is gone. */
  async flush(): Promise<boolean> {
    const starts = this.toStart.splice(0);
    // Input files: the circle must hold each one; the child's snapshot pins them (name, hash, size, type).
    const store = new PgFileStore(this.h.db);
    const ready: NewChild[] = [];
    for (const c of starts) {
      const pinned: FileRef[] = [];
      let missing: string | undefined;
      for (const f of c.files ?? []) {
        const st = await store.stat(this.run.circle_id, f.sha256);
        if (!st) {
          missing = f.sha256;
          break;
        }
        pinned.push({ ...st, name: f.name });
      }
      delete c.files;
      if (missing) {
        this.set(this.tasks.get(c.key)!, {
          status: 'failed',
          error: workflowError(
            'FILE_NOT_FOUND',
            `Task ${c.key}: file sha256:${missing} is not a file of this circle.`,
            'Upload it (POST /api/{circle}/files), or map a file an earlier step wrote.',
          ),
        });
        continue;
      }
      if (pinned.length > 0) (c.snapshot as Record<string, unknown>).input_files = pinned;
      ready.push(c);
    }
    const updates = [...this.updates.values()];
    this.updates.clear();
    if (updates.length === 0 && ready.length === 0) return true;
    // Children this worker has free slots for start here, already claimed; the rest go to the queue.
    const slots = new Map<string, DirectSlot>();
    for (const c of ready) {
      const slot = this.h.directSlot?.();
      if (!slot) break;
      slots.set(c.id, slot);
      c.direct = true;
    }
    const claim = slots.size > 0 ? [...slots.values()][0]!.claim : undefined;
    let result;
    try {
      result = await advanceTasks(
        this.h.db,
        this.run.id,
        this.h.workerId,
        updates,
        this.counters(),
        ready,
        claim,
      );
    } catch (e) {
      for (const sl of slots.values()) sl.release();
      throw e;
    }
    for (const run of result.claimed) {
      const slot = slots.get(run.id)!;
      slots.delete(run.id);
      void slot.run(run);
    }
    for (const sl of slots.values()) sl.release(); // not created (unfunded, or the lease was gone)
    if (!result.lease) return false;
    // Not started because the run stopped running meanwhile (a pause): the tasks wait again.
    const started = new Set([...result.started, ...result.unfunded]);
    for (const c of ready) {
      if (started.has(c.task)) continue;
      const t = this.tasks.get(c.key);
      if (t && t.child_run_id === c.id) {
        t.status = 'pending';
        t.attempt_count = c.attempt - 1;
        t.child_run_id = null;
      }
    }
    if (result.unfunded.length > 0) {
      const byId = new Map([...this.tasks.values()].map((t) => [t.id, t]));
      for (const id of result.unfunded) {
        const t = byId.get(id)!;
        this.set(t, {
          status: 'failed',
          error: {
            code: 'INSUFFICIENT_CREDITS',
            class: 'payment',
            message: `Task ${t.key} could not start: the wallet cannot cover its reservation.`,
            retryable: false,
            _suggestion: 'Add credit to the circle, then retry-failed the run.',
          },
        });
      }
    }
    return true;
  }

  /** The run's end: succeeded (outputs rendered) or failed (the first failure that fails it). */
  outcome(): { status: 'succeeded' | 'failed'; output: unknown; error: ErrorBody | null } {
    if (this.budgetStop) return { status: 'failed', output: null, error: this.budgetStop };
    const failures = [...this.tasks.values()].filter((t) => this.blocks(t) && !this.isFanChild(t));
    if (failures.length > 0) {
      const f = failures[0]!;
      return {
        status: 'failed',
        output: null,
        error: {
          code: 'WORKFLOW_STEP_FAILED',
          class: f.error?.class ?? 'internal',
          message: `Step ${f.key} failed${f.error ? ` (${f.error.code}: ${f.error.message})` : ''}; the steps that depend on it were skipped.`,
          retryable: f.error?.retryable ?? false,
          _suggestion: `See GET /api/runs/${this.run.id}/tasks/${encodeURIComponent(f.key)}; fix the cause, then retry-failed (the failed and skipped tasks run again) or rerun.`,
          details: { failed: failures.map((t) => ({ task: t.key, code: t.error?.code ?? null })) },
        },
      };
    }
    try {
      return { status: 'succeeded', output: renderTemplate(this.plan.outputs, this.scope()), error: null };
    } catch (e) {
      return { status: 'failed', output: null, error: exprFailed('outputs', e) };
    }
  }

  private isFanChild(t: TaskRow): boolean {
    const m = /^(.*)\[\d+\]$/.exec(t.key);
    return !!m && this.fan.has(m[1]!);
  }
}

export async function runWorkflow(
  h: WorkflowHost,
  run: RunRow,
  signal: AbortSignal,
  control: BatchControl,
): Promise<void> {
  const onAbort = () => control.wakeAll();
  signal.addEventListener('abort', onAbort);
  try {
    // The run's snapshot (stored content-addressed): its children pin the same toolchains and policies.
    run = { ...run, snapshot: (await loadSnapshot(h.db, run)) as Record<string, unknown> };
    const def = await getDefinition(h.db, run.circle_id, run.definition_hash ?? '');
    let plan: Plan;
    let concurrency = 50;
    try {
      if (!def) throw new Error(`definition ${run.definition_hash} is not recorded`);
      const spec = workflowSpec.parse(def.workflow.spec);
      concurrency = spec.concurrency;
      plan = compilePlan(spec);
    } catch (e) {
      const msg = e instanceof CairnError ? e.message : String((e as Error).message ?? e);
      await finishWorkflow(
        h.db,
        run.id,
        h.workerId,
        'failed',
        null,
        workflowError(
          'WORKFLOW_DEFINITION_NOT_FOUND',
          `The workflow definition this run pinned cannot be read: ${msg}`,
          'Trigger the workflow again by name.',
        ),
      );
      return;
    }
    const concurrencyOf = Math.max(1, run.concurrency || concurrency);
    let o = new Orchestration(h, run, def!, plan, concurrencyOf);
    o.load(await loadTasks(h.db, run.id));
    for (;;) {
      await new Promise((r) => setImmediate(r));
      if (signal.aborted) return;
      try {
        if (control.dirty) {
          control.dirty = false;
          const [s] = await getRunsStatus(h.db, [run.id]);
          if (!s || (s.status !== 'running' && s.status !== 'paused')) return; // cancelled, or recovered elsewhere
          o.setPaused(s.status === 'paused');
        }
        // Children settled by this worker arrive in memory; only a wake from elsewhere needs a read.
        const local = control.ended.splice(0);
        if (local.length > 0) o.absorbLocal(local);
        if (control.remote) {
          control.remote = false;
          o.absorb(await endedChildren(h.db, run.id));
        }
        for (const late of o.overdue())
          await decideTask(h.db, run.id, late.key, ...timedOut(late.on_timeout));
        const awaiting = o.awaitingKeys();
        if (awaiting.length > 0) o.absorbDecisions(await loadTasks(h.db, run.id, awaiting));
        o.advance();
        if (!(await o.flush())) return; // the lease is gone
        // The budget stopped it: the children still executing are cancelled (their sandboxes killed).
        for (const child of o.takeCancels())
          await cancel(h.db, child, `worker:${h.workerId}`, 'budget_exceeded').catch(() => undefined);
        const flag = o.takeFlag();
        if (flag)
          await flagRun(h.db, run.id, 'budget_exceeded', `worker:${h.workerId}`, {
            ...flag,
            policy: 'flag',
          });
        if (o.done()) {
          const end = o.outcome();
          // Paused meanwhile (a paused run cannot end): let go; the resume ends it.
          if (!(await finishWorkflow(h.db, run.id, h.workerId, end.status, end.output, end.error)))
            if (await pausedNow(h.db, run.id)) await letGoPaused(h.db, run.id, h.workerId);
          return;
        }
        if (o.unwritten()) continue;
        if (!o.hasRunning() && (await pausedNow(h.db, run.id))) {
          await letGoPaused(h.db, run.id, h.workerId);
          return;
        }
        const due = o.nextDue();
        const before = Date.now();
        const wait = Math.max(5, Math.min(due ?? 1_000, 1_000));
        await control.wait(wait);
        // Woken by nothing (the poll): look at the database, a notification may have been lost.
        if (Date.now() - before >= wait && control.ended.length === 0) control.remote = true;
      } catch (e) {
        // A failed statement wrote nothing (or only the first of two): memory may be ahead of the
        // database. Start over from the tasks as recorded.
        h.log.error({ err: e, run: run.id }, 'workflow step failed; reloading its tasks and retrying');
        await control.wait(500);
        try {
          const fresh = new Orchestration(h, run, def!, plan, concurrencyOf);
          fresh.load(await loadTasks(h.db, run.id));
          o = fresh;
          control.remote = true;
          control.dirty = true; // and its status, as recorded (paused or not)
        } catch {
          // the database is still away: the next turn tries again
        }
      }
    }
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}

/** What a timeout decides (the task's on_timeout). */
function timedOut(on: 'approve' | 'reject'): [Decision, ErrorBody | null] {
  const d: Decision = {
    decision: on === 'approve' ? 'approved' : 'rejected',
    approver: 'system:timeout',
    comment: null,
    timed_out: true,
  };
  if (on === 'approve') return [d, null];
  return [
    d,
    {
      code: 'HITL_TIMED_OUT',
      class: 'timeout',
      message: 'Nobody approved or rejected the task before its timeout (on_timeout: reject).',
      retryable: false,
      _suggestion: 'Raise timeout_ms, or tell the approvers sooner; then retry-failed the run.',
    },
  ];
}

async function pausedNow(db: Db, id: string): Promise<boolean> {
  const [s] = await getRunsStatus(db, [id]);
  return s?.status === 'paused';
}

import { toCairnError, type ErrorBody } from '../core/errors.js';
import { findUnstorable, storable, unstorableOutputMessage } from '../core/storable.js';
import { getCircleById, type CircleRow } from '../store/circles.js';
import type { Outcome, Settlement } from '../store/queue.js';
import { loadSnapshot, type RunRow } from '../store/runs.js';
import { getType, getTypeOrUndefined, operationsOf } from '../elements/registry.js';
import { recordInvocation } from '../telemetry/metrics.js';
import type { EngineResources } from './resources.js';
import { PgFileStore, type FileRef } from '../store/files.js';
import { mediaTypeOf } from '../core/media-types.js';
import { scrubValues } from '../core/sealed.js';
import { openPinned } from '../elements/attachments.js';
import { typeLookup } from '../elements/registry.js';
import type { PinnedElement, ResolvedAttachment, StreamSink } from '../elements/types.js';

/**
 * Execution: runs one operation of a run through its type's executor (an
 * invoke run's input, or one item of a batch run) and turns whatever happened
 * into an outcome the run record can hold. Never throws. Per-type metrics and
 * events are named by the type's declared prefix, so nothing here knows which
 * type it ran.
 */
/**
 * The secrets to scrub from what a run records: each value, and each line of a multi-line one
 * (a PEM key) long enough to be its own, since captured output is recorded line by line.
 */
function scrubList(opened: readonly ResolvedAttachment[]): { value: string; label: string }[] {
  const out: { value: string; label: string }[] = [];
  for (const a of opened) {
    if (!a.secret) continue;
    out.push({ value: a.value, label: a.slug });
    if (a.value.includes('\n'))
      for (const line of a.value.split(/\r?\n/))
        if (line.trim().length >= 8) out.push({ value: line.trim(), label: a.slug });
  }
  return out;
}

/**
 * What an execution is billed: a whole number of micro-credits ≥ 0 (anything else is 0), at most
 * what its snapshot reserved when that is a price (a provider reporting more than a call can cost).
 */
function billable(raw: unknown, reserved: unknown): { credits: number; capped?: number } {
  const n = typeof raw === 'number' && Number.isFinite(raw) && raw > 0 ? Math.floor(raw) : 0;
  if (typeof reserved === 'number' && reserved > 0 && n > reserved) return { credits: reserved, capped: n };
  return { credits: Math.min(n, Number.MAX_SAFE_INTEGER) };
}

export class ExecutionSystem {
  private readonly circles = new Map<string, CircleRow>();

  constructor(private readonly r: Pick<EngineResources, 'db' | 'host' | 'workerId' | 'log' | 'sandbox'>) {}

  /** An invoke run, executed: its settlement, with the type's invoked/completed/failed events. */
  async execute(run: RunRow, signal: AbortSignal, stream?: StreamSink): Promise<Settlement> {
    const o = await this.runOnce(run, run.input, signal, stream);
    const s: Settlement = { id: run.id, ...o };
    // Metrics and events, named by the type's declared prefix (go_fn_invocation_count, go_fn.invoked …).
    const prefix = getTypeOrUndefined(run.element_type)?.telemetry?.prefix;
    if (prefix) {
      const started = Date.parse(run.started_at ?? '') || Date.now();
      const ms = Date.now() - started;
      s.events = [
        [`${prefix}.invoked`, started, { attempt: run.attempt, worker: this.r.workerId }],
        ...(s.events ?? []),
        s.status === 'succeeded'
          ? [`${prefix}.completed`, Date.now(), { duration_ms: ms }]
          : [`${prefix}.failed`, Date.now(), { duration_ms: ms, error_code: s.error?.code ?? null }],
      ];
    }
    return s;
  }

  /**
   * Executes the run's operation once on `input` through its type's executor.
   * Never throws: a failure is an outcome with a typed error and the evidence seen so far.
   */
  async runOnce(run: RunRow, input: unknown, signal: AbortSignal, stream?: StreamSink): Promise<Outcome> {
    const started = Date.now();
    const o = await this.attempt(run, input, signal, stream);
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

  async circle(id: string): Promise<CircleRow> {
    let c = this.circles.get(id);
    if (!c) {
      c = await getCircleById(this.r.db, id);
      if (!c) throw new Error(`circle ${id} not found`);
      this.circles.set(id, c);
    }
    return c;
  }

  /**
   * One execution. Whatever it records (output, error, evidence, logs, events) is scrubbed of the
   * values of the secrets it was given: an exact occurrence becomes [secret:<slug>].
   */
  private async attempt(
    run: RunRow,
    input: unknown,
    signal: AbortSignal,
    stream?: StreamSink,
  ): Promise<Outcome> {
    const opened: ResolvedAttachment[] = [];
    const o = await this.attemptOpen(run, input, signal, opened, stream);
    const secrets = scrubList(opened);
    if (secrets.length === 0) return o;
    // What the run records, scrubbed; its status, code and class are Cairn's own words.
    return {
      ...o,
      output: scrubValues(o.output, secrets),
      error: o.error && {
        ...scrubValues(o.error, secrets),
        code: o.error.code,
        class: o.error.class,
        retryable: o.error.retryable,
      },
      evidence: scrubValues(o.evidence, secrets),
      events: scrubValues(o.events, secrets),
    };
  }

  private async attemptOpen(
    run: RunRow,
    input: unknown,
    signal: AbortSignal,
    opened: ResolvedAttachment[],
    stream?: StreamSink,
  ): Promise<Outcome> {
    const worker = this.r.workerId;
    let snap: Awaited<ReturnType<typeof loadSnapshot>> | undefined;
    try {
      const type = getType(run.element_type ?? '');
      const op = operationsOf(type).find((o) => o.name === run.operation);
      const exec = type.executors[run.operation];
      if (!op || !exec) throw new Error(`type ${type.type} has no executor for ${run.operation}`);
      // The run executes the definition it was created with (its snapshot), not whatever is current.
      snap = await loadSnapshot(this.r.db, run);
      const spec = snap.element?.spec ?? {};
      const circle = await this.circle(run.circle_id);
      const store = new PgFileStore(this.r.db);
      const inputs = snap.input_files ?? [];
      // Attachments open from the versions the snapshot pinned (a secret's box unsealed here, in the worker).
      const pinned = snap.element as PinnedElement | undefined;
      const { attachments, uses } = await openPinned(this.r.db, circle.id, pinned, typeLookup);
      opened.push(...attachments);
      for (const u of Object.values(uses)) opened.push(...u.attachments);
      const secrets = scrubList(opened);
      const result = await exec({
        db: this.r.db,
        circle,
        run,
        spec,
        input,
        signal,
        host: this.r.host,
        sandbox: this.r.sandbox,
        attachments,
        uses,
        stream,
        scrub: <T>(v: T): T => (secrets.length > 0 ? scrubValues(v, secrets) : v),
        files: {
          inputs,
          read: async (sha) => {
            const b = await store.get(circle.id, sha);
            if (!b) throw new Error(`input file sha256:${sha} is not a file of circle ${circle.slug}`);
            return b;
          },
        },
      });
      // Files it wrote: stored content-addressed for the circle, recorded as the item's output files.
      const outFiles: FileRef[] = [];
      for (const f of result.files ?? [])
        outFiles.push(await store.put(circle.id, f.data, { name: f.name, media_type: mediaTypeOf(f.name) }));
      const fileEvidence = {
        ...(inputs.length > 0 ? { input_files: inputs } : {}),
        ...(outFiles.length > 0 ? { output_files: outFiles.map((f) => ({ ...f })) } : {}),
        ...(result.refusedFiles?.length ? { refused_files: result.refusedFiles } : {}),
      };
      result.evidence = { ...result.evidence, ...fileEvidence };
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
          evidence: { ...result.evidence, worker },
          events: result.events,
          flags: result.flags,
        });
      }
      const { credits, capped } = billable(result.credits ?? op.price ?? 0, snap.operation?.price);
      if (capped !== undefined) {
        result.evidence = { ...result.evidence, cost_capped: { reported: capped, reserved: credits } };
        result.flags = [...(result.flags ?? []), 'cost_capped'];
      }
      return {
        status: 'succeeded',
        output: result.output ?? null,
        error: null,
        credits,
        evidence: storable({ ...result.evidence, worker }),
        events: storable(result.events),
        flags: storable(result.flags),
      };
    } catch (e) {
      const err = toCairnError(e);
      if (err.code === 'INTERNAL')
        this.r.log.error(
          { err: scrubValues(String((e as Error)?.stack ?? e), scrubList(opened)), run: run.id },
          'executor crashed',
        );
      const body: ErrorBody = err.toBody();
      // Executors attach what they saw (exit code, logs, hashes, events) to the error: a failed item keeps its evidence.
      const seen = (e ?? {}) as {
        evidence?: Record<string, unknown>;
        events?: Settlement['events'];
        flags?: string[];
        /** What the failure cost anyway (an LLM call made and billed whose output was refused). */
        credits?: number;
      };
      // Error messages, stacks and evidence are escaped, never refused: a failure must be recorded.
      return storable({
        status: 'failed',
        output: null,
        error: body,
        credits: billable(seen.credits ?? 0, snap?.operation?.price).credits,
        evidence: { ...(seen.evidence ?? {}), host: this.r.host, worker },
        events: seen.events,
        flags: seen.flags,
      });
    }
  }
}

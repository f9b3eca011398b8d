/**
 * OpenTelemetry traces (R-OTEL). Every run emits an `ops.execute` span whose trace id is the
 * run's `trace_id` and whose span id is derived from the run id, so any process can name it as a
 * parent: a workflow's task runs are its children, and a run started by a request carrying a W3C
 * `traceparent` continues the caller's trace. Items, builds, sandboxes and settles are child spans.
 *
 * Export is OTLP over HTTP, configured by the standard `OTEL_*` variables through the
 * OpenTelemetry SDK (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
 * OTEL_SERVICE_NAME, OTEL_BSP_*, OTEL_TRACES_EXPORTER=none). Nothing is set up, and nothing is
 * exported, when neither endpoint is set: spans are then the API's no-ops.
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  context,
  INVALID_SPAN_CONTEXT,
  ROOT_CONTEXT,
  SpanStatusCode,
  trace,
  TraceFlags,
  type Attributes,
  type Context,
  type Span,
} from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  BatchSpanProcessor,
  RandomIdGenerator,
  TracerProvider,
  type IdGenerator,
} from '@opentelemetry/sdk-trace';
import { ENGINE_VERSION } from '../core/version.js';

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$/;

/** A W3C `traceparent` header's trace and span ids (undefined when absent or malformed). */
export function parseTraceparent(
  h: string | string[] | undefined,
): { trace_id: string; span_id: string } | undefined {
  const v = (Array.isArray(h) ? h[0] : h)?.trim().toLowerCase();
  const m = v ? TRACEPARENT.exec(v) : null;
  if (!m || /^0+$/.test(m[1]!) || /^0+$/.test(m[2]!)) return undefined;
  return { trace_id: m[1]!, span_id: m[2]! };
}

/** The trace id of a new run: the caller's (its trigger carries the traceparent), or a new one. */
export function newTraceId(trigger: Record<string, unknown>): string {
  const tp = trigger.traceparent as { trace_id?: string } | undefined;
  return typeof tp?.trace_id === 'string' && /^[0-9a-f]{32}$/.test(tp.trace_id)
    ? tp.trace_id
    : randomBytes(16).toString('hex');
}

/** The span id of a run's `ops.execute` span: derived from the run id, the same in every process. */
export function runSpanId(runId: string): string {
  return createHash('sha256').update(runId).digest('hex').slice(0, 16);
}

/** Ids forced for the next span started (a run's span has the run's trace and its derived span id). */
class RunIdGenerator implements IdGenerator {
  private readonly random = new RandomIdGenerator();
  nextTraceId: string | undefined;
  nextSpanId: string | undefined;
  generateTraceId(): string {
    return this.nextTraceId ?? this.random.generateTraceId();
  }
  generateSpanId(): string {
    return this.nextSpanId ?? this.random.generateSpanId();
  }
}

let installed: TracerProvider | undefined;
let provider: TracerProvider | undefined;
let ids: RunIdGenerator | undefined;
// Our provider's tracer, not the global one: should another provider be registered in the process,
// run spans still get their derived ids.
const tracer = () => (installed ?? trace.getTracerProvider()).getTracer('cairn', ENGINE_VERSION);

/** Whether spans are exported (an OTLP endpoint is configured). */
export function tracingEnabled(): boolean {
  return provider !== undefined;
}

/**
 * Sets the SDK up from the `OTEL_*` environment, once per process. Returns false (and does
 * nothing) when no OTLP endpoint is configured or OTEL_TRACES_EXPORTER says none.
 */
export function initTracing(env: NodeJS.ProcessEnv = process.env): boolean {
  if (installed) return true;
  const endpoint = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || env.OTEL_EXPORTER_OTLP_ENDPOINT;
  if (!endpoint || env.OTEL_TRACES_EXPORTER === 'none' || env.OTEL_SDK_DISABLED === 'true') return false;
  ids = new RunIdGenerator();
  provider = new TracerProvider({
    idGenerator: ids,
    resource: resourceFromAttributes({
      'service.name': env.OTEL_SERVICE_NAME || 'cairn',
      'service.version': ENGINE_VERSION,
    }),
    // The endpoint as the OTLP spec composes it; the exporter reads OTEL_EXPORTER_OTLP_HEADERS and
    // _TIMEOUT itself, the processor OTEL_BSP_*.
    spanProcessors: [
      new BatchSpanProcessor({
        exporter: new OTLPTraceExporter({
          url: env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || `${endpoint.replace(/\/$/, '')}/v1/traces`,
        }),
      }),
    ],
  });
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  trace.setGlobalTracerProvider(provider);
  installed = provider;
  return true;
}

/**
 * Stops (false) or resumes (true) making spans in this process, the SDK staying set up: the
 * span-export benchmark compares the two side by side.
 */
export function setTracingActive(on: boolean): void {
  provider = on ? installed : undefined;
}

/** Exports what is buffered (tests, shutdown). */
export async function flushTracing(): Promise<void> {
  await installed?.forceFlush();
}

export async function shutdownTracing(): Promise<void> {
  await installed?.shutdown();
}

/** What a run span needs to know of its run. */
export interface SpannedRun {
  id: string;
  trace_id: string;
  parent_run_id: string | null;
  circle_slug?: string;
  circle_id: string;
  element_slug: string | null;
  element_type: string | null;
  operation: string;
  kind: string;
  trigger: { type?: unknown; traceparent?: unknown };
}

/**
 * Starts a run's `ops.execute` span: its trace is the run's, its id derived from the run's, its
 * parent the parent run's span, or the caller's span when a traceparent started it.
 */
export function startRunSpan(run: SpannedRun, attrs: Attributes = {}): Span {
  const t = tracer();
  if (!ids || !provider) return trace.wrapSpanContext(INVALID_SPAN_CONTEXT);
  const caller = run.trigger.traceparent as { trace_id?: string; span_id?: string } | undefined;
  const parentSpan = run.parent_run_id
    ? runSpanId(run.parent_run_id)
    : caller?.trace_id === run.trace_id
      ? caller.span_id
      : undefined;
  const parent: Context = parentSpan
    ? trace.setSpanContext(ROOT_CONTEXT, {
        traceId: run.trace_id,
        spanId: parentSpan,
        traceFlags: TraceFlags.SAMPLED,
        isRemote: true,
      })
    : ROOT_CONTEXT;
  ids.nextTraceId = run.trace_id;
  ids.nextSpanId = runSpanId(run.id);
  try {
    return t.startSpan(
      'ops.execute',
      {
        attributes: {
          'cairn.circle': run.circle_slug ?? run.circle_id,
          'cairn.circle_id': run.circle_id,
          'cairn.element': run.element_slug ?? '',
          'cairn.element_type': run.element_type ?? '',
          'cairn.operation': run.operation,
          'cairn.run_id': run.id,
          'cairn.run_kind': run.kind,
          'cairn.trigger': String(run.trigger.type ?? ''),
          ...attrs,
        },
      },
      parent,
    );
  } finally {
    ids.nextTraceId = undefined;
    ids.nextSpanId = undefined;
  }
}

/** Ends a run's span with the run's final status. */
export function endRunSpan(span: Span, status: string, errorCode?: string | null): void {
  span.setAttribute('cairn.status', status);
  if (errorCode) span.setAttribute('cairn.error_code', errorCode);
  span.setStatus(
    status === 'succeeded' || status === 'completed'
      ? { code: SpanStatusCode.OK }
      : status === 'failed'
        ? { code: SpanStatusCode.ERROR, message: errorCode ?? 'failed' }
        : { code: SpanStatusCode.UNSET },
  );
  span.end();
}

/** A child span of `parent`, started now and ended by the caller (a settle that completes elsewhere). */
export function startChildSpan(name: string, parent: Span, attrs: Attributes = {}): Span {
  if (!provider) return trace.wrapSpanContext(INVALID_SPAN_CONTEXT);
  return tracer().startSpan(name, { attributes: attrs }, trace.setSpan(ROOT_CONTEXT, parent));
}

/** Runs `fn` with `span` as the active span (children started inside are its children). */
export function inSpan<T>(span: Span, fn: () => T): T {
  if (!provider) return fn();
  return context.with(trace.setSpan(context.active(), span), fn);
}

/** A child span of the active one around `fn` (a build, a sandbox, a settle, an item). */
export async function withSpan<T>(
  name: string,
  attrs: Attributes,
  fn: (span: Span) => Promise<T>,
  /** Cleans an error's message before the span records it (a secret a provider echoed). */
  redact: (message: string) => string = (m) => m,
): Promise<T> {
  if (!provider) return fn(trace.wrapSpanContext(INVALID_SPAN_CONTEXT));
  const span = tracer().startSpan(name, { attributes: attrs });
  try {
    return await context.with(trace.setSpan(context.active(), span), () => fn(span));
  } catch (e) {
    const message = redact(String((e as Error)?.message ?? e));
    span.recordException({ name: (e as Error)?.name ?? 'Error', message });
    span.setStatus({ code: SpanStatusCode.ERROR, message: message.slice(0, 200) });
    throw e;
  } finally {
    span.end();
  }
}

import client from 'prom-client';

/**
 * Prometheus metrics (R-OTEL), served at GET /metrics. Per-type metric names
 * come from each type's declared prefix (go_fn_invocation_count, …), so the
 * engine records them without knowing which type it ran.
 */
export const registry = new client.Registry();
client.collectDefaultMetrics({ register: registry, prefix: 'cairn_' }); // cairn_process_cpu_seconds_total, cairn_nodejs_…

interface TypeMetrics {
  invocations: client.Counter<'circle' | 'element' | 'status'>;
  duration: client.Histogram<'circle' | 'element'>;
  errorRate: client.Gauge<'circle' | 'element'>;
  counts: Map<string, { all: number; failed: number }>;
}

const byPrefix = new Map<string, TypeMetrics>();

function metricsFor(prefix: string): TypeMetrics {
  let m = byPrefix.get(prefix);
  if (!m) {
    m = {
      invocations: new client.Counter({
        name: `${prefix}_invocation_count`,
        help: `Invocations of ${prefix} elements`,
        labelNames: ['circle', 'element', 'status'],
        registers: [registry],
      }),
      duration: new client.Histogram({
        name: `${prefix}_duration_ms`,
        help: `Duration of ${prefix} invocations (ms)`,
        labelNames: ['circle', 'element'],
        buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000, 30000],
        registers: [registry],
      }),
      errorRate: new client.Gauge({
        name: `${prefix}_error_rate`,
        help: `Share of failed ${prefix} invocations since start`,
        labelNames: ['circle', 'element'],
        registers: [registry],
      }),
      counts: new Map(),
    };
    byPrefix.set(prefix, m);
  }
  return m;
}

export function recordInvocation(
  prefix: string,
  circle: string,
  element: string,
  ok: boolean,
  ms: number,
): void {
  const m = metricsFor(prefix);
  m.invocations.inc({ circle, element, status: ok ? 'succeeded' : 'failed' });
  m.duration.observe({ circle, element }, ms);
  const key = `${circle}/${element}`;
  const c = m.counts.get(key) ?? { all: 0, failed: 0 };
  c.all++;
  if (!ok) c.failed++;
  m.counts.set(key, c);
  m.errorRate.set({ circle, element }, c.failed / c.all);
}

export const goBuildDuration = new client.Histogram({
  name: 'go_fn_build_duration_ms',
  help: 'Duration of go-fn compilations (ms)',
  buckets: [50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 120000],
  registers: [registry],
});

/** Kept current by the Go builder on every lookup. */
export const goCacheHitRate = new client.Gauge({
  name: 'go_fn_cache_hit_rate',
  help: 'Share of go-fn binary lookups served from the cache since start',
  registers: [registry],
});

/** What a worker reports about its shared statements (engine/health.ts has the full shape). */
export interface HealthSource {
  worker: string;
  degraded: boolean;
  settle_backlog: number;
  statements: Record<
    string,
    { consecutive_failures: number; failures_total: number; rows_rejected_total: number }
  >;
  maintenance?: {
    passes_total: number;
    failures_total: number;
    last_duration_ms: number | null;
    last_longest_pause_ms: number | null;
    database_bytes: number | null;
    wal_bytes: number | null;
  };
}

const healthSources = new Map<string, () => HealthSource>();

/** A worker of this process reports its health at every scrape (until it stops). */
export function watchHealth(id: string, source: (() => HealthSource) | undefined): void {
  if (source) healthSources.set(id, source);
  else healthSources.delete(id);
}

function eachHealth(fn: (h: HealthSource) => void): void {
  for (const s of healthSources.values()) fn(s());
}

new client.Gauge({
  name: 'cairn_worker_degraded',
  help: 'Whether a shared statement of the worker keeps failing (1: degraded; /healthz answers 503)',
  labelNames: ['worker'],
  registers: [registry],
  collect() {
    this.reset();
    eachHealth((h) => this.set({ worker: h.worker }, h.degraded ? 1 : 0));
  },
});

new client.Gauge({
  name: 'cairn_worker_settle_backlog',
  help: 'Settlements finished but not yet written (waiting for a retry)',
  labelNames: ['worker'],
  registers: [registry],
  collect() {
    this.reset();
    eachHealth((h) => this.set({ worker: h.worker }, h.settle_backlog));
  },
});

for (const [name, field, help] of [
  [
    'cairn_worker_statement_consecutive_failures',
    'consecutive_failures',
    'Failures in a row of a shared statement',
  ],
  ['cairn_worker_statement_failures_total', 'failures_total', 'Failures of a shared statement since start'],
  [
    'cairn_worker_statement_rows_rejected_total',
    'rows_rejected_total',
    'Rows the database refused alone, settled as failed runs (RUN_RECORD_REJECTED)',
  ],
] as const) {
  new client.Gauge({
    name,
    help,
    labelNames: ['worker', 'statement'],
    registers: [registry],
    collect() {
      this.reset();
      eachHealth((h) => {
        for (const [statement, st] of Object.entries(h.statements))
          this.set({ worker: h.worker, statement }, st[field]);
      });
    },
  });
}

for (const [name, field, help] of [
  [
    'cairn_maintenance_passes_total',
    'passes_total',
    'Database maintenance passes (vacuum, checkpoint, report) since start',
  ],
  [
    'cairn_maintenance_failures_total',
    'failures_total',
    'Database maintenance passes that failed (retried at the next tick)',
  ],
  ['cairn_maintenance_last_duration_ms', 'last_duration_ms', 'Duration of the last maintenance pass (ms)'],
  [
    'cairn_maintenance_last_pause_ms',
    'last_longest_pause_ms',
    'Longest single statement of the last maintenance pass (ms): the longest the API could wait on it',
  ],
  ['cairn_database_bytes', 'database_bytes', 'Size of the database (pg_database_size) at the last pass'],
  ['cairn_database_wal_bytes', 'wal_bytes', 'Size of the WAL directory at the last pass'],
] as const) {
  new client.Gauge({
    name,
    help,
    labelNames: ['worker'],
    registers: [registry],
    collect() {
      this.reset();
      eachHealth((h) => {
        const v = h.maintenance?.[field];
        if (v !== null && v !== undefined) this.set({ worker: h.worker }, v);
      });
    },
  });
}

/** Every run a worker of this process settled (bounded labels: no run, circle or element ids). */
const runsTotal = new client.Counter({
  name: 'cairn_runs_total',
  help: 'Runs settled by this process, by kind and status',
  labelNames: ['kind', 'status'],
  registers: [registry],
});
const runDuration = new client.Histogram({
  name: 'cairn_run_duration_seconds',
  help: 'How long a run executed (started to settled), by kind and status',
  labelNames: ['kind', 'status'],
  buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
  registers: [registry],
});
const queueWait = new client.Histogram({
  name: 'cairn_run_queue_wait_seconds',
  help: 'How long a run waited in the queue before a worker started it, by kind',
  labelNames: ['kind'],
  buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
  registers: [registry],
});

export function recordRun(
  kind: string,
  status: string,
  durationMs: number | null,
  queuedAt: string | null,
  startedAt: string | null,
): void {
  runsTotal.inc({ kind, status });
  if (durationMs !== null) runDuration.observe({ kind, status }, durationMs / 1000);
  if (queuedAt && startedAt) {
    const wait = (Date.parse(startedAt) - Date.parse(queuedAt)) / 1000;
    if (wait >= 0) queueWait.observe({ kind }, wait);
  }
}

/** How long a sandbox took to be ready to run (a held standby: ~0; a fresh launch: the bubblewrap set-up). */
export const sandboxStart = new client.Histogram({
  name: 'cairn_sandbox_start_seconds',
  help: 'Time from a sandbox request to a sandbox ready to run it, by whether a standby was used',
  labelNames: ['standby'],
  buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
  registers: [registry],
});

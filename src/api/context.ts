import { errors } from '../core/errors.js';
import type { Config } from '../config.js';
import type { Db } from '../db/types.js';
import type { ManagedPgStatus } from '../db/managed-pg.js';
import type { Engine } from '../engine/engine.js';
import type { Logger } from '../telemetry/log.js';
import { parseTraceparent } from '../telemetry/tracing.js';
import type { Authenticator } from './auth.js';
import type { LiveHub } from './live.js';

/** The typed resources every route shares (DESIGN: one resources object). */
export interface Deps {
  db: Db;
  config: Config;
  log: Logger;
  authn: Authenticator;
  /** The engine: invokes, control, and this process's worker when it has one. */
  engine: Engine;
  /** Snapshot facts every run pins (toolchain versions). */
  snapshotExtra: Record<string, unknown>;
  /** The live event hub (buildApp makes one when none is given). */
  live?: LiveHub;
  /** Which database this process serves from, and the embedded PostgreSQL's state (diagnostics). */
  database?: () => { label: string; embedded: ManagedPgStatus | null };
}

export function baseUrlOf(deps: Deps): string {
  return deps.config.publicUrl ?? `http://${deps.config.host}:${deps.config.port}`;
}

/** Trigger types a caller may claim for the runs it starts; every other type is Cairn's own. */
const CALLER_TRIGGERS = new Set(['api', 'manual']);

/**
 * The trigger of a run a request starts: `api`, or `manual` when the client says a person asked
 * for it (`X-Cairn-Trigger: manual`, which the CLI sends). Webhook, schedule, upstream, replay and
 * rerun are set by Cairn itself, never by a caller.
 */
export function requestTrigger(
  headers: Record<string, string | string[] | undefined>,
  actor: string,
  role: string,
): {
  type: string;
  source: string | null;
  actor: string;
  role: string;
  traceparent?: { trace_id: string; span_id: string };
} {
  const asked = String(headers['x-cairn-trigger'] ?? '')
    .trim()
    .toLowerCase();
  if (asked !== '' && !CALLER_TRIGGERS.has(asked))
    throw errors.invalidInput(
      `X-Cairn-Trigger "${asked.slice(0, 50)}" cannot be set by a caller.`,
      { header: 'x-cairn-trigger', allowed: [...CALLER_TRIGGERS] },
      'Send manual or api (the default); webhook, schedule, upstream, replay and rerun runs are started by Cairn itself.',
    );
  const ua = headers['user-agent'];
  // A W3C traceparent continues the caller's trace: the run's trace_id is its, its span the parent.
  const traceparent = parseTraceparent(headers.traceparent);
  return {
    type: asked || 'api',
    source: (Array.isArray(ua) ? ua[0] : ua) ?? null,
    actor,
    role,
    ...(traceparent ? { traceparent } : {}),
  };
}

import type { Config } from '../config.js';
import type { Db } from '../db/types.js';
import type { ManagedPgStatus } from '../db/managed-pg.js';
import type { Engine } from '../engine/engine.js';
import type { Logger } from '../telemetry/log.js';
import type { Authenticator } from './auth.js';

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
  /** Which database this process serves from, and the embedded PostgreSQL's state (diagnostics). */
  database?: () => { label: string; embedded: ManagedPgStatus | null };
}

export function baseUrlOf(deps: Deps): string {
  return deps.config.publicUrl ?? `http://${deps.config.host}:${deps.config.port}`;
}

import type { Config } from '../config.js';
import type { Db } from '../db/types.js';
import type { RunWaiter } from '../engine/waiter.js';
import type { Worker } from '../engine/worker.js';
import type { Logger } from '../telemetry/log.js';
import type { Authenticator } from './auth.js';

/** The typed resources every route shares (DESIGN: one resources object). */
export interface Deps {
  db: Db;
  config: Config;
  log: Logger;
  waiter: RunWaiter;
  authn: Authenticator;
  /** The embedded worker, when this process has one (woken directly on submit). */
  worker?: Worker;
  /** Snapshot facts every run pins (toolchain versions). */
  snapshotExtra: Record<string, unknown>;
}

export function baseUrlOf(deps: Deps): string {
  return deps.config.publicUrl ?? `http://${deps.config.host}:${deps.config.port}`;
}

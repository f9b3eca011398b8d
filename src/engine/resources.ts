import type { Db } from '../db/types.js';
import type { Logger } from '../telemetry/log.js';
import type { Sandbox } from '../sandbox/runner.js';
import type { WorkerHealth } from './health.js';

/**
 * What every system of the engine shares (Trigger.dev's `SystemResources`):
 * the database, where it runs, how it logs, how its shared statements fare, and its sandbox.
 * One object, built once by the worker; each system takes the fields it needs.
 */
export interface EngineResources {
  db: Db;
  /** This host's name, recorded on runs and in evidence. */
  host: string;
  /** The worker these systems act for (claims, leases, settles carry it). */
  workerId: string;
  log: Logger;
  health: WorkerHealth;
  /** Where executors run code: spawn server, uid slot, cgroups, standbys (one instance, not module state). */
  sandbox: Sandbox;
}

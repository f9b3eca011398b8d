/**
 * Firing one recorded occurrence of a schedule: start its target's run (the key
 * `schedule:<id>:<nominal>` makes that happen once, whoever asks and however often) and record
 * which run it was, or why none started. The engine's scheduler and the backfill op share it.
 */
import { toCairnError } from '../../core/errors.js';
import type { Queryable } from '../../db/types.js';
import { getCircleById } from '../../store/circles.js';
import * as store from '../../store/triggers.js';
import { mapTriggerInput, transient } from '../triggers/target.js';
import type { StartRequest, Started } from '../types.js';

export async function fireOccurrence(
  env: { db: Queryable; start(req: StartRequest): Promise<Started> },
  s: store.ScheduleRow,
  nominal: string,
  backfill: boolean,
  /** Who fires it: the schedule itself, or the token that asked for a backfill (and its role). */
  by: { actor: string; role?: string },
): Promise<Started | undefined> {
  try {
    const circle = await getCircleById(env.db, s.circle_id);
    if (!circle) return undefined;
    const input = mapTriggerInput(s.target.input ?? {}, ['schedule'], {
      schedule: { nominal_time: nominal, element: s.slug, backfill },
    });
    const started = await env.start({
      circle,
      target: { element: s.target.element, op: s.target.op },
      input,
      trigger: {
        type: 'schedule',
        source: s.slug,
        actor: by.actor,
        ...(by.role ? { role: by.role } : {}),
        nominal_time: nominal,
        ...(backfill ? { backfill: true } : {}),
      },
      idempotencyKey: `schedule:${s.element_id}:${nominal}`,
    });
    await store.markFired(env.db, s.element_id, nominal, started.run_id);
    return started;
  } catch (e) {
    const err = toCairnError(e);
    // A passing failure leaves the occurrence firing: the stale sweep starts it again (once, by its key).
    if (!transient(err)) await store.markFailed(env.db, s.element_id, nominal, err.toBody());
    return undefined;
  }
}

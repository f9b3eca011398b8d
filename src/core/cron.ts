import { Cron } from 'croner';
import { CairnError } from './errors.js';

/**
 * Cron times, computed by croner (only computed: the scheduler that fires them is Cairn's own,
 * on PostgreSQL). Five fields, or six with seconds first; an IANA timezone; DST as croner
 * handles it: a local time the clocks skip fires at the first instant after the gap, and a
 * local time that happens twice fires once.
 */
export interface CronClock {
  /** The first fire time strictly after `after`, or null when there is none (a date in the past). */
  next(after: Date): Date | null;
}

export function checkTimezone(tz: string): void {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
  } catch {
    throw new CairnError({
      code: 'INVALID_TIMEZONE',
      class: 'validation',
      message: `Unknown timezone "${tz.slice(0, 80)}".`,
      details: { timezone: tz },
      suggestion: 'Use an IANA timezone name such as "UTC", "Europe/Berlin" or "America/New_York".',
    });
  }
}

export function cronClock(pattern: string, timezone: string): CronClock {
  checkTimezone(timezone);
  const fields = pattern.trim().split(/\s+/);
  let cron: Cron;
  try {
    if (fields.length !== 5 && fields.length !== 6)
      throw new Error(`${fields.length} fields; 5 or 6 expected`);
    cron = new Cron(pattern, { timezone, paused: true });
  } catch (e) {
    throw new CairnError({
      code: 'INVALID_CRON',
      class: 'validation',
      message: `"${pattern.slice(0, 80)}" is not a valid cron expression: ${(e as Error).message}.`,
      details: { cron: pattern },
      suggestion:
        'Write five fields (minute hour day-of-month month day-of-week), or six with seconds first: "*/5 * * * *", "0 30 9 * * MON-FRI".',
    });
  }
  return {
    next(after) {
      return cron.nextRun(after) ?? null;
    },
  };
}

/** The next `n` fire times after `after`. */
export function nextTimes(clock: CronClock, after: Date, n: number): Date[] {
  const out: Date[] = [];
  let t: Date | null = after;
  while (out.length < n && (t = clock.next(t))) out.push(t);
  return out;
}

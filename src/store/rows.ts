import { pgTimestampToIso } from '../db/timestamps.js';

/** Convert the listed timestamp columns of a row to RFC 3339 with microseconds. */
export function isoFields<T extends Record<string, any>>(row: T, fields: readonly string[]): T {
  const out: Record<string, any> = { ...row };
  for (const f of fields) if (f in out) out[f] = pgTimestampToIso(out[f]);
  return out as T;
}

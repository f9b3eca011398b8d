import { pgTimestampToIso } from '../db/timestamps.js';

/** Convert the listed timestamp columns of a row to RFC 3339 with microseconds. */
export function isoFields<T extends object>(row: T, fields: readonly string[]): T {
  const out: Record<string, unknown> = { ...(row as Record<string, unknown>) };
  for (const f of fields) if (f in out) out[f] = pgTimestampToIso(out[f] as string | null | undefined);
  return out as T;
}

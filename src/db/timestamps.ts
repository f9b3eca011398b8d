/**
 * Timestamps travel as text so microseconds survive (a JS Date keeps only
 * milliseconds). Both drivers hand us Postgres' text form in UTC, e.g.
 * `2026-11-21 19:58:09.123456+00`; we render RFC 3339 with microseconds.
 */
export function pgTimestampToIso(v: string | null | undefined): string | null {
  if (v === null || v === undefined) return null;
  const m = /^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(?:\.(\d{1,6}))?(?:\+00(?::00)?|Z)$/.exec(v);
  if (!m) return v;
  const frac = (m[3] ?? '').padEnd(6, '0');
  return `${m[1]}T${m[2]}.${frac}Z`;
}

/** OIDs whose text form we keep: timestamptz, timestamp; int8 becomes a JS number. */
export const OID_TIMESTAMPTZ = 1184;
export const OID_TIMESTAMP = 1114;
export const OID_INT8 = 20;
export const OID_NUMERIC = 1700;

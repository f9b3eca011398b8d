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

const OID_TIMESTAMPTZ = 1184;
const OID_TIMESTAMP = 1114;
const OID_INT8 = 20;

/**
 * The column parsers both drivers install, by type OID: timestamps stay text
 * (microseconds survive), int8 becomes a JS number (micro-credits fit in 2^53).
 */
export const TYPE_PARSERS: Record<number, (v: string) => unknown> = {
  [OID_TIMESTAMPTZ]: (v) => v,
  [OID_TIMESTAMP]: (v) => v,
  [OID_INT8]: (v) => Number(v),
};

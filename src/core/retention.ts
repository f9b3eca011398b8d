/**
 * Run retention (issue 11): how long a circle keeps its runs after they end.
 * The bounds are the database's too (CHECK on cairn.retention_policies).
 */
export const RETENTION_MIN_DAYS = 1;
export const RETENTION_MAX_DAYS = 3650;
export const RETENTION_DEFAULT_DAYS = 30;

/** A circle's stored policy: NULL days means the instance default, NULL failed_days means as days. */
export interface RetentionPolicy {
  days: number | null;
  failed_days: number | null;
}

/** The days that apply: the circle's own, else the instance default; failed runs their own, else the same. */
export function effectiveRetention(
  policy: RetentionPolicy | undefined,
  instanceDefault: number,
): { days: number; failed_days: number; inherited: boolean } {
  const days = policy?.days ?? instanceDefault;
  return { days, failed_days: policy?.failed_days ?? days, inherited: policy?.days == null };
}

export const RETENTION_SUGGESTION = `Give days (and optionally failed_days) as whole numbers of days from ${RETENTION_MIN_DAYS} to ${RETENTION_MAX_DAYS}; days null goes back to the instance default (CAIRN_RETENTION_DAYS), failed_days null keeps failed runs as long as the others.`;

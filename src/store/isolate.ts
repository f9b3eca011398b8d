/**
 * Batched statements carry many tenants' rows at once (settles, item
 * settles). A row the database refuses must fail alone: `applyIsolated`
 * applies the batch, and when it fails, each row by itself, and hands back
 * the rows that still fail with their error. `isRowError` tells a refusal of
 * the row's content (it would fail again, forever) from the database being
 * unavailable (worth retrying as it is).
 */
export interface Rejected<T> {
  row: T;
  error: unknown;
}

export async function applyIsolated<T, R>(
  rows: T[],
  apply: (rows: T[]) => Promise<R[]>,
): Promise<{ done: R[]; rejected: Rejected<T>[] }> {
  try {
    return { done: await apply(rows), rejected: [] };
  } catch (error) {
    if (rows.length === 1) return { done: [], rejected: [{ row: rows[0]!, error }] };
  }
  const done: R[] = [];
  const rejected: Rejected<T>[] = [];
  for (const row of rows) {
    try {
      done.push(...(await apply([row])));
    } catch (error) {
      rejected.push({ row, error });
    }
  }
  return { done, rejected };
}

/** The SQLSTATE of a database error, when it has one. */
export function sqlState(e: unknown): string | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

/**
 * SQLSTATE classes that say the database (or the connection) is unavailable
 * for now, not that the row is bad: connection exceptions, transaction
 * rollbacks (serialization, deadlock), insufficient resources, lock not
 * available, operator intervention (shutdown, cancel), system errors.
 */
const TRANSIENT_CLASSES = new Set(['08', '40', '53', '55', '57', '58']);

/** True when the database refused this row's content: applying it again would fail again. */
export function isRowError(e: unknown): boolean {
  const s = sqlState(e);
  return s !== undefined && !TRANSIENT_CLASSES.has(s.slice(0, 2));
}

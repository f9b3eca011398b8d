import type { Db } from '../../src/db/types.js';

/**
 * A FROM item (one row) that keeps a statement busy for about `seconds` — a
 * number or an SQL expression. On PostgreSQL it is `pg_sleep`, which
 * statement_timeout and cancel interrupt. PGlite refuses `pg_sleep`
 * (SQL_UNINTERRUPTIBLE: it cannot interrupt a statement), so there the time is
 * spent computing a cross join of two small series (about 25 M rows a second
 * on a current x86 core; a slower machine only makes it last longer).
 */
export function busyFor(kind: Db['kind'], seconds: number | string): string {
  if (kind === 'pg') return `pg_sleep(${seconds}) busy`;
  return (
    '(select count(*) from generate_series(1, 5000) busy_a, ' +
    `generate_series(1, greatest(1, ceil((${seconds}) * 5000))::int) busy_b) busy`
  );
}

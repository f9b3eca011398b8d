import { PGlite } from '@electric-sql/pglite';
import {
  circleSessionSql,
  type CircleIdentity,
  type CircleSessionOptions,
  type Db,
  type Queryable,
  type QueryResult,
} from './types.js';
import { TYPE_PARSERS } from './timestamps.js';

interface PgliteLike {
  query<T>(sql: string, params?: unknown[]): Promise<{ rows: T[]; affectedRows?: number }>;
  exec(sql: string): Promise<unknown>;
}

function wrap(q: PgliteLike): Queryable {
  return {
    async query<T>(sql: string, params?: unknown[]): Promise<QueryResult<T>> {
      const r = await q.query<T>(sql, params);
      return { rows: r.rows, rowCount: r.affectedRows ?? r.rows.length };
    },
    async exec(sql: string) {
      await q.exec(sql);
    },
  };
}

/** Embedded driver: one PGlite instance (one Postgres session) in a data directory. */
export class PgliteDb implements Db {
  readonly kind = 'pglite' as const;
  readonly sharedSuperuserSession = true;
  private readonly q: Queryable;

  private constructor(readonly pg: PGlite) {
    this.q = wrap(pg);
  }

  /** `dataDir` undefined = in memory. `loadDataDir` restores a dump (fast test start). */
  static async open(dataDir?: string, opts: { loadDataDir?: Blob | File } = {}): Promise<PgliteDb> {
    const pg = await PGlite.create({
      dataDir,
      parsers: TYPE_PARSERS,
      ...(opts.loadDataDir ? { loadDataDir: opts.loadDataDir } : {}),
    });
    await pg.exec("SET TimeZone = 'UTC'");
    return new PgliteDb(pg);
  }

  query<T = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<QueryResult<T>> {
    return this.q.query<T>(sql, params);
  }

  exec(sql: string): Promise<void> {
    return this.q.exec(sql);
  }

  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    return this.pg.transaction((tx) => fn(wrap(tx)));
  }

  async listen(channel: string, cb: (payload: string) => void): Promise<() => Promise<void>> {
    return this.pg.listen(channel, cb);
  }

  asCircle<T>(
    id: CircleIdentity,
    fn: (q: Queryable) => Promise<T>,
    opts: CircleSessionOptions = {},
  ): Promise<T> {
    return this.transaction(async (tx) => {
      await tx.exec(circleSessionSql(id, opts, true));
      return fn(tx);
    });
  }

  async dump(): Promise<Blob> {
    return (await this.pg.dumpDataDir('none')) as Blob;
  }

  async close(): Promise<void> {
    if (!this.pg.closed) await this.pg.close();
  }
}

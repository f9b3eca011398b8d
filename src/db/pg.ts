import pg from 'pg';
import {
  circleSessionSql,
  ident,
  preparedName,
  type CircleIdentity,
  type CircleSessionOptions,
  type Db,
  type Queryable,
  type QueryResult,
} from './types.js';
import { TYPE_PARSERS } from './timestamps.js';

/** Our parsers for the types we read differently (timestamps with microseconds), pg's for the rest. */
const types: pg.CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    TYPE_PARSERS[oid] ?? pg.types.getTypeParser(oid, format)) as pg.CustomTypesConfig['getTypeParser'],
};

interface ClientLike {
  query(sql: string | pg.QueryConfig, params?: unknown[]): Promise<pg.QueryResult>;
}

function wrap(c: ClientLike): Queryable {
  return {
    async query<T>(sql: string, params?: unknown[]): Promise<QueryResult<T>> {
      const name = preparedName(sql);
      const r = await (name ? c.query({ name, text: sql, values: params }) : c.query(sql, params));
      return { rows: r.rows as T[], rowCount: r.rowCount ?? r.rows.length };
    },
    async exec(sql: string) {
      await c.query(sql);
    },
  };
}

async function inTransaction<T>(
  client: pg.PoolClient,
  fn: (tx: Queryable) => Promise<T>,
  begin = 'BEGIN',
): Promise<T> {
  await client.query(begin);
  try {
    const out = await fn(wrap(client));
    await client.query('COMMIT');
    return out;
  } catch (e) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw e;
  }
}

/** Server driver: a pg Pool on DATABASE_URL, one LISTEN connection, and small per-circle pools. */
export class PgDb implements Db {
  readonly kind = 'pg' as const;
  readonly sharedSuperuserSession = false;
  readonly pool: pg.Pool;
  private readonly q: Queryable;
  private listener: pg.Client | undefined;
  private listenerReady: Promise<pg.Client> | undefined;
  private readonly handlers = new Map<string, Set<(p: string) => void>>();
  private readonly circlePools = new Map<string, pg.Pool>();
  private closed = false;

  constructor(
    readonly url: string,
    opts: { max?: number } = {},
  ) {
    this.pool = new pg.Pool({
      connectionString: url,
      max: opts.max ?? 10,
      types,
      options: '-c TimeZone=UTC',
    });
    // An idle client that errors (e.g. server restart) must not crash the process.
    this.pool.on('error', () => undefined);
    this.q = wrap(this.pool);
  }

  query<T = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<QueryResult<T>> {
    return this.q.query<T>(sql, params);
  }

  exec(sql: string): Promise<void> {
    return this.q.exec(sql);
  }

  async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    try {
      return await inTransaction(client, fn);
    } finally {
      client.release();
    }
  }

  private async connectListener(): Promise<pg.Client> {
    const c = new pg.Client({ connectionString: this.url, types });
    c.on('notification', (msg) => {
      for (const h of this.handlers.get(msg.channel) ?? []) h(msg.payload ?? '');
    });
    c.on('error', () => {
      // Reconnect lazily and re-subscribe; pollers cover the gap.
      this.listener = undefined;
      this.listenerReady = undefined;
      if (!this.closed) setTimeout(() => void this.resubscribe(), 500).unref();
    });
    await c.connect();
    this.listener = c;
    return c;
  }

  private async resubscribe(): Promise<void> {
    if (this.closed || this.handlers.size === 0) return;
    try {
      const c = await this.ensureListener();
      for (const ch of this.handlers.keys()) await c.query(`LISTEN ${ident(ch)}`);
    } catch {
      if (!this.closed) setTimeout(() => void this.resubscribe(), 1000).unref();
    }
  }

  private ensureListener(): Promise<pg.Client> {
    if (this.listener) return Promise.resolve(this.listener);
    this.listenerReady ??= this.connectListener();
    return this.listenerReady;
  }

  async listen(channel: string, cb: (payload: string) => void): Promise<() => Promise<void>> {
    let set = this.handlers.get(channel);
    if (!set) {
      set = new Set();
      this.handlers.set(channel, set);
      const c = await this.ensureListener();
      await c.query(`LISTEN ${ident(channel)}`);
    }
    set.add(cb);
    return async () => {
      const s = this.handlers.get(channel);
      s?.delete(cb);
      if (s && s.size === 0) {
        this.handlers.delete(channel);
        await this.listener?.query(`UNLISTEN ${ident(channel)}`).catch(() => undefined);
      }
    };
  }

  /** A circle's SQL logs in as the circle's own role: Postgres itself enforces the boundary. */
  async asCircle<T>(
    id: CircleIdentity,
    fn: (q: Queryable) => Promise<T>,
    opts: CircleSessionOptions = {},
  ): Promise<T> {
    let pool = this.circlePools.get(id.role);
    if (!pool) {
      const u = new URL(this.url);
      u.username = id.role;
      u.password = id.password;
      pool = new pg.Pool({
        connectionString: u.toString(),
        max: 2,
        idleTimeoutMillis: 10_000,
        types,
        options: `-c TimeZone=UTC -c search_path=${id.schema}`,
      });
      pool.on('error', () => undefined);
      this.circlePools.set(id.role, pool);
    }
    const client = await pool.connect();
    let broken = false;
    const pid = (client as unknown as { processID?: number }).processID;
    const onAbort = () => void this.pool.query('SELECT pg_cancel_backend($1)', [pid]).catch(() => undefined);
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      // BEGIN and the session settings travel in one simple-protocol round trip.
      return await inTransaction(client, fn, `BEGIN;\n${circleSessionSql(id, opts, false)}`);
    } catch (e) {
      broken = true;
      throw e;
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
      // A client whose session state the user may have touched is not reused after an error.
      client.release(broken);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.circlePools.values()].map((p) => p.end().catch(() => undefined)));
    this.circlePools.clear();
    const l = this.listener;
    this.listener = undefined;
    await l?.end().catch(() => undefined);
    await this.pool.end().catch(() => undefined);
  }
}

import { readFileSync } from 'node:fs';
import pg from 'pg';
import { afterAll, beforeAll, describe, inject } from 'vitest';
import type { Db } from '../../src/db/types.js';
import { PgDb } from '../../src/db/pg.js';
import { PgliteDb } from '../../src/db/pglite.js';
import { loadSqlParser } from '../../src/elements/sql/guard.js';
import { cloneTemplate } from './pg-server.js';
import { createCircle, type CircleRow } from '../../src/store/circles.js';

export type Driver = 'pglite' | 'pg';
export const DRIVERS: Driver[] = ['pglite', 'pg'];

/** A fresh, migrated database: a clone of the template (pg) or the loaded dump (PGlite). */
export async function freshDb(driver: Driver): Promise<{ db: Db; url?: string; drop: () => Promise<void> }> {
  await loadSqlParser();
  if (driver === 'pglite') {
    const blob = new Blob([readFileSync(inject('pgliteDump'))]);
    const db = await PgliteDb.open(undefined, { loadDataDir: blob });
    return { db, drop: () => db.close() };
  }
  const server = inject('pgUrl');
  const { url, name } = await cloneTemplate(server);
  const db = new PgDb(url, { max: 10 });
  return {
    db,
    url,
    drop: async () => {
      await db.close();
      const a = new pg.Client({ connectionString: server });
      await a.connect();
      await a.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await a.end();
    },
  };
}

/** Runs the same suite on both drivers (DESIGN: same SQL, same tests). */
export function describeEachDriver(
  name: string,
  fn: (ctx: { db: () => Db; url: () => string | undefined; driver: Driver }) => void,
): void {
  for (const driver of DRIVERS) {
    describe(`${name} [${driver}]`, () => {
      let handle: Awaited<ReturnType<typeof freshDb>> | undefined;
      beforeAll(async () => {
        handle = await freshDb(driver);
      }, 60_000);
      afterAll(async () => {
        await handle?.drop();
      });
      fn({ db: () => handle!.db, url: () => handle!.url, driver });
    });
  }
}

/** A fresh PostgreSQL database with one funded circle: what the tests of real processes start from. */
export async function pgWithCircle(
  slug: string,
): Promise<{ db: Db; url: string; drop: () => Promise<void>; circle: CircleRow }> {
  const h = await freshDb('pg');
  return { db: h.db, url: h.url!, drop: h.drop, circle: await createCircle(h.db, slug, 1_000_000_000) };
}

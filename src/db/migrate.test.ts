import pg from 'pg';
import { randomBytes } from 'node:crypto';
import { describe, expect, inject, it } from 'vitest';
import { PgDb } from './pg.js';
import { loadMigrations, migrate } from './migrate.js';
import { withDatabase } from '../../test/helpers/pg-server.js';

describe('migrations', () => {
  it('concurrent processes apply each migration exactly once', async () => {
    const server = inject('pgUrl');
    const name = 'cairn_m_' + randomBytes(5).toString('hex');
    const admin = new pg.Client({ connectionString: server });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${name}`);
    const dbs = Array.from({ length: 5 }, () => new PgDb(withDatabase(server, name), { max: 2 }));
    try {
      const applied = await Promise.all(dbs.map((d) => migrate(d)));
      const all = (await loadMigrations()).map((m) => m.id);
      // Every migration was applied by exactly one of the racers.
      const byNumber = (a: number, b: number) => a - b;
      expect(applied.flat().sort(byNumber)).toEqual([...all].sort(byNumber));
      const rows = await dbs[0]!.query<{ id: number }>('SELECT id FROM cairn.migrations ORDER BY id');
      expect(rows.rows.map((r) => r.id)).toEqual(all);
      expect(await migrate(dbs[0]!)).toEqual([]); // idempotent
    } finally {
      await Promise.all(dbs.map((d) => d.close()));
      await admin.query(`DROP DATABASE ${name} WITH (FORCE)`);
      await admin.end();
    }
  });
});

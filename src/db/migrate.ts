import { readdir, readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { Db } from './types.js';

/** Works from src/db (tests) and dist/db (built): both are two levels under the repo root. */
export const MIGRATIONS_DIR = fileURLToPath(new URL('../../src/db/migrations/', import.meta.url));

export interface Migration {
  id: number;
  name: string;
  sql: string;
}

export async function loadMigrations(dir = MIGRATIONS_DIR): Promise<Migration[]> {
  const files = (await readdir(dir)).filter((f) => /^\d{6}_[a-z0-9_]+\.sql$/.test(f)).sort();
  return Promise.all(
    files.map(async (f) => ({
      id: Number(f.slice(0, 6)),
      name: f.slice(7, -4),
      sql: await readFile(dir + f, 'utf8'),
    })),
  );
}

const MIGRATION_LOCK = 7_202_611; // arbitrary, constant: serialises migrators across processes

/**
 * Forward-only migrations. Each runs in a transaction that first takes an
 * advisory lock and records its row, so concurrent processes (many workers
 * starting at once) apply each migration exactly once.
 */
export async function migrate(db: Db, migrations?: Migration[]): Promise<number[]> {
  const all = migrations ?? (await loadMigrations());
  const applied: number[] = [];
  for (const m of all) {
    const did = await db.transaction(async (tx) => {
      await tx.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
      await tx.exec(`CREATE SCHEMA IF NOT EXISTS cairn;
        CREATE TABLE IF NOT EXISTS cairn.migrations (
          id int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT clock_timestamp())`);
      const r = await tx.query(
        'INSERT INTO cairn.migrations (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING RETURNING id',
        [m.id, m.name],
      );
      if (r.rows.length === 0) return false;
      await tx.exec(m.sql);
      return true;
    });
    if (did) applied.push(m.id);
  }
  return applied;
}

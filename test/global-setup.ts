import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { PgDb } from '../src/db/pg.js';
import { PgliteDb } from '../src/db/pglite.js';
import { migrate } from '../src/db/migrate.js';
import { startPgServer, withDatabase } from './helpers/pg-server.js';
import { ensureBuilt } from './helpers/bin.js';

declare module 'vitest' {
  export interface ProvidedContext {
    pgUrl: string;
    pgliteDump: string;
  }
}

/**
 * Once per test run: a PostgreSQL server with a migrated template database
 * (each test file clones it), and a migrated PGlite data dir dumped to a file
 * (each test file loads it) — a fresh PGlite costs seconds, a load far less.
 */
export default async function setup(project: TestProject) {
  // dist/ once, before any test file runs: black-box tests run bin/cairn, and two files building it
  // at once (or one running it while another rewrites it) would race.
  ensureBuilt();
  // Benchmarks break PostgreSQL time down by statement; tests do not pay for it.
  const server = await startPgServer({
    statements: project.config.include.some((p) => p.startsWith('bench/')),
  });
  const admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  await admin.query('CREATE DATABASE cairn_template');
  await admin.end();
  const tpl = new PgDb(withDatabase(server.url, 'cairn_template'));
  await migrate(tpl);
  await tpl.close();

  const dir = mkdtempSync(join(tmpdir(), 'cairn-pglite-'));
  const lite = await PgliteDb.open();
  await migrate(lite);
  const dump = await lite.dump();
  await lite.close();
  const dumpFile = join(dir, 'template.tar');
  writeFileSync(dumpFile, Buffer.from(await dump.arrayBuffer()));

  project.provide('pgUrl', server.url);
  project.provide('pgliteDump', dumpFile);
  process.env.CAIRN_TEST_PG_URL = server.url;
  return () => {
    server.stop();
    rmSync(dir, { recursive: true, force: true });
  };
}

import type { Command } from 'commander';
import { loadConfig } from '../../config.js';
import { startServer, startWorker } from '../../runtime.js';
import { createLogger } from '../../telemetry/log.js';
import { installDemo } from '../../demo.js';

function onSignals(stop: () => Promise<void>): void {
  let stopping = false;
  const handler = (sig: string) => {
    if (stopping) process.exit(130);
    stopping = true;
    process.stderr.write(`\n${sig}: finishing in-flight runs, then stopping…\n`);
    void stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGINT', () => handler('SIGINT'));
  process.on('SIGTERM', () => handler('SIGTERM'));
}

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description(
      'Serve the API with an embedded worker (a PostgreSQL cluster Cairn manages in --data unless DATABASE_URL is set)',
    )
    .option('--port <port>', 'port (env CAIRN_PORT, default 8080)')
    .option('--host <host>', 'interface (env CAIRN_HOST, default 127.0.0.1)')
    .option('--data <dir>', 'data directory (env CAIRN_DATA, default .cairn)')
    .option(
      '--db <engine>',
      'embedded database without DATABASE_URL: postgres (default) or pglite (env CAIRN_DB)',
    )
    .option('--no-worker', 'do not run a worker in this process (with DATABASE_URL only)')
    .option('--demo', 'create a "demo" circle with an example element and print how to call it')
    .option('--json', 'print one JSON line when ready: {"event": "serving", "url", "database", "worker"}')
    .action(async (o) => {
      const config = loadConfig({
        port: o.port,
        host: o.host,
        dataDir: o.data,
        db: o.db,
        // --no-worker sets it; otherwise CAIRN_EMBEDDED_WORKER decides (commander defaults the flag to true).
        embeddedWorker: o.worker === false ? false : undefined,
      });
      const log = createLogger();
      // With --json, stdout carries only the JSON line; the one-time token notice goes to stderr.
      const server = await startServer(config, log, (s) =>
        (o.json ? process.stderr : process.stdout).write(s),
      );
      onSignals(() => server.stop());
      const demo = o.demo ? await installDemo(server.db, server.url, config) : '';
      if (o.json) {
        const line = {
          event: 'serving',
          url: server.url,
          database: server.database,
          worker: server.worker?.id ?? null,
        };
        process.stdout.write(JSON.stringify(line) + '\n');
      } else {
        process.stdout.write(demo + `Cairn is serving on ${server.url} (database: ${server.database})\n`);
      }
    });

  program
    .command('worker')
    .description('Run a worker against DATABASE_URL; start any number, on any number of machines')
    .option('--concurrency <n>', 'runs at once (env CAIRN_WORKER_CONCURRENCY)')
    .option('--metrics-port <n>', 'serve GET /metrics on this port (0: a free one; env CAIRN_METRICS_PORT)')
    .option('--json', 'print one JSON line when ready: {"event": "worker", "id", "metrics_url"}')
    .action(async (o) => {
      const config = loadConfig({ workerConcurrency: o.concurrency, metricsPort: o.metricsPort });
      if (!config.databaseUrl) {
        process.stderr.write(
          'error WORKER_NEEDS_SERVER: `cairn worker` needs DATABASE_URL (a PostgreSQL server).\n' +
            '  → With the embedded database, `cairn serve` already runs a worker in its process.\n',
        );
        process.exit(2);
      }
      const log = createLogger();
      const w = await startWorker(config, log);
      onSignals(() => w.stop());
      process.stdout.write(
        o.json
          ? JSON.stringify({ event: 'worker', id: w.worker.id, metrics_url: w.metricsUrl ?? null }) + '\n'
          : `worker ${w.worker.id} is claiming runs${w.metricsUrl ? ` (metrics: ${w.metricsUrl})` : ''}\n`,
      );
    });
}

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
    .description('Serve the API with an embedded worker (PGlite in --data unless DATABASE_URL is set)')
    .option('--port <port>', 'port (env CAIRN_PORT, default 8080)')
    .option('--host <host>', 'interface (env CAIRN_HOST, default 127.0.0.1)')
    .option('--data <dir>', 'data directory (env CAIRN_DATA, default .cairn)')
    .option('--no-worker', 'do not run a worker in this process (PostgreSQL only)')
    .option('--demo', 'create a "demo" circle with an example element and print how to call it')
    .action(async (o) => {
      const config = loadConfig({ port: o.port, host: o.host, dataDir: o.data, embeddedWorker: o.worker });
      const log = createLogger();
      const server = await startServer(config, log, (s) => process.stdout.write(s));
      onSignals(() => server.stop());
      if (o.demo) process.stdout.write(await installDemo(server.db, server.url, config));
      process.stdout.write(`Cairn is serving on ${server.url} (database: ${server.db.kind})\n`);
    });

  program
    .command('worker')
    .description('Run a worker against DATABASE_URL; start any number, on any number of machines')
    .option('--concurrency <n>', 'runs at once (env CAIRN_WORKER_CONCURRENCY)')
    .action(async (o) => {
      const config = loadConfig({ workerConcurrency: o.concurrency });
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
      process.stdout.write(`worker ${w.worker.id} is claiming runs\n`);
    });
}

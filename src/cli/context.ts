import type { Command } from 'commander';
import { loadConfig } from '../config.js';
import { readBootstrapToken } from '../runtime.js';
import { Client } from './client.js';
import { makeOut, type Out } from './output.js';

export interface GlobalOpts {
  url?: string;
  token?: string;
  circle?: string;
  dataDir?: string;
  json?: boolean;
}

/** Global flags (with env fallbacks) shared by every client command. */
export function addGlobalOptions(cmd: Command): Command {
  return cmd
    .option('--url <url>', 'Cairn API base URL (env CAIRN_URL)')
    .option(
      '--token <token>',
      'bearer token (env CAIRN_TOKEN; defaults to the bootstrap token in --data-dir / CAIRN_DATA)',
    )
    .option('--circle <slug>', 'circle slug (env CAIRN_CIRCLE)')
    .option('--data-dir <dir>', 'data directory holding the bootstrap token (env CAIRN_DATA)')
    .option('--json', 'machine-readable JSON output');
}

export interface CliCtx {
  client: Client;
  out: Out;
  circle: string | undefined;
}

export async function cliContext(opts: GlobalOpts): Promise<CliCtx> {
  const url = opts.url ?? process.env.CAIRN_URL ?? `http://127.0.0.1:${process.env.CAIRN_PORT ?? 8080}`;
  let token = opts.token ?? process.env.CAIRN_TOKEN;
  if (!token) token = await readBootstrapToken(loadConfig({ dataDir: opts.dataDir }));
  return {
    client: new Client({ url, token }),
    out: makeOut(Boolean(opts.json)),
    circle: opts.circle ?? process.env.CAIRN_CIRCLE,
  };
}

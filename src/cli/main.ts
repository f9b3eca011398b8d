import { Command, CommanderError } from 'commander';
import { VERSION } from '../core/version.js';
import { CairnError } from '../core/errors.js';
import { EXIT } from './client.js';
import { registerServe } from './commands/serve.js';
import { registerClientCommands } from './commands/client-commands.js';
import { registerBatchCommands } from './commands/batch-commands.js';
import { registerWorkflowCommands } from './commands/workflow-commands.js';
import { registerTriggerCommands } from './commands/trigger-commands.js';
import { renderError } from './output.js';

// A closed stdout (`cairn wallet | head -1`) ends the CLI quietly, as SIGPIPE would: status 128 + 13.
for (const stream of [process.stdout, process.stderr])
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(141);
    throw e;
  });

const program = new Command('cairn')
  .description('Cairn: every execution becomes a durable, inspectable run.')
  .version(VERSION)
  .showHelpAfterError()
  .exitOverride();

registerServe(program);
registerClientCommands(program);
registerBatchCommands(program);
registerWorkflowCommands(program);
registerTriggerCommands(program);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) {
    process.exit(e.exitCode === 0 ? EXIT.ok : EXIT.usage);
  }
  if (e instanceof CairnError) {
    process.stderr.write(renderError(e.toBody()) + '\n');
    process.exit(e.status >= 500 ? EXIT.unavailable : EXIT.usage);
  }
  process.stderr.write(`error: ${(e as Error)?.stack ?? e}\n`);
  process.exit(EXIT.failed);
}

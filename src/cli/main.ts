import { Command, CommanderError } from 'commander';
import { VERSION } from '../core/version.js';
import { CairnError } from '../core/errors.js';
import { EXIT } from './client.js';
import { registerServe } from './commands/serve.js';
import { registerClientCommands } from './commands/client-commands.js';
import { registerBatchCommands } from './commands/batch-commands.js';
import { renderError } from './output.js';

const program = new Command('cairn')
  .description('Cairn: every execution becomes a durable, inspectable run.')
  .version(VERSION)
  .showHelpAfterError()
  .exitOverride();

registerServe(program);
registerClientCommands(program);
registerBatchCommands(program);

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

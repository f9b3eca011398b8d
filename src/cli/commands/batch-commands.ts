/**
 * Batch runs, run control, cells and the wallet (seed 003's commands, our
 * names): `cairn runs pause|resume|retry-failed|rerun|watch|summary|ledger`,
 * `cairn failures`, `cairn rows insert|list`, `cairn columns run`,
 * `cairn cells inspect`, `cairn wallet [grants|ledger|grant]`.
 */
import { RunWaker } from '../live.js';
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { CairnError, thrown } from '../../core/errors.js';
import type {
  CellInspection,
  CircleWallet,
  ColumnRun,
  Failure,
  Grant,
  ProviderSummary,
  RetryAnswer,
  RowPage,
  Run,
  RunLedger,
  Transfer,
  Wallet,
} from '../api.js';
import { EXIT } from '../client.js';
import { addGlobalOptions, type CliCtx } from '../context.js';
import { color, credits, renderError, statusMark, table } from '../output.js';
import { action, needCircle } from './client-commands.js';

const TERMINAL = ['succeeded', 'completed', 'failed', 'cancelled'];
const enc = encodeURIComponent;

function exitFor(status: string): number {
  return status === 'succeeded' ? EXIT.ok : TERMINAL.includes(status) ? EXIT.failed : EXIT.pending;
}

function progressLine(r: Run, rate: number): string {
  const done = r.items_succeeded + r.items_failed;
  const total = Math.max(1, r.items_total);
  const width = 30;
  const fill = Math.round((done / total) * width);
  return (
    `${statusMark(r.status)} [${'#'.repeat(fill)}${'-'.repeat(width - fill)}] ${Math.floor((done / total) * 100)}% ` +
    `${done}/${r.items_total}  ok ${r.items_succeeded}  failed ${r.items_failed}  ` +
    `${rate.toFixed(0)} items/s  credits ${credits(r.credits_used)}`
  );
}

/** Follows a run until it ends, with a live progress bar on a terminal. */
async function follow(ctx: CliCtx, id: string): Promise<Run> {
  const tty = process.stderr.isTTY && !ctx.out.json;
  let last = Date.now();
  let lastDone = -1;
  let rate = 0;
  let printed = 0;
  // The run's live stream wakes the loop at each change; without one it reads every 250 ms.
  const waker = new RunWaker(ctx.client, id);
  try {
    return await followLoop();
  } finally {
    waker.close();
  }
  async function followLoop(): Promise<Run> {
    for (;;) {
      const r = (await ctx.client.request<Run>('GET', `/api/runs/${enc(id)}`)).body;
      const done = r.items_succeeded + r.items_failed;
      const now = Date.now();
      if (lastDone >= 0 && now > last) rate = ((done - lastDone) * 1000) / (now - last) || rate;
      lastDone = done;
      last = now;
      if (tty) process.stderr.write(`\r\x1b[2K${progressLine(r, rate)}`);
      else if (!ctx.out.json && now - printed > 2_000) {
        process.stderr.write(progressLine(r, rate) + '\n');
        printed = now;
      }
      if (TERMINAL.includes(r.status) || r.status === 'paused') {
        if (tty) process.stderr.write('\n');
        return r;
      }
      await waker.next(waker.live ? 5_000 : 250);
    }
  }
}

function runSummaryLine(r: Run): string {
  return (
    `${statusMark(r.status)}  run ${r.id}  ${r.items_succeeded} ok, ${r.items_failed} failed, ` +
    `${r.items_pending} pending of ${r.items_total}  credits ${credits(r.credits_used)}`
  );
}

/** `cairn columns run`'s flags, as commander hands them over. */
interface ColumnRunOpts {
  mode?: string;
  where?: string;
  rows?: string;
  sample?: string;
  concurrency?: string;
  budget?: string;
  onBudgetExceeded?: string;
  idempotencyKey?: string;
  follow?: boolean;
  quiet?: boolean;
}

function withKey(o: { idempotencyKey?: string }): Record<string, string> {
  return o.idempotencyKey ? { 'idempotency-key': o.idempotencyKey } : {};
}

async function readRows(file: string): Promise<unknown[]> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (caught) {
    const e = thrown(caught);
    throw new CairnError({
      code: 'FILE_NOT_READABLE',
      class: 'validation',
      message: `Cannot read ${file}: ${e.code ?? e.message}`,
      suggestion: 'Check the path given to -f.',
    });
  }
  try {
    const t = text.trim();
    if (t.startsWith('[')) return JSON.parse(t);
    return t
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l));
  } catch (caught) {
    const e = thrown(caught);
    throw new CairnError({
      code: 'INVALID_JSON',
      class: 'validation',
      message: `${file} is neither a JSON array nor JSON lines: ${e.message}`,
      suggestion: 'Write rows as [{"k": 1}, …] or one JSON object per line.',
    });
  }
}

export function registerBatchCommands(program: Command): void {
  const runs = program.commands.find((c) => c.name() === 'runs')!;
  for (const [name, what] of [
    ['pause', 'Pause a run: no new item starts, running ones finish'],
    ['resume', 'Resume a paused run'],
    ['retry-failed', 'Run only the failed items again, in the same run'],
    ['rerun', 'Start a new run with the same inputs'],
  ] as const) {
    addGlobalOptions(
      runs
        .command(`${name} <id>`)
        .description(what)
        .option('--idempotency-key <key>', 'a replay with the same key has no second effect')
        .option('--follow', 'then follow the run with a progress bar until it ends')
        .option(
          '--latest',
          'retry-failed: run the failed items on the element as it is now, not the pinned definition',
        ),
    ).action(
      action(async (ctx, id: string, o: { idempotencyKey?: string; follow?: boolean; latest?: boolean }) => {
        if (o.latest && name !== 'retry-failed')
          throw new CairnError({
            code: 'INVALID_OPTION',
            class: 'validation',
            message: `--latest applies to retry-failed, not ${name}.`,
            suggestion:
              'Use `cairn runs retry-failed <id> --latest`; rerun always uses the pinned definition.',
          });
        const body = name === 'retry-failed' && o.latest ? { definition: 'latest' } : {};
        const r = await ctx.client.request<Run | RetryAnswer>(
          'POST',
          `/api/runs/${enc(id)}/${name}`,
          body,
          withKey(o),
        );
        // retry-failed answers how many items it retried, and the run; the others answer the run.
        const retry = name === 'retry-failed' ? (r.body as RetryAnswer) : undefined;
        const run = retry ? retry.run : (r.body as Run);
        if (ctx.out.json && !o.follow) return void ctx.out.print(JSON.stringify(r.body, null, 2));
        if (!ctx.out.json) {
          if (retry) ctx.out.print(retry.message);
          ctx.out.print(runSummaryLine(run));
        }
        if (o.follow) {
          const end = await follow(ctx, run.id);
          if (ctx.out.json) ctx.out.print(JSON.stringify(end, null, 2));
          else ctx.out.print(runSummaryLine(end));
          return exitFor(end.status);
        }
      }),
    );
  }
  addGlobalOptions(
    runs.command('watch <id>').description('Follow a run with a live progress bar until it ends or pauses'),
  ).action(
    action(async (ctx, id: string) => {
      const end = await follow(ctx, id);
      ctx.out.print(ctx.out.json ? JSON.stringify(end, null, 2) : runSummaryLine(end));
      if (end.error && !ctx.out.json) ctx.out.error(renderError(end.error));
      return exitFor(end.status);
    }),
  );
  addGlobalOptions(
    runs.command('summary <id>').description('Provider summary: per element counts, cost, errors, durations'),
  ).action(
    action(async (ctx, id: string) => {
      const r = await ctx.client.request<{ providers: ProviderSummary[] }>(
        'GET',
        `/api/runs/${enc(id)}/summary`,
      );
      if (ctx.out.json) return void ctx.out.print(JSON.stringify(r.body, null, 2));
      for (const p of r.body.providers) {
        ctx.out.print(
          `${color.bold(String(p.element))} (${p.element_type})  ${p.items} items  credits ${credits(p.credits_used)}`,
        );
        ctx.out.print(`  by status  ${JSON.stringify(p.by_status)}`);
        ctx.out.print(
          `  durations  p50 ${p.duration_ms.p50} ms, p95 ${p.duration_ms.p95} ms, max ${p.duration_ms.max} ms`,
        );
        for (const e of p.errors) ctx.out.print(`  ${color.red(e.code)} × ${e.count}`);
      }
    }),
  );
  addGlobalOptions(runs.command('ledger <id>').description("A run's ledger movements and totals")).action(
    action(async (ctx, id: string) => {
      const r = await ctx.client.request<RunLedger>('GET', `/api/runs/${enc(id)}/ledger`);
      if (ctx.out.json) return void ctx.out.print(JSON.stringify(r.body, null, 2));
      const t = r.body.totals;
      ctx.out.print(`reserved ${t.reserved}  captured ${t.captured}  released ${t.released}  held ${t.held}`);
      ctx.out.print(table(r.body.transfers, ['at', 'kind', 'amount', 'id']));
    }),
  );

  addGlobalOptions(
    program
      .command('failures')
      .description('Failed items across runs, newest first')
      .option('--since <iso>')
      .option('--element <slug>')
      .option('--code <code>')
      .option('--limit <n>'),
  ).action(
    action(async (ctx, o: Record<string, string | undefined>) => {
      const q = new URLSearchParams();
      for (const k of ['since', 'element', 'code', 'limit']) if (o[k]) q.set(k, o[k]!);
      const r = await ctx.client.request<{ failures: Failure[] }>(
        'GET',
        `/api/${needCircle(ctx)}/failures${q.size ? '?' + q : ''}`,
      );
      if (ctx.out.json) return void ctx.out.print(JSON.stringify(r.body, null, 2));
      const rows = r.body.failures.map((f) => ({
        run: f.run_id,
        key: f.key,
        element: f.element,
        code: f.error?.code,
        attempts: f.attempt_count,
        at: f.finished_at,
      }));
      ctx.out.print(
        rows.length ? table(rows, ['run', 'key', 'element', 'code', 'attempts', 'at']) : 'no failures',
      );
    }),
  );

  const rows = program.command('rows').description("A table element's rows");
  addGlobalOptions(
    rows
      .command('insert <table>')
      .description('Insert rows from a JSON array or JSON-lines file')
      .requiredOption('-f, --file <file>'),
  ).action(
    action(async (ctx, tableSlug: string, o: { file: string }) => {
      const all = await readRows(o.file);
      let inserted = 0;
      for (let i = 0; i < all.length; i += 10_000) {
        const r = await ctx.client.request<{ inserted: number }>(
          'POST',
          `/api/${needCircle(ctx)}/${enc(tableSlug)}/ops/rows`,
          { rows: all.slice(i, i + 10_000) },
        );
        inserted += r.body.inserted;
      }
      ctx.out.print(
        ctx.out.json ? JSON.stringify({ inserted }) : `inserted ${inserted} rows into ${tableSlug}`,
      );
    }),
  );
  addGlobalOptions(
    rows
      .command('list <table>')
      .description('List rows with their cells')
      .option('--where <json>', 'field values, e.g. {"country":"FR"}')
      .option('--column <c>')
      .option('--cells <which>', 'all, empty, failed, not_succeeded (with --column)')
      .option('--limit <n>')
      .option('--cursor <c>')
      .option('-q, --quiet', 'print only the row ids, one a line'),
  ).action(
    action(async (ctx, tableSlug: string, o: Record<string, string | undefined>) => {
      const q = new URLSearchParams();
      for (const k of ['where', 'column', 'cells', 'limit', 'cursor']) if (o[k]) q.set(k, o[k]!);
      const r = await ctx.client.request<RowPage>(
        'GET',
        `/api/${needCircle(ctx)}/${enc(tableSlug)}/ops/rows${q.size ? '?' + q : ''}`,
      );
      if (ctx.out.json) return void ctx.out.print(JSON.stringify(r.body, null, 2));
      if (o.quiet) return void ctx.out.print(r.body.rows.map((x) => x.id).join('\n'));
      const out = r.body.rows.map((x) => ({
        id: x.id,
        data: JSON.stringify(x.data),
        cells: Object.entries(x.cells)
          .map(([k, v]) => `${k}:${v.status}`)
          .join(' '),
      }));
      ctx.out.print(out.length ? table(out, ['id', 'data', 'cells']) : 'no rows');
      if (r.body.next_cursor) ctx.out.print(color.dim(`more: --cursor ${r.body.next_cursor}`));
    }),
  );

  const columns = program.command('columns').description("Run a table's computed columns");
  addGlobalOptions(
    columns
      .command('run <table> <column>')
      .description('Run a column over rows: one batch run, one item per row')
      .option('--mode <m>', 'live (default), dry_run or smoke_test')
      .option('--where <json>', 'only rows whose fields equal these values')
      .option('--rows <which>', 'all (default), empty, failed, not_succeeded')
      .option('--sample <n>', 'smoke_test: rows to run')
      .option('--concurrency <n>')
      .option('--budget <micro>', 'micro-credits the run may spend')
      .option('--on-budget-exceeded <p>', 'stop or flag')
      .option('--idempotency-key <key>')
      .option('--follow', 'follow the run with a progress bar until it ends')
      .option('-q, --quiet', 'print only the run id (for RUN=$(cairn columns run …))'),
  ).action(
    action(async (ctx, tableSlug: string, column: string, o: ColumnRunOpts) => {
      const body: Record<string, unknown> = {};
      if (o.mode) body.mode = o.mode;
      if (o.where) {
        try {
          body.where = JSON.parse(o.where);
        } catch {
          throw new CairnError({
            code: 'INVALID_JSON',
            class: 'validation',
            message: '--where is not valid JSON.',
            suggestion: `Quote it for your shell, e.g. --where '{"country":"FR"}'.`,
          });
        }
      }
      if (o.rows) body.rows = o.rows;
      for (const k of ['sample', 'concurrency', 'budget'] as const)
        if (o[k] !== undefined) body[k] = Number(o[k]);
      if (o.onBudgetExceeded) body.on_budget_exceeded = o.onBudgetExceeded;
      const r = await ctx.client.request<ColumnRun>(
        'POST',
        `/api/${needCircle(ctx)}/${enc(tableSlug)}/ops/columns/${enc(column)}/run`,
        body,
        withKey(o),
      );
      const b = r.body;
      if (o.quiet) {
        ctx.out.print(b.run_id);
        if (!o.follow || b.mode === 'dry_run') return b.mode === 'dry_run' ? EXIT.ok : EXIT.pending;
        return exitFor((await follow(ctx, b.run_id)).status);
      }
      if (!ctx.out.json)
        ctx.out.print(
          `${statusMark(b.status)}  run ${b.run_id}  ${b.mode}  ${b.items_total} items ` +
            `(${b.items_invalid} invalid)  estimate ${credits(b.estimated_credits)}  reserved ${credits(b.credits_reserved)} credits`,
        );
      if (o.follow && b.mode !== 'dry_run') {
        const end = await follow(ctx, b.run_id);
        ctx.out.print(ctx.out.json ? JSON.stringify(end, null, 2) : runSummaryLine(end));
        return exitFor(end.status);
      }
      if (ctx.out.json) ctx.out.print(JSON.stringify(b, null, 2));
      else if (b.output) ctx.out.print(JSON.stringify(b.output, null, 2));
      return b.mode === 'dry_run' ? (b.items_invalid > 0 ? EXIT.failed : EXIT.ok) : EXIT.pending;
    }),
  );

  const cells = program.command('cells').description('Table cells');
  addGlobalOptions(
    cells
      .command('inspect <table> <row> <column>')
      .description("One cell: the row's inputs, the output, the full error, every attempt"),
  ).action(
    action(async (ctx, tableSlug: string, row: string, column: string) => {
      const r = await ctx.client.request<CellInspection>(
        'GET',
        `/api/${needCircle(ctx)}/${enc(tableSlug)}/ops/rows/${enc(row)}/cells/${enc(column)}`,
      );
      const b = r.body;
      if (ctx.out.json) return void ctx.out.print(JSON.stringify(b, null, 2));
      ctx.out.print(
        `${color.bold(`${b.table}/${b.row_id}/${b.column}`)}  ${statusMark(b.cell?.status ?? 'empty')}`,
      );
      ctx.out.print(`  ${color.dim('row'.padEnd(10))} ${JSON.stringify(b.row)}`);
      if (b.item) {
        ctx.out.print(`  ${color.dim('inputs'.padEnd(10))} ${JSON.stringify(b.item.inputs)}`);
        ctx.out.print(`  ${color.dim('attempts'.padEnd(10))} ${b.item.attempt_count}`);
        ctx.out.print(`  ${color.dim('run'.padEnd(10))} ${b.item.run_id}`);
      }
      if (b.cell?.error) ctx.out.print(renderError(b.cell.error));
      else ctx.out.print(`  ${color.dim('output'.padEnd(10))} ${JSON.stringify(b.cell?.value ?? null)}`);
    }),
  );

  const wallet = program.command('wallet').description("The circle's credits (micro-credits)");
  addGlobalOptions(
    wallet.command('show', { isDefault: true }).description('Balance, reserved, available'),
  ).action(
    action(async (ctx) => {
      const r = await ctx.client.request<CircleWallet>('GET', `/api/${needCircle(ctx)}/wallet`);
      const w = r.body;
      if (ctx.out.json) return void ctx.out.print(JSON.stringify(w, null, 2));
      ctx.out.print(`${color.bold('wallet')} ${w.circle}`);
      for (const [k, v] of [
        ['balance', w.balance],
        ['reserved', w.debits_pending],
        ['available', w.available],
        ['granted', w.credits_posted],
        ['spent', w.debits_posted],
      ] as const)
        ctx.out.print(`  ${color.dim(k.padEnd(10))} ${credits(v)}`);
    }),
  );
  addGlobalOptions(wallet.command('grants').description('Grants and top-ups, with what is left')).action(
    action(async (ctx) => {
      const r = await ctx.client.request<{ grants: Grant[] }>('GET', `/api/${needCircle(ctx)}/wallet/grants`);
      ctx.out.print(
        ctx.out.json
          ? JSON.stringify(r.body, null, 2)
          : table(r.body.grants, ['id', 'category', 'amount', 'remaining', 'expires_at', 'created_at']),
      );
    }),
  );
  addGlobalOptions(
    wallet
      .command('ledger')
      .description('Ledger movements, newest first')
      .option('--run <id>')
      .option('--limit <n>'),
  ).action(
    action(async (ctx, o: { run?: string; limit?: string }) => {
      const q = new URLSearchParams();
      if (o.run) q.set('run_id', o.run);
      if (o.limit) q.set('limit', o.limit);
      const r = await ctx.client.request<{ transfers: Transfer[] }>(
        'GET',
        `/api/${needCircle(ctx)}/wallet/ledger${q.size ? '?' + q : ''}`,
      );
      ctx.out.print(
        ctx.out.json
          ? JSON.stringify(r.body, null, 2)
          : table(r.body.transfers, ['at', 'kind', 'amount', 'run_id', 'id']),
      );
    }),
  );
  addGlobalOptions(
    wallet
      .command('grant <amount>')
      .description('Grant micro-credits to the circle (instance admin)')
      .option('--category <c>', 'paid (default), promotional or topup')
      .option('--expires <iso>')
      .option('--note <text>')
      .option('--idempotency-key <key>'),
  ).action(
    action(async (ctx, amount: string, o: Record<string, string | undefined>) => {
      const body: Record<string, unknown> = { amount: Number(amount) };
      if (o.category) body.category = o.category;
      if (o.expires) body.expires_at = o.expires;
      if (o.note) body.note = o.note;
      const r = await ctx.client.request<{ grant: Grant; wallet: Wallet }>(
        'POST',
        `/api/${needCircle(ctx)}/wallet/grants`,
        body,
        withKey(o),
      );
      ctx.out.print(
        ctx.out.json
          ? JSON.stringify(r.body, null, 2)
          : `granted ${r.body.grant.amount} (${r.body.grant.category}); available ${r.body.wallet.available}`,
      );
    }),
  );
}

import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { CairnError, thrown } from '../../core/errors.js';
import { parseElementsYaml } from '../../yaml.js';
import { isTerminal, type RunStatus } from '../../core/status.js';
import type {
  ApplyAnswer,
  Circle,
  CreatedToken,
  Item,
  LogLine,
  OpAnswer,
  Retention,
  Run,
  RunEvent,
  RunPage,
  Token,
} from '../api.js';
import { ApiError, EXIT, localError, exitCodeFor } from '../client.js';
import { addGlobalOptions, cliContext, type CliCtx, type GlobalOpts } from '../context.js';
import { color, credits, renderError, statusMark, table } from '../output.js';

/** Runs a client command: prints typed errors and exits with a code scripts can rely on. */
export function action<A extends unknown[]>(fn: (ctx: CliCtx, ...args: A) => Promise<number | void>) {
  return async (...args: unknown[]) => {
    const cmd = args[args.length - 1] as Command;
    const opts = cmd.optsWithGlobals() as GlobalOpts;
    const ctx = await cliContext(opts);
    try {
      const code = await fn(ctx, ...(args.slice(0, -1) as A));
      process.exitCode = code ?? EXIT.ok;
    } catch (e) {
      const err = e instanceof CairnError ? localError(e) : e;
      if (err instanceof ApiError) {
        if (ctx.out.json) ctx.out.print(JSON.stringify({ error: err.body }, null, 2));
        else ctx.out.error(renderError(err.body));
        process.exitCode = err.status === 0 ? EXIT.unavailable : exitCodeFor(err.status);
        return;
      }
      throw e;
    }
  };
}

export function needCircle(ctx: CliCtx): string {
  if (!ctx.circle) {
    throw new CairnError({
      code: 'CIRCLE_REQUIRED',
      class: 'validation',
      message: 'No circle given.',
      suggestion: 'Pass --circle <slug> or set CAIRN_CIRCLE.',
    });
  }
  return encodeURIComponent(ctx.circle);
}

function parseJsonArg(s: string, what: string): unknown {
  try {
    return JSON.parse(s);
  } catch (caught) {
    const e = thrown(caught);
    throw new CairnError({
      code: 'INVALID_JSON',
      class: 'validation',
      message: `${what} is not valid JSON: ${e.message}`,
      suggestion: `Quote it for your shell, e.g. -d '{"params": [41]}'.`,
    });
  }
}

/** A --days value as the API takes it: `default` is null; a number as a number; anything else as given (the server refuses it, typed). */
function daysArg(v: string): number | string | null {
  if (v === 'default') return null;
  return /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v;
}

function fmtMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return '-';
  return ms < 1000 ? `${ms.toFixed(1)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

export function registerClientCommands(program: Command): void {
  addGlobalOptions(
    program
      .command('apply')
      .description('Create or update elements from a YAML file (idempotent)')
      .requiredOption(
        '-f, --file <file>',
        'YAML file with one or more element definitions (--- between them)',
      ),
  ).action(
    action(async (ctx, o: { file: string }) => {
      const circle = needCircle(ctx);
      let text: string;
      try {
        text = await readFile(o.file, 'utf8');
      } catch (caught) {
        const e = thrown(caught);
        throw new CairnError({
          code: 'FILE_NOT_READABLE',
          class: 'validation',
          message: `Cannot read ${o.file}: ${e.code ?? e.message}`,
          suggestion: 'Check the path given to -f.',
        });
      }
      const results = [];
      for (const def of parseElementsYaml(text, o.file)) {
        const r = await ctx.client.request<ApplyAnswer>('POST', `/api/${circle}/ops/apply`, def);
        results.push(r.body);
        if (!ctx.out.json) {
          const el = r.body.element;
          ctx.out.print(
            `${r.body.action.padEnd(9)} ${el.slug} (${el.element_type}) v${el.version} ${color.dim(el.definition_hash.slice(0, 12))}`,
          );
          for (const w of el.warnings ?? []) ctx.out.print(`  ${color.yellow('warning')} ${w}`);
        }
      }
      if (ctx.out.json) ctx.out.print(JSON.stringify(results, null, 2));
    }),
  );

  addGlobalOptions(
    program
      .command('invoke <slug> [operation]')
      .description('Invoke an element operation (default: invoke) and show its run')
      .option('-d, --data <json>', 'JSON body', '{}')
      .option('--async', 'return at once with the run id (202)')
      .option('--idempotency-key <key>', 'replaying the same key returns the same run')
      .option(
        '-q, --quiet',
        'print only the run id (for RUN=$(cairn invoke …)); the exit code says how it ended',
      ),
  ).action(
    action(
      async (
        ctx,
        slug: string,
        operation: string | undefined,
        o: { data: string; async?: boolean; idempotencyKey?: string; quiet?: boolean },
      ) => {
        const circle = needCircle(ctx);
        const body = parseJsonArg(o.data, '--data');
        const headers: Record<string, string> = {};
        if (o.async) headers.prefer = 'respond-async';
        if (o.idempotencyKey) headers['idempotency-key'] = o.idempotencyKey;
        const r = await ctx.client.request<OpAnswer>(
          'POST',
          `/api/${circle}/${encodeURIComponent(slug)}/ops/${operation ?? 'invoke'}`,
          body,
          headers,
        );
        const b = r.body;
        if (o.quiet) ctx.out.print(b.run_id ?? '');
        else if (ctx.out.json) ctx.out.print(JSON.stringify(b, null, 2));
        else if (r.status === 202)
          ctx.out.print(
            `${statusMark('queued')}  run ${b.run_id}\n  follow: cairn runs watch ${b.run_id}  (or: cairn runs get ${b.run_id})`,
          );
        else if (b.run_id) {
          ctx.out.print(
            `${statusMark(b.status)} in ${fmtMs(b.duration_ms)}  run ${b.run_id}  credits ${credits(b.credits_used)}`,
          );
          if (b.error) ctx.out.error(renderError(b.error));
          else ctx.out.print(JSON.stringify(b.output, null, 2));
        } else ctx.out.print(JSON.stringify(b, null, 2));
        if (r.status === 202) return EXIT.pending;
        return b.status && b.status !== 'succeeded' ? EXIT.failed : EXIT.ok;
      },
    ),
  );

  const runs = program.command('runs').description('Inspect and control runs');
  addGlobalOptions(
    runs
      .command('list')
      .description('List runs of the circle, newest first')
      .option(
        '--status <s>',
        'comma list: queued,running,paused,succeeded,completed,failed,cancelled (or pending,success,killed)',
      )
      .option('--kind <k>', 'invoke, workflow or batch')
      .option('--element <slug>', 'only runs of this element')
      .option('--trigger <t>', 'manual, api, webhook, schedule, upstream, replay, rerun')
      .option('--since <iso>', 'queued at or after this time')
      .option('--limit <n>', 'page size (default 50)')
      .option('--cursor <c>', 'next_cursor of the previous page'),
  ).action(
    action(async (ctx, o: Record<string, string | undefined>) => {
      const circle = needCircle(ctx);
      const q = new URLSearchParams();
      for (const k of ['status', 'kind', 'element', 'trigger', 'since', 'limit', 'cursor'])
        if (o[k]) q.set(k, o[k]!);
      const r = await ctx.client.request<RunPage>('GET', `/api/${circle}/runs${q.size ? '?' + q : ''}`);
      if (ctx.out.json) return void ctx.out.print(JSON.stringify(r.body, null, 2));
      const rows = r.body.runs.map((x) => ({
        id: x.id,
        status: x.status,
        element: x.element.slug,
        op: x.operation,
        trigger: x.trigger.type,
        queued: x.queued_at,
        duration: fmtMs(x.duration_ms),
      }));
      ctx.out.print(
        rows.length
          ? table(rows, ['id', 'status', 'element', 'op', 'trigger', 'queued', 'duration'])
          : 'no runs',
      );
      if (r.body.next_cursor) ctx.out.print(color.dim(`more: --cursor ${r.body.next_cursor}`));
    }),
  );
  addGlobalOptions(runs.command('get <id>').description('Show a run with every recorded field')).action(
    action(async (ctx, id: string) => {
      const r = await ctx.client.request<Run>('GET', `/api/runs/${encodeURIComponent(id)}`);
      const x = r.body;
      if (ctx.out.json) return void ctx.out.print(JSON.stringify(x, null, 2));
      ctx.out.print(`${color.bold('run')} ${x.id}  ${statusMark(x.status)}`);
      const lines: [string, unknown][] = [
        [
          'element',
          `${x.element.slug} (${x.element.type}) v${x.element.version} ${x.element.definition_hash}`,
        ],
        ['operation', x.operation],
        ['kind / mode', `${x.kind} / ${x.mode}`],
        ['trigger', `${x.trigger.type} by ${x.trigger.actor}`],
        ['attempt', `${x.attempt} of ${x.max_attempts}`],
        ['queued', x.queued_at],
        ['started', x.started_at],
        ['finished', x.finished_at],
        ['duration', fmtMs(x.duration_ms)],
        ['host / worker', `${x.host ?? '-'} / ${x.worker ?? '-'}`],
        [
          'items',
          `${x.items_succeeded} ok, ${x.items_failed} failed, ${x.items_pending} pending of ${x.items_total}`,
        ],
        ['credits', `${credits(x.credits_used)} used, ${credits(x.credits_reserved)} reserved`],
        ['engine', x.engine_version],
        ['trace', x.trace_id],
        ['input', JSON.stringify(x.input)],
      ];
      for (const [k, v] of lines) ctx.out.print(`  ${color.dim(k.padEnd(14))} ${v ?? '-'}`);
      if (x.error) ctx.out.print(renderError(x.error));
      else ctx.out.print(`  ${color.dim('output'.padEnd(14))} ${JSON.stringify(x.output)}`);
      return x.status === 'failed' || x.status === 'cancelled' ? EXIT.failed : EXIT.ok;
    }),
  );
  addGlobalOptions(runs.command('audit <id>').description("Show a run's audit trail")).action(
    action(async (ctx, id: string) => {
      const r = await ctx.client.request<{ events: RunEvent[] }>(
        'GET',
        `/api/runs/${encodeURIComponent(id)}/audit`,
      );
      if (ctx.out.json) return void ctx.out.print(JSON.stringify(r.body, null, 2));
      const rows = r.body.events.map((e) => ({
        at: e.at,
        type: e.type,
        transition: `${e.from_status ?? '∅'} → ${e.to_status ?? '∅'}`,
        actor: e.actor,
        data: JSON.stringify(e.data),
      }));
      ctx.out.print(table(rows, ['at', 'type', 'transition', 'actor', 'data']));
    }),
  );
  addGlobalOptions(
    runs
      .command('logs <id>')
      .description("Show a run's stdout and stderr lines, timestamped")
      .option('--tail <n>', 'only the last n lines')
      .option('--since <time>', 'only lines after this ISO time')
      .option('-f, --follow', 'stream the lines as they are written, until the run ends'),
  ).action(
    action(async (ctx, id: string, o: { tail?: string; since?: string; follow?: boolean }) => {
      if (o.follow) return followLogs(ctx, id);
      const q = new URLSearchParams();
      if (o.tail) q.set('tail', o.tail);
      if (o.since) q.set('since', o.since);
      const qs = q.size > 0 ? `?${q}` : '';
      const r = await ctx.client.request<{ lines: LogLine[] }>(
        'GET',
        `/api/runs/${encodeURIComponent(id)}/logs${qs}`,
      );
      if (ctx.out.json) return void ctx.out.print(JSON.stringify(r.body, null, 2));
      const lines = r.body.lines;
      if (lines.length === 0) ctx.out.print(color.dim('(no log lines)'));
      for (const l of lines)
        ctx.out.print(`${color.dim(l.ts)} ${l.stream === 'stderr' ? color.red('err') : 'out'} ${l.line}`);
    }),
  );
  addGlobalOptions(
    runs
      .command('items <id>')
      .description("Show a run's items and evidence")
      .option('--status <s>', 'only items in this status'),
  ).action(
    action(async (ctx, id: string, o: { status?: string }) => {
      const q = o.status ? `?status=${encodeURIComponent(o.status)}` : '';
      const r = await ctx.client.request<{ items: Item[] }>(
        'GET',
        `/api/runs/${encodeURIComponent(id)}/items${q}`,
      );
      if (ctx.out.json) return void ctx.out.print(JSON.stringify(r.body, null, 2));
      const rows = r.body.items.map((i) => ({
        key: i.key,
        status: i.status,
        attempts: i.attempt_count,
        credits: credits(i.credits_used),
        duration: fmtMs(i.duration_ms),
        error: i.error?.code,
      }));
      ctx.out.print(table(rows, ['key', 'status', 'attempts', 'credits', 'duration', 'error']));
    }),
  );
  addGlobalOptions(
    runs.command('cancel <id>').description('Cancel a queued or running run').option('--reason <r>'),
  ).action(
    action(async (ctx, id: string, o: { reason?: string }) => {
      const r = await ctx.client.request<Run>(
        'POST',
        `/api/runs/${encodeURIComponent(id)}/cancel`,
        o.reason ? { reason: o.reason } : {},
      );
      ctx.out.print(
        ctx.out.json ? JSON.stringify(r.body, null, 2) : `${statusMark(r.body.status)}  run ${r.body.id}`,
      );
    }),
  );

  addGlobalOptions(
    runs
      .command('replay <id>')
      .description(
        "Replay a finished run: a new run of its recorded input on its snapshot's definitions, gated by policy",
      )
      .option(
        '--policy <p>',
        'strict (refuse to repeat side effects unless a policy permits it) or permissive',
        'strict',
      )
      .option(
        '--from-task <step>',
        'a workflow run: re-execute from this step on, reusing the steps before it',
      ),
  ).action(
    action(async (ctx, id: string, o: { policy: string; fromTask?: string }) => {
      const r = await ctx.client.request<{ run_id: string; status: string; side_effect_tasks: string[] }>(
        'POST',
        `/api/runs/${encodeURIComponent(id)}/replay`,
        { policy: o.policy, ...(o.fromTask ? { from_task: o.fromTask } : {}) },
      );
      ctx.out.print(
        ctx.out.json
          ? JSON.stringify(r.body, null, 2)
          : `${statusMark(r.body.status)}  run ${r.body.run_id} replays ${id}` +
              (r.body.side_effect_tasks.length
                ? ` (repeats side effects: ${r.body.side_effect_tasks.join(', ')})`
                : ''),
      );
    }),
  );

  for (const [name, what] of [
    ['pin', 'Pin a run: retention never deletes it (nor the runs it points at)'],
    ['unpin', 'Unpin a run: it expires again with its circle’s retention'],
  ] as const) {
    addGlobalOptions(
      runs.command(`${name} <id>`).description(what).option('--reason <r>', 'recorded in the audit trail'),
    ).action(
      action(async (ctx, id: string, o: { reason?: string }) => {
        const r = await ctx.client.request<Run>(
          'POST',
          `/api/runs/${encodeURIComponent(id)}/${name}`,
          o.reason ? { reason: o.reason } : {},
        );
        ctx.out.print(
          ctx.out.json
            ? JSON.stringify(r.body, null, 2)
            : `run ${r.body.id} ${r.body.pinned ? 'pinned: retention keeps it' : 'unpinned: it expires with its circle’s retention'}`,
        );
      }),
    );
  }

  const circles = program.command('circles').description('Manage circles (instance admin)');
  addGlobalOptions(circles.command('list').description('List circles')).action(
    action(async (ctx) => {
      const r = await ctx.client.request<{ circles: Circle[] }>('GET', '/api/circles');
      ctx.out.print(
        ctx.out.json
          ? JSON.stringify(r.body, null, 2)
          : table(r.body.circles, ['slug', 'id', 'schema', 'created_at']),
      );
    }),
  );
  addGlobalOptions(circles.command('create <slug>').description('Create a circle')).action(
    action(async (ctx, slug: string) => {
      const r = await ctx.client.request<Circle>('POST', '/api/circles', { slug });
      ctx.out.print(
        ctx.out.json
          ? JSON.stringify(r.body, null, 2)
          : `created circle ${r.body.slug} (${r.body.id}, schema ${r.body.schema})`,
      );
    }),
  );

  addGlobalOptions(
    circles
      .command('retention')
      .description(
        "Show the circle's run retention, or set it with --days (and --failed-days); circle admin or instance admin",
      )
      .option('--days <n>', 'days a run is kept after it ends (1–3650; `default`: the instance default)')
      .option('--failed-days <n>', 'days a failed run is kept instead (1–3650; `default`: as --days)'),
  ).action(
    action(async (ctx, o: { days?: string; failedDays?: string }) => {
      const path = `/api/${needCircle(ctx)}/retention`;
      let r;
      if (o.days === undefined && o.failedDays === undefined) {
        r = await ctx.client.request<Retention>('GET', path);
      } else {
        // The one not given stays as the circle set it.
        const set =
          o.days === undefined || o.failedDays === undefined
            ? (await ctx.client.request<Retention>('GET', path)).body.policy
            : null;
        r = await ctx.client.request<Retention>('PUT', path, {
          days: o.days === undefined ? (set?.days ?? null) : daysArg(o.days),
          failed_days: o.failedDays === undefined ? (set?.failed_days ?? null) : daysArg(o.failedDays),
        });
      }
      if (ctx.out.json) return void ctx.out.print(JSON.stringify(r.body, null, 2));
      const x = r.body;
      ctx.out.print(
        `circle ${x.circle}: runs are kept ${x.days} days${x.inherited ? ' (the instance default)' : ''}, failed runs ${x.failed_days} days`,
      );
      ctx.out.print(
        `  past it: ${x.expired} to delete, kept ${x.kept.pinned} pinned and ${x.kept.referenced} referenced by runs that stay`,
      );
      if (x.updated_by) ctx.out.print(color.dim(`  set by ${x.updated_by} at ${x.updated_at}`));
      for (const h of x.history.slice(0, 7))
        ctx.out.print(
          `  ${h.day}  deleted ${h.runs} runs, ${h.items} items, ${h.run_events} audit events, ${h.events} element events`,
        );
    }),
  );

  const secrets = program.command('secrets').description('Sealed secrets (instance admin)');
  addGlobalOptions(
    secrets
      .command('rotate')
      .description('Re-seal every secret with the current CAIRN_SECRETS_KEY (after a key change)'),
  ).action(
    action(async (ctx) => {
      const r = await ctx.client.request<{ key_id: string; resealed: number; rows: number }>(
        'POST',
        '/api/admin/secrets/rotate',
        {},
      );
      ctx.out.print(
        ctx.out.json
          ? JSON.stringify(r.body, null, 2)
          : `re-sealed ${r.body.resealed} secret value(s) in ${r.body.rows} row(s) with key ${r.body.key_id}`,
      );
    }),
  );

  const tokens = program.command('tokens').description("Manage a circle's tokens (circle admin)");
  addGlobalOptions(
    tokens
      .command('create')
      .description('Create a token (printed once)')
      .requiredOption('--role <role>', 'read, write, execute or admin')
      .option('--name <name>'),
  ).action(
    action(async (ctx, o: { role: string; name?: string }) => {
      const r = await ctx.client.request<CreatedToken>('POST', `/api/${needCircle(ctx)}/tokens`, {
        role: o.role,
        ...(o.name ? { name: o.name } : {}),
      });
      ctx.out.print(
        ctx.out.json
          ? JSON.stringify(r.body, null, 2)
          : `${r.body.role} token for ${r.body.circle} (shown once):\n  ${r.body.token}`,
      );
    }),
  );
  addGlobalOptions(tokens.command('list').description('List tokens (without secrets)')).action(
    action(async (ctx) => {
      const r = await ctx.client.request<{ tokens: Token[] }>('GET', `/api/${needCircle(ctx)}/tokens`);
      ctx.out.print(
        ctx.out.json
          ? JSON.stringify(r.body, null, 2)
          : table(r.body.tokens, ['id', 'role', 'name', 'created_at', 'revoked_at']),
      );
    }),
  );
  addGlobalOptions(tokens.command('revoke <id>').description('Revoke a token')).action(
    action(async (ctx, id: string) => {
      const r = await ctx.client.request<{ revoked: string }>(
        'DELETE',
        `/api/${needCircle(ctx)}/tokens/${encodeURIComponent(id)}`,
      );
      ctx.out.print(ctx.out.json ? JSON.stringify(r.body, null, 2) : `revoked ${r.body.revoked}`);
    }),
  );
}

/** `runs logs --follow`: the run's log lines from its live stream, until its terminal status. */
async function followLogs(ctx: CliCtx, id: string): Promise<number> {
  let refused: ApiError | undefined;
  let status: string | undefined;
  const ac = new AbortController();
  for await (const e of ctx.client.events(`/api/runs/${encodeURIComponent(id)}/events?types=log,status`, {
    signal: ac.signal,
    onRefused: (err) => (refused = err),
  })) {
    const ev = JSON.parse(e.data) as { type: string; data: Record<string, unknown> };
    if (ev.type === 'log') {
      for (const [ms, stream, line] of ev.data.lines as [number, string, string][]) {
        if (ctx.out.json)
          ctx.out.print(JSON.stringify({ run_id: id, ts: new Date(ms).toISOString(), stream, line }));
        else
          ctx.out.print(
            `${color.dim(new Date(ms).toISOString())} ${stream === 'stderr' ? color.red('err') : 'out'} ${line}`,
          );
      }
    } else if (isTerminal(String(ev.data.to) as RunStatus) || ev.data.to === 'paused') {
      // The status event is the last its transaction wrote: every line before it has arrived.
      status = String(ev.data.to);
      ac.abort();
      break;
    }
  }
  if (refused) throw refused;
  return status === 'succeeded' || status === 'completed'
    ? EXIT.ok
    : status === 'paused'
      ? EXIT.pending
      : EXIT.failed;
}

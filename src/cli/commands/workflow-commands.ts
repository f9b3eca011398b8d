/**
 * Workflows, their tasks, files and lineage from the CLI:
 * `cairn workflows trigger`, `cairn runs tasks|files|lineage|approve|reject`,
 * `cairn files put|get`. The answers' types mirror the server's
 * (src/api/workflow-routes.ts, file-routes.ts, lineage-routes.ts) as
 * src/cli/api.ts does for the others.
 */
import { RunWaker } from '../live.js';
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { basename } from 'node:path';
import type { Command } from 'commander';
import { CairnError, type ErrorBody, thrown } from '../../core/errors.js';
import type { Run } from '../api.js';
import { EXIT } from '../client.js';
import { mediaTypeOf } from '../../core/media-types.js';
import { addGlobalOptions, type CliCtx } from '../context.js';
import { color, credits, renderError, statusMark, table } from '../output.js';
import { action, needCircle } from './client-commands.js';

/** POST /api/{circle}/{slug}/ops/trigger (202). */
export interface TriggerAnswer {
  run_id: string;
  status: string;
  definition_hash: string;
  estimated_credits: number;
  run_url: string;
}

/** A workflow task (GET /api/runs/{id}/tasks[/{name}]; what approve and reject answer). */
export interface Task {
  name: string;
  step: string;
  index: number | null;
  status: string;
  attempts: number;
  element: { slug: string; element_type?: string; version: number; definition_hash?: string } | null;
  child_run_id: string | null;
  inputs: unknown;
  outputs: unknown;
  error: ErrorBody | null;
  credits_used: number;
  started_at: string | null;
  finished_at: string | null;
  duration_ms: number | null;
  retry_at?: string | null;
  /** While the task waits for a decision: who may decide, and until when. */
  awaiting: {
    instructions?: string;
    role?: string;
    deadline?: string;
    on_timeout?: string;
    response_schema?: unknown;
  } | null;
  decision: {
    decision: string;
    approver: string;
    comment: string | null;
    response?: unknown;
    timed_out?: boolean;
  } | null;
  evidence: Record<string, unknown>;
}

export interface TaskList {
  run_id: string;
  tasks: Task[];
}

/** GET /api/runs/{id}/files. */
export interface RunFile {
  name: string;
  sha256: string;
  size: number;
  media_type: string;
  direction: 'input' | 'output';
  task: string | null;
  url: string;
}

/** GET /api/runs/{id}/lineage (docs/lineage.md). */
export interface LineageGraph {
  run_id: string;
  kind: string;
  nodes: {
    type: string;
    id: string;
    status?: string;
    element?: { slug: string; version: number } | null;
    name?: string;
    size?: number;
  }[];
  edges: { from: string; to: string; kind: string }[];
}

/** POST /api/{circle}/files (201). */
export interface UploadAnswer {
  sha256: string;
  size: number;
  media_type: string;
  ref: { $file: string };
  url: string;
}

const TERMINAL = ['succeeded', 'completed', 'failed', 'cancelled'];
const enc = encodeURIComponent;

function usage(code: string, message: string, suggestion: string): CairnError {
  return new CairnError({ code, class: 'validation', message, suggestion });
}

/** `-p key=value`: the value as JSON when it parses (n=3 → 3, ok=true → true), else the string. */
export function parseParam(s: string): [string, unknown] {
  const eq = s.indexOf('=');
  if (eq <= 0)
    throw usage(
      'INVALID_PARAMETER',
      `-p "${s}" is not key=value.`,
      'Write -p n=3 -p name=Ada (values are JSON when they parse, else strings), or --params-json \'{"n": 3}\'.',
    );
  const key = s.slice(0, eq);
  const raw = s.slice(eq + 1);
  try {
    return [key, JSON.parse(raw)];
  } catch {
    return [key, raw];
  }
}

function parametersOf(o: { param: string[]; paramsJson?: string }): Record<string, unknown> {
  let base: Record<string, unknown> = {};
  if (o.paramsJson !== undefined) {
    let v: unknown;
    try {
      v = JSON.parse(o.paramsJson);
    } catch (caught) {
      throw usage(
        'INVALID_JSON',
        `--params-json is not valid JSON: ${thrown(caught).message}`,
        `Quote it for your shell, e.g. --params-json '{"n": 3}'.`,
      );
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v))
      throw usage(
        'INVALID_JSON',
        '--params-json must be a JSON object.',
        `Give the parameters by name, e.g. --params-json '{"n": 3}'.`,
      );
    base = v as Record<string, unknown>;
  }
  for (const p of o.param) {
    const [k, v] = parseParam(p);
    base[k] = v;
  }
  return base;
}

function parseJsonOpt(s: string, flag: string, example: string): unknown {
  try {
    return JSON.parse(s);
  } catch (caught) {
    throw usage(
      'INVALID_JSON',
      `${flag} is not valid JSON: ${thrown(caught).message}`,
      `Quote it for your shell, e.g. ${flag} '${example}'.`,
    );
  }
}

function fmtMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return '-';
  return ms < 1000 ? `${ms.toFixed(1)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function elementOf(t: Task): string {
  return t.element ? `${t.element.slug}@${t.element.version}` : '-';
}

/** A task's status for people: a running task that waits for a decision says so. */
function taskStatus(t: Task): string {
  return t.awaiting ? 'awaiting_approval' : t.status;
}

function taskMark(t: Task): string {
  switch (taskStatus(t)) {
    case 'succeeded':
      return color.green('✓');
    case 'failed':
      return color.red('✗');
    case 'skipped':
    case 'cancelled':
      return color.dim('⊘');
    case 'awaiting_approval':
      return color.yellow('?');
    case 'running':
      return color.yellow('▶');
    case 'retrying':
      return color.yellow('↻');
    default:
      return color.dim('·');
  }
}

function taskLine(t: Task): string {
  const extra = [
    t.element ? elementOf(t) : '',
    t.duration_ms !== null && t.duration_ms !== undefined ? fmtMs(t.duration_ms) : '',
    t.error ? t.error.code : '',
    t.awaiting ? `role ${t.awaiting.role ?? '-'}` : '',
  ].filter(Boolean);
  return `${taskMark(t)} ${t.name.padEnd(16)} ${taskStatus(t).padEnd(17)} ${color.dim(extra.join('  '))}`.trimEnd();
}

function runLine(r: Run): string {
  return `${statusMark(r.status)} in ${fmtMs(r.duration_ms)}  run ${r.id}  credits ${credits(r.credits_used)}`;
}

/**
 * Follows a workflow run until it ends (or pauses): on a terminal the DAG's
 * tasks are redrawn in place; elsewhere each task status change is one line,
 * `task <name> <status>`. With --json nothing is printed while it goes.
 */
async function followWorkflow(ctx: CliCtx, id: string): Promise<{ run: Run; tasks: Task[] }> {
  const tty = Boolean(process.stdout.isTTY) && !ctx.out.json;
  const seen = new Map<string, string>();
  let drawn = 0;
  let last = '';
  const waker = new RunWaker(ctx.client, id);
  try {
    return await followLoop();
  } finally {
    waker.close();
  }
  async function followLoop(): Promise<{ run: Run; tasks: Task[] }> {
    for (;;) {
      const run = (await ctx.client.request<Run>('GET', `/api/runs/${enc(id)}`)).body;
      const tasks = (await ctx.client.request<TaskList>('GET', `/api/runs/${enc(id)}/tasks`)).body.tasks;
      const ended = TERMINAL.includes(run.status) || run.status === 'paused';
      if (tty) {
        const rows = Math.max(5, (process.stdout.rows ?? 40) - 3);
        const shown = tasks.slice(0, rows);
        const lines = [
          `${statusMark(run.status)}  run ${run.id}`,
          ...shown.map((t) => '  ' + taskLine(t)),
          ...(tasks.length > shown.length ? [color.dim(`  … ${tasks.length - shown.length} more`)] : []),
        ];
        const frame = lines.join('\n');
        if (frame !== last) {
          process.stdout.write((drawn ? `\x1b[${drawn}A\x1b[J` : '') + frame + '\n');
          drawn = lines.length;
          last = frame;
        }
      } else if (!ctx.out.json) {
        for (const t of tasks) {
          const s = taskStatus(t);
          if (seen.get(t.name) === s) continue;
          seen.set(t.name, s);
          const extra =
            s === 'awaiting_approval'
              ? `  (cairn runs approve ${run.id} ${t.name} | reject)`
              : t.error
                ? `  ${t.error.code}`
                : '';
          ctx.out.print(`task ${t.name} ${s}${extra}`);
        }
      }
      if (ended) return { run, tasks };
      await waker.next(waker.live ? 5_000 : 250);
    }
  }
}

function exitFor(status: string): number {
  return status === 'succeeded' ? EXIT.ok : TERMINAL.includes(status) ? EXIT.failed : EXIT.pending;
}

function printTask(ctx: CliCtx, t: Task): void {
  ctx.out.print(`${color.bold('task')} ${t.name}  ${taskMark(t)} ${taskStatus(t)}`);
  const lines: [string, unknown][] = [
    ['step', t.index === null ? t.step : `${t.step} [${t.index}]`],
    ['element', t.element ? `${elementOf(t)} (${t.element.element_type ?? '-'})` : '-'],
    ['attempts', t.attempts],
    ['child run', t.child_run_id],
    ['started', t.started_at],
    ['finished', t.finished_at],
    ['duration', fmtMs(t.duration_ms)],
    ['credits', credits(t.credits_used)],
    ['inputs', JSON.stringify(t.inputs)],
  ];
  if (t.retry_at) lines.push(['retry at', t.retry_at]);
  if (t.awaiting)
    lines.push(
      ['awaiting', `${t.awaiting.role ?? '-'} until ${t.awaiting.deadline ?? '-'}`],
      ['instructions', t.awaiting.instructions],
    );
  if (t.decision)
    lines.push([
      'decision',
      `${t.decision.decision} by ${t.decision.approver}${t.decision.timed_out ? ' (timed out)' : ''}` +
        (t.decision.comment ? `: ${t.decision.comment}` : ''),
    ]);
  for (const [k, v] of lines) ctx.out.print(`  ${color.dim(k.padEnd(12))} ${v ?? '-'}`);
  if (t.error) ctx.out.print(renderError(t.error));
  else ctx.out.print(`  ${color.dim('outputs'.padEnd(12))} ${JSON.stringify(t.outputs)}`);
}

interface TriggerOpts {
  param: string[];
  paramsJson?: string;
  hash?: string;
  follow?: boolean;
  quiet?: boolean;
  idempotencyKey?: string;
}

export function registerWorkflowCommands(program: Command): void {
  const workflows = program.command('workflows').description('Trigger workflows');
  addGlobalOptions(
    workflows
      .command('trigger <slug>')
      .description('Trigger a workflow run; --follow shows its tasks until it ends')
      .option(
        '-p, --param <key=value>',
        'a parameter (repeatable); the value is JSON when it parses (n=3 → 3), else a string',
        (v: string, prev: string[]) => [...prev, v],
        [] as string[],
      )
      .option('--params-json <json>', 'the parameters as one JSON object (-p values override it)')
      .option('--hash <definition_hash>', 'run exactly this pinned definition (a hash a run recorded)')
      .option('--idempotency-key <key>', 'replaying the same key returns the same run')
      .option('--follow', 'follow the run: each task as it goes, then the final status and output')
      .option('-q, --quiet', 'print only the run id (for RUN=$(cairn workflows trigger …))'),
  ).action(
    action(async (ctx, slug: string, o: TriggerOpts) => {
      const circle = needCircle(ctx);
      const parameters = parametersOf(o);
      const body: Record<string, unknown> = { parameters };
      if (o.hash) body.definition_hash = o.hash;
      const r = await ctx.client.request<TriggerAnswer>(
        'POST',
        `/api/${circle}/${enc(slug)}/ops/trigger`,
        body,
        o.idempotencyKey ? { 'idempotency-key': o.idempotencyKey } : {},
      );
      const b = r.body;
      if (o.quiet) {
        ctx.out.print(b.run_id);
        if (!o.follow) return EXIT.pending;
        return exitFor(
          (await followWorkflow({ ...ctx, out: { ...ctx.out, json: true } }, b.run_id)).run.status,
        );
      }
      if (!o.follow) {
        if (ctx.out.json) ctx.out.print(JSON.stringify(b, null, 2));
        else
          ctx.out.print(
            `${statusMark(b.status)}  run ${b.run_id}  definition ${color.dim(b.definition_hash.slice(0, 12))}  estimate ${credits(b.estimated_credits)} credits\n` +
              `  follow: cairn runs tasks ${b.run_id}  (or: cairn runs watch ${b.run_id})`,
          );
        return EXIT.pending;
      }
      if (!ctx.out.json)
        ctx.out.print(
          `run ${b.run_id}  definition ${color.dim(b.definition_hash.slice(0, 12))}  estimate ${credits(b.estimated_credits)} credits`,
        );
      const { run, tasks } = await followWorkflow(ctx, b.run_id);
      if (ctx.out.json) ctx.out.print(JSON.stringify({ ...run, tasks }, null, 2));
      else {
        ctx.out.print(runLine(run));
        if (run.error) ctx.out.error(renderError(run.error));
        else ctx.out.print(JSON.stringify(run.output, null, 2));
      }
      return exitFor(run.status);
    }),
  );

  const runs = program.commands.find((c) => c.name() === 'runs')!;
  addGlobalOptions(
    runs.command('tasks <id> [name]').description("A workflow run's tasks, or one task in detail"),
  ).action(
    action(async (ctx, id: string, name: string | undefined) => {
      if (name !== undefined) {
        const r = await ctx.client.request<Task>('GET', `/api/runs/${enc(id)}/tasks/${enc(name)}`);
        if (ctx.out.json) return void ctx.out.print(JSON.stringify(r.body, null, 2));
        return void printTask(ctx, r.body);
      }
      const r = await ctx.client.request<TaskList>('GET', `/api/runs/${enc(id)}/tasks`);
      if (ctx.out.json) return void ctx.out.print(JSON.stringify(r.body, null, 2));
      const rows = r.body.tasks.map((t) => ({
        name: t.name,
        status: taskStatus(t),
        attempts: t.attempts,
        element: elementOf(t),
        duration: fmtMs(t.duration_ms),
        child_run: t.child_run_id,
      }));
      ctx.out.print(
        rows.length
          ? table(rows, ['name', 'status', 'attempts', 'element', 'duration', 'child_run'])
          : 'no tasks',
      );
    }),
  );
  addGlobalOptions(
    runs.command('files <id>').description('The files a run read and wrote, per task, with their hashes'),
  ).action(
    action(async (ctx, id: string) => {
      const r = await ctx.client.request<{ run_id: string; files: RunFile[] }>(
        'GET',
        `/api/runs/${enc(id)}/files`,
      );
      if (ctx.out.json) return void ctx.out.print(JSON.stringify(r.body, null, 2));
      const rows = r.body.files.map((f) => ({
        direction: f.direction,
        task: f.task ?? '(parameters)',
        name: f.name,
        size: f.size,
        media_type: f.media_type,
        sha256: f.sha256,
      }));
      ctx.out.print(
        rows.length ? table(rows, ['direction', 'task', 'name', 'size', 'media_type', 'sha256']) : 'no files',
      );
    }),
  );
  addGlobalOptions(
    runs
      .command('lineage <id>')
      .description("A run's lineage: parameters, tasks, files and outputs, and the edges between them")
      .option('--format <f>', 'graph (default) or openlineage (OpenLineage RunEvents, always JSON)', 'graph'),
  ).action(
    action(async (ctx, id: string, o: { format: string }) => {
      const q = o.format && o.format !== 'graph' ? `?format=${enc(o.format)}` : '';
      const r = await ctx.client.request<LineageGraph | { run_id: string; events: unknown[] }>(
        'GET',
        `/api/runs/${enc(id)}/lineage${q}`,
      );
      if (ctx.out.json || !('nodes' in r.body)) return void ctx.out.print(JSON.stringify(r.body, null, 2));
      const g = r.body;
      ctx.out.print(`${color.bold('lineage')} of ${g.kind} run ${g.run_id}`);
      ctx.out.print(color.bold('nodes'));
      const w = Math.max(0, ...g.nodes.map((n) => n.id.length));
      for (const n of g.nodes) {
        const extra = [
          n.status,
          n.element ? `${n.element.slug}@${n.element.version}` : '',
          n.type === 'file' ? `${n.name ?? ''} ${n.size ?? ''} bytes` : '',
        ].filter(Boolean);
        ctx.out.print(
          `  ${n.type.padEnd(10)} ${n.id.padEnd(w)}  ${extra.length ? color.dim(extra.join('  ')) : ''}`.trimEnd(),
        );
      }
      ctx.out.print(color.bold('edges'));
      for (const e of g.edges) ctx.out.print(`  ${e.from} → ${e.to}  ${color.dim(e.kind)}`);
    }),
  );
  for (const [name, what] of [
    ['approve', 'Approve a task that waits for approval (a hitl step)'],
    ['reject', 'Reject a task that waits for approval (a hitl step); the run fails'],
  ] as const) {
    const cmd = runs
      .command(`${name} <id> <task>`)
      .description(what)
      .option('-m, --comment <text>', 'why; recorded with the decision');
    if (name === 'approve')
      cmd.option('--response-json <json>', "data for the next steps, matching the task's response_schema");
    addGlobalOptions(cmd).action(
      action(async (ctx, id: string, task: string, o: { comment?: string; responseJson?: string }) => {
        const body: Record<string, unknown> = {};
        if (o.comment !== undefined) body.comment = o.comment;
        if (o.responseJson !== undefined)
          body.response = parseJsonOpt(o.responseJson, '--response-json', '{"budget": 100}');
        const r = await ctx.client.request<Task & { run_id: string }>(
          'POST',
          `/api/runs/${enc(id)}/tasks/${enc(task)}/${name}`,
          body,
        );
        const t = r.body;
        if (ctx.out.json) return void ctx.out.print(JSON.stringify(t, null, 2));
        ctx.out.print(
          `task ${t.name} of run ${t.run_id} ${t.decision?.decision ?? (name === 'approve' ? 'approved' : 'rejected')} by ${t.decision?.approver ?? '-'}` +
            (t.decision?.comment ? `: ${t.decision.comment}` : ''),
        );
        ctx.out.print(color.dim(`  follow: cairn runs tasks ${t.run_id}  (or: cairn runs get ${t.run_id})`));
      }),
    );
  }

  const files = program.command('files').description("A circle's files (content-addressed by sha256)");
  addGlobalOptions(
    files
      .command('put <path>')
      .description('Upload a file: prints its sha256 and the {"$file": …} reference parameters take')
      .option('--name <name>', 'the name recorded with it (default: the file name)')
      .option('--type <media/type>', 'its media type (default: guessed from the extension)'),
  ).action(
    action(async (ctx, path: string, o: { name?: string; type?: string }) => {
      const circle = needCircle(ctx);
      let data: Buffer;
      try {
        data = await readFile(path);
      } catch (caught) {
        const e = thrown(caught);
        throw usage(
          'FILE_NOT_READABLE',
          `Cannot read ${path}: ${e.code ?? e.message}`,
          'Check the path given to files put.',
        );
      }
      const type = o.type ?? mediaTypeOf(path);
      const name = o.name ?? basename(path);
      const r = await ctx.client.requestBytes('POST', `/api/${circle}/files?name=${enc(name)}`, data, {
        'content-type': type,
      });
      const b = JSON.parse(r.bytes.toString('utf8')) as UploadAnswer;
      if (ctx.out.json) return void ctx.out.print(JSON.stringify(b, null, 2));
      ctx.out.print(`sha256 ${b.sha256}  ${b.size} bytes  ${b.media_type}`);
      ctx.out.print(JSON.stringify(b.ref));
    }),
  );
  addGlobalOptions(
    files
      .command('get <sha256>')
      .description("Download a file's bytes (to stdout, or to -o)")
      .option('-o, --output <path>', 'write the bytes to this file'),
  ).action(
    action(async (ctx, sha: string, o: { output?: string }) => {
      const circle = needCircle(ctx);
      const hex = sha.replace(/^sha256:/, '');
      const r = await ctx.client.requestBytes('GET', `/api/${circle}/files/${enc(hex)}`);
      const got = createHash('sha256').update(r.bytes).digest('hex');
      if (/^[0-9a-f]{64}$/.test(hex) && got !== hex)
        throw new CairnError({
          code: 'FILE_HASH_MISMATCH',
          class: 'unavailable',
          message: `The bytes received hash to ${got}, not ${hex}.`,
          retryable: true,
          suggestion:
            'Retry the download; if it persists, check --url points at Cairn and not a proxy that rewrites bodies.',
        });
      if (o.output === undefined) {
        await new Promise<void>((res, rej) => process.stdout.write(r.bytes, (e) => (e ? rej(e) : res())));
        return;
      }
      try {
        await writeFile(o.output, r.bytes);
      } catch (caught) {
        const e = thrown(caught);
        throw usage(
          'FILE_NOT_WRITABLE',
          `Cannot write ${o.output}: ${e.code ?? e.message}`,
          'Check the path given to -o.',
        );
      }
      if (ctx.out.json)
        ctx.out.print(JSON.stringify({ sha256: got, size: r.bytes.length, path: o.output }, null, 2));
      else ctx.out.error(`wrote ${r.bytes.length} bytes to ${o.output} (sha256 ${got})`);
    }),
  );
}

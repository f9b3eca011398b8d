/**
 * Triggers from the CLI: `cairn schedules next|occurrences|pause|resume|backfill` and
 * `cairn webhooks rotate-secret|deliveries`, over the element ops of src/elements/schedule and
 * src/elements/webhook.
 */
import type { Command } from 'commander';
import { addGlobalOptions } from '../context.js';
import { table } from '../output.js';
import { action, needCircle } from './client-commands.js';

interface Occurrence {
  nominal_time: string;
  status: string;
  backfill: boolean;
  run_id: string | null;
  fired_at: string | null;
  error: { code: string } | null;
}

const opPath = (circle: string, slug: string, op: string) =>
  `/api/${circle}/${encodeURIComponent(slug)}/ops/${op}`;

export function registerTriggerCommands(program: Command): void {
  const schedules = program
    .command('schedules')
    .description('Schedules: next fire times, occurrences, pause, backfill');
  addGlobalOptions(
    schedules
      .command('next <slug>')
      .description('The next fire times')
      .option('-n, --count <n>', 'how many', '5'),
  ).action(
    action(async (ctx, slug: string, o: { count: string }) => {
      const r = await ctx.client.request<{ next: string[]; cron: string; timezone: string; paused: boolean }>(
        'GET',
        `${opPath(needCircle(ctx), slug, 'next')}?count=${encodeURIComponent(o.count)}`,
      );
      ctx.out.print(
        ctx.out.json
          ? JSON.stringify(r.body, null, 2)
          : [`${r.body.cron} (${r.body.timezone})${r.body.paused ? ' — paused' : ''}`, ...r.body.next].join(
              '\n',
            ),
      );
    }),
  );
  addGlobalOptions(
    schedules
      .command('occurrences <slug>')
      .description(
        'Every occurrence, newest first (fired, caught_up, skipped_overlap, skipped_paused, missed, failed)',
      )
      .option('--status <s>', 'only this status')
      .option('--limit <n>', 'at most this many', '50'),
  ).action(
    action(async (ctx, slug: string, o: { status?: string; limit: string }) => {
      const q = new URLSearchParams({ limit: o.limit, ...(o.status ? { status: o.status } : {}) });
      const r = await ctx.client.request<{ occurrences: Occurrence[] }>(
        'GET',
        `${opPath(needCircle(ctx), slug, 'occurrences')}?${q}`,
      );
      ctx.out.print(
        ctx.out.json
          ? JSON.stringify(r.body, null, 2)
          : table(
              r.body.occurrences.map((x) => ({
                nominal_time: x.nominal_time,
                status: x.status + (x.backfill ? ' (backfill)' : ''),
                run: x.run_id ?? '',
                error: x.error?.code ?? '',
              })),
              ['nominal_time', 'status', 'run', 'error'],
            ),
      );
    }),
  );
  for (const verb of ['pause', 'resume'] as const)
    addGlobalOptions(
      schedules.command(`${verb} <slug>`).description(`${verb[0]!.toUpperCase()}${verb.slice(1)} a schedule`),
    ).action(
      action(async (ctx, slug: string) => {
        const r = await ctx.client.request<{ slug: string; version: number }>(
          'POST',
          opPath(needCircle(ctx), slug, verb),
          {},
        );
        ctx.out.print(
          ctx.out.json
            ? JSON.stringify(r.body, null, 2)
            : `${verb}d ${r.body.slug} (version ${r.body.version})`,
        );
      }),
    );
  addGlobalOptions(
    schedules
      .command('backfill <slug>')
      .description('Fire the occurrences of a past range that were never recorded')
      .requiredOption('--from <time>', 'RFC 3339')
      .requiredOption('--to <time>', 'RFC 3339, not in the future'),
  ).action(
    action(async (ctx, slug: string, o: { from: string; to: string }) => {
      const r = await ctx.client.request<{
        occurrences: number;
        already_recorded: number;
        fired: { nominal_time: string; run_id: string | null }[];
      }>('POST', opPath(needCircle(ctx), slug, 'backfill'), { from: o.from, to: o.to });
      ctx.out.print(
        ctx.out.json
          ? JSON.stringify(r.body, null, 2)
          : `${r.body.fired.length} fired, ${r.body.already_recorded} already recorded (of ${r.body.occurrences})`,
      );
    }),
  );

  const webhooks = program.command('webhooks').description('Webhooks: rotate the secret, list deliveries');
  addGlobalOptions(
    webhooks
      .command('rotate-secret <slug>')
      .description('A new secret, shown once; the old one stays valid for --overlap-ms')
      .option('--overlap-ms <ms>', 'how long the old secret stays valid', String(86_400_000)),
  ).action(
    action(async (ctx, slug: string, o: { overlapMs: string }) => {
      const r = await ctx.client.request<{ secret: string; previous_valid_until: string | null }>(
        'POST',
        opPath(needCircle(ctx), slug, 'rotate_secret'),
        { overlap_ms: Number(o.overlapMs) },
      );
      ctx.out.print(
        ctx.out.json
          ? JSON.stringify(r.body, null, 2)
          : `${r.body.secret}\n(shown once; the previous secret is valid until ${r.body.previous_valid_until ?? 'now'})`,
      );
    }),
  );
  addGlobalOptions(
    webhooks.command('deliveries <slug>').description('Recent deliveries and the runs they started'),
  ).action(
    action(async (ctx, slug: string) => {
      const r = await ctx.client.request<{ deliveries: Record<string, unknown>[] }>(
        'GET',
        opPath(needCircle(ctx), slug, 'deliveries'),
      );
      ctx.out.print(
        ctx.out.json
          ? JSON.stringify(r.body, null, 2)
          : table(r.body.deliveries, ['delivery_id', 'run_id', 'received_at']),
      );
    }),
  );
}

/**
 * `schedule` (R-TRIGGERS): runs its target at the times a cron expression names, in a timezone.
 * The type only defines and inspects: on every version it writes its clock into cairn.schedules,
 * and the engine's scheduler (src/engine/triggers.ts) fires from there, exactly once per nominal
 * time across any number of processes, recording every occurrence, also those that started no run.
 */
import { z } from 'zod';
import { errors } from '../../core/errors.js';
import { cronClock, nextTimes } from '../../core/cron.js';
import * as store from '../../store/triggers.js';
import { updateElement } from '../service.js';
import { checkMapping, missingTarget, resolveTarget, targetInput, targetSchema } from '../triggers/target.js';
import { fireOccurrence } from './fire.js';
import { defineOp, defineType, type OpContext } from '../types.js';

const DAY = 86_400_000;

export const scheduleSpec = z
  .object({
    cron: z
      .string()
      .min(1)
      .max(200)
      .describe('Five fields (minute hour day-of-month month day-of-week), or six with seconds first'),
    timezone: z.string().min(1).max(64).default('UTC').describe('An IANA timezone; DST is followed'),
    target: targetSchema.optional().describe('What each occurrence runs: {element, op, input | parameters}'),
    overlap: z
      .enum(['skip', 'buffer_one', 'allow_all', 'cancel_previous'])
      .default('skip')
      .describe('When the run an earlier occurrence started is still going'),
    catchup_window_ms: z
      .number()
      .int()
      .min(0)
      .max(7 * DAY)
      .default(60_000)
      .describe(
        'Occurrences missed (no process was up) but younger than this still fire, late; older ones are recorded as missed',
      ),
    paused: z
      .boolean()
      .default(false)
      .describe('Paused: occurrences are recorded as skipped_paused and start nothing'),
  })
  .strict();
export type ScheduleSpec = z.output<typeof scheduleSpec>;

const MAX_BACKFILL = 1_000;

function clockOf(spec: ScheduleSpec) {
  return cronClock(spec.cron, spec.timezone);
}

async function setPaused(ctx: OpContext, paused: boolean) {
  const view = await updateElement(
    ctx.db,
    ctx.circle,
    ctx.element.slug,
    { spec: { paused }, note: paused ? 'pause' : 'resume' },
    ctx.actor,
    ctx.types,
  );
  return { ...view, paused };
}

const pauseOp = defineOp({
  name: 'pause',
  method: 'POST',
  path: 'pause',
  auth: 'write',
  summary: 'Pause the schedule (occurrences are recorded as skipped_paused)',
  input: z.object({}).strict(),
  handler: (ctx) => setPaused(ctx, true),
});

const resumeOp = defineOp({
  name: 'resume',
  method: 'POST',
  path: 'resume',
  auth: 'write',
  summary: 'Resume a paused schedule (from its next time on; the paused ones stay skipped)',
  input: z.object({}).strict(),
  handler: (ctx) => setPaused(ctx, false),
});

const nextOp = defineOp({
  name: 'next',
  method: 'GET',
  path: 'next',
  auth: 'read',
  summary: 'The next fire times',
  input: z.object({ count: z.coerce.number().int().min(1).max(100).default(5) }).strict(),
  handler: async (ctx: OpContext<{ count: number }>) => {
    const spec = scheduleSpec.parse(ctx.element.spec);
    const row = await store.getSchedule(ctx.db, ctx.element.id);
    // From the clock's next unrecorded time: what fires next, even when that is due right now.
    const from = row?.next_at ? new Date(new Date(row.next_at).getTime() - 1) : new Date();
    return {
      cron: spec.cron,
      timezone: spec.timezone,
      paused: spec.paused,
      next: nextTimes(clockOf(spec), from, ctx.input.count).map((d) => d.toISOString()),
    };
  },
});

const occurrencesOp = defineOp({
  name: 'occurrences',
  method: 'GET',
  path: 'occurrences',
  auth: 'read',
  summary:
    'Every occurrence, newest first: fired, caught_up, buffered, skipped_overlap, skipped_paused, missed, failed',
  input: z
    .object({
      limit: z.coerce.number().int().min(1).max(1_000).default(100),
      before: z.iso.datetime({ offset: true }).optional().describe('Only nominal times before this (paging)'),
      status: z
        .enum([
          'firing',
          'fired',
          'caught_up',
          'buffered',
          'skipped_overlap',
          'skipped_paused',
          'missed',
          'failed',
        ])
        .optional(),
    })
    .strict(),
  handler: async (ctx: OpContext<{ limit: number; before?: string; status?: string }>) => {
    const rows = await store.listOccurrences(
      ctx.db,
      ctx.element.id,
      ctx.input.limit,
      ctx.input.before ?? null,
      ctx.input.status ?? null,
    );
    return {
      occurrences: rows,
      next_before: rows.length === ctx.input.limit ? rows[rows.length - 1]!.nominal_time : null,
    };
  },
});

const backfillOp = defineOp({
  name: 'backfill',
  method: 'POST',
  path: 'backfill',
  auth: 'execute',
  summary: 'Fire the occurrences between from and to that were never recorded',
  description:
    'Every nominal time in [from, to] that has no occurrence yet is recorded (backfill: true) and fires, whatever the overlap policy; times already recorded are left as they are. At most 1,000 per call; to may not be in the future.',
  input: z
    .object({
      from: z.iso.datetime({ offset: true }),
      to: z.iso.datetime({ offset: true }),
    })
    .strict(),
  handler: async (ctx: OpContext<{ from: string; to: string }>) => {
    const spec = scheduleSpec.parse(ctx.element.spec);
    const from = new Date(ctx.input.from);
    const to = new Date(ctx.input.to);
    if (to.getTime() < from.getTime() || to.getTime() > Date.now())
      throw errors.invalidInput(
        'backfill needs from ≤ to ≤ now.',
        { from: ctx.input.from, to: ctx.input.to },
        'Give a range in the past; future occurrences fire by themselves.',
      );
    const times: string[] = [];
    let t: Date | null = new Date(from.getTime() - 1);
    const clock = clockOf(spec);
    while ((t = clock.next(t)) && t.getTime() <= to.getTime()) {
      if (times.length === MAX_BACKFILL)
        throw errors.invalidInput(
          `The range holds more than ${MAX_BACKFILL} occurrences.`,
          { max: MAX_BACKFILL },
          'Backfill a shorter range, in several calls.',
        );
      times.push(t.toISOString());
    }
    const fresh = await store.insertBackfill(ctx.db, ctx.element.id, ctx.circle.id, times);
    const row = (await store.getSchedule(ctx.db, ctx.element.id))!;
    const fired: { nominal_time: string; run_id: string | null }[] = [];
    for (const nominal of fresh) {
      const started = await fireOccurrence(
        { db: ctx.db, start: (r) => ctx.engine.start(r) },
        row,
        nominal,
        true,
        { actor: ctx.actor, role: typeof ctx.trigger.role === 'string' ? ctx.trigger.role : undefined },
      );
      fired.push({ nominal_time: nominal, run_id: started?.run_id ?? null });
    }
    return { occurrences: times.length, already_recorded: times.length - fresh.length, fired };
  },
});

export const scheduleType = defineType({
  type: 'schedule',
  category: 'triggers',
  writeAuth: 'execute',
  title: 'Schedule',
  description:
    'Runs a target at cron times in a timezone (seconds optional, DST followed). Every occurrence is recorded — fired, caught up, buffered, skipped (overlap, paused), missed — and each nominal time fires exactly once however many Cairn processes share the database.',
  spec: scheduleSpec,
  operations: [pauseOp, resumeOp, nextOp, occurrencesOp, backfillOp],
  errors: [
    {
      code: 'INVALID_CRON',
      class: 'validation',
      retryable: false,
      description: 'The cron expression does not parse.',
      suggestion: 'Five fields, or six with seconds first: "*/5 * * * *", "0 30 9 * * MON-FRI".',
    },
    {
      code: 'INVALID_TIMEZONE',
      class: 'validation',
      retryable: false,
      description: 'The timezone is not an IANA timezone.',
      suggestion: 'Use a name such as "UTC" or "Europe/Berlin".',
    },
    {
      code: 'MISSING_TARGET',
      class: 'validation',
      retryable: false,
      description: 'The schedule names no target.',
      suggestion: 'Add target: {element, op, input}.',
    },
    {
      code: 'INVALID_TARGET',
      class: 'validation',
      retryable: false,
      description: 'The target element does not exist or its op starts no run.',
      suggestion: 'Target an element of the circle and an op that starts a run (invoke, trigger).',
    },
    {
      code: 'INVALID_MAPPING',
      class: 'validation',
      retryable: false,
      description: 'An expression of the target input does not compile (it may read schedule).',
      suggestion: 'Read schedule.nominal_time, schedule.element or schedule.backfill.',
    },
  ],
  rules: [],
  validateSpec: (spec: ScheduleSpec) => {
    if (!spec.target) throw missingTarget('schedule');
    clockOf(spec);
    checkMapping(targetInput(spec.target, {}), ['schedule'], 'target.input');
  },
  validateInCircle: async (db, circle, spec: ScheduleSpec, types) => {
    await resolveTarget(db, circle, spec.target!, types, null);
  },
  afterSave: async (tx, circle, element, _created, types) => {
    const spec = scheduleSpec.parse(element.spec);
    const target = await resolveTarget(tx, circle, spec.target!, types, element.slug);
    const next = clockOf(spec).next(new Date());
    await store.upsertSchedule(tx, {
      elementId: element.id,
      circleId: circle.id,
      cron: spec.cron,
      timezone: spec.timezone,
      overlap: spec.overlap,
      catchupWindowMs: spec.catchup_window_ms,
      paused: spec.paused,
      target: { ...target, input: targetInput(spec.target!, {}) },
      nextAt: next ? next.toISOString() : null,
    });
  },
  executors: {},
});

import { z } from 'zod';

/** Most tasks one for_each step may fan out to, by default (a step may lower or raise it up to the max). */
export const FOR_EACH_DEFAULT_CAP = 1_000;
export const FOR_EACH_MAX_CAP = 10_000;

const stepName = z
  .string()
  .regex(
    /^[a-zA-Z][a-zA-Z0-9_-]{0,62}$/,
    'a step name is a letter then letters, digits, _ or - (at most 63)',
  );

export const workflowStep = z
  .object({
    name: stepName.describe('Unique in the workflow; expressions read it as steps.<name> (or steps["a-b"])'),
    element: z
      .string()
      .min(1)
      .describe('Slug of the element this step runs (any element of the circle whose op creates a run)'),
    op: z.string().min(1).default('invoke').describe('The run-creating operation of that element'),
    input: z.json().default({}).describe('The op input; strings may hold ${{ … }} expressions'),
    needs: z
      .array(stepName)
      .max(200)
      .default([])
      .describe('Steps that must end first (every step an expression reads is added)'),
    when: z.string().optional().describe('An expression; false → the task is skipped'),
    for_each: z
      .union([z.string(), z.array(z.json())])
      .optional()
      .describe(
        'A list (or an expression giving one): one task per element, keyed name[i], reading it as item',
      ),
    max_items: z
      .number()
      .int()
      .min(1)
      .max(FOR_EACH_MAX_CAP)
      .default(FOR_EACH_DEFAULT_CAP)
      .describe('Most tasks for_each may fan out to'),
    retry: z
      .object({
        max_attempts: z.number().int().min(1).max(10).default(3),
        backoff_ms: z.number().int().min(0).max(3_600_000).default(1_000),
      })
      .strict()
      .optional()
      .describe('Automatic retries of a task whose error is retryable (backoff doubles per attempt)'),
    timeout_ms: z
      .number()
      .int()
      .min(100)
      .max(3_600_000)
      .optional()
      .describe("The task's time limit (default: its element's)"),
    files: z
      .record(z.string().regex(/^(?!\.{1,2}$)[^/\\\0]{1,255}$/, 'a file name is one path segment'), z.json())
      .default({})
      .describe(
        'Files mounted read-only at /in/<name>: ${{ steps.a.files[\'report.csv\'] }}, ${{ parameters.data }} ({"$file": "sha256:…"}) or "sha256:<hex>"',
      ),
    continue_on_error: z
      .boolean()
      .default(false)
      .describe('A failure of this step neither fails the run nor skips its dependents'),
  })
  .strict();

/** A run's budget: at most `credits`; on reaching it, stop (no task starts past it) or flag. */
export const budgetSpec = z
  .object({
    credits: z.number().int().min(0).describe('Micro-credits a run may spend'),
    on_exceeded: z.enum(['flag', 'stop']).default('stop'),
  })
  .strict();

export const workflowSpec = z
  .object({
    description: z.string().max(2_000).optional(),
    parameters: z
      .record(z.string(), z.json())
      .default({ type: 'object' })
      .describe('JSON Schema (2020-12) of the trigger parameters, validated at trigger'),
    steps: z.array(workflowStep).min(1).max(200),
    outputs: z
      .record(z.string(), z.json())
      .default({})
      .describe("The run's output: values, with ${{ … }} expressions"),
    concurrency: z
      .number()
      .int()
      .min(1)
      .max(1_000)
      .default(50)
      .describe('Tasks of one run executing at once'),
    budget: budgetSpec.optional().describe('Default budget of a run (a trigger may set its own)'),
  })
  .strict();

export type WorkflowSpec = z.output<typeof workflowSpec>;
export type WorkflowStep = z.output<typeof workflowStep>;

export const triggerInput = z
  .object({
    parameters: z.record(z.string(), z.json()).default({}),
    budget: z.number().int().min(0).optional().describe('Micro-credits this run may spend'),
    on_budget_exceeded: z
      .enum(['flag', 'stop'])
      .optional()
      .describe(
        'stop: no task starts past the budget, running ones are cancelled; flag: flagged, it goes on',
      ),
    definition_hash: z
      .string()
      .regex(/^[0-9a-f]{64}$/, 'a definition hash is 64 lowercase hex digits')
      .optional()
      .describe('Run exactly this pinned definition (the workflow and step versions it resolved to)'),
  })
  .strict();
export type TriggerInput = z.output<typeof triggerInput>;

import { z } from 'zod';

const jsonValue = z.json();

/** The sql element's spec (its docs are generated from these descriptions). */
export const sqlSpec = z
  .object({
    query: z.string().trim().min(1, 'spec.query is required'),
    params: z.array(jsonValue).max(100).optional().describe('Default params when an invoke sends none'),
    timeout_ms: z.number().int().min(100).max(300_000).default(5_000).describe('Statement timeout'),
    max_rows: z.number().int().min(1).max(100_000).default(1_000).describe('Most rows a run may return'),
  })
  .strict();

export type SqlSpec = z.output<typeof sqlSpec>;

/** The invoke op's input: `{"params": [...]}` binds $1, $2, …. */
export const sqlInvokeInput = z.object({ params: z.array(jsonValue).max(100).optional() }).strict();
export type SqlInvokeInput = z.output<typeof sqlInvokeInput>;

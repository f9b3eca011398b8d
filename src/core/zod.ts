import { z } from 'zod';
import { errors } from './errors.js';

/** A boolean from a query string: only the spellings people actually use. */
export const qbool = z
  .union([z.boolean(), z.enum(['true', 'false', '1', '0', 'yes', 'no'])])
  .transform((v) => v === true || v === 'true' || v === '1' || v === 'yes');

/** A positive integer from a query string or JSON. */
export const qint = (min: number, max: number) =>
  z.union([
    z.number().int().min(min).max(max),
    z
      .string()
      .regex(/^\d+$/, 'must be a whole number')
      .transform(Number)
      .pipe(z.number().int().min(min).max(max)),
  ]);

/** Summarise zod issues as `path: message` lines for a typed INVALID_INPUT. */
export function issuesOf(err: z.ZodError): { path: string; message: string }[] {
  return err.issues.map((i) => ({ path: i.path.map(String).join('.') || '(root)', message: i.message }));
}

export function describeIssues(err: z.ZodError): string {
  return issuesOf(err)
    .slice(0, 5)
    .map((i) => `${i.path}: ${i.message}`)
    .join('; ');
}

/** Parses or throws INVALID_INPUT as `<lead>: <issues>`, listing every issue in details. */
export function parseInput<S extends z.ZodType>(
  schema: S,
  value: unknown,
  lead: string,
  suggestion?: string,
): z.output<S> {
  const r = schema.safeParse(value);
  if (!r.success)
    throw errors.invalidInput(`${lead}: ${describeIssues(r.error)}`, issuesOf(r.error), suggestion);
  return r.data;
}

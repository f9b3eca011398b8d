import { z } from 'zod';
import { registerType } from '../../src/elements/registry.js';
import {
  defineOp,
  defineType,
  executorFor,
  type ExecContext,
  type ExecResult,
} from '../../src/elements/types.js';

/**
 * Registers an element type made for a test or benchmark: no spec, one
 * run-creating `invoke` op with `input` and `price`, executed by `invoke`
 * (its ctx.input typed by `input`). The engine runs it like any other type.
 */
export function registerInvokeType<I extends z.ZodType>(o: {
  type: string;
  title: string;
  input: I;
  price?: number;
  invoke: (ctx: ExecContext<unknown, z.output<I>>) => Promise<ExecResult>;
}): void {
  const op = {
    name: 'invoke',
    method: 'POST',
    path: 'invoke',
    auth: 'execute',
    summary: o.title,
    input: o.input,
    createsRun: true,
    ...(o.price === undefined ? {} : { price: o.price }),
  } as const;
  registerType(
    defineType({
      type: o.type,
      category: 'actions',
      title: `${o.title} (tests only)`,
      description: `${o.title}: registered by a test or benchmark.`,
      spec: z.object({}).strict(),
      operations: [defineOp(op)],
      errors: [],
      rules: [],
      executors: { invoke: executorFor(op, o.invoke) },
    }),
  );
}

/**
 * What the three trigger types (schedule, webhook, upstream) share: a target (an element of the
 * circle and one of its ops that starts a run) and an input mapping, a template of `${{ }}`
 * expressions over what the trigger received, checked at definition time.
 */
import { z } from 'zod';
import { CairnError } from '../../core/errors.js';
import {
  compileTemplate,
  ExprError,
  renderTemplate,
  type ExprScope,
  type Root,
  type Template,
} from '../../core/expr.js';
import type { Queryable } from '../../db/types.js';
import type { CircleRow } from '../../store/circles.js';
import { getElement } from '../../store/elements.js';
import type { TargetRef, TypeLookup } from '../types.js';

export const targetSchema = z
  .object({
    element: z.string().min(1).max(63).describe('The slug of the element to run.'),
    op: z
      .string()
      .min(1)
      .max(63)
      .optional()
      .describe("Its operation (default: the type's first op that starts a run, e.g. invoke, trigger)."),
    input: z.unknown().optional().describe('The op input (a template with `${{ }}` expressions).'),
    parameters: z
      .record(z.string(), z.unknown())
      .optional()
      .describe('A workflow target: its parameters (sugar for input: {parameters: …}).'),
  })
  .strict();
export type TargetSpec = z.output<typeof targetSchema>;

export function missingTarget(kind: string): CairnError {
  return new CairnError({
    code: 'MISSING_TARGET',
    class: 'validation',
    message: `A ${kind} needs a target: the element it runs.`,
    suggestion: `Add target: {element: <slug>, op: invoke} (a workflow: op: trigger, parameters: {...}).`,
  });
}

function invalidTarget(message: string, suggestion: string, details?: unknown): CairnError {
  return new CairnError({ code: 'INVALID_TARGET', class: 'validation', message, suggestion, details });
}

/** The input template a target spec gives: `input`, or `{parameters}`, or the trigger's default. */
export function targetInput(t: TargetSpec, fallback: unknown): unknown {
  if (t.input !== undefined && t.parameters !== undefined)
    throw invalidTarget(
      'A target gives input or parameters, not both.',
      'Keep parameters for a workflow, input for anything else.',
    );
  if (t.parameters !== undefined) return { parameters: t.parameters };
  return t.input ?? fallback;
}

/** Checks that the template compiles over `roots` (definition time): a typed 400 otherwise. */
export function checkMapping(template: unknown, roots: readonly Root[], where: string): void {
  try {
    compileTemplate(template, roots);
  } catch (e) {
    if (e instanceof ExprError)
      throw new CairnError({
        code: 'INVALID_MAPPING',
        class: 'validation',
        message: `${where}: the expression "${e.expression}" ${e.message}.`,
        details: { where, expression: e.expression, roots },
        suggestion: `Expressions are CEL inside \${{ }} and read ${roots.join(', ')}; e.g. \${{ ${roots[0]} }}.`,
      });
    throw e;
  }
}

/** Compiled mappings by their JSON and roots: a hook or a schedule fires its one mapping again and again. */
const COMPILED_SIZE = 256;
const compiled = new Map<string, Template>();

/** The input for one firing: the template rendered over what the trigger received. */
export function mapInput(template: unknown, roots: readonly Root[], scope: ExprScope): unknown {
  const key = `${roots.join(',')}|${JSON.stringify(template)}`;
  let t = compiled.get(key);
  if (!t) {
    t = compileTemplate(template, roots);
    compiled.set(key, t);
    if (compiled.size > COMPILED_SIZE) compiled.delete(compiled.keys().next().value!);
  }
  return renderTemplate(t, scope);
}

/**
 * Resolves the target in the circle (definition time): the element exists and the op starts a
 * run. Answers the op name (the default filled in).
 */
export async function resolveTarget(
  db: Queryable,
  circle: CircleRow,
  t: TargetSpec,
  types: TypeLookup,
  self: string | null,
): Promise<TargetRef> {
  const el = await getElement(db, circle.id, t.element);
  if (!el)
    throw invalidTarget(
      `The target element "${t.element}" does not exist in this circle.`,
      'Create it first, or fix the slug (GET /api/{circle}/elements lists them).',
      { element: t.element },
    );
  if (self !== null && el.slug === self)
    throw invalidTarget('A trigger cannot target itself.', 'Target the element it should run.');
  const type = types.get(el.element_type);
  const starting = types.operationsOf(type).filter((o) => o.createsRun || o.startsRun);
  const op = t.op === undefined ? starting[0] : starting.find((o) => o.name === t.op);
  if (!op)
    throw invalidTarget(
      t.op === undefined
        ? `The ${type.type} element "${el.slug}" has no operation that starts a run.`
        : `"${t.op}" is not an operation of ${type.type} that starts a run.`,
      starting.length
        ? `Use one of: ${starting.map((o) => o.name).join(', ')}.`
        : 'Target an element that runs (a function, a query, a workflow).',
      { element: el.slug, op: t.op ?? null, ops: starting.map((o) => o.name) },
    );
  return { element: el.slug, op: op.name };
}

/**
 * A failure that says nothing about the request (the database away, an internal error): a trigger
 * tries it again later instead of recording it as the answer.
 */
export function transient(e: CairnError): boolean {
  return e.errorClass === 'internal' || e.errorClass === 'unavailable' || e.errorClass === 'timeout';
}

/**
 * mapInput for a trigger that fires by itself (a schedule, an upstream handoff): an expression
 * that fails on what it received is a typed, final error (TRIGGER_MAPPING_FAILED), recorded on
 * the occurrence or handoff — not a passing failure to retry forever.
 */
export function mapTriggerInput(template: unknown, roots: readonly Root[], scope: ExprScope): unknown {
  try {
    return mapInput(template, roots, scope);
  } catch (e) {
    if (e instanceof ExprError)
      throw new CairnError({
        code: 'TRIGGER_MAPPING_FAILED',
        class: 'validation',
        message: `The input mapping failed: the expression "${e.expression}" ${e.message}.`,
        details: { expression: e.expression },
        suggestion: `Make the mapping fit what it reads (${roots.join(', ')}), e.g. has(upstream.output.x) ? upstream.output.x : null.`,
      });
    throw e;
  }
}

/**
 * A workflow spec compiled to its plan: every expression parsed, every
 * dependency known (`needs` plus every step an expression reads), the steps in
 * topological order. Every way a definition can be wrong is a typed 400 here,
 * before anything is created.
 */
import { CairnError } from '../../core/errors.js';
import { compileTemplate, ExprError, exprsOf, type Expr, type Template } from '../../core/expr.js';
import type { WorkflowSpec, WorkflowStep } from './spec.js';

export interface StepPlan {
  step: WorkflowStep;
  /** Position in topological order. */
  index: number;
  /** Steps that must end before it starts. */
  deps: string[];
  input: Template;
  when?: Template;
  forEach?: Template;
  /** Files mounted at /in, by name. */
  files: [string, Template][];
}

export interface Plan {
  /** Topological order (a step after everything it depends on). */
  steps: StepPlan[];
  byName: Map<string, StepPlan>;
  outputs: Template;
}

function refused(code: string, message: string, suggestion: string, details?: unknown): CairnError {
  return new CairnError({ code, class: 'validation', message, suggestion, details });
}

function compile(v: unknown, where: string): Template {
  try {
    return compileTemplate(v);
  } catch (e) {
    if (e instanceof ExprError)
      throw refused(
        'WORKFLOW_EXPRESSION_INVALID',
        `${where}: the expression "${e.expression}" ${e.message}.`,
        'Expressions are CEL inside ${{ }}: read parameters.<name>, steps.<step>.output, steps.<step>.files, item (in for_each) and run; e.g. ${{ steps.add.output.rows[0].n > 10 }}.',
        { where, expression: e.expression },
      );
    throw e;
  }
}

export function compilePlan(spec: WorkflowSpec): Plan {
  const names = new Set<string>();
  for (const s of spec.steps) {
    if (names.has(s.name))
      throw refused(
        'WORKFLOW_DUPLICATE_STEP',
        `Two steps are named "${s.name}".`,
        'Give every step its own name.',
        { step: s.name },
      );
    names.add(s.name);
  }
  const plans = new Map<string, Omit<StepPlan, 'index'>>();
  for (const s of spec.steps) {
    const where = `step "${s.name}"`;
    const input = compile(s.input, `${where} input`);
    const when = s.when === undefined ? undefined : compile(s.when, `${where} when`);
    if (when && when.t !== 'expr' && when.t !== 'lit')
      throw refused(
        'WORKFLOW_EXPRESSION_INVALID',
        `${where} when: "${s.when}" must be one whole \${{ … }} expression.`,
        'Write when: "${{ <condition> }}".',
      );
    let forEach: Template | undefined;
    if (s.for_each !== undefined) {
      forEach = compile(s.for_each, `${where} for_each`);
      if (typeof s.for_each === 'string' && forEach.t !== 'expr')
        throw refused(
          'WORKFLOW_EXPRESSION_INVALID',
          `${where} for_each: "${s.for_each}" must be one whole \${{ … }} expression giving a list, or a list.`,
          'Write for_each: "${{ steps.list.output.rows }}", or a YAML list.',
        );
      if (Array.isArray(s.for_each) && s.for_each.length > s.max_items)
        throw refused(
          'WORKFLOW_FOR_EACH_CAP',
          `${where} for_each lists ${s.for_each.length} items; at most ${s.max_items} tasks may fan out from one step.`,
          `Split the list, or raise max_items (up to 10000).`,
          { step: s.name, items: s.for_each.length, max_items: s.max_items },
        );
    }
    const files: [string, Template][] = Object.entries(s.files).map(([n, v]) => [
      n,
      compile(v, `${where} files.${n}`),
    ]);
    const exprs: Expr[] = [
      ...exprsOf(input),
      ...(when ? exprsOf(when) : []),
      ...(forEach ? exprsOf(forEach) : []),
      ...files.flatMap(([, t]) => exprsOf(t)),
    ];
    const deps = new Set(s.needs);
    for (const e of exprs) {
      for (const ref of e.steps) deps.add(ref);
      if (e.roots.has('item') && !forEach)
        throw refused(
          'WORKFLOW_EXPRESSION_INVALID',
          `${where}: "${e.source}" reads item, but the step has no for_each.`,
          'item is the element of a for_each list; add for_each to the step, or read steps.<name>.output.',
        );
    }
    if (forEach)
      for (const e of exprsOf(forEach))
        if (e.roots.has('item'))
          throw refused(
            'WORKFLOW_EXPRESSION_INVALID',
            `${where} for_each: "${e.source}" reads item, which it defines.`,
            'Compute the list from parameters or steps.',
          );
    for (const d of deps) {
      if (d === s.name)
        throw refused(
          'WORKFLOW_STEP_NOT_RUN',
          `${where} reads its own result (steps.${d}); it cannot have run before itself.`,
          'Read the output of a step that runs before this one.',
          { step: s.name },
        );
      if (!names.has(d))
        throw refused(
          'WORKFLOW_UNKNOWN_STEP',
          `${where} depends on "${d}", which is not a step of this workflow.`,
          `Steps: ${[...names].join(', ')}. Fix the name in needs or in the expression.`,
          { step: s.name, unknown: d },
        );
    }
    plans.set(s.name, { step: s, deps: [...deps], input, when, forEach, files });
  }
  const outputs = compile(spec.outputs, 'outputs');
  for (const e of exprsOf(outputs)) {
    for (const ref of e.steps)
      if (!names.has(ref))
        throw refused(
          'WORKFLOW_UNKNOWN_STEP',
          `outputs read "${ref}", which is not a step of this workflow.`,
          `Steps: ${[...names].join(', ')}.`,
          { unknown: ref },
        );
    if (e.roots.has('item'))
      throw refused(
        'WORKFLOW_EXPRESSION_INVALID',
        `outputs: "${e.source}" reads item, which only a for_each step has.`,
        'Read steps.<name>.output.',
      );
  }
  // Kahn's algorithm, in declaration order among the ready; what is left over is on a cycle.
  const order: StepPlan[] = [];
  const left = new Map([...plans].map(([n, p]) => [n, new Set(p.deps)]));
  while (left.size > 0) {
    const ready = spec.steps.map((s) => s.name).filter((n) => left.get(n)?.size === 0);
    if (ready.length === 0) {
      const cycle = findCycle(left);
      throw refused(
        'WORKFLOW_CYCLE',
        `The steps depend on each other in a cycle: ${cycle.join(' → ')}.`,
        'Remove one of these dependencies (in needs or in an expression) so the steps form a DAG.',
        { cycle },
      );
    }
    for (const n of ready) {
      left.delete(n);
      order.push({ ...plans.get(n)!, index: order.length });
      for (const d of left.values()) d.delete(n);
    }
  }
  return { steps: order, byName: new Map(order.map((p) => [p.step.name, p])), outputs };
}

function findCycle(left: Map<string, Set<string>>): string[] {
  const start = [...left.keys()][0]!;
  const path: string[] = [];
  const seen = new Map<string, number>();
  let at: string | undefined = start;
  while (at !== undefined && !seen.has(at)) {
    seen.set(at, path.length);
    path.push(at);
    at = [...(left.get(at) ?? [])].find((d) => left.has(d));
  }
  return at === undefined ? path : [...path.slice(seen.get(at)), at];
}

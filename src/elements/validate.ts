import { CairnError } from '../core/errors.js';
import { issuesOf, describeIssues } from '../core/zod.js';
import type { ElementTypeDecl } from './types.js';

export interface SpecCheck {
  spec: Record<string, unknown>;
  warnings: string[];
}

/**
 * Parses a spec against its type (defaults applied) and runs the type's rules.
 * Errors refuse the definition (nothing is written); warnings travel back with it.
 */
export function checkSpec(type: ElementTypeDecl, raw: unknown): SpecCheck {
  const parsed = type.spec.safeParse(raw ?? {});
  if (!parsed.success) {
    throw new CairnError({
      code: 'INVALID_SPEC',
      class: 'validation',
      message: `The spec is not a valid ${type.type} spec: ${describeIssues(parsed.error)}`,
      details: issuesOf(parsed.error),
      suggestion: `Fix the listed fields; GET /api/{circle}/{slug}/ops/schema or docs/elements/${type.type}.md shows the spec.`,
    });
  }
  const spec = parsed.data as Record<string, unknown>;
  const failed = type.rules.filter((r) => r.level === 'error' && !r.check(spec));
  if (failed.length > 0) {
    throw new CairnError({
      code: failed[0]!.code ?? 'INVALID_SPEC',
      class: 'validation',
      message: failed.map((r) => r.message).join('; '),
      details: failed.map((r) => ({ rule: r.message })),
      suggestion: 'Change the spec so that every listed rule holds, then send it again.',
    });
  }
  type.validateSpec?.(spec);
  const warnings = type.rules.filter((r) => r.level === 'warning' && !r.check(spec)).map((r) => r.message);
  return { spec, warnings };
}

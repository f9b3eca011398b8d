import { CairnError } from '../core/errors.js';
import { compileTemplate, ExprError, type Root, type Template } from '../core/expr.js';

/**
 * A spec's `${{ … }}` template, compiled at definition time: one that does not parse, or reads
 * what the type does not offer, is a typed 400 (INVALID_TEMPLATE) naming where it is.
 */
export function specTemplate(
  where: string,
  v: unknown,
  roots: readonly Root[],
  suggestion: string,
): Template {
  try {
    return compileTemplate(v, roots);
  } catch (err) {
    if (err instanceof ExprError)
      throw new CairnError({
        code: 'INVALID_TEMPLATE',
        class: 'validation',
        message: `The template of ${where} ${err.message}: ${err.expression}`,
        suggestion,
        details: { where, expression: err.expression },
      });
    throw err;
  }
}

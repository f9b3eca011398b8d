import { CairnError } from '../core/errors.js';
import type { ErrorCodeDecl } from './types.js';

/** Builds the CairnError for a declared code, so class, retryable and suggestion come from one table. */
export function declaredError(
  table: readonly ErrorCodeDecl[],
  code: string,
  message: string,
  details?: unknown,
  /** This occurrence's retryability, when it is not the code's (a 503 answer is, a 404 is not). */
  retryable?: boolean,
): CairnError {
  const d = table.find((e) => e.code === code);
  if (!d) throw new Error(`error code ${code} is not declared`);
  return new CairnError({
    code,
    class: d.class,
    retryable: retryable ?? d.retryable,
    message,
    suggestion: d.suggestion,
    details,
  });
}

/** One row of a type's error table. */
export function errorCode(
  code: string,
  cls: ErrorCodeDecl['class'],
  retryable: boolean,
  description: string,
  suggestion: string,
): ErrorCodeDecl {
  return { code, class: cls, retryable, description, suggestion };
}

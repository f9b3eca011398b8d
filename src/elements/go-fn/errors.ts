import type { ErrorCodeDecl } from '../types.js';

/** Seed 004's table (code, class, retryable), plus two of ours for bad input and oversized output. */
export const GO_FN_ERRORS: readonly ErrorCodeDecl[] = [
  {
    code: 'GO_FN_COMPILATION_FAILED',
    class: 'validation',
    retryable: false,
    description: 'Go compilation error — check your source code and go.mod dependencies',
    suggestion:
      'Fix the source at the file:line the compiler quotes; run POST …/ops/validate to check without building.',
  },
  {
    code: 'GO_FN_EXECUTION_FAILED',
    class: 'internal',
    retryable: true,
    description: 'Runtime panic or returned error from the Handler function',
    suggestion:
      'Read the panic or error message (and the stack in details); fix the handler or its input, then invoke again.',
  },
  {
    code: 'GO_FN_TIMEOUT',
    class: 'timeout',
    retryable: true,
    description: 'Function execution exceeded timeout_ms limit',
    suggestion:
      'Make the handler faster, honour ctx.Done() with the context signature, or raise spec.timeout_ms (at most 900000).',
  },
  {
    code: 'GO_FN_MEMORY_EXCEEDED',
    class: 'internal',
    retryable: false,
    description: 'Function exceeded its memory_mb allocation',
    suggestion: 'Process data in smaller pieces, or raise spec.memory_mb (64–4096).',
  },
  {
    code: 'GO_FN_INVALID_OUTPUT',
    class: 'validation',
    retryable: false,
    description: 'Handler returned a value that could not be serialized to JSON',
    suggestion:
      'Return only JSON-serializable values (maps, slices, strings, numbers, bools, nil) from the handler.',
  },
  {
    code: 'GO_FN_HANDLER_NOT_EXPORTED',
    class: 'validation',
    retryable: false,
    description: 'Handler function must be exported (start with a capital letter)',
    suggestion: 'Rename the function and spec.handler to start with a capital letter, e.g. Handler.',
  },
  {
    code: 'GO_FN_OUTPUT_TOO_LARGE',
    class: 'validation',
    retryable: false,
    description: 'The handler wrote more than the stdout/stderr cap, or returned more than the result cap',
    suggestion: 'Log less and return less; put large data in a table or file element.',
  },
];

/**
 * `secret` and `variable` (R-SECRETS, seed 004): values that attach to the elements that use them.
 * A secret's value is sealed (AES-256-GCM) when it is defined and never shown again; a variable's
 * is plain and versioned like any spec.
 */
import { z } from 'zod';
import { isSealedBox, keyring, type SealedBox } from '../../core/sealed.js';
import { defineType } from '../types.js';

const box = z.object({ $sealed: z.string().max(200_000), digest: z.string().max(128) }).strict();

/** The most a variable's value may hold (its JSON): it becomes an environment variable or a prompt. */
export const VARIABLE_MAX_BYTES = 65_536;
const noNul = (v: string) => !v.includes('\0');

const secretSpec = z
  .object({
    value: z
      .union([
        z
          .string()
          .min(4, 'a secret is at least 4 characters')
          .max(65_536)
          .refine(noNul, 'a secret holds no NUL character'),
        box,
      ])
      .describe('The secret value: sent once, sealed at rest, never returned'),
    description: z.string().max(2000).optional(),
  })
  .strict();

export const secretType = defineType({
  type: 'secret',
  category: 'data',
  title: 'Secret',
  // Whoever defines a secret decides what runs may be handed: circle admins only.
  writeAuth: 'admin',
  description:
    'A value encrypted at rest (AES-256-GCM). No API answer, log or evidence ever shows it after it is defined, and ' +
    'every exact occurrence in what a run records is replaced by [secret:<slug>]. Attach it to the element that ' +
    'uses it: a code action sees it as an environment variable, an http element as ${{ secrets.<name> }} in its ' +
    'headers, an llm-provider as its API key.',
  spec: secretSpec,
  operations: [],
  errors: [],
  rules: [],
  executors: {},
  seal(spec, circleId) {
    return typeof spec.value === 'string' ? { ...spec, value: keyring().seal(spec.value, circleId) } : spec;
  },
  attachable: {
    modifier: false,
    secret: true,
    value: (spec, open) => {
      const v = spec.value;
      if (!isSealedBox(v)) throw new Error('a stored secret holds no sealed value');
      return open(v as SealedBox);
    },
  },
});

const variableSpec = z
  .object({
    value: z
      .json()
      .refine(
        (v) => Buffer.byteLength(JSON.stringify(v)) <= VARIABLE_MAX_BYTES,
        `at most ${VARIABLE_MAX_BYTES} bytes of JSON`,
      )
      .refine((v) => !JSON.stringify(v).includes('\\u0000'), 'a variable holds no NUL character')
      .describe(
        'Any JSON value (at most 64 KiB); injected as text (a string as is, anything else as its JSON)',
      ),
    description: z.string().max(2000).optional(),
  })
  .strict();

export const variableType = defineType({
  type: 'variable',
  category: 'data',
  title: 'Variable',
  description:
    'A plain, versioned value that attaches to the elements that use it: an environment variable of a code action, ' +
    '${{ vars.<name> }} in an http or llm template.',
  spec: variableSpec,
  operations: [],
  errors: [],
  rules: [],
  executors: {},
  attachable: {
    modifier: false,
    secret: false,
    value: (spec) => (typeof spec.value === 'string' ? spec.value : JSON.stringify(spec.value)),
  },
});

import { z } from 'zod';
import { REQUIREMENT_LINE } from '../../sandbox/builders/go.js';

/** The go-fn element's spec (its docs are generated from these descriptions). */
export const goFnSpec = z
  .object({
    source: z
      .object({
        type: z.enum(['inline', 'git']).default('inline'),
        code: z.string().max(1_000_000).optional(),
        requirements: z
          .string()
          .max(20_000)
          .optional()
          .superRefine((v, ctx) => {
            for (const line of (v ?? '').split('\n').map((l) => l.trim())) {
              if (line && !line.startsWith('//') && !REQUIREMENT_LINE.test(line)) {
                ctx.addIssue({
                  code: 'custom',
                  message: `"${line}" is not a "module/path vX.Y.Z" requirement line`,
                });
              }
            }
          })
          .describe('Lines appended to the require block of go.mod'),
        git_url: z
          .string()
          .max(2000)
          .optional()
          .describe(
            'Repository to clone when type is git: an https:// URL (no credentials; a host on a loopback, private or ' +
              'link-local address is refused unless the admin sets CAIRN_GIT_ALLOW_PRIVATE_HOSTS=1), or a local absolute ' +
              'path / file:// URL inside a directory the admin lists in CAIRN_GIT_LOCAL_ROOTS (none by default). ' +
              'Cloned in the build sandbox as the unprivileged builder uid, without hooks or submodules',
          ),
        git_ref: z
          .string()
          .max(200)
          .optional()
          .describe('Branch or tag to check out (default: the remote HEAD)'),
        path: z
          .string()
          .max(500)
          .regex(/^(?!\/)(?!.*\.\.)[\w./-]*$/, 'a relative path inside the repository')
          .optional(),
      })
      .strict()
      .describe(
        'Source code configuration. With type git, git_url is cloned (at git_ref, a branch or tag) in the build ' +
          'sandbox as the unprivileged builder uid, without hooks, submodules or redirects. git_url must be an ' +
          'https:// URL without credentials whose host resolves to no loopback, private, link-local (cloud ' +
          'metadata), CGNAT, multicast or reserved address (unless the admin sets CAIRN_GIT_ALLOW_PRIVATE_HOSTS=1), ' +
          'or an absolute path or file:// URL whose real path is inside a directory the admin lists in ' +
          'CAIRN_GIT_LOCAL_ROOTS (none by default). Anything else (http://, git://, ssh://, ext::, relative paths) ' +
          'is refused with INVALID_SPEC',
      ),
    handler: z.string().default('Handler').describe('Entry point function. Must be exported (capitalized).'),
    env: z
      .record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), z.string().max(32_768))
      .default({})
      .describe('Environment variables injected at runtime'),
    side_effects: z
      .boolean()
      .optional()
      .describe('false: the handler changes nothing outside its answer, so a strict replay may repeat it'),
    timeout_ms: z
      .number()
      .int()
      .min(100)
      .max(900_000)
      .default(30_000)
      .describe('Maximum execution time in milliseconds'),
    memory_mb: z
      .number()
      .int()
      .min(64)
      .max(4096)
      .default(128)
      .describe('Memory limit for the sandbox in megabytes'),
    data_sources: z.array(z.string()).default([]).describe('Data elements this function can access'),
  })
  .strict();

export type GoSpec = z.output<typeof goFnSpec>;

/** The invoke op's input: the JSON object the Handler receives. */
export const goInvokeInput = z.record(z.string(), z.unknown());

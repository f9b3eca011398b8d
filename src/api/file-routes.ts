/**
 * Files (R-FILES): upload raw bytes into a circle (content-addressed), read
 * them back, and list the files a run read and wrote. A circle reads only
 * files it holds a reference to; another circle's hash answers 404.
 */
import { z } from 'zod';
import { CairnError, errors } from '../core/errors.js';
import { isoFields } from '../store/rows.js';
import { fileRefsIn, PgFileStore, SHA256_RE, type FileRef } from '../store/files.js';
import { visibleRun } from './control-routes.js';
import { defineRoute, type RouteDef } from './route.js';

/** The largest file one upload may carry. */
export const FILE_MAX_BYTES = 64 * 1024 * 1024;

const shaParam = z.object({
  circle: z.string(),
  sha256: z
    .string()
    .transform((s) => s.replace(/^sha256:/, ''))
    .pipe(z.string().regex(SHA256_RE, 'a file is named by its sha256: 64 lowercase hex digits')),
});

export const FILE_ROUTES: RouteDef[] = [
  defineRoute({
    method: 'POST',
    url: '/api/:circle/files',
    auth: 'write',
    tag: 'files',
    summary: 'Upload a file (the raw body; any content type): answers its sha256 and size',
    rawBody: { limit: FILE_MAX_BYTES },
    query: z.object({ name: z.string().min(1).max(255).optional() }).strict(),
    status: 201,
    handler: async (ctx) => {
      const body = ctx.body;
      if (!Buffer.isBuffer(body))
        throw new CairnError({
          code: 'FILE_BODY_MISSING',
          class: 'validation',
          message: 'The request has no body; a file upload is its raw bytes.',
          suggestion: `curl --data-binary @file -H 'content-type: text/csv' …/api/${ctx.circle!.slug}/files`,
        });
      const type = String(ctx.req.headers['content-type'] ?? 'application/octet-stream')
        .split(';')[0]!
        .trim();
      const f = await new PgFileStore(ctx.deps.db).put(ctx.circle!.id, body, {
        media_type: type || 'application/octet-stream',
        name: ctx.query.name,
      });
      return {
        sha256: f.sha256,
        size: f.size,
        media_type: f.media_type,
        ref: { $file: `sha256:${f.sha256}` },
        url: `/api/${ctx.circle!.slug}/files/${f.sha256}`,
      };
    },
  }),
  defineRoute({
    method: 'GET',
    url: '/api/:circle/files/:sha256',
    auth: 'read',
    tag: 'files',
    summary: "A file's bytes (only a file this circle holds)",
    params: shaParam,
    handler: async (ctx) => {
      const sha = String(ctx.params.sha256).replace(/^sha256:/, '');
      if (!SHA256_RE.test(sha))
        throw errors.invalidInput(
          `"${String(ctx.params.sha256).slice(0, 100)}" is not a file hash.`,
          undefined,
          'A file is named by its sha256: 64 lowercase hex digits (optionally prefixed sha256:).',
        );
      const store = new PgFileStore(ctx.deps.db);
      const st = await store.stat(ctx.circle!.id, sha);
      const data = st && (await store.get(ctx.circle!.id, sha));
      if (!st || !data)
        throw errors.notFound(
          'FILE_NOT_FOUND',
          `Circle "${ctx.circle!.slug}" has no file sha256:${sha}.`,
          `Upload it with POST /api/${ctx.circle!.slug}/files, or list a run's files with GET /api/runs/{id}/files.`,
        );
      return ctx.reply
        .type(st.media_type)
        .header('etag', `"${st.sha256}"`)
        .header('x-content-sha256', st.sha256)
        .send(data);
    },
  }),
  defineRoute({
    method: 'GET',
    url: '/api/runs/:id/files',
    auth: 'token',
    tag: 'runs',
    summary: 'The files a run read and wrote, per task, with their hashes',
    handler: async (ctx) => {
      const { run, circle } = await visibleRun(ctx, 'read');
      const r = await ctx.deps.db.query<{
        key: string;
        evidence: Record<string, unknown>;
        finished_at: string | null;
      }>('SELECT key, evidence, finished_at FROM cairn.items WHERE run_id = $1 ORDER BY ord, key', [run.id]);
      const files: (FileRef & { direction: 'input' | 'output'; task: string | null; url: string })[] = [];
      const url = (sha: string) => `/api/${circle.slug}/files/${sha}`;
      const params = (run.input as { parameters?: unknown } | null)?.parameters;
      for (const sha of fileRefsIn(params ?? null)) {
        const st = await new PgFileStore(ctx.deps.db).stat(circle.id, sha);
        files.push({
          name: st?.name ?? sha,
          sha256: sha,
          size: st?.size ?? 0,
          media_type: st?.media_type ?? 'application/octet-stream',
          direction: 'input',
          task: null,
          url: url(sha),
        });
      }
      for (const row of r.rows.map((x) => isoFields(x, ['finished_at']))) {
        for (const [dir, key] of [
          ['input', 'input_files'],
          ['output', 'output_files'],
        ] as const)
          for (const f of (row.evidence?.[key] as FileRef[] | undefined) ?? [])
            files.push({
              ...f,
              direction: dir,
              task: run.kind === 'workflow' ? row.key : null,
              url: url(f.sha256),
            });
      }
      return { run_id: run.id, files };
    },
  }),
];

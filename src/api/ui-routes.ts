/**
 * The web UI (R-UI): `web/` served at `/ui/` with no build step, the few vendor ES modules it
 * imports at `/ui/vendor/…` (an explicit allowlist of files from node_modules, never the
 * directory), and `index.html` for `/` and every client-side route, so each run's `web_url`
 * (`<base>/runs/<id>`) opens its page. docs/ui.md says why the stack is what it is.
 *
 * The HTML carries a strict Content-Security-Policy: scripts from this origin only, plus the one
 * inline import map, allowed by its sha256 (Chromium cannot load an import map from a file).
 * The import map is written here from the same allowlist that serves the vendor files.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { basename, dirname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { Logger } from '../telemetry/log.js';

/** src/api/ and dist/api/ are both two levels under the repo root, where web/ and node_modules/ are. */
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const WEB = join(ROOT, 'web');
const MODULES = join(ROOT, 'node_modules');

/** The vendor modules the UI may load: the import specifier, the URL name, the file in node_modules. */
export const VENDOR: readonly { specifier: string; name: string; file: string }[] = [
  { specifier: 'preact', name: 'preact.mjs', file: 'preact/dist/preact.module.js' },
  { specifier: 'preact/hooks', name: 'preact-hooks.mjs', file: 'preact/hooks/dist/hooks.module.js' },
  { specifier: 'htm', name: 'htm.mjs', file: 'htm/dist/htm.module.js' },
  {
    specifier: '@preact/signals-core',
    name: 'signals-core.mjs',
    file: '@preact/signals-core/dist/signals-core.module.js',
  },
  { specifier: '@preact/signals', name: 'signals.mjs', file: '@preact/signals/dist/signals.module.js' },
  { specifier: '@dagrejs/dagre', name: 'dagre.mjs', file: '@dagrejs/dagre/dist/dagre.esm.js' },
];

/** Client-side routes answered with index.html (web/src/router.js matches the same shapes). */
export const CLIENT_ROUTES = ['/', '/sign-in', '/circles', '/circles/*', '/runs/:id', '/runs/:id/*'];

const PLACEHOLDER = '<!--cairn:importmap-->';

function importMap(): string {
  const imports = Object.fromEntries(VENDOR.map((v) => [v.specifier, `/ui/vendor/${v.name}`]));
  return JSON.stringify({ imports });
}

/** The UI's own modules (web/src/**.js), as URLs: preloaded, so the browser fetches them at once. */
function ownModules(dir = join(WEB, 'src')): string[] {
  if (!existsSync(dir)) return [];
  return (
    readdirSync(dir, { withFileTypes: true, recursive: true })
      .filter((e) => e.isFile() && e.name.endsWith('.js'))
      // Node 20.10 names the directory `path`, 20.12+ `parentPath`.
      .map((e) => join(e.parentPath ?? (e as unknown as { path: string }).path, e.name))
      .map((f) => `/ui/${relative(WEB, f).split(sep).join('/')}`)
      .sort()
  );
}

/**
 * index.html with the import map in place (and a modulepreload for every module, so the import
 * graph is fetched in one round instead of one per level), and the CSP that allows exactly that
 * inline script.
 */
export function renderIndex(template: string, modules: string[] = []): { html: string; csp: string } {
  const map = importMap();
  const hash = createHash('sha256').update(map, 'utf8').digest('base64');
  const preload = [...VENDOR.map((v) => `/ui/vendor/${v.name}`), ...modules]
    .map((u) => `<link rel="modulepreload" href="${u}" />`)
    .join('\n    ');
  const html = template.replace(PLACEHOLDER, `<script type="importmap">${map}</script>\n    ${preload}`);
  const csp = [
    "default-src 'none'",
    `script-src 'self' 'sha256-${hash}'`,
    "style-src 'self'",
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "manifest-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
  ].join('; ');
  return { html, csp };
}

function security(reply: FastifyReply): FastifyReply {
  return reply
    .header('X-Content-Type-Options', 'nosniff')
    .header('Referrer-Policy', 'no-referrer')
    .header('X-Frame-Options', 'DENY')
    .header('Cache-Control', 'no-cache');
}

export async function uiRoutes(app: FastifyInstance, opts: { log?: Logger } = {}): Promise<void> {
  const indexFile = join(WEB, 'index.html');
  if (!existsSync(indexFile)) {
    opts.log?.warn({ dir: WEB }, 'the web UI is not installed: no web/index.html');
    return;
  }
  // Read on each request (1 KB): an edited web/index.html needs no restart.
  const modules = ownModules();
  const page = () => renderIndex(readFileSync(indexFile, 'utf8'), modules);
  const sendIndex = async (_req: unknown, reply: FastifyReply) => {
    const { html, csp } = page();
    return security(reply).header('Content-Security-Policy', csp).type('text/html; charset=utf-8').send(html);
  };

  await app.register(async (ui) => {
    ui.addHook('onSend', async (_req, reply, payload) => {
      security(reply);
      if (!reply.hasHeader('Content-Security-Policy')) reply.header('Content-Security-Policy', page().csp);
      return payload;
    });
    await ui.register(fastifyStatic, {
      root: WEB,
      prefix: '/ui/',
      index: false,
      list: false,
      dotfiles: 'deny',
      cacheControl: false,
      // index.html is a template: it is only served rendered (below).
      allowedPath: (path) => path !== '/index.html',
    });
    ui.get('/ui/', sendIndex);
    ui.get('/ui/index.html', sendIndex);
    for (const v of VENDOR) {
      const file = join(MODULES, v.file);
      if (!existsSync(file)) {
        opts.log?.warn({ file }, 'a vendor module of the web UI is missing (npm ci?)');
        continue;
      }
      ui.get(`/ui/vendor/${v.name}`, (_req, reply) =>
        reply
          .type('text/javascript; charset=utf-8')
          .sendFile(basename(file), dirname(file), { cacheControl: false }),
      );
    }
    for (const url of CLIENT_ROUTES) ui.get(url, sendIndex);
  });
}

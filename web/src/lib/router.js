/**
 * A small history router: the location as signals, navigate(), and one click handler that turns
 * same-origin links into client-side navigation. The server answers index.html for every route
 * below (src/api/ui-routes.ts CLIENT_ROUTES).
 *
 *   /                                  home: the token's circle, or the circles
 *   /sign-in                           the token form
 *   /circles                           circles
 *   /circles/:circle                   a circle's elements
 *   /circles/:circle/elements/:slug    an element
 *   /circles/:circle/runs              the run list (filters in the query string)
 *   /circles/:circle/wallet            the wallet
 *   /runs/:id                          a run (every run's web_url)
 */
import { signal } from '@preact/signals';

export const location = signal(read());

function read() {
  return { path: window.location.pathname, query: new URLSearchParams(window.location.search) };
}

/** Goes to `to` (a path with an optional query) without a reload. */
export function navigate(to, { replace = false } = {}) {
  const url = new URL(to, window.location.origin);
  const same = url.pathname === window.location.pathname;
  if (replace) window.history.replaceState(null, '', url);
  else window.history.pushState(null, '', url);
  location.value = read();
  if (!same && !replace) window.scrollTo(0, 0);
}

/** Replaces the query string (filters), keeping the path. */
export function setQuery(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  navigate(window.location.pathname + (s ? `?${s}` : ''), { replace: true });
}

window.addEventListener('popstate', () => {
  location.value = read();
});

document.addEventListener('click', (e) => {
  if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const a = e.target instanceof Element ? e.target.closest('a[href]') : null;
  if (!a || a.target || a.hasAttribute('download')) return;
  const url = new URL(a.href, window.location.href);
  if (url.origin !== window.location.origin || url.pathname.startsWith('/api/')) return;
  e.preventDefault();
  navigate(url.pathname + url.search + url.hash);
});

const ROUTES = [
  ['home', /^\/$/],
  ['sign-in', /^\/sign-in\/?$/],
  ['circles', /^\/circles\/?$/],
  ['circle', /^\/circles\/([^/]+)\/?$/],
  ['element', /^\/circles\/([^/]+)\/elements\/([^/]+)\/?$/],
  ['runs', /^\/circles\/([^/]+)\/runs\/?$/],
  ['wallet', /^\/circles\/([^/]+)\/wallet\/?$/],
  ['run', /^\/runs\/([^/]+)\/?$/],
];
const NAMES = {
  circle: ['circle'],
  element: ['circle', 'slug'],
  runs: ['circle'],
  wallet: ['circle'],
  run: ['id'],
};

/** The route of a path: its name and parameters ({name: 'not-found'} when none matches). */
export function match(path) {
  for (const [name, re] of ROUTES) {
    const m = re.exec(path);
    if (!m) continue;
    const params = {};
    (NAMES[name] ?? []).forEach((k, i) => (params[k] = decodeURIComponent(m[i + 1])));
    return { name, params };
  }
  return { name: 'not-found', params: {} };
}

export const paths = {
  circle: (c) => `/circles/${encodeURIComponent(c)}`,
  element: (c, slug) => `/circles/${encodeURIComponent(c)}/elements/${encodeURIComponent(slug)}`,
  runs: (c, q) => `/circles/${encodeURIComponent(c)}/runs${q ? `?${new URLSearchParams(q)}` : ''}`,
  wallet: (c) => `/circles/${encodeURIComponent(c)}/wallet`,
  run: (id) => `/runs/${encodeURIComponent(id)}`,
};

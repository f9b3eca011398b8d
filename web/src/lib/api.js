/**
 * The API client: every request carries the signed-in token as `Authorization: Bearer` (never in
 * a URL, never in a cookie, so there is no CSRF hole), and every refusal is an ApiError with the
 * API's typed error (code, message, _suggestion).
 */
import { token, expired } from './auth.js';
import { ApiError } from './errors.js';

export { ApiError };

/** Headers for a request of the signed-in token. */
export function authHeaders(extra = {}) {
  const h = { Accept: 'application/json', ...extra };
  if (token.value) h.Authorization = `Bearer ${token.value}`;
  return h;
}

/**
 * Calls the API. `body` is sent as JSON; `idempotencyKey` makes a retried click safe.
 * @param {string} path
 * @param {{method?: string, body?: unknown, signal?: AbortSignal, idempotencyKey?: string}} [opts]
 */
export async function api(path, { method = 'GET', body, signal, idempotencyKey } = {}) {
  const headers = authHeaders(body !== undefined ? { 'Content-Type': 'application/json' } : {});
  if (idempotencyKey) headers['Idempotency-Key'] = idempotencyKey;
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (e) {
    if (e?.name === 'AbortError') throw e;
    throw new ApiError(0, null);
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!res.ok) {
    const err = new ApiError(res.status, data);
    if (res.status === 401) expired(err);
    throw err;
  }
  return data;
}

/** A query string of the defined values. */
export function qs(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params))
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : '';
}

/** Runs `fn` over `list` with at most `n` at once (element stats on the circle page). */
export async function pool(list, n, fn) {
  const out = new Array(list.length);
  let next = 0;
  const worker = async () => {
    while (next < list.length) {
      const i = next++;
      out[i] = await fn(list[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, list.length) }, worker));
  return out;
}

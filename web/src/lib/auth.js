/**
 * The signed-in token: kept in sessionStorage (this tab only, gone when it closes) and in memory,
 * sent as a header by api.js. `me` is what the API says the token is (GET /api/whoami); roles
 * decide which controls are shown, the API decides what is allowed.
 */
import { signal, computed } from '@preact/signals';
import { ApiError } from './errors.js';

const KEY = 'cairn.token';
export const ROLES = ['read', 'write', 'execute', 'admin'];

function stored() {
  try {
    return window.sessionStorage.getItem(KEY);
  } catch {
    return null;
  }
}

export const token = signal(stored());
/** @type {import('@preact/signals').Signal<null | {role: string, circle: string | null, instance_admin: boolean, token_id: string}>} */
export const me = signal(null);
/** Why the last session ended (a revoked token), shown on the sign-in form. */
export const signOutReason = signal(null);

export const signedIn = computed(() => Boolean(token.value && me.value));

/** Checks a token with the API and keeps it for this tab. Throws the API's error when refused. */
export async function signIn(secret) {
  const t = secret.trim();
  const res = await fetch('/api/whoami', {
    headers: { Authorization: `Bearer ${t}`, Accept: 'application/json' },
    cache: 'no-store',
    credentials: 'omit',
  });
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, body);
  try {
    window.sessionStorage.setItem(KEY, t);
  } catch {
    /* private mode: memory only */
  }
  signOutReason.value = null;
  token.value = t;
  me.value = body;
  return body;
}

/** Loads `me` for a token kept from earlier in this tab. */
export async function restore() {
  if (!token.value) return null;
  const res = await fetch('/api/whoami', {
    headers: { Authorization: `Bearer ${token.value}`, Accept: 'application/json' },
    cache: 'no-store',
    credentials: 'omit',
  }).catch(() => null);
  if (res?.status === 401) signOut('The token is unknown or revoked. Sign in again.');
  else if (res?.ok) me.value = await res.json();
  return me.value;
}

export function signOut(reason = null) {
  try {
    window.sessionStorage.removeItem(KEY);
  } catch {
    /* nothing kept */
  }
  token.value = null;
  me.value = null;
  signOutReason.value = reason;
}

/** A 401 on any call: the token was revoked or is unknown. */
export function expired(err) {
  if (token.value) signOut(`${err.message} Sign in again.`);
}

/** Whether the token's role reaches `need` in `circle` (an instance admin reaches everything). */
export function can(need, circle) {
  const m = me.value;
  if (!m) return false;
  if (m.instance_admin) return true;
  if (circle && m.circle && circle !== m.circle) return false;
  return ROLES.indexOf(m.role) >= ROLES.indexOf(need);
}

/**
 * Sealed values (R-SECRETS): a secret's value is stored only as an AES-256-GCM box, and a box is
 * never shown. A box is a JSON object `{"$sealed": "v1.<key id>.<iv>.<ciphertext+tag>", "digest"}`
 * inside a spec; the digest (an HMAC of the value) keeps definition hashes stable across the
 * random IVs, so applying the same secret twice changes nothing.
 *
 * The keyring holds the current key (new boxes) and earlier ones (opening old boxes until a
 * rotation has re-sealed them). The additional data binds a box to its circle: a box copied into
 * another circle does not open.
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { createHash } from 'node:crypto';
import { CairnError } from './errors.js';

export interface SealedBox {
  $sealed: string;
  digest: string;
}

/** How a box is shown by the API: that there is one, never what is in it. */
export const SEALED_SHOWN = { $sealed: 'redacted' } as const;

export function isSealedBox(x: unknown): x is SealedBox {
  return (
    typeof x === 'object' &&
    x !== null &&
    !Array.isArray(x) &&
    typeof (x as SealedBox).$sealed === 'string' &&
    typeof (x as SealedBox).digest === 'string'
  );
}

/** Any object with a `$sealed` key (a box, or an attempt to pass one in). */
function looksSealed(x: unknown): boolean {
  return typeof x === 'object' && x !== null && !Array.isArray(x) && '$sealed' in x;
}

function mapBoxes(v: unknown, f: (b: SealedBox) => unknown): unknown {
  if (isSealedBox(v)) return f(v);
  if (Array.isArray(v)) return v.map((x) => mapBoxes(x, f));
  if (typeof v === 'object' && v !== null)
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, mapBoxes(x, f)]));
  return v;
}

/** The spec as the API shows it: every box replaced by SEALED_SHOWN. */
export function redactSealed<T>(spec: T): T {
  return mapBoxes(spec, () => ({ ...SEALED_SHOWN })) as T;
}

/** The spec as definition hashes see it: boxes by their digest (IVs are random). */
export function hashableSpec(spec: unknown): unknown {
  return mapBoxes(spec, (b) => ({ $sealed_digest: b.digest }));
}

/** Where a request's spec carries something shaped like a box (only Cairn writes boxes). */
export function findSealedInput(v: unknown, path = ''): string | undefined {
  if (looksSealed(v)) return path || '(root)';
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      const p = findSealedInput(v[i], `${path}[${i}]`);
      if (p) return p;
    }
  } else if (typeof v === 'object' && v !== null) {
    for (const [k, x] of Object.entries(v)) {
      const p = findSealedInput(x, path ? `${path}.${k}` : k);
      if (p) return p;
    }
  }
  return undefined;
}

export function sealedInputRefused(path: string): CairnError {
  return new CairnError({
    code: 'SEALED_VALUE_REFUSED',
    class: 'validation',
    message: `The spec carries a sealed value at ${path}; only Cairn writes sealed values.`,
    suggestion:
      'Send the plain value of a secret (it is sealed on the way in), and nothing shaped {"$sealed": …}.',
    details: { path },
  });
}

const b64 = (b: Buffer) => b.toString('base64url');

/** A key's id: 8 bytes of its sha256, hex (names the key a box was sealed with, reveals nothing). */
export function keyIdOf(key: Buffer): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 16);
}

/** Decodes a configured key: 32 bytes as base64 (44 chars) or hex (64 chars). */
export function parseKey(text: string, what: string): Buffer {
  const t = text.trim();
  const key = /^[0-9a-fA-F]{64}$/.test(t) ? Buffer.from(t, 'hex') : Buffer.from(t, 'base64');
  if (key.length !== 32)
    throw new CairnError({
      code: 'INVALID_SECRETS_KEY',
      class: 'validation',
      message: `${what} is not a 32-byte key (base64 or 64 hex digits).`,
      suggestion: 'Generate one with `openssl rand -base64 32`.',
    });
  return key;
}

export class Keyring {
  private readonly keys = new Map<string, Buffer>();
  readonly currentId: string;
  private readonly digestKey: Buffer;

  constructor(current: Buffer, previous: Buffer[] = []) {
    this.currentId = keyIdOf(current);
    this.keys.set(this.currentId, current);
    for (const k of previous) if (!this.keys.has(keyIdOf(k))) this.keys.set(keyIdOf(k), k);
    this.digestKey = Buffer.from(hkdfSync('sha256', current, Buffer.alloc(0), 'cairn-secret-digest', 32));
  }

  /** Does this ring hold the key with this id (current or earlier)? */
  holds(keyId: string): boolean {
    return this.keys.has(keyId);
  }

  static generateKey(): Buffer {
    return randomBytes(32);
  }

  /** Seals `plaintext` for `scope` (the circle id) under the current key. */
  seal(plaintext: string, scope: string): SealedBox {
    const key = this.keys.get(this.currentId)!;
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', key, iv);
    c.setAAD(Buffer.from(`cairn-secret:${scope}`));
    const ct = Buffer.concat([c.update(plaintext, 'utf8'), c.final(), c.getAuthTag()]);
    return { $sealed: `v1.${this.currentId}.${b64(iv)}.${b64(ct)}`, digest: this.digest(plaintext, scope) };
  }

  digest(plaintext: string, scope: string): string {
    return createHmac('sha256', this.digestKey).update(`${scope}\0${plaintext}`).digest('hex').slice(0, 32);
  }

  /** The key id a box was sealed with (null: not a box this version of Cairn writes). */
  static keyIdOfBox(box: SealedBox): string | null {
    const parts = box.$sealed.split('.');
    return parts.length === 4 && parts[0] === 'v1' ? parts[1]! : null;
  }

  /** Opens a box of `scope`. Throws SECRET_UNREADABLE when no key of the ring opens it. */
  open(box: SealedBox, scope: string): string {
    const [v, kid, ivText, ctText] = box.$sealed.split('.');
    const key = kid ? this.keys.get(kid) : undefined;
    if (v !== 'v1' || !key || !ivText || !ctText)
      throw unreadable(
        kid && !key
          ? `it was sealed with key ${kid}, which this process does not hold`
          : 'it is not a v1 sealed value',
      );
    try {
      const raw = Buffer.from(ctText, 'base64url');
      const d = createDecipheriv('aes-256-gcm', key, Buffer.from(ivText, 'base64url'), { authTagLength: 16 });
      d.setAAD(Buffer.from(`cairn-secret:${scope}`));
      d.setAuthTag(raw.subarray(raw.length - 16));
      return Buffer.concat([d.update(raw.subarray(0, raw.length - 16)), d.final()]).toString('utf8');
    } catch {
      throw unreadable('its authentication failed (another circle, or a damaged value)');
    }
  }

  /** A box under the current key holding the same value (the digest is kept: definitions do not change). */
  reseal(box: SealedBox, scope: string): SealedBox {
    if (Keyring.keyIdOfBox(box) === this.currentId) return box;
    const fresh = this.seal(this.open(box, scope), scope);
    return { $sealed: fresh.$sealed, digest: box.digest };
  }
}

function unreadable(why: string): CairnError {
  return new CairnError({
    code: 'SECRET_UNREADABLE',
    class: 'internal',
    message: `A secret could not be opened: ${why}.`,
    suggestion:
      'Start every process with the same CAIRN_SECRETS_KEY (and the old key in CAIRN_SECRETS_KEY_PREVIOUS during a rotation).',
  });
}

let ring: Keyring | undefined;

/** The process's keyring (set once at start by the runtime; tests set their own). */
export function setKeyring(k: Keyring): void {
  ring = k;
}

export function keyring(): Keyring {
  if (!ring) {
    // A process that never configured one (a unit test, a tool): an ephemeral key, so nothing
    // sealed by it outlives it — the runtime always sets the configured key first.
    ring = new Keyring(Keyring.generateKey());
  }
  return ring;
}

/** Replaces each exact occurrence of a secret value in every string of `v` (scrubbing captured output). */
export function scrubValues<T>(v: T, secrets: readonly { value: string; label: string }[]): T {
  const live = secrets.filter((s) => s.value.length > 0).sort((a, b) => b.value.length - a.value.length);
  if (live.length === 0) return v;
  const scrub = (s: string): string => {
    let out = s;
    for (const x of live) if (out.includes(x.value)) out = out.split(x.value).join(`[secret:${x.label}]`);
    return out;
  };
  const walk = (x: unknown): unknown => {
    if (typeof x === 'string') return scrub(x);
    if (Array.isArray(x)) return x.map(walk);
    if (typeof x === 'object' && x !== null)
      return Object.fromEntries(Object.entries(x).map(([k, y]) => [scrub(k), walk(y)]));
    return x;
  };
  return walk(v) as T;
}

/**
 * What a webhook delivery is checked against before anything of it is parsed: its signature,
 * over the raw bytes, with each secret valid now (several while a rotation overlaps), and the
 * delivery id that deduplicates it. Pure functions over bytes and headers (the hook route reads
 * the secrets and the clock), so every preset is tested alone.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import sjson from 'secure-json-parse';
import { Webhook } from 'standardwebhooks';
import { CairnError } from '../../core/errors.js';
import { sha256Hex } from '../../core/hash.js';
import { WEBHOOK_ERRORS } from './errors.js';

export type Signing = 'standard' | 'github' | 'none';

/** Standard Webhooks' tolerance: a timestamp further than this from now is refused (replays). */
export const TIMESTAMP_TOLERANCE_S = 5 * 60;

/** The largest body any webhook may take (its max_body_bytes is at most this). */
export const HOOK_MAX_BODY_BYTES = 10 * 1024 * 1024;

/** Headers that authenticate a request: never recorded, never mapped (shown as "[redacted]"). */
const REDACTED = new Set([
  'authorization',
  'proxy-authorization',
  'cookie',
  'set-cookie',
  'webhook-signature',
  'x-hub-signature',
  'x-hub-signature-256',
]);

export type Headers = Record<string, string | string[] | undefined>;

/** A typed error of the webhook type: class, retryable and suggestion from its declaration. */
export function hookError(code: string, message: string, details?: unknown): CairnError {
  const d = WEBHOOK_ERRORS.find((e) => e.code === code);
  if (!d) throw new Error(`undeclared webhook error ${code}`);
  return new CairnError({
    code,
    class: d.class,
    status: d.status,
    retryable: d.retryable,
    message,
    suggestion: d.suggestion,
    details,
  });
}

/** A new secret in the Standard Webhooks format: `whsec_` and 32 random bytes in base64. */
export function newWebhookSecret(): string {
  return `whsec_${randomBytes(32).toString('base64')}`;
}

/** A request header's value, trimmed; undefined when absent or blank. */
export function header(h: Headers, name: string): string | undefined {
  const v = h[name];
  const s = Array.isArray(v) ? v[0] : v;
  return s === undefined || s.trim() === '' ? undefined : s.trim();
}

/** The headers as a run records them and a mapping reads them: lower-cased, credentials redacted. */
export function redactHeaders(h: Headers): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(h)) {
    if (v === undefined) continue;
    const name = k.toLowerCase();
    out[name] = REDACTED.has(name) ? '[redacted]' : Array.isArray(v) ? v.join(', ') : v;
  }
  return out;
}

const MAX_DELIVERY_ID = 200;

function deliveryIdOf(id: string, header: string): string {
  if (id.length > MAX_DELIVERY_ID)
    throw hookError('WEBHOOK_SIGNATURE_INVALID', `${header} is longer than ${MAX_DELIVERY_ID} characters.`, {
      header,
    });
  return id;
}

function missing(signing: Signing, names: string[]): CairnError {
  return hookError(
    'WEBHOOK_SIGNATURE_MISSING',
    `This webhook verifies ${signing === 'github' ? 'GitHub' : 'Standard Webhooks'} signatures; the request lacks ${names.join(', ')}.`,
    { signing, missing: names },
  );
}

function invalid(signing: Signing, why: string): CairnError {
  return hookError('WEBHOOK_SIGNATURE_INVALID', `The signature does not verify: ${why}.`, { signing });
}

/** Standard Webhooks: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, one or several, space-separated. */
function verifyStandard(raw: Buffer, h: Headers, secrets: string[], nowMs: number): string {
  const id = header(h, 'webhook-id');
  const ts = header(h, 'webhook-timestamp');
  const sig = header(h, 'webhook-signature');
  const absent = [
    ['webhook-id', id],
    ['webhook-timestamp', ts],
    ['webhook-signature', sig],
  ]
    .filter(([, v]) => v === undefined)
    .map(([n]) => n!);
  if (absent.length > 0) throw missing('standard', absent);
  if (!/^\d{1,12}$/.test(ts!)) throw invalid('standard', 'webhook-timestamp is not a Unix time in seconds');
  const skew = Math.round(nowMs / 1000) - Number(ts);
  if (Math.abs(skew) > TIMESTAMP_TOLERANCE_S)
    throw hookError(
      'WEBHOOK_TIMESTAMP_STALE',
      `webhook-timestamp is ${Math.abs(skew)} s ${skew > 0 ? 'in the past' : 'in the future'}; at most ${TIMESTAMP_TOLERANCE_S} s either way is accepted.`,
      { timestamp: Number(ts), now: Math.round(nowMs / 1000), tolerance_s: TIMESTAMP_TOLERANCE_S },
    );
  const headers = { 'webhook-id': id!, 'webhook-timestamp': ts!, 'webhook-signature': sig! };
  for (const secret of secrets) {
    try {
      new Webhook(secret).verify(raw, headers, { jsonParse: false });
      return deliveryIdOf(id!, 'webhook-id');
    } catch {
      // the next secret (a rotation's overlap)
    }
  }
  throw invalid('standard', 'no v1 signature in webhook-signature matches a secret of this webhook');
}

/** GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`; the delivery is X-GitHub-Delivery. */
function verifyGithub(raw: Buffer, h: Headers, secrets: string[]): string {
  const sig = header(h, 'x-hub-signature-256');
  const id = header(h, 'x-github-delivery');
  const absent = [
    ['X-Hub-Signature-256', sig],
    ['X-GitHub-Delivery', id],
  ]
    .filter(([, v]) => v === undefined)
    .map(([n]) => n!);
  if (absent.length > 0) throw missing('github', absent);
  const m = /^sha256=([0-9a-f]{64})$/i.exec(sig!);
  if (!m) throw invalid('github', 'X-Hub-Signature-256 is not sha256=<64 hex digits>');
  const given = Buffer.from(m[1]!, 'hex');
  for (const secret of secrets) {
    const expected = createHmac('sha256', secret).update(raw).digest();
    if (timingSafeEqual(expected, given)) return deliveryIdOf(id!, 'X-GitHub-Delivery');
  }
  throw invalid('github', 'X-Hub-Signature-256 matches no secret of this webhook');
}

/** The id of an unsigned delivery without a webhook-id: its body's hash (the same body is the same delivery). */
export function bodyDeliveryId(bodySha256: string): string {
  return `sha256:${bodySha256}`;
}

/**
 * Verifies a delivery and answers its id (what deduplicates it). `none` verifies nothing: the
 * id is `webhook-id` when sent, else the body's sha256 — so the same body sent again is the
 * same delivery (one run), and a different body is a new one.
 */
export function verifyDelivery(
  signing: Signing,
  raw: Buffer,
  h: Headers,
  secrets: string[],
  nowMs = Date.now(),
  /** The body's sha256, when the caller has it already. */
  bodySha256?: string,
): string {
  switch (signing) {
    case 'standard':
      return verifyStandard(raw, h, secrets, nowMs);
    case 'github':
      return verifyGithub(raw, h, secrets);
    case 'none': {
      const id = header(h, 'webhook-id');
      return id === undefined ? bodyDeliveryId(bodySha256 ?? sha256Hex(raw)) : deliveryIdOf(id, 'webhook-id');
    }
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * The body as JSON, whatever its Content-Type says (senders label JSON loosely): an empty body
 * is `{}`; anything else must be UTF-8 JSON (prototype keys refused, like every body Cairn parses).
 */
export function parseHookBody(raw: Buffer): unknown {
  let text: string;
  try {
    text = utf8.decode(raw);
  } catch {
    throw hookError('WEBHOOK_BODY_NOT_JSON', 'The body is not UTF-8 text, so it is not JSON.');
  }
  if (text.trim() === '') return {};
  try {
    return sjson.parse(text, undefined, { protoAction: 'error', constructorAction: 'error' });
  } catch (e) {
    throw hookError(
      'WEBHOOK_BODY_NOT_JSON',
      `The body is not valid JSON: ${e instanceof Error ? e.message : String(e)}`,
    );
  }
}

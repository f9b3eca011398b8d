import { randomBytes, createHash } from 'node:crypto';
import { v7 as uuidv7, validate as uuidValidate } from 'uuid';

/** Time-ordered ids (UUIDv7) keep indexes append-mostly and sort runs by creation. */
export function newId(): string {
  return uuidv7();
}

export function isUuid(s: string): boolean {
  return uuidValidate(s);
}

/** API tokens: high-entropy, prefixed so leaked ones are easy to grep for. Only the hash is stored. */
export function newToken(): string {
  return 'cairn_' + randomBytes(32).toString('base64url');
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

export function randomSecret(bytes = 24): string {
  return randomBytes(bytes).toString('base64url');
}

import { createHash } from 'node:crypto';
import canonicalize from 'canonicalize';
import { hashableSpec } from './sealed.js';

/** RFC 8785 canonical JSON, so other tools can recompute our hashes byte for byte. */
export function canonicalJson(value: unknown): string {
  const s = (canonicalize as unknown as (v: unknown) => string | undefined)(value);
  if (s === undefined) throw new Error('value cannot be canonicalized');
  return s;
}

export function sha256Hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** SPEC R-ELEMENT: sha256 of the canonical JSON of {element_type, spec} (a sealed value by its digest). */
export function definitionHash(elementType: string, spec: unknown): string {
  return sha256Hex(canonicalJson({ element_type: elementType, spec: hashableSpec(spec) }));
}

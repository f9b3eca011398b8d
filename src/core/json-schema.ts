/**
 * JSON Schema 2020-12 validation (ajv), for what users declare as JSON Schema:
 * a workflow's trigger parameters, and the OpenLineage events Cairn exports.
 * Compiled validators are cached by the schema's canonical JSON.
 */
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import addFormatsModule from 'ajv-formats';
import { canonicalJson, sha256Hex } from './hash.js';

type AddFormats = (ajv: Ajv2020) => Ajv2020;
const addFormats = ((addFormatsModule as unknown as { default?: AddFormats }).default ??
  addFormatsModule) as unknown as AddFormats;

/** A fresh ajv with formats (strict off: user schemas may carry annotations ajv does not know). */
export function newAjv(): Ajv2020 {
  return addFormats(new Ajv2020({ allErrors: true, strict: false, validateFormats: true }));
}

const ajv = newAjv();
const cache = new Map<string, ValidateFunction>();

/** The schema's validator; throws (with ajv's message) when the schema itself is not valid. */
export function validatorOf(schema: unknown): ValidateFunction {
  const key = sha256Hex(canonicalJson(schema));
  let v = cache.get(key);
  if (!v) {
    v = ajv.compile(schema as object);
    if (cache.size >= 500) cache.delete(cache.keys().next().value!);
    cache.set(key, v);
  }
  return v;
}

/** ajv's errors as `{path, message}` (the shape of every INVALID_INPUT's details). */
export function schemaIssues(errs: ErrorObject[] | null | undefined): { path: string; message: string }[] {
  return (errs ?? []).map((e) => ({
    path: e.instancePath === '' ? '(root)' : e.instancePath.slice(1).replace(/\//g, '.'),
    message: `${e.message ?? 'is not valid'}${e.params && 'additionalProperty' in e.params ? `: ${String(e.params.additionalProperty)}` : ''}`,
  }));
}

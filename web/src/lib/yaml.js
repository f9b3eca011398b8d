/**
 * JSON → YAML for reading (element specs, inputs, outputs): block style, keys in their order,
 * strings quoted only when plain YAML would read them as something else, multi-line strings as
 * literal blocks. Not a general YAML library: it only ever prints JSON values.
 */

const PLAIN = /^[A-Za-z_./][A-Za-z0-9_ ./()+-]*$/;
const RESERVED = /^(true|false|yes|no|on|off|null|~)$/i;
const NUMERIC = /^[-+]?(\.?\d|\d[\d_]*(\.\d*)?([eE][-+]?\d+)?|0x[0-9a-fA-F]+|0o[0-7]+|\.inf|\.nan)$/i;

function scalarString(s) {
  if (s === '') return "''";
  if (
    PLAIN.test(s) &&
    !RESERVED.test(s) &&
    !NUMERIC.test(s) &&
    !/\s$/.test(s) &&
    !s.includes(' #') &&
    !s.includes(': ')
  )
    return s;
  return JSON.stringify(s);
}

function key(k) {
  return PLAIN.test(k) && !RESERVED.test(k) && !NUMERIC.test(k) && !k.includes(': ') ? k : JSON.stringify(k);
}

function isScalar(v) {
  return (
    v === null || typeof v !== 'object' || (Array.isArray(v) ? v.length === 0 : Object.keys(v).length === 0)
  );
}

function scalar(v, indent) {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'number') return Number.isFinite(v) ? String(v) : '.nan';
  if (typeof v === 'boolean') return String(v);
  if (typeof v === 'string') {
    if (v.includes('\n')) {
      const pad = ' '.repeat(indent + 2);
      const chomp = v.endsWith('\n') ? '' : '-';
      const body = (v.endsWith('\n') ? v.slice(0, -1) : v).split('\n').map((l) => (l ? pad + l : ''));
      return `|${chomp}\n${body.join('\n')}`;
    }
    return scalarString(v);
  }
  if (Array.isArray(v)) return '[]';
  return '{}';
}

function lines(v, indent) {
  const pad = ' '.repeat(indent);
  const out = [];
  if (Array.isArray(v)) {
    for (const x of v) {
      if (isScalar(x)) out.push(`${pad}- ${scalar(x, indent)}`);
      else {
        const inner = lines(x, indent + 2);
        out.push(`${pad}- ${inner[0].trimStart()}`, ...inner.slice(1));
      }
    }
    return out;
  }
  for (const [k, x] of Object.entries(v)) {
    if (isScalar(x)) out.push(`${pad}${key(k)}: ${scalar(x, indent)}`);
    else out.push(`${pad}${key(k)}:`, ...lines(x, indent + 2));
  }
  return out;
}

/** @param {unknown} value */
export function toYaml(value) {
  if (isScalar(value)) return scalar(value, 0) + '\n';
  return lines(value, 0).join('\n') + '\n';
}

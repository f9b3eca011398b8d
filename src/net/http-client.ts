/**
 * The SSRF-guarded outbound HTTP client (R-HTTP): every request the platform makes on a user's
 * behalf (the `http` element, LLM providers) goes through here.
 *
 * The guard, per hop (the first request and every redirect alike):
 *   1. the URL: http: or https: only, no credentials;
 *   2. the host: an address literal is checked as is; a name is resolved ONCE and every address it
 *      resolves to is checked (one refused address refuses the name: a rebinding attacker controls
 *      which one a second lookup would return);
 *   3. the connection is made to the checked IP itself (Host header and TLS SNI carry the name), so
 *      no later resolution can swap the destination.
 * Loopback, private, link-local, metadata and other non-public addresses are refused unless an IP or
 * CIDR entry of `allow` covers them; a host-name entry alone never unlocks one.
 */
import { promises as dnsPromises } from 'node:dns';
import { request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect as netConnect, isIPv4, isIPv6, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { connect as tlsConnect, rootCertificates } from 'node:tls';
import { domainToASCII } from 'node:url';
import { CairnError, thrown } from '../core/errors.js';
import { setting } from '../config.js';
import type {
  BufferedResponse,
  OpenResponse,
  OutboundRequest,
  OutboundTimings,
  Resolver,
} from './transport.js';

export const DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024;
export const DEFAULT_MAX_REDIRECTS = 5;

// ---------------------------------------------------------------------------------------------
// Addresses

interface Ip {
  family: 4 | 6;
  bytes: Uint8Array;
  /** As given (zone stripped), for messages. */
  text: string;
}

function v4Bytes(s: string): Uint8Array {
  return Uint8Array.from(s.split('.').map(Number));
}

function v6Bytes(s: string): Uint8Array | undefined {
  let text = s;
  let tail: Uint8Array | undefined;
  // A trailing dotted IPv4 part stands for the last two groups.
  const m = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (m) {
    text = `${m[1]!}0:0`;
    tail = v4Bytes(m[2]!);
  }
  const split = (h: string) => (h === '' ? [] : h.split(':'));
  const halves = text.split('::');
  let groups: string[];
  if (halves.length === 2) {
    const head = split(halves[0]!);
    const rest = split(halves[1]!);
    const fill = 8 - head.length - rest.length;
    if (fill < 1) return undefined;
    groups = [...head, ...Array<string>(fill).fill('0'), ...rest];
  } else groups = split(text);
  if (groups.length !== 8) return undefined;
  const b = new Uint8Array(16);
  groups.forEach((g, i) => {
    const n = parseInt(g, 16);
    b[i * 2] = n >> 8;
    b[i * 2 + 1] = n & 0xff;
  });
  if (tail) b.set(tail, 12);
  return b;
}

/** An IP address (optionally [bracketed], with a %zone) in its standard spelling; undefined if not one. */
function parseIp(raw: string): Ip | undefined {
  let s = raw;
  if (s.startsWith('[') && s.endsWith(']')) s = s.slice(1, -1);
  const zone = s.indexOf('%');
  if (zone >= 0) s = s.slice(0, zone);
  if (isIPv4(s)) return { family: 4, bytes: v4Bytes(s), text: s };
  if (!isIPv6(s)) return undefined;
  const bytes = v6Bytes(s);
  return bytes && { family: 6, bytes, text: s };
}

/** Any spelling WHATWG URL accepts for an IPv4 host (2130706433, 0177.0.0.1, 0x7f.1, 127.1) as an Ip. */
function parseIpLoose(raw: string): Ip | undefined {
  const ip = parseIp(raw.trim());
  if (ip || /[/?#@\s]/.test(raw)) return ip;
  try {
    const host = new URL(`http://${raw.trim()}/`).hostname;
    return parseIp(host);
  } catch {
    return undefined;
  }
}

function inPrefix(addr: Uint8Array, net: Uint8Array, prefix: number): boolean {
  const full = prefix >> 3;
  for (let i = 0; i < full; i++) if (addr[i] !== net[i]) return false;
  const rest = prefix & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (addr[full]! & mask) === (net[full]! & mask);
}

type Range = [net: Uint8Array, prefix: number, cls: string];
const range = (net: string, prefix: number, cls: string): Range => [parseIp(net)!.bytes, prefix, cls];

/** IPv4 ranges refused without an IP/CIDR allow entry; exact metadata addresses first. */
const V4_REFUSED: Range[] = [
  range('169.254.169.254', 32, 'cloud metadata'), // AWS, GCP, Azure, OCI, DigitalOcean…
  range('169.254.170.2', 32, 'cloud metadata'), // AWS ECS task metadata
  range('100.100.100.200', 32, 'cloud metadata'), // Alibaba Cloud
  range('0.0.0.0', 8, 'unspecified'),
  range('10.0.0.0', 8, 'private'),
  range('100.64.0.0', 10, 'carrier-grade NAT'),
  range('127.0.0.0', 8, 'loopback'),
  range('169.254.0.0', 16, 'link-local'),
  range('172.16.0.0', 12, 'private'),
  range('192.0.0.0', 24, 'IETF protocol assignment'),
  range('192.0.2.0', 24, 'documentation'),
  range('192.88.99.0', 24, '6to4 relay anycast'),
  range('192.168.0.0', 16, 'private'),
  range('198.18.0.0', 15, 'benchmarking'),
  range('198.51.100.0', 24, 'documentation'),
  range('203.0.113.0', 24, 'documentation'),
  range('224.0.0.0', 4, 'multicast'),
  range('255.255.255.255', 32, 'broadcast'),
  range('240.0.0.0', 4, 'reserved'),
];

/** IPv6 ranges refused outright (the ones embedding an IPv4 address are handled in classifyV6). */
const V6_REFUSED: Range[] = [
  range('fd00:ec2::254', 128, 'cloud metadata'), // AWS IMDS over IPv6
  range('::', 128, 'unspecified'),
  range('::1', 128, 'loopback'),
  range('64:ff9b:1::', 48, 'private (local-use NAT64)'),
  range('fc00::', 7, 'private (unique local)'),
  range('fe80::', 10, 'link-local'),
  range('fec0::', 10, 'private (site-local)'),
  range('ff00::', 8, 'multicast'),
  range('100::', 64, 'reserved (discard-only)'),
  range('2001:db8::', 32, 'documentation'),
  range('3fff::', 20, 'documentation'),
  range('2001::', 32, 'reserved (Teredo)'),
  range('2001:2::', 48, 'benchmarking'),
  range('2001::', 23, 'IETF protocol assignment'),
];

function classifyV4(b: Uint8Array): string | undefined {
  for (const [net, prefix, cls] of V4_REFUSED) if (inPrefix(b, net, prefix)) return cls;
  return undefined;
}

const zero = (b: Uint8Array, from: number, to: number) => b.subarray(from, to).every((x) => x === 0);
const embedded = (b: Uint8Array, at: number) => b.subarray(at, at + 4);
const dotted = (b: Uint8Array) => Array.from(b).join('.');

/** The IPv4 address an IPv6 address is only another spelling of (::ffff:a.b.c.d, ::ffff:0:a.b.c.d). */
function mappedV4(b: Uint8Array): Uint8Array | undefined {
  if (zero(b, 0, 10) && b[10] === 0xff && b[11] === 0xff) return embedded(b, 12);
  if (zero(b, 0, 8) && b[8] === 0xff && b[9] === 0xff && zero(b, 10, 12)) return embedded(b, 12);
  return undefined;
}

function classifyV6(b: Uint8Array): string | undefined {
  for (const [net, prefix, cls] of V6_REFUSED.slice(0, 3)) if (inPrefix(b, net, prefix)) return cls;
  const mapped = mappedV4(b);
  if (mapped) {
    const c = classifyV4(mapped);
    return c && `${c} (IPv4-mapped ${dotted(mapped)})`;
  }
  if (zero(b, 0, 12)) {
    // IPv4-compatible (::a.b.c.d): deprecated since 2006, no legitimate destination uses it.
    const v4 = embedded(b, 12);
    return `${classifyV4(v4) ?? 'reserved'} (IPv4-compatible ${dotted(v4)})`;
  }
  if (inPrefix(b, NAT64, 96)) {
    const v4 = embedded(b, 12);
    const c = classifyV4(v4);
    return c && `${c} (NAT64 ${dotted(v4)})`;
  }
  if (b[0] === 0x20 && b[1] === 0x02) {
    const v4 = embedded(b, 2);
    const c = classifyV4(v4);
    return c && `${c} (6to4 ${dotted(v4)})`;
  }
  for (const [net, prefix, cls] of V6_REFUSED.slice(3)) if (inPrefix(b, net, prefix)) return cls;
  // Outside global unicast 2000::/3 everything is reserved or unallocated.
  if ((b[0]! & 0xe0) !== 0x20) return 'reserved';
  return undefined;
}
const NAT64 = parseIp('64:ff9b::')!.bytes;

/** The class of a non-public address ("loopback", "private", "cloud metadata"…), undefined if public. */
function classify(ip: Ip): string | undefined {
  return ip.family === 4 ? classifyV4(ip.bytes) : classifyV6(ip.bytes);
}

// ---------------------------------------------------------------------------------------------
// Allow lists

interface Net {
  family: 4 | 6;
  bytes: Uint8Array;
  prefix: number;
}

export interface AllowList {
  readonly entries: readonly string[];
  /** Exact host names (lower-case, ASCII, no trailing dot). */
  readonly names: ReadonlySet<string>;
  /** `*.example.com` as ".example.com": any name below it, not the name itself. */
  readonly suffixes: readonly string[];
  readonly nets: readonly Net[];
}

const LABEL = /^(?!-)[a-z0-9_-]{1,63}(?<!-)$/;

function parseEntry(raw: string): { net: Net } | { name: string } | { suffix: string } | { bad: string } {
  const e = raw.trim().toLowerCase();
  if (e === '') return { bad: 'it is empty' };
  if (e.includes('://'))
    return {
      bad: 'it is a URL; an entry is a host name, an IP address or a CIDR (api.example.com, 10.0.0.5)',
    };
  if (e.includes('/')) {
    const [addr = '', prefix = '', ...more] = e.split('/');
    const ip = parseIp(addr);
    if (!ip || more.length > 0) return { bad: `"${addr}" is not an IP address (a CIDR is address/prefix)` };
    const max = ip.family === 4 ? 32 : 128;
    if (!/^\d{1,3}$/.test(prefix) || Number(prefix) > max)
      return { bad: `the prefix length must be a whole number from 0 to ${max}` };
    const p = Number(prefix);
    // Host bits set (10.0.0.1/8) are cleared: the entry means the network.
    const bytes = ip.bytes.map((v, i) =>
      i * 8 >= p ? 0 : i * 8 + 8 <= p ? v : v & (0xff << (8 - (p - i * 8))),
    );
    return { net: { family: ip.family, bytes, prefix: p } };
  }
  const ip = parseIp(e);
  if (ip) return { net: { family: ip.family, bytes: ip.bytes, prefix: ip.family === 4 ? 32 : 128 } };
  if (e.includes(':'))
    return /^[^:]+:\d+$/.test(e)
      ? { bad: 'an entry has no port: write the host name alone' }
      : { bad: 'it is not a valid IPv6 address' };
  const wildcard = e.startsWith('*.');
  const body = wildcard ? e.slice(2) : e;
  if (body.includes('*')) return { bad: 'a wildcard may only be the whole first label, as in *.example.com' };
  const ascii = domainToASCII(body).replace(/\.$/, '');
  const labels = ascii.split('.');
  if (ascii === '' || ascii.length > 253 || !labels.every((l) => LABEL.test(l)))
    return { bad: 'it is not a valid host name' };
  // WHATWG URL reads a name ending in a number as an IPv4 address (127.1 is 127.0.0.1).
  if (/^(0x[0-9a-f]*|\d+)$/.test(labels[labels.length - 1]!) || parseIp(ascii))
    return { bad: 'it reads as an IPv4 address; write the address in dotted form (a.b.c.d)' };
  return wildcard ? { suffix: `.${ascii}` } : { name: ascii };
}

/** Parses and validates allow entries; any bad entry throws INVALID_ALLOW_ENTRY naming each one. */
export function parseAllowList(entries: readonly string[]): AllowList {
  const names = new Set<string>();
  const suffixes: string[] = [];
  const nets: Net[] = [];
  const bad: { index: number; entry: string; reason: string }[] = [];
  entries.forEach((entry, index) => {
    const r = typeof entry === 'string' ? parseEntry(entry) : { bad: 'it is not a string' };
    if ('bad' in r) bad.push({ index, entry: String(entry), reason: r.bad });
    else if ('net' in r) nets.push(r.net);
    else if ('name' in r) names.add(r.name);
    else suffixes.push(r.suffix);
  });
  if (bad.length > 0)
    throw new CairnError({
      code: 'INVALID_ALLOW_ENTRY',
      class: 'validation',
      message: `Invalid allow entr${bad.length === 1 ? 'y' : 'ies'}: ${bad.map((b) => `"${b.entry}" (${b.reason})`).join('; ')}.`,
      details: bad,
      suggestion:
        'Each allow entry is a host name (api.example.com), a wildcard (*.example.com), an IP address (10.0.0.5, ::1) or a CIDR (10.0.0.0/24, fd00::/8), without scheme, port or path.',
    });
  return { entries: [...entries], names, suffixes, nets };
}

const EMPTY_ALLOW: AllowList = { entries: [], names: new Set(), suffixes: [], nets: [] };

function toAllowList(allow: readonly string[] | AllowList | undefined): AllowList {
  if (allow === undefined) return EMPTY_ALLOW;
  if ('nets' in allow) return allow;
  return allow.length === 0 ? EMPTY_ALLOW : parseAllowList(allow);
}

let operator: { raw: string; list: AllowList } | undefined;

/**
 * The non-public networks the operator lets allow lists open (CAIRN_OUTBOUND_PRIVATE_NETS, CIDRs):
 * empty by default, so a circle cannot reach the host's loopback or private network by naming it.
 */
function operatorNets(): AllowList {
  const raw = setting('CAIRN_OUTBOUND_PRIVATE_NETS');
  if (operator?.raw !== raw)
    operator = {
      raw,
      list: parseAllowList(
        raw
          .split(',')
          .map((x) => x.trim())
          .filter(Boolean),
      ),
    };
  return operator.list;
}

function netCovers(allow: AllowList, ip: Ip): boolean {
  // An IPv4 entry also covers that address spelled as IPv4-mapped IPv6: it is the same destination.
  const v4 = ip.family === 6 ? mappedV4(ip.bytes) : undefined;
  return allow.nets.some(
    (n) =>
      (n.family === ip.family && inPrefix(ip.bytes, n.bytes, n.prefix)) ||
      (v4 !== undefined && n.family === 4 && inPrefix(v4, n.bytes, n.prefix)),
  );
}

function nameAllowed(allow: AllowList, name: string): boolean {
  return allow.names.has(name) || allow.suffixes.some((s) => name.endsWith(s));
}

/** Names that reach the host itself or the cloud metadata service whatever DNS says. */
function refusedName(name: string): string | undefined {
  if (name === 'localhost' || name.endsWith('.localhost')) return 'loopback';
  if (
    name === 'metadata' ||
    name === 'metadata.google.internal' ||
    name === 'metadata.goog' ||
    name === 'instance-data' ||
    name === 'instance-data.ec2.internal'
  )
    return 'cloud metadata';
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Verdicts

type Refusal = { code: 'NET_URL_REFUSED' | 'NET_ADDRESS_REFUSED' | 'NET_HOST_NOT_ALLOWED'; reason: string };
type Verdict = { ok: true } | ({ ok: false } & Refusal);
const OK: Verdict = { ok: true };

const refuse = (code: Refusal['code'], reason: string): Verdict => ({ ok: false, code, reason });

/**
 * One address of a destination: `name` the host name it was resolved from (undefined for a
 * literal), `nameClass` set when that name itself is refused (localhost, metadata names).
 */
function judgeAddress(ip: Ip, allow: AllowList, name?: string, nameClass?: string): Verdict {
  const cls = classify(ip);
  const what = name === undefined ? ip.text : `${name} resolves to ${ip.text}, which`;
  if (netCovers(allow, ip)) {
    if (!cls) return OK;
    // A tenant's allow list opens a non-public address only inside what the operator opened,
    // and the cloud metadata service never: its credentials are the host's, not a circle's.
    if (cls.startsWith('cloud metadata'))
      return refuse('NET_ADDRESS_REFUSED', `${what} is a ${cls} address, which no allow list opens`);
    if (netCovers(operatorNets(), ip)) return OK;
    return refuse(
      'NET_ADDRESS_REFUSED',
      `${what} is a ${cls} address: the allow list names it, but the operator has not opened it (CAIRN_OUTBOUND_PRIVATE_NETS)`,
    );
  }
  if (nameClass) return refuse('NET_ADDRESS_REFUSED', `${name!} is a ${nameClass} host name`);
  if (cls) return refuse('NET_ADDRESS_REFUSED', `${what} is a ${cls} address`);
  if (allow.entries.length === 0 || (name !== undefined && nameAllowed(allow, name))) return OK;
  return refuse(
    'NET_HOST_NOT_ALLOWED',
    name === undefined
      ? `${ip.text} is not in the allow list`
      : `${name} (${ip.text}) is not in the allow list`,
  );
}

/** A host name before resolution: refused outright, or to be resolved (nameClass: only nets may pass). */
function judgeName(name: string, allow: AllowList): Verdict | { resolve: true; nameClass?: string } {
  const nameClass = refusedName(name);
  if (nameClass) {
    // Only an IP/CIDR entry covering what it resolves to can let such a name through.
    if (allow.nets.length === 0) return refuse('NET_ADDRESS_REFUSED', `${name} is a ${nameClass} host name`);
    return { resolve: true, nameClass };
  }
  // Nothing could let it through: refuse without asking DNS about it.
  if (allow.entries.length > 0 && allow.nets.length === 0 && !nameAllowed(allow, name))
    return refuse('NET_HOST_NOT_ALLOWED', `${name} is not in the allow list`);
  return { resolve: true };
}

interface Target {
  url: URL;
  /** Host without brackets or trailing dot (lower-case, ASCII). */
  name: string;
  literal: Ip | undefined;
}

const redact = (raw: string) => raw.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/?#]*@/i, '$1…@');

function parseTarget(raw: string, base?: URL): Target | Refusal {
  let url: URL;
  try {
    url = new URL(raw, base);
  } catch {
    return {
      code: 'NET_URL_REFUSED',
      reason: `"${redact(raw).slice(0, 200)}" is not a valid absolute URL`,
    };
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    return {
      code: 'NET_URL_REFUSED',
      reason: `the scheme ${url.protocol} is not allowed (only http: and https:)`,
    };
  if (url.username !== '' || url.password !== '')
    return { code: 'NET_URL_REFUSED', reason: `the URL ${redact(url.href)} carries credentials` };
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  const literal = parseIp(host);
  return { url, name: literal ? host : host.replace(/\.$/, ''), literal };
}

function judgeTarget(t: Target, allow: AllowList): Verdict | { resolve: true; nameClass?: string } {
  return t.literal ? judgeAddress(t.literal, allow) : judgeName(t.name, allow);
}

/**
 * Whether `address` (an IP address in any spelling a URL accepts: 10.0.0.1, 0x7f.1, [::1]) may be
 * reached as a URL's host with this allow list. Pure: no DNS.
 */
export function checkAddress(
  address: string,
  allow: readonly string[] | AllowList = [],
): { ok: true } | { ok: false; reason: string; code: string } {
  const ip = parseIpLoose(address);
  if (!ip) return { ok: false, code: 'NET_ADDRESS_REFUSED', reason: `"${address}" is not an IP address` };
  return judgeAddress(ip, toAllowList(allow));
}

/**
 * Whether `url` passes what can be checked without DNS: scheme, credentials, an address literal's
 * class, refused names (localhost, metadata) and the allow list's host names. `ok` for a name still
 * means its resolved addresses are checked when the request is made.
 */
export function checkUrl(
  url: string,
  allow: readonly string[] | AllowList = [],
): { ok: true } | { ok: false; reason: string; code: string } {
  const t = parseTarget(url);
  if ('code' in t) return { ok: false, ...t };
  const v = judgeTarget(t, toAllowList(allow));
  return 'resolve' in v ? OK : v;
}

// ---------------------------------------------------------------------------------------------
// Errors

function refusalError(r: Refusal, url: string): CairnError {
  if (r.code === 'NET_URL_REFUSED')
    return new CairnError({
      code: r.code,
      class: 'validation',
      message: `Outbound request refused: ${r.reason}.`,
      details: { url: redact(url) },
      suggestion:
        'Use an absolute http:// or https:// URL without user:password@; send credentials in a header (Authorization) instead.',
    });
  if (r.code === 'NET_HOST_NOT_ALLOWED')
    return new CairnError({
      code: r.code,
      class: 'permission',
      message: `Outbound request to ${url} refused: ${r.reason}.`,
      details: { url },
      suggestion:
        'Add the host name (api.example.com or *.example.com), or its IP address or CIDR, to the allow list, or call a host that is in it.',
    });
  const metadata = r.reason.includes('cloud metadata');
  return new CairnError({
    code: r.code,
    class: 'permission',
    message: `Outbound request to ${url} refused: ${r.reason}; requests to loopback, private, link-local, metadata and other non-public addresses are blocked.`,
    details: { url },
    suggestion: metadata
      ? 'Cloud metadata endpoints hand out the instance’s credentials and are blocked. If a workflow truly must reach one, add its exact IP address (e.g. 169.254.169.254) to the allow list.'
      : 'If this internal destination is intended, add its IP address or CIDR to the allow list (e.g. "10.0.0.5" or "10.0.0.0/24"); a host-name entry alone does not unlock a non-public address.',
  });
}

function timeoutError(ms: number, url: string): CairnError {
  return new CairnError({
    code: 'NET_TIMEOUT',
    class: 'timeout',
    retryable: true,
    message: `Outbound request to ${url} did not complete within ${ms} ms.`,
    details: { url, timeout_ms: ms },
    suggestion: 'Raise the timeout if the service is slow, or check that it is up and reachable.',
  });
}

function abortedError(url: string): CairnError {
  return new CairnError({
    code: 'NET_ABORTED',
    class: 'unavailable',
    message: `Outbound request to ${url} was aborted.`,
    details: { url },
    suggestion:
      'The caller cancelled the request (the run was cancelled or its deadline passed); retry if still wanted.',
  });
}

function dnsError(name: string, url: string, cause?: unknown): CairnError {
  const code = cause === undefined ? undefined : thrown(cause).code;
  const transient = code === 'EAI_AGAIN' || code === 'ETIMEOUT' || code === 'ESERVFAIL';
  return new CairnError({
    code: 'NET_DNS_FAILED',
    class: 'unavailable',
    status: 502,
    retryable: transient,
    message: `Outbound request to ${url}: the host name ${name} did not resolve${code ? ` (${code})` : ''}.`,
    details: { url, host: name, dns_code: code },
    suggestion: transient
      ? 'The DNS server did not answer in time; retry shortly.'
      : 'Check the host name for typos and that it exists in DNS.',
    cause,
  });
}

const TLS_CODES = /^(ERR_TLS_|ERR_SSL_|CERT_|UNABLE_TO_|DEPTH_ZERO|SELF_SIGNED|ERR_OSSL)/;

function connectError(
  e: unknown,
  url: string,
  address: string,
  port: number,
  connected: boolean,
): CairnError {
  if (e instanceof CairnError) return e;
  const t = thrown(e);
  const code = t.code ?? '';
  const where = `${url} (${address}:${port})`;
  const base = { code: 'NET_CONNECT_FAILED', class: 'unavailable' as const, status: 502, cause: e };
  if (TLS_CODES.test(code))
    return new CairnError({
      ...base,
      message: `Outbound request to ${where}: the TLS handshake failed (${code}: ${t.message ?? ''}).`,
      details: { url, address, tls_code: code },
      suggestion:
        'The server’s certificate is not trusted for this host name: fix its certificate chain, or pass the CA that signed it.',
    });
  if (code.startsWith('HPE_'))
    return new CairnError({
      ...base,
      message: `Outbound request to ${where}: the server answered with invalid HTTP (${code}).`,
      details: { url, address },
      suggestion: 'Check that the URL points at an HTTP server (and https:// at a TLS one).',
    });
  return new CairnError({
    ...base,
    retryable: true,
    message: connected
      ? `Outbound request to ${where}: the connection was closed before a complete response (${code || t.message}).`
      : `Outbound request to ${where}: could not connect (${code || t.message}).`,
    details: { url, address, socket_code: code || undefined },
    suggestion: 'Check that the service is up and listening on that port; retry later if it is restarting.',
  });
}

function tooLargeError(url: string, max: number): CairnError {
  return new CairnError({
    code: 'NET_RESPONSE_TOO_LARGE',
    class: 'validation',
    status: 502,
    message: `The response from ${url} is larger than ${max} bytes.`,
    details: { url, max_response_bytes: max },
    suggestion: 'Raise maxResponseBytes, or ask the service for less (pagination, filters, a range).',
  });
}

function invalidRequest(message: string, suggestion: string): CairnError {
  return new CairnError({ code: 'NET_INVALID_REQUEST', class: 'validation', message, suggestion });
}

// ---------------------------------------------------------------------------------------------
// Requests

const defaultResolver: Resolver = async (host) =>
  (await dnsPromises.lookup(host, { all: true })).map((a) => ({
    address: a.address,
    family: a.family === 6 ? 6 : 4,
  }));

const noop = () => {};
const portOf = (url: URL) => (url.port ? Number(url.port) : url.protocol === 'https:' ? 443 : 80);

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
/** What a redirect to another origin keeps of the request's headers: nothing that may carry a credential. */
const KEPT_ACROSS_ORIGINS = new Set(['accept', 'accept-language', 'content-type', 'user-agent']);
const TOKEN = /^[!#$%&'*+.^_`|~0-9a-z-]+$/i;

/** A hop's result once response headers are in. */
interface Hop {
  req: ClientRequest;
  res: IncomingMessage;
  address: string;
}

/** One exchange's state: the deadline, the caller's signal and the current hop. */
class Exchange {
  readonly started = performance.now();
  readonly ctl = new AbortController();
  readonly timings: OutboundTimings = { dns_ms: 0, connect_ms: 0, tls_ms: null, ttfb_ms: 0, total_ms: 0 };
  current: Hop | undefined;
  private ended = false;
  private readonly timer: NodeJS.Timeout;
  private readonly onAbort: () => void;

  constructor(readonly req: OutboundRequest) {
    this.onAbort = () => this.abort(abortedError(req.url));
    req.signal?.addEventListener('abort', this.onAbort, { once: true });
    // setTimeout's limit is 2^31-1 ms; a longer budget is as good as none.
    this.timer = setTimeout(
      () => this.abort(timeoutError(req.timeoutMs, req.url)),
      Math.min(req.timeoutMs, 2 ** 31 - 1),
    );
  }

  abort(reason: CairnError): void {
    if (this.ctl.signal.aborted) return;
    this.ctl.abort(reason);
    this.current?.res.destroy(reason);
    this.current?.req.destroy(reason);
  }

  get signal(): AbortSignal {
    return this.ctl.signal;
  }

  /** Rejects with the abort reason as soon as the exchange is aborted. */
  race<T>(p: Promise<T>): Promise<T> {
    const s = this.ctl.signal;
    if (s.aborted) return Promise.reject(s.reason as Error);
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => reject(s.reason as Error);
      s.addEventListener('abort', onAbort, { once: true });
      p.then(
        (v) => {
          s.removeEventListener('abort', onAbort);
          resolve(v);
        },
        (e: unknown) => {
          s.removeEventListener('abort', onAbort);
          reject(e as Error);
        },
      );
    });
  }

  /** Frees the timer, the caller's signal listener and the socket. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.timer);
    this.req.signal?.removeEventListener('abort', this.onAbort);
    this.timings.total_ms = performance.now() - this.started;
    this.current?.res.destroy();
    this.current?.req.destroy();
  }
}

function validate(req: OutboundRequest): void {
  if (typeof req.method !== 'string' || !TOKEN.test(req.method))
    throw invalidRequest(
      `"${String(req.method)}" is not an HTTP method.`,
      'Use GET, POST, PUT, PATCH, DELETE or HEAD.',
    );
  if (typeof req.timeoutMs !== 'number' || !(req.timeoutMs > 0))
    throw invalidRequest(
      `timeoutMs must be a positive number of milliseconds.`,
      'Set timeoutMs, e.g. 30000.',
    );
  if (req.body !== undefined && typeof req.body !== 'string' && !Buffer.isBuffer(req.body))
    throw invalidRequest(
      'The request body must be a string or a Buffer.',
      'Serialise the body (JSON.stringify) first.',
    );
  for (const [k, v] of Object.entries(req.headers ?? {}))
    if (!TOKEN.test(k) || typeof v !== 'string' || /[\r\n\0]/.test(v))
      throw invalidRequest(
        `The request header "${k}" is not a valid header name and value.`,
        'Header names are HTTP tokens and values are strings without CR, LF or NUL.',
      );
}

/** Connects to `address` (already checked), sends the request and waits for the response head. */
function send(
  ex: Exchange,
  target: Target,
  address: string,
  method: string,
  headers: Record<string, string>,
  body: Buffer | string | undefined,
): Promise<Hop> {
  if (ex.signal.aborted) return Promise.reject(ex.signal.reason as Error);
  const { url } = target;
  const tls = url.protocol === 'https:';
  const port = portOf(url);
  const begun = performance.now();
  let connected: number | undefined;
  let secured: number | undefined;
  let sent: number | undefined;
  return new Promise<Hop>((resolve, reject) => {
    // Our own socket to the checked IP: there is no agent and no host name to look up again.
    const createConnection = (): Socket => {
      const sock = tls
        ? tlsConnect({
            host: address,
            port,
            // SNI and certificate checks are for the name; never an IP as SNI.
            servername: target.literal ? undefined : target.name,
            ca: ex.req.ca === undefined ? undefined : [...rootCertificates, ex.req.ca.toString()],
            ALPNProtocols: ['http/1.1'],
          }).setNoDelay(true)
        : netConnect({ host: address, port, noDelay: true });
      sock.once('connect', () => (connected = performance.now()));
      if (tls) sock.once('secureConnect', () => (secured = performance.now()));
      return sock;
    };
    let creq: ClientRequest;
    try {
      creq = (tls ? httpsRequest : httpRequest)({
        method,
        host: address,
        port,
        path: url.pathname + url.search,
        headers: { ...headers, host: url.host },
        createConnection,
      });
    } catch (e) {
      reject(connectError(e, url.href, address, port, false));
      return;
    }
    creq.once('finish', () => (sent = performance.now()));
    creq.once('response', (res) => {
      const now = performance.now();
      // Errors reach the reader through iteration; without a listener an unread body's error would crash.
      res.on('error', noop);
      const t = ex.timings;
      t.connect_ms += (connected ?? now) - begun;
      if (tls) t.tls_ms = (t.tls_ms ?? 0) + ((secured ?? now) - (connected ?? now));
      t.ttfb_ms += now - (sent ?? secured ?? connected ?? begun);
      ex.current = { req: creq, res, address };
      resolve(ex.current);
    });
    creq.on('error', (e) => reject(connectError(e, url.href, address, port, connected !== undefined)));
    // The exchange's abort destroys whatever hop is current; this one is not yet.
    const onAbort = () => creq.destroy(ex.signal.reason as Error);
    ex.signal.addEventListener('abort', onAbort, { once: true });
    creq.once('close', () => ex.signal.removeEventListener('abort', onAbort));
    creq.end(body);
  });
}

/** Checks one hop's destination (resolving a name once), then sends to the first checked address that connects. */
async function hop(
  ex: Exchange,
  target: Target,
  allow: AllowList,
  method: string,
  headers: Record<string, string>,
  body: Buffer | string | undefined,
): Promise<Hop> {
  const href = target.url.href;
  const verdict = judgeTarget(target, allow);
  if ('ok' in verdict) {
    if (!verdict.ok) throw refusalError(verdict, href);
    return send(ex, target, target.literal!.text, method, headers, body);
  }
  const resolver = ex.req.resolver ?? defaultResolver;
  const t = performance.now();
  let answers: { address: string }[];
  try {
    answers = await ex.race(resolver(target.url.hostname));
  } catch (e) {
    if (e instanceof CairnError) throw e;
    throw dnsError(target.name, href, e);
  } finally {
    ex.timings.dns_ms += performance.now() - t;
  }
  if (!Array.isArray(answers) || answers.length === 0) throw dnsError(target.name, href);
  const addresses: string[] = [];
  for (const a of answers) {
    const ip = parseIp(String(a?.address));
    if (!ip) throw dnsError(target.name, href, new Error(`resolver answered "${String(a?.address)}"`));
    const v = judgeAddress(ip, allow, target.name, verdict.nameClass);
    if (!v.ok) throw refusalError(v, href);
    if (!addresses.includes(a.address)) addresses.push(a.address);
  }
  // Each address was checked; try them in order, as a plain client would, while nothing was sent.
  for (let i = 0; ; i++) {
    try {
      return await send(ex, target, addresses[i]!, method, headers, body);
    } catch (e) {
      const retry =
        e instanceof CairnError &&
        e.code === 'NET_CONNECT_FAILED' &&
        (e.details as { socket_code?: string }).socket_code !== undefined &&
        /^(ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|EADDRNOTAVAIL|EAFNOSUPPORT)$/.test(
          (e.details as { socket_code: string }).socket_code,
        );
      if (!retry || i + 1 >= addresses.length || ex.signal.aborted) throw e;
    }
  }
}

interface Opened {
  ex: Exchange;
  hop: Hop;
  url: URL;
  redirects: { url: string; status: number }[];
}

async function open(req: OutboundRequest): Promise<Opened> {
  validate(req);
  const allow = toAllowList(req.allow);
  const first = parseTarget(req.url);
  if ('code' in first) throw refusalError(first, req.url);
  if (req.signal?.aborted) throw abortedError(req.url);
  const ex = new Exchange(req);
  try {
    const maxRedirects = req.maxRedirects ?? DEFAULT_MAX_REDIRECTS;
    let target = first;
    let method = req.method.toUpperCase();
    let body = req.body;
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers ?? {})) headers[k.toLowerCase()] = v;
    // We frame the body ourselves: a caller's length or encoding could desynchronise the stream.
    delete headers['host'];
    delete headers['content-length'];
    delete headers['transfer-encoding'];
    const redirects: { url: string; status: number }[] = [];
    for (;;) {
      if (body !== undefined) headers['content-length'] = String(Buffer.byteLength(body));
      let h: Hop;
      try {
        h = await hop(ex, target, allow, method, headers, body);
      } catch (e) {
        throw redirects.length > 0 ? viaRedirect(e, redirects) : e;
      }
      const status = h.res.statusCode ?? 0;
      const location = h.res.headers.location;
      if (!REDIRECTS.has(status) || maxRedirects <= 0 || location === undefined)
        return { ex, hop: h, url: target.url, redirects };
      h.res.destroy();
      h.req.destroy();
      if (redirects.length >= maxRedirects)
        throw new CairnError({
          code: 'NET_TOO_MANY_REDIRECTS',
          class: 'validation',
          status: 502,
          message: `Outbound request to ${req.url} was redirected more than ${maxRedirects} times (last to ${location}).`,
          details: { url: req.url, redirects: [...redirects, { url: target.url.href, status }] },
          suggestion:
            'Request the final URL directly, raise maxRedirects, or check the service for a redirect loop.',
        });
      redirects.push({ url: target.url.href, status });
      const next = parseTarget(location, target.url);
      if ('code' in next) throw viaRedirect(refusalError(next, location), redirects);
      if (
        (status === 303 && method !== 'HEAD') ||
        ((status === 301 || status === 302) && method === 'POST')
      ) {
        method = 'GET';
        body = undefined;
        for (const k of ['content-length', 'content-type', 'content-encoding']) delete headers[k];
      }
      if (next.url.origin !== target.url.origin)
        for (const k of Object.keys(headers))
          if (!KEPT_ACROSS_ORIGINS.has(k.toLowerCase())) delete headers[k];
      target = next;
    }
  } catch (e) {
    ex.end();
    throw e;
  }
}

/** A refusal met on a redirect says where the redirect came from. */
function viaRedirect(e: unknown, redirects: { url: string; status: number }[]): unknown {
  if (!(e instanceof CairnError) || !/^NET_(URL|ADDRESS)_REFUSED$|^NET_HOST_NOT_ALLOWED$/.test(e.code))
    return e;
  const last = redirects[redirects.length - 1]!;
  return new CairnError({
    code: e.code,
    class: e.errorClass,
    message: `${e.message} It was reached by a ${last.status} redirect from ${last.url}.`,
    details: { ...(e.details as object), redirects },
    suggestion: e.suggestion,
    cause: e.cause,
  });
}

function headersOf(res: IncomingMessage): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(res.headers)) if (v !== undefined) out[k] = v;
  return out;
}

function bodyError(e: unknown, ex: Exchange, o: Opened): CairnError {
  if (ex.signal.aborted) return ex.signal.reason as CairnError;
  return connectError(e, o.url.href, o.hop.address, portOf(o.url), true);
}

/** The streaming form (what LLM adapters call): resolves at the response head; the body is read as it arrives. */
export async function openRequest(req: OutboundRequest): Promise<OpenResponse> {
  const o = await open(req);
  const { ex, hop: h } = o;
  let closed = false;
  const close = () => {
    closed = true;
    ex.end();
  };
  async function* body(): AsyncGenerator<Buffer> {
    try {
      for await (const chunk of h.res) yield chunk as Buffer;
    } catch (e) {
      if (closed && !ex.signal.aborted) return;
      throw bodyError(e, ex, o);
    } finally {
      close();
    }
  }
  ex.timings.total_ms = performance.now() - ex.started;
  return {
    status: h.res.statusCode ?? 0,
    headers: headersOf(h.res),
    finalUrl: o.url.href,
    address: h.address,
    redirects: o.redirects,
    timings: ex.timings,
    body: body(),
    close,
  };
}

/** The buffered form: the whole body, at most `maxResponseBytes` (default 10 MiB). */
export async function request(req: OutboundRequest): Promise<BufferedResponse> {
  const max = req.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
  const o = await open(req);
  const { ex, hop: h } = o;
  try {
    const declared = Number(h.res.headers['content-length']);
    if (declared > max) throw tooLargeError(o.url.href, max);
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of h.res) {
        size += (chunk as Buffer).length;
        if (size > max) throw tooLargeError(o.url.href, max);
        chunks.push(chunk as Buffer);
      }
    } catch (e) {
      if (e instanceof CairnError && e.code === 'NET_RESPONSE_TOO_LARGE') throw e;
      throw bodyError(e, ex, o);
    }
    ex.end();
    return {
      status: h.res.statusCode ?? 0,
      headers: headersOf(h.res),
      finalUrl: o.url.href,
      address: h.address,
      redirects: o.redirects,
      timings: ex.timings,
      body: chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size),
    };
  } finally {
    ex.end();
  }
}

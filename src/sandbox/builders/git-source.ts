import { thrown } from '../../core/errors.js';
import { setting } from '../../config.js';
import { lookup as dnsLookup } from 'node:dns/promises';
import { isIP, isIPv4, isIPv6 } from 'node:net';
import { realpathSync, statSync } from 'node:fs';
import { isAbsolute, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Where a go-fn `git` source may come from. A spec is written by any circle
 * member with write access, while the clone runs on the server's host: so
 * only what the instance admin opens is reachable — https:// remotes on
 * public addresses, and local paths under directories the admin names.
 */
export interface GitSourcePolicy {
  /** Real paths of the directories local repositories may live under (CAIRN_GIT_LOCAL_ROOTS). */
  localRoots: string[];
  /** CAIRN_GIT_ALLOW_PRIVATE_HOSTS=1: remotes may resolve to loopback, private, link-local… addresses. */
  allowPrivateHosts: boolean;
}

/**
 * The policy from the environment, read at each call (the admin may change it
 * between a definition and a build, and tests set it per case). Entries of
 * CAIRN_GIT_LOCAL_ROOTS that are not absolute, or do not exist, open nothing.
 */
export function gitSourcePolicy(env: NodeJS.ProcessEnv = process.env): GitSourcePolicy {
  const localRoots: string[] = [];
  for (const entry of setting('CAIRN_GIT_LOCAL_ROOTS', env).split(':')) {
    if (!entry || !isAbsolute(entry)) continue;
    try {
      const real = realpathSync(entry);
      if (statSync(real).isDirectory()) localRoots.push(real);
    } catch {
      // a root that does not exist allows nothing
    }
  }
  return { localRoots, allowPrivateHosts: setting('CAIRN_GIT_ALLOW_PRIVATE_HOSTS', env) };
}

/** A git source the policy refuses; `suggestion` says what would be accepted. */
export class GitSourceRefused extends Error {
  constructor(
    message: string,
    readonly suggestion: string,
  ) {
    super(message);
    this.name = 'GitSourceRefused';
  }
}

export type GitTarget =
  | {
      kind: 'remote';
      /** The URL as git gets it: WHATWG-normalized, so git and this check read the same host. */
      url: string;
      /** Lower-case host name or IP literal (without brackets). */
      host: string;
      port: number;
      /** The host is an IP literal (nothing to resolve or pin). */
      literal: boolean;
    }
  | {
      kind: 'local';
      /** The repository's real path (symlinks resolved), inside an allowed root. */
      path: string;
    };

const REMOTE_HINT =
  'Use an https:// URL of a public git host (e.g. https://github.com/owner/repo.git), without credentials.';
const LOCAL_HINT =
  'Local repositories must be under a directory the instance admin lists in CAIRN_GIT_LOCAL_ROOTS ' +
  '(a ":"-separated list of absolute paths); otherwise use an https:// URL.';

/** Has a C0 or C1 control character (or, with `space`, a space too). */
function hasControl(s: string, space = false): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || (c >= 0x7f && c <= 0x9f) || (space && c === 0x20)) return true;
  }
  return false;
}
const HOST_NAME =
  /^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$/;

/** Is `path` the directory `root` itself or inside it (both real, absolute paths)? */
export function within(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel === '' || (!isAbsolute(rel) && rel.split(sep)[0] !== '..');
}

function localTarget(raw: string, path: string, policy: GitSourcePolicy): GitTarget {
  if (!isAbsolute(path) || hasControl(path))
    throw new GitSourceRefused(`source.git_url "${raw}" is not an absolute path`, LOCAL_HINT);
  if (policy.localRoots.length === 0)
    throw new GitSourceRefused(
      `source.git_url "${raw}" is a local path, and this instance allows no local git repositories`,
      LOCAL_HINT,
    );
  let real: string;
  try {
    real = realpathSync(path);
  } catch {
    // Say "does not exist" only inside a root, so the answer tells nothing about the rest of the host.
    const lexical = resolve(path);
    if (policy.localRoots.some((r) => within(r, lexical)))
      throw new GitSourceRefused(`source.git_url "${raw}" does not exist`, LOCAL_HINT);
    throw new GitSourceRefused(
      `source.git_url "${raw}" is not inside a directory this instance allows for local git repositories`,
      LOCAL_HINT,
    );
  }
  if (!policy.localRoots.some((r) => within(r, real)))
    throw new GitSourceRefused(
      `source.git_url "${raw}" is not inside a directory this instance allows for local git repositories`,
      LOCAL_HINT,
    );
  if (!statSync(real).isDirectory())
    throw new GitSourceRefused(`source.git_url "${raw}" is not a directory`, LOCAL_HINT);
  return { kind: 'local', path: real };
}

/**
 * Checks a git_url against the policy without touching the network: the URL's
 * shape, its scheme, credentials, a literal IP's range, and for a local path
 * its real location. A host name is resolved and checked later, at build time
 * (`guardRemoteHost`), right before git connects.
 */
export function checkGitSource(raw: string, policy: GitSourcePolicy = gitSourcePolicy()): GitTarget {
  if (raw === '') throw new GitSourceRefused('source.git_url is empty', REMOTE_HINT);
  if (raw.startsWith('-'))
    throw new GitSourceRefused(`source.git_url "${raw}" must not start with "-"`, REMOTE_HINT);
  if (raw.startsWith('/')) return localTarget(raw, raw, policy);
  if (/^file:/i.test(raw)) {
    let path: string;
    try {
      const u = new URL(raw);
      if (u.host !== '' && u.host !== 'localhost') throw new Error('remote file host');
      if (u.search || u.hash) throw new Error('query');
      path = fileURLToPath(u);
    } catch {
      throw new GitSourceRefused(`source.git_url "${raw}" is not a file:///absolute/path URL`, LOCAL_HINT);
    }
    return localTarget(raw, path, policy);
  }
  // Everything git would take as a relative path, host:path (scp-like ssh), ext::, fd::, …
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(raw)?.[1]?.toLowerCase();
  if (scheme === undefined)
    throw new GitSourceRefused(
      `source.git_url "${raw}" is neither an https:// URL nor an absolute local path`,
      REMOTE_HINT,
    );
  if (scheme !== 'https')
    throw new GitSourceRefused(
      `source.git_url "${raw}": the ${scheme}:// scheme is not allowed (only https://)`,
      REMOTE_HINT,
    );
  // Whitespace, controls and backslashes: characters on which URL parsers (ours, curl's) disagree.
  if (hasControl(raw, true) || raw.includes('\\'))
    throw new GitSourceRefused(
      `source.git_url "${raw}" contains whitespace, control characters or backslashes`,
      REMOTE_HINT,
    );
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new GitSourceRefused(`source.git_url "${raw}" is not a valid URL`, REMOTE_HINT);
  }
  if (u.username !== '' || u.password !== '')
    throw new GitSourceRefused(
      `source.git_url must not contain credentials (they would be stored in the spec, readable by the circle)`,
      REMOTE_HINT,
    );
  if (u.hash !== '' || raw.includes('#'))
    throw new GitSourceRefused(`source.git_url "${raw}" must not have a #fragment`, REMOTE_HINT);
  const bracketed = u.hostname.startsWith('[');
  const host = bracketed ? u.hostname.slice(1, -1) : u.hostname;
  const literal = isIP(host) !== 0;
  if (!literal && !HOST_NAME.test(host))
    throw new GitSourceRefused(`source.git_url "${raw}" has an invalid host name`, REMOTE_HINT);
  if (!policy.allowPrivateHosts) {
    if (literal && isBlockedAddress(host))
      throw new GitSourceRefused(
        `source.git_url "${raw}" points at ${host}, a loopback, private, link-local or reserved address`,
        REMOTE_HINT,
      );
    if (host === 'localhost' || host.endsWith('.localhost'))
      throw new GitSourceRefused(`source.git_url "${raw}" points at this host`, REMOTE_HINT);
  }
  return { kind: 'remote', url: u.href, host, port: u.port ? Number(u.port) : 443, literal };
}

/**
 * A git_ref git takes as a branch or tag name and never as an option:
 * git check-ref-format's rules, plus no leading "-".
 */
export function checkGitRef(ref: string | undefined): void {
  if (ref === undefined) return;
  const bad =
    ref === '' ||
    ref.startsWith('-') ||
    ref.startsWith('/') ||
    ref.endsWith('/') ||
    ref.endsWith('.') ||
    ref.endsWith('.lock') ||
    ref.includes('..') ||
    ref.includes('@{') ||
    ref.includes('//') ||
    ref === '@' ||
    hasControl(ref, true) ||
    /[~^:?*[\\]/.test(ref) ||
    ref.split('/').some((c) => c.startsWith('.'));
  if (bad)
    throw new GitSourceRefused(
      `source.git_ref "${ref}" is not a valid branch or tag name`,
      'Set source.git_ref to a branch or tag name such as main or v1.2.0.',
    );
}

/** An IPv6 address as 16 bytes (zone and brackets stripped by the caller); undefined if not one. */
function ipv6Bytes(ip: string): number[] | undefined {
  if (!isIPv6(ip)) return undefined;
  let text = ip;
  // A trailing dotted IPv4 part stands for the last two groups.
  const v4 = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(ip);
  if (v4) text = `${v4[1]}0:0`;
  const split = (s: string) => (s === '' ? [] : s.split(':'));
  const halves = text.split('::');
  let groups: string[];
  if (halves.length === 2) {
    const head = split(halves[0]!);
    const tail = split(halves[1]!);
    groups = [...head, ...Array<string>(Math.max(0, 8 - head.length - tail.length)).fill('0'), ...tail];
  } else groups = split(text);
  if (groups.length !== 8) return undefined;
  const bytes = groups.flatMap((g) => {
    const n = parseInt(g, 16);
    return [n >> 8, n & 0xff];
  });
  if (v4) bytes.splice(12, 4, ...v4[2]!.split('.').map(Number));
  return bytes;
}

/** [first address, prefix length] of the IPv4 ranges no remote git host may be in. */
const BLOCKED_V4: [string, number][] = [
  ['0.0.0.0', 8], // "this network"
  ['10.0.0.0', 8], // private
  ['100.64.0.0', 10], // carrier-grade NAT
  ['127.0.0.0', 8], // loopback
  ['169.254.0.0', 16], // link-local, cloud metadata (169.254.169.254)
  ['172.16.0.0', 12], // private
  ['192.0.0.0', 24], // IETF protocol assignments
  ['192.0.2.0', 24], // documentation
  ['192.88.99.0', 24], // 6to4 relay anycast
  ['192.168.0.0', 16], // private
  ['198.18.0.0', 15], // benchmarking
  ['198.51.100.0', 24], // documentation
  ['203.0.113.0', 24], // documentation
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4], // reserved, broadcast
];

function v4Number(ip: string): number {
  return ip.split('.').reduce((n, o) => n * 256 + Number(o), 0);
}

function blockedV4(ip: string): boolean {
  const n = v4Number(ip);
  return BLOCKED_V4.some(
    ([base, bits]) => Math.floor(n / 2 ** (32 - bits)) === Math.floor(v4Number(base) / 2 ** (32 - bits)),
  );
}

/**
 * Is this an address a server-side fetch must not reach on a user's behalf?
 * Loopback, private, link-local (cloud metadata), CGNAT, "this network",
 * multicast, reserved and documentation ranges, in IPv4 and IPv6, and IPv6
 * forms that carry an IPv4 address (mapped, translated, NAT64, 6to4) by the
 * address they carry. IPv6 outside 2000::/3 (global unicast) is refused, and
 * so is anything that is not an IP address. Pure: reusable for any outgoing
 * connection, checked against the resolved address, never the name.
 */
export function isBlockedAddress(address: string): boolean {
  let ip = address.trim();
  if (ip.startsWith('[') && ip.endsWith(']')) ip = ip.slice(1, -1);
  const zone = ip.indexOf('%');
  if (zone >= 0) ip = ip.slice(0, zone);
  if (isIPv4(ip)) return blockedV4(ip);
  const b = ipv6Bytes(ip);
  if (!b) return true;
  const v4At = (i: number) => b.slice(i, i + 4).join('.');
  const zero = (from: number, to: number) => b.slice(from, to).every((x) => x === 0);
  if (zero(0, 10) && b[10] === 0xff && b[11] === 0xff) return blockedV4(v4At(12)); // ::ffff:a.b.c.d
  if (zero(0, 8) && b[8] === 0xff && b[9] === 0xff && zero(10, 12)) return blockedV4(v4At(12)); // ::ffff:0:a.b.c.d
  if (zero(0, 12)) return true; // ::, ::1, IPv4-compatible ::a.b.c.d (deprecated)
  if (b[0] === 0x00 && b[1] === 0x64 && b[2] === 0xff && b[3] === 0x9b) {
    if (zero(4, 12)) return blockedV4(v4At(12)); // NAT64 64:ff9b::/96
    return true; // local-use NAT64 64:ff9b:1::/48
  }
  if (b[0] === 0x20 && b[1] === 0x02) return blockedV4(v4At(2)); // 6to4 2002::/16
  if (b[0] === 0x20 && b[1] === 0x01 && b[2] === 0x00 && b[3] === 0x00) return true; // Teredo 2001::/32
  if (b[0] === 0x20 && b[1] === 0x01 && b[2] === 0x0d && b[3] === 0xb8) return true; // documentation
  // fc00::/7 unique local, fe80::/10 link-local, fec0::/10 site-local, ff00::/8 multicast, ::/8…: all outside 2000::/3
  return (b[0]! & 0xe0) !== 0x20;
}

export interface ResolvedHost {
  address: string;
  family: 4 | 6;
}

export type Lookup = (host: string, options: { all: true }) => Promise<{ address: string; family: number }[]>;

/**
 * The host guard: resolves a remote's host name once and refuses it when any
 * address it resolves to is blocked (unless CAIRN_GIT_ALLOW_PRIVATE_HOSTS=1).
 * Runs before git connects; git is then pinned to the address returned here
 * (`curlResolvePin`), so a second, different DNS answer cannot redirect it.
 */
export async function guardRemoteHost(
  target: Extract<GitTarget, { kind: 'remote' }>,
  policy: GitSourcePolicy = gitSourcePolicy(),
  lookup: Lookup = dnsLookup as Lookup,
): Promise<ResolvedHost> {
  if (target.literal) {
    if (!policy.allowPrivateHosts && isBlockedAddress(target.host))
      throw new GitSourceRefused(
        `git host ${target.host} is a loopback, private, link-local or reserved address`,
        REMOTE_HINT,
      );
    return { address: target.host, family: isIPv6(target.host) ? 6 : 4 };
  }
  let answers: { address: string; family: number }[];
  try {
    answers = await lookup(target.host, { all: true });
  } catch (caught) {
    const e = thrown(caught);
    throw new GitSourceRefused(
      `git host ${target.host} does not resolve (${e?.code ?? e?.message ?? e})`,
      REMOTE_HINT,
    );
  }
  if (answers.length === 0)
    throw new GitSourceRefused(`git host ${target.host} does not resolve`, REMOTE_HINT);
  if (!policy.allowPrivateHosts) {
    const bad = answers.find((a) => isBlockedAddress(a.address));
    if (bad)
      throw new GitSourceRefused(
        `git host ${target.host} resolves to ${bad.address}, a loopback, private, link-local or reserved address`,
        REMOTE_HINT,
      );
  }
  const first = answers[0]!;
  return { address: first.address, family: first.family === 6 ? 6 : 4 };
}

/** git's `http.curloptResolve` value (CURLOPT_RESOLVE) that pins `host:port` to the checked address. */
export function curlResolvePin(host: string, port: number, address: string): string {
  return `${host}:${port}:${isIPv6(address) ? `[${address}]` : address}`;
}

/** Where the sandboxed clone sees a local repository (read-only) and writes its checkout. */
export const SANDBOX_REPO = '/src-repo';
export const SANDBOX_CHECKOUT = '/checkout';

/**
 * The git command line of the sandboxed clone: one protocol allowed (https,
 * or file for an allowed local path), no hooks, no redirects, no submodules,
 * no credential helpers, objects checked as they arrive.
 */
export function gitCloneArgv(target: GitTarget, ref: string | undefined, pin?: string): string[] {
  const proto = target.kind === 'local' ? 'file' : 'https';
  return [
    '/usr/bin/git',
    '-c',
    'protocol.allow=never',
    '-c',
    `protocol.${proto}.allow=always`,
    '-c',
    'core.hooksPath=/dev/null',
    '-c',
    'core.fsmonitor=false',
    '-c',
    'credential.helper=',
    '-c',
    'http.followRedirects=false',
    '-c',
    'transfer.fsckObjects=true',
    '-c',
    'submodule.recurse=false',
    ...(pin ? ['-c', `http.curloptResolve=${pin}`] : []),
    'clone',
    '--quiet',
    '--no-local',
    '--depth',
    '1',
    '--template=',
    '--no-recurse-submodules',
    ...(ref ? ['--branch', ref] : []),
    '--',
    target.kind === 'local' ? SANDBOX_REPO : target.url,
    SANDBOX_CHECKOUT,
  ];
}

/**
 * The only "global" git config of the sandboxed steps (GIT_CONFIG_GLOBAL), for
 * what `-c` cannot reach: git starts a local repository's upload-pack with the
 * command-line config cleared, and that repository belongs to another uid than
 * the sandbox's (so it must be marked safe). Nothing else of the host's config.
 */
export const GIT_GLOBAL_CONFIG =
  '[safe]\n\tdirectory = *\n[core]\n\thooksPath = /dev/null\n\tfsmonitor = false\n';

/**
 * The environment of every git step: no system config, the global config
 * above (`globalConfig`, its path) or none, no prompts, one protocol.
 */
export function gitEnv(target: GitTarget, globalConfig = '/dev/null'): Record<string, string> {
  return {
    PATH: '/usr/bin',
    HOME: '/tmp',
    LANG: 'C',
    GIT_CONFIG_NOSYSTEM: '1',
    GIT_CONFIG_GLOBAL: globalConfig,
    GIT_TERMINAL_PROMPT: '0',
    GIT_PROTOCOL_FROM_USER: '0',
    GIT_ALLOW_PROTOCOL: target.kind === 'local' ? 'file' : 'https',
  };
}

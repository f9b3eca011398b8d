import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { canonicalJson, sha256Hex } from '../../core/hash.js';
import { cacheRoot } from '../exec-helper.js';
import type { Bind, Sandbox, SandboxResult } from '../runner.js';
import { goBinary, goRootDir } from '../toolchains.js';
import { libraryBinds } from '../runtimes.js';
import { goWrapper, WRAPPER_VERSION } from './go-wrapper.js';
import {
  GIT_GLOBAL_CONFIG,
  checkGitRef,
  checkGitSource,
  curlResolvePin,
  gitCloneArgv,
  gitEnv,
  gitSourcePolicy,
  GitSourceRefused,
  guardRemoteHost,
  SANDBOX_CHECKOUT,
  SANDBOX_REPO,
  within,
  type GitTarget,
} from './git-source.js';
import { goBuildDuration, goCacheHitRate } from '../../telemetry/metrics.js';
import { setting } from '../../config.js';

export interface GoSource {
  type: 'inline' | 'git';
  code?: string;
  requirements?: string;
  git_url?: string;
  git_ref?: string;
  path?: string;
}

export interface GoBuild {
  key: string;
  binary: string;
  cached: boolean;
  durationMs: number;
  goVersion: string;
  commit?: string;
}

export type GoBuildFailure = 'compile' | 'download' | 'timeout' | 'memory' | 'source';

/** A build that did not produce a binary; `diagnostics` quotes the tool's own lines. */
export class GoBuildError extends Error {
  constructor(
    readonly kind: GoBuildFailure,
    message: string,
    readonly diagnostics: string,
  ) {
    super(message);
  }
}

const BUILD_FLAGS = ['-trimpath', '-ldflags=-s -w'];
const BUILD_LIMITS = {
  get timeoutMs() {
    return setting('CAIRN_GO_BUILD_TIMEOUT_MS');
  },
  memoryMb: 3072,
  maxProcs: 512,
  fileSizeMb: 512,
  openFiles: 4096,
  tmpMb: 512,
  stdoutBytes: 256 * 1024,
  stderrBytes: 256 * 1024,
};
const maxCached = () => setting('CAIRN_GO_CACHE_ENTRIES');

const prepared = new Set<string>();

/**
 * The Go cache directories, created (with the builder uid owning the ones it
 * writes) once per process and cache root — not on every invoke's lookup.
 */
function dirs(owner: number | undefined) {
  const root = join(cacheRoot(), 'go');
  const d = {
    root,
    bin: join(root, 'bin'),
    stage: join(root, 'stage'),
    gocache: join(root, 'gocache'),
    gomod: join(root, 'gomod'),
  };
  if (!prepared.has(`${root}:${owner}`)) {
    ensureDir(d.root);
    ensureDir(d.bin);
    ensureDir(d.stage, owner);
    ensureDir(d.gocache, owner);
    ensureDir(d.gomod, owner);
    prepared.add(`${root}:${owner}`);
  }
  return d;
}

export function ensureDir(path: string, owner?: number): void {
  if (!existsSync(path)) mkdirSync(path, { recursive: true, mode: 0o755 });
  chmodSync(path, 0o755);
  if (owner !== undefined) chownSync(path, owner, owner);
}

let goVersionCache: string | undefined;
export function goVersion(): string {
  goVersionCache ??= execFileSync(goBinary(), ['env', 'GOVERSION'], { encoding: 'utf8' }).trim();
  return goVersionCache;
}

function hostGoEnv(): Record<string, string> {
  const out = execFileSync(
    goBinary(),
    ['env', '-json', 'GOPROXY', 'GOSUMDB', 'GONOSUMDB', 'GOPRIVATE', 'GOINSECURE'],
    {
      encoding: 'utf8',
    },
  );
  return Object.fromEntries(
    Object.entries(JSON.parse(out) as Record<string, string>).filter(([, v]) => v !== ''),
  );
}

/** The go.mod Cairn writes: our module, the toolchain's language version, and the spec's require lines. */
export function goMod(requirements: string | undefined): string {
  const lang = /^go(\d+\.\d+)/.exec(goVersion())?.[1] ?? '1.22';
  const reqs = (requirements ?? '')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('//'));
  return `module cairnfn\n\ngo ${lang}\n${reqs.length ? `\nrequire (\n${reqs.map((r) => `\t${r}`).join('\n')}\n)\n` : ''}`;
}

/** A requirement line: a module path and a version, nothing else (no replace, no exclude). */
export const REQUIREMENT_LINE = /^[A-Za-z0-9][A-Za-z0-9._~\-/]*\s+v[0-9][A-Za-z0-9.+-]*(\s*\/\/ indirect)?$/;

function sandboxEnv(extra: Record<string, string>): Record<string, string> {
  return {
    PATH: '/goroot/bin',
    HOME: '/tmp',
    GOROOT: '/goroot',
    GOCACHE: '/gocache',
    GOMODCACHE: '/gomod',
    GOPATH: '/tmp/gopath',
    GOFLAGS: '-mod=mod -buildvcs=false',
    GOTOOLCHAIN: 'local',
    GOTELEMETRY: 'off',
    CGO_ENABLED: '0',
    ...extra,
  };
}

function toolBinds(sb: Sandbox, stage: string, gomodRw: boolean): Bind[] {
  const d = dirs(sb.builderUid);
  return [
    { src: goRootDir(), dest: '/goroot' },
    { src: d.gocache, dest: '/gocache', rw: true },
    { src: d.gomod, dest: '/gomod', rw: gomodRw },
    { src: stage, dest: '/src', rw: true },
  ];
}

/** Files a network step needs to resolve names and verify TLS; nothing else of the host. */
export const NET_BINDS: Bind[] = [
  '/etc/resolv.conf',
  '/etc/hosts',
  '/etc/ssl',
  '/etc/ca-certificates',
  '/usr/share/ca-certificates',
]
  .filter((p) => existsSync(p))
  .map((p) => ({ src: p, dest: p }));

function failure(r: SandboxResult, kind: GoBuildFailure, what: string): GoBuildError {
  const text = (r.stderr.toString('utf8') + r.stdout.toString('utf8')).replace(/\/src\//g, './').trim();
  if (r.verdict === 'timeout')
    return new GoBuildError('timeout', `${what} took longer than ${BUILD_LIMITS.timeoutMs} ms`, text);
  if (/out of memory|cannot allocate memory/.test(text))
    return new GoBuildError('memory', `${what} ran out of memory`, text);
  return new GoBuildError(
    kind,
    text.split('\n').find((l) => /\.go:\d+:\d+/.test(l)) ?? (text.split('\n')[0] || `${what} failed`),
    text,
  );
}

/** Module downloads: network on, GOMODCACHE writable, and no user code runs (tidy only parses). */
async function download(sb: Sandbox, stage: string): Promise<void> {
  const r = await sb.run({
    argv: ['/goroot/bin/go', 'mod', 'tidy'],
    binds: [...toolBinds(sb, stage, true), ...NET_BINDS],
    env: sandboxEnv(hostGoEnv()),
    cwd: '/src',
    network: true,
    limits: BUILD_LIMITS,
    asUid: sb.builderUid,
  });
  if (r.exitCode !== 0) throw failure(r, 'download', 'module download');
}

export interface GoRequest {
  source: GoSource;
  handler: string;
}

interface Resolved {
  files: Record<string, string>;
  keyParts: Record<string, unknown>;
  needsDownload: boolean;
  commit?: string;
  stageFrom?: string; // a cloned checkout to stage instead of inline files
}

const GIT_CORE = '/usr/lib/git-core';
let gitBindsCache: { base: Bind[]; shell: Bind[]; tls: Bind[] } | undefined;

/**
 * What git needs inside the sandbox: the binary, its helpers (git-remote-https,
 * git-upload-pack) and exactly the libraries they load; a shell only for local
 * clones (git starts upload-pack through sh); CA certificates only for https.
 */
function gitBinds(need: { shell?: boolean; tls?: boolean }): Bind[] {
  if (!gitBindsCache) {
    const sh = realpathSync('/bin/sh');
    const elves = ['/usr/bin/git', join(GIT_CORE, 'git-remote-http'), sh].filter((f) => existsSync(f));
    gitBindsCache = {
      base: [
        { src: '/usr/bin/git', dest: '/usr/bin/git' },
        { src: GIT_CORE, dest: GIT_CORE },
        ...libraryBinds(elves),
      ],
      shell: [{ src: sh, dest: '/bin/sh' }],
      // Certificates, not resolv.conf or hosts: git reaches the pinned address, and never resolves a name.
      tls: NET_BINDS.filter((b) => !['/etc/resolv.conf', '/etc/hosts'].includes(b.dest)),
    };
  }
  const c = gitBindsCache;
  return [...c.base, ...(need.shell ? c.shell : []), ...(need.tls ? c.tls : [])];
}

const GIT_LIMITS = {
  timeoutMs: 60_000,
  memoryMb: 2048,
  maxProcs: 512, // RLIMIT_NPROC counts every process of the builder uid, builds included
  fileSizeMb: 512,
  openFiles: 1024,
  tmpMb: 64,
  stdoutBytes: 64 * 1024,
  stderrBytes: 64 * 1024,
};

/** GIT_GLOBAL_CONFIG as a root-owned file (bound read-only into the sandbox). */
function gitGlobalConfig(owner: number | undefined): string {
  const path = join(dirs(owner).root, 'gitconfig');
  let current: string | undefined;
  try {
    current = lstatSync(path).isFile() ? readFileSync(path, 'utf8') : undefined;
  } catch {
    current = undefined;
  }
  if (current !== GIT_GLOBAL_CONFIG) {
    const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}`;
    writeFileSync(tmp, GIT_GLOBAL_CONFIG, { mode: 0o644 });
    renameSync(tmp, path);
  }
  return path;
}

function refused(e: unknown): never {
  if (e instanceof GitSourceRefused) throw new GoBuildError('source', e.message, e.suggestion);
  throw e;
}

/**
 * Clones a git source inside the build sandbox, as the builder uid: the URL is
 * checked again (the admin's policy may have changed since the definition), a
 * remote host is resolved and checked before any connection and git is pinned
 * to that address; a local repository is bound read-only, without network.
 * Returns the commit checked out.
 */
async function cloneGit(sb: Sandbox, s: GoSource, checkout: string): Promise<string> {
  const policy = gitSourcePolicy();
  let target: GitTarget;
  let pin: string | undefined;
  try {
    target = checkGitSource(s.git_url ?? '', policy);
    checkGitRef(s.git_ref);
    if (target.kind === 'remote') {
      const addr = await guardRemoteHost(target, policy);
      if (!target.literal) pin = curlResolvePin(target.host, target.port, addr.address);
    }
  } catch (e) {
    refused(e);
  }
  const owner = sb.builderUid;
  ensureDir(checkout, owner);
  const config = gitGlobalConfig(owner);
  // Not under /tmp (the sandbox's own tmpfs hides it); without bwrap, the host path itself.
  const configBind: Bind = { src: config, dest: sb.disabled ? config : '/cairn/gitconfig' };
  const env = gitEnv(target, configBind.dest);
  const repo: Bind[] = target.kind === 'local' ? [{ src: target.path, dest: SANDBOX_REPO }] : [];
  const clone = await sb.run({
    argv: gitCloneArgv(target, s.git_ref, pin),
    binds: [
      ...gitBinds({ shell: target.kind === 'local', tls: target.kind === 'remote' }),
      configBind,
      ...repo,
      { src: checkout, dest: SANDBOX_CHECKOUT, rw: true },
    ],
    env,
    cwd: '/tmp',
    network: target.kind === 'remote',
    limits: GIT_LIMITS,
    asUid: owner,
  });
  const what = `git clone of ${s.git_url} at ${s.git_ref ?? 'HEAD'}`;
  if (clone.exitCode !== 0) {
    const text = (clone.stderr.toString('utf8') + clone.stdout.toString('utf8')).trim();
    const why = clone.verdict === 'timeout' ? ` (took longer than ${GIT_LIMITS.timeoutMs} ms)` : '';
    throw new GoBuildError('source', `${what} failed${why}`, text);
  }
  const head = await sb.run({
    argv: ['/usr/bin/git', '-C', SANDBOX_CHECKOUT, 'rev-parse', '--verify', 'HEAD^{commit}'],
    binds: [...gitBinds({}), configBind, { src: checkout, dest: SANDBOX_CHECKOUT }],
    env,
    cwd: '/tmp',
    limits: GIT_LIMITS,
    asUid: owner,
  });
  const commit = head.stdout.toString('utf8').trim();
  if (head.exitCode !== 0 || !/^[0-9a-f]{40}(?:[0-9a-f]{24})?$/.test(commit))
    throw new GoBuildError('source', `${what}: cannot read the commit`, head.stderr.toString('utf8'));
  return commit;
}

async function resolveSource(sb: Sandbox, req: GoRequest, scratch: string): Promise<Resolved> {
  const s = req.source;
  if (s.type === 'inline') {
    const files = { 'fn.go': s.code ?? '', 'go.mod': goMod(s.requirements) };
    return { files, keyParts: { files }, needsDownload: Boolean(s.requirements?.trim()) };
  }
  // git: cloned in the sandbox (git runs no code from the repository), the commit pinned.
  const dir = join(scratch, 'checkout');
  const commit = await cloneGit(sb, s, dir);
  rmSync(join(dir, '.git'), { recursive: true, force: true });
  // source.path is relative and has no "..", but a component may be a symlink in the repository:
  // the staging copy (as root, on the host) must start from a real directory inside the checkout.
  let sub: string;
  try {
    sub = realpathSync(join(dir, s.path ?? '.'));
  } catch {
    throw new GoBuildError('source', `source.path ${s.path} does not exist in the repository`, '');
  }
  const root = realpathSync(dir);
  if (!within(root, sub) || !lstatSync(sub).isDirectory())
    throw new GoBuildError('source', 'source.path must be a directory inside the repository', '');
  return {
    files: {},
    keyParts: { git: s.git_url, commit, path: s.path ?? '.' },
    needsDownload: true,
    commit,
    stageFrom: sub,
  };
}

const inflight = new Map<string, Promise<GoBuild>>();

/** Counters for metrics (go_fn_cache_hit_rate, build durations) and for tests of single flight. */
export const goBuildStats = { hits: 0, misses: 0, compiles: 0 };

function countLookup(hit: boolean): void {
  if (hit) goBuildStats.hits++;
  else goBuildStats.misses++;
  goCacheHitRate.set(goBuildStats.hits / (goBuildStats.hits + goBuildStats.misses));
}

/**
 * Builds (or finds) the binary for a handler. The cache key covers the source,
 * go.mod, requirements, handler, Go version, build flags and wrapper version;
 * a key is built once even under concurrent invokes, written atomically, and
 * the oldest keys are evicted past CAIRN_GO_CACHE_ENTRIES.
 */
export async function buildGo(sb: Sandbox, req: GoRequest): Promise<GoBuild> {
  const owner = sb.builderUid;
  const d = dirs(owner);
  const scratch = join(d.stage, `${Date.now()}-${randomBytes(6).toString('hex')}`);
  const t0 = performance.now();
  let resolved: Resolved;
  if (req.source.type === 'inline') resolved = await resolveSource(sb, req, scratch);
  else {
    ensureDir(scratch, owner);
    try {
      resolved = await resolveSource(sb, req, scratch);
    } catch (e) {
      rmSync(scratch, { recursive: true, force: true });
      throw e;
    }
  }
  const key = sha256Hex(
    canonicalJson({
      wrapper: WRAPPER_VERSION,
      go: goVersion(),
      handler: req.handler,
      flags: BUILD_FLAGS,
      ...resolved.keyParts,
    }),
  );
  const binary = join(d.bin, key, 'fn');
  if (existsSync(binary)) {
    const now = new Date();
    utimesSync(join(d.bin, key), now, now); // LRU: recently used
    rmSync(scratch, { recursive: true, force: true });
    countLookup(true);
    return {
      key,
      binary,
      cached: true,
      durationMs: performance.now() - t0,
      goVersion: goVersion(),
      commit: resolved.commit,
    };
  }
  countLookup(false);
  let p = inflight.get(key);
  if (!p) {
    goBuildStats.compiles++;
    p = compile(sb, key, resolved, req.handler, scratch).finally(() => inflight.delete(key));
    inflight.set(key, p);
  } else rmSync(scratch, { recursive: true, force: true });
  const b = await p;
  return { ...b, durationMs: performance.now() - t0 };
}

function stageFiles(stage: string, resolved: Resolved, handler: string, owner: number | undefined): void {
  ensureDir(stage, owner);
  if (resolved.stageFrom) {
    execFileSync('cp', ['-a', '--no-preserve=ownership', `${resolved.stageFrom}/.`, stage]);
    if (!existsSync(join(stage, 'go.mod'))) writeFileSync(join(stage, 'go.mod'), goMod(undefined));
  }
  for (const [name, text] of Object.entries(resolved.files))
    writeFileSync(join(stage, name), text, { mode: 0o644 });
  writeFileSync(join(stage, 'cairn_main.go'), goWrapper(handler), { mode: 0o644 });
  if (owner !== undefined) execFileSync('chown', ['-R', `${owner}:${owner}`, stage]);
}

async function compile(
  sb: Sandbox,
  key: string,
  resolved: Resolved,
  handler: string,
  scratch: string,
): Promise<GoBuild> {
  const owner = sb.builderUid;
  const d = dirs(owner);
  const stage = join(scratch, 'src');
  const t0 = performance.now();
  try {
    stageFiles(stage, resolved, handler, owner);
    if (resolved.needsDownload) await download(sb, stage);
    const r = await sb.run({
      argv: ['/goroot/bin/go', 'build', ...BUILD_FLAGS, '-o', '/src/.cairn-fn', '.'],
      binds: toolBinds(sb, stage, false),
      env: sandboxEnv({ GOPROXY: 'off' }),
      cwd: '/src',
      limits: BUILD_LIMITS,
      asUid: owner,
    });
    if (r.exitCode !== 0) throw failure(r, 'compile', 'go build');
    const out = join(stage, '.cairn-fn');
    // The host reads this file back: it must be a plain file the build wrote, never a planted link.
    const st = lstatSync(out);
    if (!st.isFile() || st.isSymbolicLink())
      throw new GoBuildError('compile', 'the build output is not a regular file', '');
    const tmpDir = join(d.bin, `${key}.${randomBytes(4).toString('hex')}.tmp`);
    mkdirSync(tmpDir, { mode: 0o755 });
    renameSync(out, join(tmpDir, 'fn'));
    chownSync(join(tmpDir, 'fn'), 0, 0);
    chmodSync(join(tmpDir, 'fn'), 0o555);
    try {
      renameSync(tmpDir, join(d.bin, key));
    } catch {
      rmSync(tmpDir, { recursive: true, force: true }); // another process won the race with the same bytes
    }
    evict(d.bin);
    const ms = performance.now() - t0;
    goBuildDuration.observe(ms);
    return {
      key,
      binary: join(d.bin, key, 'fn'),
      cached: false,
      durationMs: performance.now() - t0,
      goVersion: goVersion(),
      commit: resolved.commit,
    };
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** go vet over the staged source, no binary (the `validate` op). */
export async function vetGo(sb: Sandbox, req: GoRequest): Promise<{ ok: boolean; diagnostics: string }> {
  const owner = sb.builderUid;
  const d = dirs(owner);
  const scratch = join(d.stage, `vet-${Date.now()}-${randomBytes(6).toString('hex')}`);
  ensureDir(scratch, owner);
  try {
    const resolved = await resolveSource(sb, req, scratch);
    const stage = join(scratch, 'src');
    stageFiles(stage, resolved, req.handler, owner);
    if (resolved.needsDownload) await download(sb, stage);
    const r = await sb.run({
      argv: ['/goroot/bin/go', 'vet', '.'],
      binds: toolBinds(sb, stage, false),
      env: sandboxEnv({ GOPROXY: 'off' }),
      cwd: '/src',
      limits: BUILD_LIMITS,
      asUid: owner,
    });
    const text = (r.stderr.toString('utf8') + r.stdout.toString('utf8')).replace(/\/src\//g, './').trim();
    if (r.verdict === 'timeout')
      return { ok: false, diagnostics: `go vet took longer than ${BUILD_LIMITS.timeoutMs} ms` };
    return { ok: r.exitCode === 0, diagnostics: text };
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

function evict(bin: string): void {
  const d = { bin };
  const entries = readdirSync(d.bin)
    .filter((n) => /^[0-9a-f]{64}$/.test(n))
    .map((n) => ({ n, t: statSync(join(d.bin, n)).mtimeMs }));
  if (entries.length <= maxCached()) return;
  entries.sort((a, b) => a.t - b.t);
  for (const e of entries.slice(0, entries.length - maxCached()))
    rmSync(join(d.bin, e.n), { recursive: true, force: true });
}

/**
 * Compiles a trivial handler so the standard library is in the Go build cache
 * before the first user build (a cold cache costs seconds; a warm one, a
 * fraction of a second). Runs in the background when a worker starts.
 */
export async function prewarmGo(sb: Sandbox): Promise<void> {
  const code =
    'package main\n\nimport "fmt"\n\nfunc Handler(input map[string]interface{}) (map[string]interface{}, error) {\n\treturn map[string]interface{}{"ok": fmt.Sprint(true)}, nil\n}\n';
  await buildGo(sb, { source: { type: 'inline', code }, handler: 'Handler' });
}

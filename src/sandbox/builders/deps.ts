import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { canonicalJson, sha256Hex } from '../../core/hash.js';
import { cacheRoot } from '../exec-helper.js';
import type { Bind, Sandbox, SandboxResult } from '../runner.js';
import { nodeRuntime, pythonRuntime } from '../runtimes.js';
import { ensureDir, NET_BINDS } from './go.js';
import { setting } from '../../config.js';

/** A pip requirement: a name, optional extras and version clauses — no options, URLs, paths or VCS. */
export const PIP_LINE =
  /^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?(\[[A-Za-z0-9._,-]+\])?(\s*(===|==|!=|<=|>=|~=|<|>)\s*[A-Za-z0-9.*+!_-]+\s*,?)*$/;
/** An npm package name, and a version or range from the registry (no git:, file:, http: or aliases). */
export const NPM_NAME = /^(@[a-z0-9-~][a-z0-9-._~]*\/)?[a-z0-9-~][a-z0-9-._~]*$/;
export const NPM_RANGE = /^[0-9A-Za-z.^~<>=|*+ -]+$/;

export class DependencyError extends Error {
  constructor(
    message: string,
    readonly output: string,
  ) {
    super(message);
  }
}

export interface Deps {
  dir: string;
  key: string;
  cached: boolean;
}

const LIMITS = {
  get timeoutMs() {
    return setting('CAIRN_DEPS_TIMEOUT_MS');
  },
  memoryMb: 2048,
  maxProcs: 256,
  fileSizeMb: 512,
  openFiles: 4096,
  tmpMb: 1024,
  stdoutBytes: 512 * 1024,
  stderrBytes: 512 * 1024,
};

const inflight = new Map<string, Promise<Deps>>();

/**
 * One directory per content key (runtime version + the declared packages):
 * installed once in a networked sandbox where no package code runs (wheels
 * only for pip; --ignore-scripts for npm), then bound read-only into runs.
 */
async function install(
  sb: Sandbox,
  kind: 'python' | 'npm',
  keyParts: unknown,
  prepare: (out: string) => void,
  run: (out: string) => Promise<void>,
): Promise<Deps> {
  const key = sha256Hex(canonicalJson({ kind, ...(keyParts as object) }));
  const root = join(cacheRoot(), 'deps');
  const dir = join(root, key);
  if (existsSync(dir)) return { dir, key, cached: true };
  let p = inflight.get(key);
  if (!p) {
    p = (async () => {
      ensureDir(root);
      const stage = join(root, `${key}.${randomBytes(4).toString('hex')}.tmp`);
      const owner = sb.builderUid;
      ensureDir(stage, owner);
      try {
        prepare(stage);
        if (owner !== undefined) execFileSync('chown', ['-R', `${owner}:${owner}`, stage]);
        await run(stage);
        execFileSync('chmod', ['-R', 'a+rX,go-w', stage]);
        try {
          renameSync(stage, dir);
        } catch {
          rmSync(stage, { recursive: true, force: true });
        }
        return { dir, key, cached: false };
      } catch (e) {
        rmSync(stage, { recursive: true, force: true });
        throw e;
      } finally {
        inflight.delete(key);
      }
    })();
    inflight.set(key, p);
  }
  return p;
}

function check(r: SandboxResult, what: string): void {
  if (r.exitCode === 0) return;
  const text = (r.stderr.toString('utf8') + '\n' + r.stdout.toString('utf8')).trim();
  const line =
    text.split('\n').find((l) => /error|not found|could not|no matching/i.test(l)) ??
    text.split('\n')[0] ??
    '';
  throw new DependencyError(
    r.verdict === 'timeout'
      ? `${what} took longer than ${LIMITS.timeoutMs} ms`
      : `${what} failed: ${line.trim()}`,
    text.slice(-4000),
  );
}

/** The host's CA configuration (e.g. a TLS-inspecting proxy's CA): the files live under the bound /etc/ssl. */
const CA_ENV = ['NODE_EXTRA_CA_CERTS', 'SSL_CERT_FILE', 'SSL_CERT_DIR', 'PIP_CERT', 'REQUESTS_CA_BUNDLE'];

const SYSTEM_CA = '/etc/ssl/certs/ca-certificates.crt';
function systemCaBundle(): string | undefined {
  const p = process.env.NODE_EXTRA_CA_CERTS ?? SYSTEM_CA;
  return existsSync(p) ? p : undefined;
}

const hostEnv = (names: string[]) =>
  Object.fromEntries(names.filter((n) => process.env[n]).map((n) => [n, process.env[n]!]));

export function pythonDeps(sb: Sandbox, requirements: string): Promise<Deps> {
  const rt = pythonRuntime();
  const lines = requirements
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  return install(
    sb,
    'python',
    { runtime: rt.version, lines },
    (out) => writeFileSync(join(out, '.cairn-requirements.txt'), lines.join('\n') + '\n'),
    async (out) => {
      const distPackages = '/usr/lib/python3/dist-packages';
      const binds: Bind[] = [...rt.binds, ...NET_BINDS, { src: out, dest: '/out', rw: true }];
      if (existsSync(distPackages)) binds.push({ src: distPackages, dest: distPackages });
      const r = await sb.run({
        argv: [
          rt.path,
          '-m',
          'pip',
          'install',
          '--no-cache-dir',
          '--disable-pip-version-check',
          '--no-input',
          '--only-binary=:all:',
          '--target',
          '/out',
          '-r',
          '/out/.cairn-requirements.txt',
        ],
        binds,
        env: {
          ...rt.env,
          HOME: '/tmp',
          PYTHONPATH: distPackages,
          ...hostEnv(['PIP_INDEX_URL', 'PIP_EXTRA_INDEX_URL', ...CA_ENV]),
        },
        cwd: '/tmp',
        network: true,
        limits: LIMITS,
        asUid: sb.builderUid,
      });
      check(r, 'pip install');
    },
  );
}

export function npmDeps(sb: Sandbox, dependencies: Record<string, string>): Promise<Deps> {
  const rt = nodeRuntime();
  const npmDir = setting('CAIRN_NPM_DIR');
  return install(
    sb,
    'npm',
    { runtime: rt.version, dependencies },
    (out) =>
      writeFileSync(
        join(out, 'package.json'),
        JSON.stringify({ name: 'cairn-deps', private: true, dependencies }, null, 2),
      ),
    async (out) => {
      const r = await sb.run({
        argv: [
          rt.path,
          '/npm/bin/npm-cli.js',
          'install',
          '--ignore-scripts',
          '--no-audit',
          '--no-fund',
          '--omit=dev',
          '--no-update-notifier',
        ],
        binds: [
          ...rt.binds,
          ...NET_BINDS,
          { src: npmDir, dest: '/npm' },
          { src: out, dest: '/out', rw: true },
        ],
        env: {
          ...rt.env,
          HOME: '/tmp',
          npm_config_cache: '/tmp/npm-cache',
          ...hostEnv(['npm_config_registry', 'NPM_CONFIG_REGISTRY', ...CA_ENV]),
          // Node ignores the system CA store; the system bundle carries any locally trusted CA too.
          ...(systemCaBundle()
            ? { npm_config_cafile: systemCaBundle()!, NODE_EXTRA_CA_CERTS: systemCaBundle()! }
            : {}),
        },
        cwd: '/out',
        network: true,
        limits: LIMITS,
        asUid: sb.builderUid,
      });
      check(r, 'npm install');
    },
  );
}

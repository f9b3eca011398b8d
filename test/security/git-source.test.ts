import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildGo, GoBuildError } from '../../src/sandbox/builders/go.js';
import {
  checkGitRef,
  checkGitSource,
  curlResolvePin,
  gitCloneArgv,
  gitSourcePolicy,
  GitSourceRefused,
  guardRemoteHost,
  isBlockedAddress,
  type Lookup,
} from '../../src/sandbox/builders/git-source.js';
import { Sandbox } from '../../src/sandbox/runner.js';

const sandbox = new Sandbox();
import { freshDb } from '../helpers/db.js';
import { testApp, type TestApp } from '../helpers/app.js';

/**
 * The git source of a go-fn (security finding: "git_url may be any path on the
 * host, and the server clones it as root"). Real git, real bubblewrap; every
 * connection any test makes or allows is to loopback, and every refusal is
 * shown to come before a connection.
 */

const ENV_KEYS = ['CAIRN_GIT_LOCAL_ROOTS', 'CAIRN_GIT_ALLOW_PRIVATE_HOSTS'] as const;
const saved = Object.fromEntries(ENV_KEYS.map((k) => [k, process.env[k]]));
function setEnv(vars: Partial<Record<(typeof ENV_KEYS)[number], string>>): void {
  for (const k of ENV_KEYS) delete process.env[k];
  Object.assign(process.env, vars);
}
afterEach(() => {
  for (const k of ENV_KEYS) {
    if (saved[k] === undefined) delete process.env[k];
    else process.env[k] = saved[k];
  }
});

const HANDLER = (v: string) =>
  `package main\n\nfunc Handler(input map[string]interface{}) (map[string]interface{}, error) {\n\treturn map[string]interface{}{"v": "${v}"}, nil\n}\n`;

/** A committed repository at `dir` (made world-readable: the builder uid reads it). */
function makeRepo(dir: string, version = 'v1'): string {
  mkdirSync(dir, { recursive: true });
  execFileSync('git', ['init', '-q', '-b', 'main', dir]);
  writeFileSync(join(dir, 'go.mod'), 'module example.com/fn\n\ngo 1.22\n');
  writeFileSync(join(dir, 'fn.go'), HANDLER(version));
  execFileSync('git', ['-C', dir, 'add', '-A']);
  execFileSync('git', ['-C', dir, '-c', 'user.email=t@t', '-c', 'user.name=t', 'commit', '-qm', version]);
  chmodSync(dir, 0o755);
  return dir;
}

const refusal = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(GitSourceRefused);
    return (e as Error).message;
  }
  throw new Error('not refused');
};

/** A loopback TCP listener that records every connection and what it sent first. */
async function listener(host: string): Promise<{ server: Server; port: number; seen: Buffer[] }> {
  const seen: Buffer[] = [];
  const server = createServer((s: Socket) => {
    const chunks: Buffer[] = [];
    seen.push(Buffer.alloc(0));
    const i = seen.length - 1;
    s.on('data', (d) => {
      chunks.push(d);
      seen[i] = Buffer.concat(chunks);
      if (seen[i]!.length > 100) s.destroy();
    });
    s.on('error', () => {});
    setTimeout(() => s.destroy(), 2_000);
  });
  await new Promise<void>((r) => server.listen(0, host, () => r()));
  return { server, port: (server.address() as { port: number }).port, seen };
}

let base: string; // outside every root
let root: string; // the one allowed root
beforeAll(() => {
  base = realpathSync(mkdtempSync(join(tmpdir(), 'cairn-gitsrc-')));
  chmodSync(base, 0o755);
  root = join(base, 'allowed');
  mkdirSync(root, { mode: 0o755 });
  makeRepo(join(root, 'good'));
  makeRepo(join(base, 'outside'), 'outside');
  symlinkSync(join(base, 'outside'), join(root, 'link-out'));
});
afterAll(() => rmSync(base, { recursive: true, force: true }));

describe('isBlockedAddress (f)', () => {
  const table: [string, boolean][] = [
    ['127.0.0.1', true],
    ['127.255.255.254', true],
    ['10.1.2.3', true],
    ['172.16.0.1', true],
    ['172.31.255.255', true],
    ['172.32.0.1', false],
    ['192.168.1.1', true],
    ['169.254.169.254', true],
    ['169.254.0.1', true],
    ['100.64.0.1', true],
    ['100.127.255.255', true],
    ['100.128.0.1', false],
    ['0.0.0.0', true],
    ['0.1.2.3', true],
    ['224.0.0.251', true],
    ['239.255.255.250', true],
    ['255.255.255.255', true],
    ['240.0.0.1', true],
    ['198.18.0.1', true],
    ['192.0.2.1', true],
    ['8.8.8.8', false],
    ['1.1.1.1', false],
    ['140.82.112.3', false],
    ['::1', true],
    ['[::1]', true],
    ['::', true],
    ['0:0:0:0:0:0:0:1', true],
    ['fc00::1', true],
    ['fd12:3456:789a::1', true],
    ['fe80::1', true],
    ['fe80::1%eth0', true],
    ['febf::1', true],
    ['fec0::1', true],
    ['ff02::1', true],
    ['::ffff:127.0.0.1', true],
    ['::ffff:7f00:1', true],
    ['::ffff:169.254.169.254', true],
    ['::ffff:a9fe:a9fe', true],
    ['::ffff:10.0.0.1', true],
    ['::ffff:8.8.8.8', false],
    ['::ffff:0:127.0.0.1', true],
    ['::127.0.0.1', true],
    ['64:ff9b::127.0.0.1', true],
    ['64:ff9b::8.8.8.8', false],
    ['2002:7f00:1::', true],
    ['2002:0808:0808::1', false],
    ['2001:db8::1', true],
    ['2001:0:4136:e378:8000:63bf:3fff:fdd2', true],
    ['2606:4700:4700::1111', false],
    ['2a00:1450:4001:80b::200e', false],
    ['not-an-ip', true],
    ['', true],
    ['127.1', true],
  ];
  for (const [ip, blocked] of table)
    it(`${ip || '(empty)'} → ${blocked ? 'blocked' : 'allowed'}`, () =>
      expect(isBlockedAddress(ip)).toBe(blocked));
});

describe('the URL policy (pure, no network)', () => {
  it('accepts https:// URLs of public hosts and normalizes them', () => {
    setEnv({});
    expect(checkGitSource('https://github.com/owner/repo.git')).toEqual({
      kind: 'remote',
      url: 'https://github.com/owner/repo.git',
      host: 'github.com',
      port: 443,
      literal: false,
    });
    expect(checkGitSource('HTTPS://GitHub.com:8443/o/r')).toMatchObject({
      url: 'https://github.com:8443/o/r',
      host: 'github.com',
      port: 8443,
    });
  });

  it('(d) refuses every other scheme and git transport trick', () => {
    setEnv({ CAIRN_GIT_LOCAL_ROOTS: root });
    for (const url of [
      'http://github.com/o/r.git',
      'git://github.com/o/r.git',
      'ssh://git@github.com/o/r.git',
      'git@github.com:o/r.git',
      'ext::sh -c touch% /tmp/pwned',
      'fd::17',
      'file:///etc',
      'file://otherhost/srv/repo',
      '-uoption',
      '--upload-pack=touch /tmp/pwned',
      'relative/repo',
      './repo',
      '../repo',
      'https://user:secret@github.com/o/r.git',
      'https://token@github.com/o/r.git',
      'https://github.com/o/r.git#frag',
      'https://github.com\\@127.0.0.1/o/r.git',
      'https://github.com /o',
      'https://evil_host!/x',
      '',
    ])
      expect(() => checkGitSource(url), url).toThrow(GitSourceRefused);
  });

  it('refuses literal IP hosts in blocked ranges, in any spelling, unless the admin allows private hosts', () => {
    setEnv({});
    for (const url of [
      'https://10.1.2.3/x.git',
      'https://169.254.169.254/latest/meta-data',
      'https://[::1]/x',
      'https://[::ffff:127.0.0.1]/x',
      'https://[fe80::1]/x',
      'https://127.1/x',
      'https://2130706433/x', // 127.0.0.1 as one number
      'https://0x7f.0.0.1/x',
      'https://0/x',
      'https://localhost/x',
      'https://git.localhost/x',
    ])
      expect(
        refusal(() => checkGitSource(url)),
        url,
      ).toMatch(/address|this host/);
    expect(checkGitSource('https://8.8.8.8/x')).toMatchObject({ host: '8.8.8.8', literal: true });
    setEnv({ CAIRN_GIT_ALLOW_PRIVATE_HOSTS: '1' });
    expect(checkGitSource('https://10.1.2.3/x.git')).toMatchObject({ host: '10.1.2.3', literal: true });
  });

  it('no roots configured: no local path at all (the default)', () => {
    setEnv({});
    expect(gitSourcePolicy().localRoots).toEqual([]);
    expect(refusal(() => checkGitSource(join(root, 'good')))).toMatch(/allows no local git repositories/);
    expect(refusal(() => checkGitSource(`file://${join(root, 'good')}`))).toMatch(/allows no local/);
  });

  it('(b, c) a path under a root is accepted; outside, .. and symlink escapes are refused', () => {
    setEnv({ CAIRN_GIT_LOCAL_ROOTS: `/nonexistent-root:relative/root:${root}` });
    expect(gitSourcePolicy().localRoots).toEqual([root]);
    expect(checkGitSource(join(root, 'good'))).toEqual({ kind: 'local', path: join(root, 'good') });
    expect(checkGitSource(`file://${join(root, 'good')}`)).toEqual({
      kind: 'local',
      path: join(root, 'good'),
    });
    const outside = /is not inside a directory this instance allows/;
    expect(refusal(() => checkGitSource(join(base, 'outside')))).toMatch(outside);
    expect(refusal(() => checkGitSource(`${root}/../outside`))).toMatch(outside);
    expect(refusal(() => checkGitSource(`file://${root}/%2e%2e/outside`))).toMatch(outside);
    expect(refusal(() => checkGitSource(join(root, 'link-out')))).toMatch(outside);
    expect(refusal(() => checkGitSource('/etc'))).toMatch(outside);
    // Inside a root, a missing repository is named; outside, existence is not revealed.
    expect(refusal(() => checkGitSource(join(root, 'nope')))).toMatch(/does not exist/);
    expect(refusal(() => checkGitSource('/etc/nonexistent-dir'))).toMatch(outside);
    // A symlinked root is resolved too: the same repository through the link is inside.
    symlinkSync(root, join(base, 'root-link'));
    setEnv({ CAIRN_GIT_LOCAL_ROOTS: join(base, 'root-link') });
    expect(checkGitSource(join(base, 'root-link', 'good'))).toEqual({
      kind: 'local',
      path: join(root, 'good'),
    });
    expect(refusal(() => checkGitSource(join(base, 'root-link', 'link-out')))).toMatch(outside);
  });

  it('git_ref is a branch or tag name, never an option', () => {
    for (const ok of [undefined, 'main', 'v1.2.0', 'feature/x', 'release-1_2'])
      expect(() => checkGitRef(ok)).not.toThrow();
    for (const bad of [
      '',
      '-x',
      '--upload-pack=sh',
      'a..b',
      'a b',
      'x:y',
      '@{-1}',
      'x.lock',
      '/x',
      'x/',
      '.hidden',
    ])
      expect(() => checkGitRef(bad), bad).toThrow(GitSourceRefused);
  });

  it('the clone command line: one protocol, no hooks, no redirects, no submodules, pinned', () => {
    const remote = checkGitSource('https://github.com/o/r.git');
    const argv = gitCloneArgv(remote, 'v1', curlResolvePin('github.com', 443, '140.82.112.3'));
    const configs = argv.filter((_, i) => argv[i - 1] === '-c');
    expect(configs).toEqual(
      expect.arrayContaining([
        'protocol.allow=never',
        'protocol.https.allow=always',
        'core.hooksPath=/dev/null',
        'http.followRedirects=false',
        'http.curloptResolve=github.com:443:140.82.112.3',
      ]),
    );
    expect(configs.some((c) => c.startsWith('protocol.file'))).toBe(false);
    expect(argv.slice(-3)).toEqual(['--', 'https://github.com/o/r.git', '/checkout']);
    expect(argv).toContain('--no-recurse-submodules');
    expect(curlResolvePin('h.example', 443, '2606:4700::1')).toBe('h.example:443:[2606:4700::1]');
  });
});

describe('the host guard (a fake resolver: no DNS traffic)', () => {
  const fake =
    (answers: Record<string, string[]>): Lookup =>
    async (host) => {
      const a = answers[host];
      if (!a) throw Object.assign(new Error('not found'), { code: 'ENOTFOUND' });
      return a.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
    };
  const resolver = fake({
    'private.example': ['10.0.0.5'],
    'metadata.example': ['169.254.169.254'],
    'mixed.example': ['140.82.112.3', '127.0.0.1'],
    'mapped.example': ['::ffff:192.168.0.1'],
    'public.example': ['140.82.112.3', '140.82.112.4'],
  });
  const remote = (host: string) => {
    const t = checkGitSource(`https://${host}/o/r.git`);
    if (t.kind !== 'remote') throw new Error('remote expected');
    return t;
  };

  it('refuses a name resolving to a blocked address, even one of several', async () => {
    setEnv({});
    for (const h of ['private.example', 'metadata.example', 'mixed.example', 'mapped.example'])
      await expect(guardRemoteHost(remote(h), gitSourcePolicy(), resolver), h).rejects.toThrow(
        /resolves to .*loopback, private, link-local or reserved/,
      );
    await expect(guardRemoteHost(remote('nxdomain.example'), gitSourcePolicy(), resolver)).rejects.toThrow(
      /does not resolve \(ENOTFOUND\)/,
    );
  });

  it('returns the first address of a public name, to pin git to', async () => {
    setEnv({});
    expect(await guardRemoteHost(remote('public.example'), gitSourcePolicy(), resolver)).toEqual({
      address: '140.82.112.3',
      family: 4,
    });
    setEnv({ CAIRN_GIT_ALLOW_PRIVATE_HOSTS: '1' });
    expect(await guardRemoteHost(remote('private.example'), gitSourcePolicy(), resolver)).toMatchObject({
      address: '10.0.0.5',
    });
  });
});

describe('builds from git sources (real git in real bubblewrap)', () => {
  it('(build time) refuses literal blocked hosts before any connection', async () => {
    setEnv({});
    const l4 = await listener('127.0.0.1');
    const l6 = await listener('::1').catch(() => undefined);
    try {
      const urls = [
        'https://10.1.2.3/x.git',
        'https://169.254.169.254/x',
        'https://[::1]/x',
        `https://127.0.0.1:${l4.port}/x.git`,
        `https://[::ffff:127.0.0.1]:${l4.port}/x.git`,
        ...(l6 ? [`https://[::1]:${l6.port}/x.git`] : []),
      ];
      for (const url of urls) {
        const t0 = performance.now();
        const e = await buildGo(sandbox, { source: { type: 'git', git_url: url }, handler: 'Handler' }).catch(
          (x) => x,
        );
        expect(e, url).toBeInstanceOf(GoBuildError);
        expect(e.kind).toBe('source');
        expect(e.message, url).toMatch(/loopback, private, link-local or reserved address/);
        expect(performance.now() - t0, url).toBeLessThan(1_000); // no connection attempt, no timeout
      }
      expect(l4.seen).toEqual([]);
      expect(l6?.seen ?? []).toEqual([]);
    } finally {
      l4.server.close();
      l6?.server.close();
    }
  });

  it('(build time) refuses a local path when no roots are configured, even one accepted earlier', async () => {
    setEnv({});
    const e = await buildGo(sandbox, {
      source: { type: 'git', git_url: join(root, 'good') },
      handler: 'Handler',
    }).catch((x) => x);
    expect(e).toBeInstanceOf(GoBuildError);
    expect(e.message).toMatch(/allows no local git repositories/);
    const b = await buildGo(sandbox, {
      source: { type: 'git', git_url: '/etc', path: '.' },
      handler: 'Handler',
    }).catch((x) => x);
    expect(b.message).toMatch(/allows no local git repositories/);
  });

  it('(b) a repository under an allowed root builds, pinned to its commit', async () => {
    setEnv({ CAIRN_GIT_LOCAL_ROOTS: root });
    const b = await buildGo(sandbox, {
      source: { type: 'git', git_url: join(root, 'good'), git_ref: 'main' },
      handler: 'Handler',
    });
    expect(b.commit).toBe(
      execFileSync('git', ['-C', join(root, 'good'), 'rev-parse', 'HEAD'], { encoding: 'utf8' }).trim(),
    );
    expect(readFileSync(b.binary).subarray(0, 4).toString('hex')).toBe('7f454c46');
  }, 120_000);

  it.runIf(sandbox.pooledUids)(
    '(e) git runs as the unprivileged builder uid: a repository only root can read cannot be cloned',
    async () => {
      setEnv({ CAIRN_GIT_LOCAL_ROOTS: root });
      const repo = makeRepo(join(root, 'root-only'), 'root-only');
      // Owned by root and readable by root alone: git run as root would read it.
      const config = join(repo, '.git', 'config');
      chmodSync(config, 0o600);
      try {
        const e = await buildGo(sandbox, {
          source: { type: 'git', git_url: repo, git_ref: 'main' },
          handler: 'Handler',
        }).catch((x) => x);
        expect(e).toBeInstanceOf(GoBuildError);
        expect(e.message).toMatch(/git clone of .* failed/);
        expect(e.diagnostics).toMatch(/unable to access '(\.\/)?config': Permission denied/);
        chmodSync(config, 0o644);
        const ok = await buildGo(sandbox, {
          source: { type: 'git', git_url: repo, git_ref: 'main' },
          handler: 'Handler',
        });
        expect(ok.commit).toMatch(/^[0-9a-f]{40}$/);
      } finally {
        rmSync(repo, { recursive: true, force: true });
      }
    },
    120_000,
  );

  it('git runs in the sandbox: objects borrowed from outside the root (alternates) are not reachable', async () => {
    setEnv({ CAIRN_GIT_LOCAL_ROOTS: root });
    // A repository inside the root whose objects live in one outside it: a host-side clone reads them.
    const borrower = join(root, 'borrower');
    execFileSync('git', ['clone', '-q', '--shared', join(base, 'outside'), borrower]);
    chmodSync(borrower, 0o755);
    try {
      const host = mkdtempSync(join(tmpdir(), 'cairn-hostclone-'));
      execFileSync('git', ['clone', '-q', '--no-local', borrower, join(host, 'c')]);
      expect(readFileSync(join(host, 'c', 'fn.go'), 'utf8')).toContain('outside');
      rmSync(host, { recursive: true, force: true });
      const e = await buildGo(sandbox, {
        source: { type: 'git', git_url: borrower, git_ref: 'main' },
        handler: 'Handler',
      }).catch((x) => x);
      expect(e).toBeInstanceOf(GoBuildError);
      expect(e.message).toMatch(/git clone of .* failed/);
      expect(e.diagnostics).toMatch(/unable to normalize alternate object path/);
    } finally {
      rmSync(borrower, { recursive: true, force: true });
    }
  }, 120_000);

  it('source.path through a symlink in the repository cannot stage host files', async () => {
    setEnv({ CAIRN_GIT_LOCAL_ROOTS: root });
    const repo = makeRepo(join(root, 'evil-path'));
    symlinkSync('/etc', join(repo, 'sub'));
    execFileSync('git', ['-C', repo, 'add', '-A']);
    execFileSync('git', ['-C', repo, '-c', 'user.email=t@t', '-c', 'user.name=t', 'commit', '-qm', 'link']);
    try {
      const e = await buildGo(sandbox, {
        source: { type: 'git', git_url: repo, git_ref: 'main', path: 'sub' },
        handler: 'Handler',
      }).catch((x) => x);
      expect(e).toBeInstanceOf(GoBuildError);
      expect(e.message).toMatch(/source.path must be a directory inside the repository/);
    } finally {
      rmSync(repo, { recursive: true, force: true });
    }
  }, 120_000);

  // A host name that resolves to loopback from /etc/hosts alone (no DNS query), and that curl
  // does not treat as "localhost" itself; the sandbox has no /etc/hosts, so only the pin reaches it.
  const hostsName = (() => {
    try {
      for (const line of readFileSync('/etc/hosts', 'utf8').split('\n')) {
        const [addr, ...names] = line.replace(/#.*/, '').trim().split(/\s+/);
        if (!addr?.startsWith('127.')) continue;
        const n = names.find((x) => /^[a-z][a-z0-9-]*$/.test(x) && x !== 'localhost');
        if (n) return { name: n, addr };
      }
    } catch {
      // no /etc/hosts
    }
    return undefined;
  })();

  it.runIf(hostsName !== undefined)(
    'a name resolving to loopback is refused before connecting; allowed, git connects to the pinned address',
    async () => {
      const { name, addr } = hostsName!;
      const l = await listener(addr);
      try {
        setEnv({});
        const e = await buildGo(sandbox, {
          source: { type: 'git', git_url: `https://${name}:${l.port}/x.git` },
          handler: 'Handler',
        }).catch((x) => x);
        expect(e).toBeInstanceOf(GoBuildError);
        expect(e.message).toMatch(new RegExp(`resolves to ${addr.replace(/\./g, '\\.')}, a loopback`));
        expect(l.seen).toEqual([]);

        setEnv({ CAIRN_GIT_ALLOW_PRIVATE_HOSTS: '1' });
        const f = await buildGo(sandbox, {
          source: { type: 'git', git_url: `https://${name}:${l.port}/x.git` },
          handler: 'Handler',
        }).catch((x) => x);
        expect(f).toBeInstanceOf(GoBuildError);
        expect(f.message).toMatch(/git clone of .* failed/);
        // git (curl) reached the listener and opened TLS for the name: only the pin told it the address.
        expect(l.seen.length).toBeGreaterThan(0);
        expect(f.diagnostics).toMatch(/gnutls_handshake\(\) failed|TLS/);
        expect(l.seen[0]![0]).toBe(0x16); // a TLS handshake record
        expect(l.seen[0]!.includes(Buffer.from(name))).toBe(true); // SNI
      } finally {
        l.server.close();
      }
    },
    60_000,
  );
});

describe('element definitions (the API answers a typed 400, nothing is created)', () => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  let drop: () => Promise<void>;
  let n = 0;
  beforeAll(async () => {
    const h = await freshDb('pglite');
    drop = h.drop;
    t = await testApp(h.db, { worker: false });
    c = await t.circle('gitsrc');
  }, 120_000);
  afterAll(async () => {
    await t.close();
    await drop();
  });
  const create = async (git_url: string, git_ref = 'v1') => {
    const slug = `g${n++}`;
    const r = await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: 'go-fn', slug, spec: { source: { type: 'git', git_url, git_ref } } },
      c.tokens.write,
    );
    return { slug, r };
  };
  const expectRefused = async (git_url: string, message: RegExp, git_ref?: string) => {
    const { slug, r } = await create(git_url, git_ref);
    expect(r.status, `${git_url}: ${JSON.stringify(r.body)}`).toBe(400);
    expect(r.body.error).toMatchObject({ code: 'INVALID_SPEC', class: 'validation', retryable: false });
    expect(r.body.error.message).toMatch(message);
    expect(r.body.error._suggestion).toMatch(/https:\/\/|CAIRN_GIT_LOCAL_ROOTS|branch or tag/);
    const get = await t.call('GET', `/api/${c.slug}/${slug}/ops/get`, undefined, c.tokens.read);
    expect(get.status).toBe(404);
  };

  it('(a) a local path with no roots configured', async () => {
    setEnv({});
    await expectRefused('/tmp/whatever', /allows no local git repositories/);
    await expectRefused(join(root, 'good'), /allows no local git repositories/);
  });

  it('(c) outside the roots, a .. escape, a symlink escape', async () => {
    setEnv({ CAIRN_GIT_LOCAL_ROOTS: root });
    const outside = /is not inside a directory this instance allows/;
    await expectRefused(join(base, 'outside'), outside);
    await expectRefused(`${root}/../outside`, outside);
    await expectRefused(join(root, 'link-out'), outside);
    await expectRefused('file:///etc', outside);
  });

  it('(d) other schemes, transport tricks, credentials, blocked literal hosts, option-like refs', async () => {
    setEnv({ CAIRN_GIT_LOCAL_ROOTS: root });
    await expectRefused('http://github.com/o/r.git', /http:\/\/ scheme is not allowed/);
    await expectRefused('git://github.com/o/r.git', /git:\/\/ scheme is not allowed/);
    await expectRefused(
      'ext::sh -c touch% /tmp/pwned',
      /neither an https:\/\/ URL nor an absolute local path/,
    );
    await expectRefused('-uoption', /must not start with "-"/);
    await expectRefused('https://u:p@github.com/o/r.git', /credentials/);
    await expectRefused('https://169.254.169.254/x', /loopback, private, link-local/);
    await expectRefused('https://github.com/o/r.git', /not a valid branch or tag name/, '--upload-pack=sh');
  });

  it('(b) accepted: an https URL, and a repository under an allowed root', async () => {
    setEnv({});
    expect((await create('https://github.com/o/r.git')).r.status).toBe(201);
    setEnv({ CAIRN_GIT_LOCAL_ROOTS: root });
    expect((await create(join(root, 'good'))).r.status).toBe(201);
  });
});

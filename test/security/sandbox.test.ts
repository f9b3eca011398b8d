import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, sandboxOptions, type SandboxRequest } from '../../src/sandbox/runner.js';

const sandbox = new Sandbox();
import { cacheRoot } from '../../src/sandbox/exec-helper.js';
import { UidPool } from '../../src/sandbox/uids.js';
import { buildGo, GoBuildError } from '../../src/sandbox/builders/go.js';

/**
 * One test per attack (issue 3's list). Each runs the real probe binary in the
 * real sandbox and fails if containment breaks.
 */
describe('sandbox containment', () => {
  let dir: string;
  let probe: string;
  let server: Server;
  let port: number;
  const run = (args: string[], extra: Partial<SandboxRequest> = {}) =>
    sandbox.run({ argv: ['/probe', ...args], binds: [{ src: probe, dest: '/probe' }], ...extra });
  const said = async (args: string[], extra: Partial<SandboxRequest> = {}) =>
    (await run(args, extra)).stdout.toString().trim();

  beforeAll(async () => {
    ({ dir, probe } = buildProbe());
    server = createServer((s) => s.end('platform secret'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    port = (server.address() as { port: number }).port;
  }, 120_000);
  afterAll(() => {
    server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('has no network: TCP, UDP and DNS egress fail', async () => {
    expect(await said(['tcp', '1.1.1.1:443'])).toMatch(
      /tcp err=.*(operation not permitted|network is unreachable)/,
    );
    expect(await said(['udp', '8.8.8.8:53'])).toMatch(
      /udp err=.*(operation not permitted|network is unreachable)/,
    );
    expect(await said(['dns', 'proxy.golang.org'])).toMatch(/dns err=.+/);
    expect(await said(['inet'])).toBe('inet err=operation not permitted');
    expect(await said(['unix'])).toBe('unix err=<nil>'); // AF_UNIX stays available (runtimes use it)
  });

  it("cannot reach the platform's own port on loopback", async () => {
    expect(await said(['tcp', `127.0.0.1:${port}`])).toMatch(
      /tcp err=.*(operation not permitted|connection refused)/,
    );
  });

  it('cannot read host files: shadow, the data dir, the binary cache, other binaries', async () => {
    for (const p of [
      '/etc/shadow',
      '/etc/passwd',
      join(cacheRoot(), 'go'),
      process.cwd() + '/package.json',
      '/root/.bash_history',
      probe,
    ]) {
      expect(await said(['read', p])).toMatch(
        /read bytes=0 err=.*(no such file or directory|is a directory|permission denied)/,
      );
    }
    expect(await said(['ls', '/'])).toBe('ls dev,probe,proc,tmp err=<nil>');
  });

  it('cannot write outside /tmp, and /tmp is capped', async () => {
    for (const p of ['/probe', '/x', '/dev/x', '/proc/x'])
      expect(await said(['write', p])).toMatch(/write err=.+/);
    expect(await said(['write', '/tmp/ok'])).toBe('write err=<nil>');
    const fill = await said(['fill'], { limits: { tmpMb: 8, fileSizeMb: 64 } });
    expect(fill).toMatch(/fill mb=[0-8] err=.*no space left on device/);
    const big = await said(['fill'], { limits: { tmpMb: 64, fileSizeMb: 4 } });
    expect(big).toMatch(/fill mb=[0-4] err=.*file too large/);
  });

  it('a fork bomb hits the process cap and dies with the run', async () => {
    const r = await run(['forkbomb'], { limits: { maxProcs: 16, timeoutMs: 3000 } });
    const m = /forkbomb started=(\d+) err=(.*)/.exec(r.stdout.toString());
    expect(m).not.toBeNull();
    expect(Number(m![1])).toBeLessThan(16);
    expect(m![2]).toMatch(/resource temporarily unavailable/);
    expect(processesOf(r.uid)).toEqual([]);
  });

  it('a memory bomb ends as memory_exceeded', async () => {
    const r = await run(['mem', '2000'], { limits: { memoryMb: 64 }, oomMarkers: [/out of memory/] });
    expect(r.verdict).toBe('memory_exceeded');
    expect(r.stdout.toString()).not.toMatch(/allocated=2000/);
  });

  it('where a memory cgroup is writable, it limits the whole tree and counts the OOM kill itself', async () => {
    if (!sandbox.memoryCgroups) return; // RLIMIT_DATA covers other hosts (test above)
    // No OOM markers: the verdict can only come from the kernel's own count.
    const r = await run(['mem', '2000'], { limits: { memoryMb: 96 } });
    expect(r.verdict).toBe('memory_exceeded');
    expect(r.exitCode).not.toBe(0); // killed inside; bwrap's reaper reports it as an exit status
    expect(r.peakMemoryKb).toBeGreaterThan(64 * 1024);
    expect(r.peakMemoryKb).toBeLessThanOrEqual(96 * 1024 + 1024);
    const small = await run(['mem', '8'], { limits: { memoryMb: 96 } });
    expect(small.stdout.toString()).toBe('mem allocated=8\n');
    expect(small.peakMemoryKb).toBeGreaterThan(8 * 1024);
  });

  it('a busy loop and a long sleep are killed within 50 ms of the limit', async () => {
    for (const args of [['busy'], ['sleep', '60000']]) {
      const r = await run(args, { limits: { timeoutMs: 400 } });
      expect(r.verdict).toBe('timeout');
      expect(r.durationMs).toBeGreaterThanOrEqual(400);
      expect(r.durationMs - 400).toBeLessThan(50);
      expect(processesOf(r.uid)).toEqual([]);
    }
  });

  it('a stdout flood is cut at the cap', async () => {
    const r = await run(['flood'], { limits: { stdoutBytes: 64 * 1024 } });
    expect(r.verdict).toBe('output_limit');
    expect(r.stdout.length).toBe(64 * 1024);
    expect(r.stdoutTruncated).toBe(true);
  });

  it('cannot ptrace pid 1, unshare, clone namespaces or mount', async () => {
    expect(await said(['ptrace'])).toBe('ptrace errno=1');
    expect(await said(['unshare'])).toBe('unshare err=operation not permitted');
    expect(await said(['clonens'])).toBe('clonens errno=1');
    expect(await said(['mount'])).toBe('mount err=operation not permitted');
  });

  it('/proc shows only its own namespace, and pid 1 has an empty environment', async () => {
    expect(await said(['procs'])).toMatch(/^procs 1,2$/);
    expect(await said(['environ1'])).toBe('environ1 "" err=<nil>');
  });

  it('shows no host path or limit in any command line inside (issue 9, finding 6)', async () => {
    const out = await said(['cmdlines']);
    expect(out).toMatch(/^cmdlines 1:/);
    // pid 1 is bwrap, whose options (binds with host paths, sizes) came on a fd it has closed.
    expect(out).toMatch(/1:\S*bwrap --args 6 -- \/probe cmdlines/);
    for (const leak of [probe, dir, cacheRoot(), '--ro-bind', '--size', '--seccomp', '/tmp/cairn'])
      expect(out).not.toContain(leak);
    const fds = (await said(['fds'])).replace(/^fds /, '').split(',');
    expect(fds.some((f) => f.startsWith('6='))).toBe(false);
  });

  it('refuses System V shared memory, which outlives its mappings', async () => {
    expect(await said(['sysvshm'])).toBe('sysvshm err=operation not permitted');
  });

  it('leaks neither environment nor inherited file descriptors', async () => {
    process.env.CAIRN_SECRET_FOR_TEST = 'host-secret';
    try {
      expect(await said(['env'], { env: { ONLY: 'this' } })).toBe('env ONLY=this;PWD=/tmp');
    } finally {
      delete process.env.CAIRN_SECRET_FOR_TEST;
    }
    const fds = (await said(['fds'])).replace(/^fds /, '').split(',');
    expect(
      fds
        .map((f) => f.split('=')[0])
        .filter((n) => Number(n) > 3 && !fds.find((f) => f.startsWith(n + '=') && f.endsWith('='))),
    ).toEqual([]);
  });

  it('a setuid binary gains nothing', async () => {
    const suid = join(dir, 'probe-suid');
    copyFileSync(probe, suid);
    chmodSync(suid, 0o4755);
    expect(statSync(suid).mode & 0o4000).toBe(0o4000);
    const r = await sandbox.run({ argv: ['/probe', 'id'], binds: [{ src: suid, dest: '/probe' }] });
    const m = /id uid=(\d+) euid=(\d+)/.exec(r.stdout.toString());
    expect(m![2]).toBe(m![1]);
    expect(m![2]).not.toBe('0');
  });

  it('no process outlives its run (orphans included)', async () => {
    const r = await run(['orphan']);
    expect(r.stdout.toString()).toMatch(/orphan pid=\d+ err=<nil>/);
    await new Promise((res) => setTimeout(res, 100));
    expect(processesOf(r.uid)).toEqual([]);
  });

  it('the result travels on its own fd, apart from the logs', async () => {
    const r = await run(['result', '{"answer":42}']);
    expect(r.verdict).toBe('ok');
    expect(r.result.toString()).toBe('{"answer":42}');
    expect(r.stdout.toString()).toBe('result write err=<nil>\n');
  });

  it('a build planting a symlink for the output the host reads back is refused', async () => {
    const repo = mkdtempSync(join(tmpdir(), 'cairn-evil-repo-'));
    chmodSync(repo, 0o755); // the builder uid clones it
    const savedRoots = process.env.CAIRN_GIT_LOCAL_ROOTS;
    process.env.CAIRN_GIT_LOCAL_ROOTS = repo; // the admin allows this one local repository
    execFileSync('git', ['init', '-q', '-b', 'main', repo]);
    execFileSync('sh', [
      '-c',
      `cd ${repo} && printf 'module evil\\n\\ngo 1.22\\n' > go.mod && printf 'package main\\n\\nfunc Handler(in map[string]interface{}) (map[string]interface{}, error) { return in, nil }\\n' > fn.go && ln -s /etc/passwd .cairn-fn && git add -A && git -c user.email=t@t -c user.name=t commit -qm x`,
    ]);
    try {
      const b = await buildGo(sandbox, {
        source: { type: 'git', git_url: repo, git_ref: 'main' },
        handler: 'Handler',
      });
      // Either the build replaced the link with its own file, or it was refused: never a link in the cache.
      const st = (await import('node:fs')).lstatSync(b.binary);
      expect(st.isSymbolicLink()).toBe(false);
      expect(readFileSync(b.binary).subarray(0, 4).toString('hex')).toBe('7f454c46'); // an ELF binary, not /etc/passwd
    } catch (e) {
      expect(e).toBeInstanceOf(GoBuildError);
      expect((e as GoBuildError).kind).not.toBe('source'); // refused by the build, not by the git policy
    } finally {
      if (savedRoots === undefined) delete process.env.CAIRN_GIT_LOCAL_ROOTS;
      else process.env.CAIRN_GIT_LOCAL_ROOTS = savedRoots;
      rmSync(repo, { recursive: true, force: true });
    }
  }, 120_000);

  it('compile-time attacks: cgo is off, go:generate does not run', async () => {
    const cgo = `package main

// #include <stdlib.h>
import "C"

func Handler(in map[string]interface{}) (map[string]interface{}, error) { return in, nil }
`;
    await expect(
      buildGo(sandbox, { source: { type: 'inline', code: cgo }, handler: 'Handler' }),
    ).rejects.toBeInstanceOf(GoBuildError);
    const gen = `package main

//go:generate sh -c "echo pwned > /src/pwned.go"

func Handler(in map[string]interface{}) (map[string]interface{}, error) { return map[string]interface{}{"ok": true}, nil }
`;
    const b = await buildGo(sandbox, { source: { type: 'inline', code: gen }, handler: 'Handler' });
    expect(readFileSync(b.binary).includes(Buffer.from('pwned'))).toBe(false);
  }, 120_000);
});

describe('sandboxes made ahead of time (standby)', () => {
  let dir: string;
  let probe: string;
  beforeAll(() => ({ dir, probe } = buildProbe()), 120_000);
  afterAll(() => {
    sandbox.discardStandbys();
    rmSync(dir, { recursive: true, force: true });
  });
  const standby = (args: string[], extra: Partial<SandboxRequest> = {}) =>
    sandbox.run({
      argv: ['/probe', ...args],
      binds: [{ src: probe, dest: '/probe' }],
      standby: true,
      ...extra,
    });
  const settle = () => new Promise((r) => setTimeout(r, 300)); // the next standby is made after a run

  it('each run gets a fresh sandbox: nothing an earlier run left is visible', async () => {
    const seen = [];
    for (let i = 0; i < 3; i++) {
      const r = await standby(['mark']);
      seen.push(r.stdout.toString().trim());
      await settle();
    }
    expect(seen).toEqual(Array(3).fill('mark saw=[] err=<nil> write=<nil>'));
  });

  it('no code of the run starts before its input is handed over', async () => {
    const token = String(100_000 + Math.floor(Math.random() * 800_000));
    await standby(['sleep', token], { limits: { timeoutMs: 2_000 } }); // leaves one held for this request
    await settle();
    // The held sandbox's processes: bwrap, set up and waiting; never the program.
    const held = cmdlines().filter((c) => c.includes(token));
    expect(held.length).toBeGreaterThan(0);
    expect(held.every((c) => c.startsWith('/usr/bin/bwrap'))).toBe(true);
  });

  it("the run's clock starts when its input is handed over, not when its sandbox was made", async () => {
    await standby(['sleep', '50'], { limits: { timeoutMs: 400 } });
    await new Promise((r) => setTimeout(r, 600)); // the held one waits longer than the limit
    const r = await standby(['sleep', '50'], { limits: { timeoutMs: 400 } });
    expect(r.verdict).toBe('invalid_output'); // slept and exited 0, with no result on fd 3
    expect(r.stdout.toString()).toBe('slept\n');
    expect(r.durationMs).toBeLessThan(400);
    const t = await standby(['sleep', '60000'], { limits: { timeoutMs: 400 } });
    expect(t.verdict).toBe('timeout');
    expect(t.durationMs - 400).toBeLessThan(50);
    await new Promise((res) => setTimeout(res, 50));
    expect(processesOf(t.uid)).toEqual([]);
  });

  it('held sandboxes are killed at shutdown, leaving no process behind', async () => {
    const token = String(100_000 + Math.floor(Math.random() * 800_000));
    await standby(['sleep', token], { limits: { timeoutMs: 1_000 } }); // the run itself ends at its limit
    await settle();
    expect(cmdlines().some((c) => c.includes(token))).toBe(true);
    sandbox.discardStandbys();
    await new Promise((r) => setTimeout(r, 200));
    expect(cmdlines().filter((c) => c.includes(token))).toEqual([]);
  });
});

describe('sandbox instances', () => {
  it('each instance is built from its own options, with its own uid slot: no module state is shared', async () => {
    const a = new Sandbox({ ...sandboxOptions(), uidBase: 3_200_000, uidPoolSize: 4 });
    const off = new Sandbox({ ...sandboxOptions(), disabled: true, uidBase: 3_300_000, uidPoolSize: 4 });
    try {
      const req = { argv: ['/bin/sh', '-c', 'id -u; hostname'], binds: [{ src: '/', dest: '/' }] };
      const [inside, outside] = await Promise.all([a.run(req), off.run(req)]);
      expect(inside.sandboxed).toBe(true);
      expect(outside.sandboxed).toBe(false);
      expect(inside.stdout.toString()).toMatch(/sandbox\n$/); // bwrap's hostname
      expect(outside.stdout.toString()).not.toMatch(/^sandbox$/m);
      if (process.getuid?.() === 0) {
        expect(Math.floor((inside.uid! - 3_200_000) / 4)).toBeGreaterThanOrEqual(0);
        expect(inside.uid! < 3_300_000).toBe(true);
        expect(outside.uid! >= 3_300_000).toBe(true);
        expect(a.builderUid).toBe(3_199_999);
      }
      expect(a.diagnostics().backend).toBe('bubblewrap');
      expect(off.diagnostics().backend).toMatch(/^none/);
    } finally {
      a.close();
      off.close();
    }
  });
});

describe('sandbox uids', () => {
  it('two pools (two Cairn processes on one host) never hand out the same uid', async () => {
    if (process.getuid?.() !== 0) return; // uids are pooled only as root
    const a = new UidPool(3_100_000, 8);
    const b = new UidPool(3_100_000, 8);
    const ua = await Promise.all(Array.from({ length: 8 }, () => a.acquire()));
    const ub = await Promise.all(Array.from({ length: 8 }, () => b.acquire()));
    expect(new Set([...ua, ...ub]).size).toBe(16);
    expect(Math.floor((ua[0]! - 3_100_000) / 8)).not.toBe(Math.floor((ub[0]! - 3_100_000) / 8));
  });
});

/** The probe binary (every attack), built into a directory sandbox uids can traverse. */
function buildProbe(): { dir: string; probe: string } {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-probe-'));
  chmodSync(dir, 0o755);
  const probe = join(dir, 'probe');
  execFileSync('go', ['build', '-o', probe, '.'], {
    cwd: new URL('./probe/', import.meta.url).pathname,
    env: { ...process.env, CGO_ENABLED: '0' },
  });
  return { dir, probe };
}

/** Every process's command line, space-separated. */
function cmdlines(): string[] {
  const out: string[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      out.push(readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').join(' ').trim());
    } catch {
      // gone
    }
  }
  return out;
}

/** Host processes running as the sandbox's uid, by scanning /proc. */
function processesOf(uid: number | null): string[] {
  if (uid === null) return [];
  const out: string[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const status = readFileSync(`/proc/${p}/status`, 'utf8');
      const u = /^Uid:\s+(\d+)/m.exec(status)?.[1];
      if (Number(u) === uid) out.push(p);
    } catch {
      // gone
    }
  }
  return out;
}

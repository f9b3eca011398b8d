import { execFileSync } from 'node:child_process';
import dns from 'node:dns';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { CairnError } from '../../src/core/errors.js';
import { checkAddress, checkUrl, openRequest, parseAllowList, request } from '../../src/net/http-client.js';
import type { OutboundRequest, Resolver } from '../../src/net/transport.js';
import { loopbackGuard } from '../helpers/loopback-guard.js';

/**
 * The SSRF guard of the outbound HTTP client (R-HTTP). THE RULE: no test sends a packet anywhere but
 * loopback. Every socket connect goes through a guard that records its target and throws (before
 * the SYN) for anything outside 127.0.0.0/8 and ::1; real DNS is stubbed to throw. Refusals are
 * shown to happen with zero connects; real requests go only to servers started here on 127.0.0.1.
 */

// ---------------------------------------------------------------------------------------------
// The guard: connects and DNS

/** Runs `f` with the operator's CAIRN_OUTBOUND_PRIVATE_NETS set to `nets` (read at call time). */
function withOperatorNets(nets: string, f: () => void): void {
  const before = process.env.CAIRN_OUTBOUND_PRIVATE_NETS;
  process.env.CAIRN_OUTBOUND_PRIVATE_NETS = nets;
  try {
    f();
  } finally {
    process.env.CAIRN_OUTBOUND_PRIVATE_NETS = before;
  }
}

const guard = loopbackGuard();
const { connects, dnsCalls } = guard;

beforeEach(() => {
  connects.length = 0;
  dnsCalls.length = 0;
  guard.on();
});

afterEach(() => guard.off());

// ---------------------------------------------------------------------------------------------
// Loopback servers and helpers

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
  servername?: string | false | null;
}
interface TestServer {
  server: Server;
  port: number;
  /** http://127.0.0.1:port */
  origin: string;
  seen: Seen[];
}

const servers: Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
});

type Handler = (req: IncomingMessage, res: ServerResponse, seen: Seen) => void;

async function serve(handler: Handler, server: Server = createServer()): Promise<TestServer> {
  const seen: Seen[] = [];
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      const s: Seen = {
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body,
        servername: (req.socket as TLSSocket).servername,
      };
      seen.push(s);
      handler(req, res, s);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  servers.push(server);
  const port = (server.address() as net.AddressInfo).port;
  return { server, port, origin: `http://127.0.0.1:${port}`, seen };
}

const ok: Handler = (_req, res) => res.end('ok');
const redirectTo =
  (location: string, status = 302): Handler =>
  (_req, res) => {
    res.writeHead(status, { location });
    res.end();
  };

/** A resolver from a fixed table, counting its calls; unknown names fail like NXDOMAIN. */
function resolverOf(table: Record<string, string[]>): Resolver & { calls: string[] } {
  const calls: string[] = [];
  const r = async (host: string) => {
    calls.push(host);
    const addrs = table[host];
    if (!addrs) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
    return addrs.map((address) => ({ address, family: (net.isIPv6(address) ? 6 : 4) as 4 | 6 }));
  };
  return Object.assign(r, { calls });
}

const base = (url: string, extra: Partial<OutboundRequest> = {}): OutboundRequest => ({
  method: 'GET',
  url,
  timeoutMs: 5_000,
  ...extra,
});

async function failure(p: Promise<unknown>, code: string): Promise<CairnError> {
  let caught: unknown;
  try {
    await p;
  } catch (e) {
    caught = e;
  }
  expect(caught, `expected ${code}`).toBeInstanceOf(CairnError);
  const e = caught as CairnError;
  expect(e.code, e.message).toBe(code);
  expect(e.suggestion.length).toBeGreaterThan(20);
  return e;
}

// ---------------------------------------------------------------------------------------------

describe('the test guard itself', () => {
  it('throws before a connect to a non-loopback address, and blocks real DNS', () => {
    expect(() => net.connect({ host: '10.255.255.1', port: 9 })).toThrow(/TEST GUARD/);
    expect(() => net.connect(9, '192.0.2.1')).toThrow(/TEST GUARD/);
    expect(connects.map((c) => c.host)).toEqual(['10.255.255.1', '192.0.2.1']);
    expect(() => dns.lookup('example.com', () => {})).toThrow(/TEST GUARD/);
  });
});

/** [URL, words the refusal must name]: every refused class, by literal and by every spelling. */
const REFUSED_URLS: [string, RegExp][] = [
  // loopback: each IPv4 spelling WHATWG accepts, and the IPv6 forms
  ['http://127.0.0.1/', /loopback/],
  ['http://127.255.255.254/', /loopback/],
  ['http://2130706433/', /loopback/], // decimal
  ['http://0177.0.0.1/', /loopback/], // octal
  ['http://017700000001/', /loopback/], // octal, one part
  ['http://0x7f.1/', /loopback/], // hex, short
  ['http://0x7f000001/', /loopback/], // hex, one part
  ['http://0x7f.0x0.0x0.0x1/', /loopback/], // hex, dotted
  ['http://127.1/', /loopback/], // short
  ['http://127.0.1/', /loopback/], // short, three parts
  ['http://127.000.000.001/', /loopback/], // zero-padded
  ['http://127.0.0.1./', /loopback/], // trailing dot
  ['http://%31%32%37.0.0.1/', /loopback/], // percent-encoded
  ['http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/', /loopback/], // full-width digits
  ['http://127.0.0.1:8080/admin', /loopback/],
  ['https://127.0.0.1/', /loopback/],
  ['http://[::1]/', /loopback/],
  ['http://[0:0:0:0:0:0:0:1]/', /loopback/],
  ['http://[::ffff:127.0.0.1]/', /loopback \(IPv4-mapped 127\.0\.0\.1\)/],
  ['http://[::ffff:7f00:1]/', /loopback \(IPv4-mapped/],
  ['http://[0:0:0:0:0:ffff:127.0.0.1]/', /loopback \(IPv4-mapped/],
  ['http://[::ffff:0:127.0.0.1]/', /loopback \(IPv4-mapped/], // SIIT ::ffff:0:0/96
  ['http://[::127.0.0.1]/', /loopback \(IPv4-compatible/],
  ['http://[64:ff9b::127.0.0.1]/', /loopback \(NAT64 127\.0\.0\.1\)/],
  ['http://[64:ff9b::7f00:1]/', /loopback \(NAT64/],
  ['http://[2002:7f00:1::]/', /loopback \(6to4 127\.0\.0\.1\)/],
  ['http://localhost/', /loopback host name/],
  ['http://LOCALHOST./', /loopback host name/],
  ['http://api.localhost/', /loopback host name/],
  // unspecified
  ['http://0.0.0.0/', /unspecified/],
  ['http://0/', /unspecified/],
  ['http://0.1.2.3/', /unspecified/],
  ['http://[::]/', /unspecified/],
  // private
  ['http://10.0.0.1/', /private/],
  ['http://167772161/', /private/], // 10.0.0.1 decimal
  ['http://012.0.0.1/', /private/], // 10.0.0.1 octal
  ['http://0xa.0.0.1/', /private/],
  ['http://10.255.255.255/', /private/],
  ['http://172.16.0.1/', /private/],
  ['http://172.31.255.255/', /private/],
  ['http://0xac.0x10.0.1/', /private/],
  ['http://192.168.1.1/', /private/],
  ['http://0300.0250.0.1/', /private/], // 192.168.0.1 octal
  ['http://3232235777/', /private/], // 192.168.1.1 decimal
  ['http://[::ffff:10.0.0.1]/', /private \(IPv4-mapped/],
  ['http://[::ffff:c0a8:101]/', /private \(IPv4-mapped 192\.168\.1\.1\)/],
  ['http://[fc00::1]/', /private \(unique local\)/],
  ['http://[fd12:3456::1]/', /private \(unique local\)/],
  ['http://[fec0::1]/', /site-local/],
  ['http://[64:ff9b:1::a00:1]/', /local-use NAT64/],
  ['http://[64:ff9b::10.0.0.1]/', /private \(NAT64/],
  ['http://[2002:c0a8:101::1]/', /private \(6to4 192\.168\.1\.1\)/],
  // carrier-grade NAT
  ['http://100.64.0.1/', /carrier-grade NAT/],
  ['http://100.127.255.254/', /carrier-grade NAT/],
  // link-local
  ['http://169.254.1.1/', /link-local/],
  ['http://[fe80::1]/', /link-local/],
  ['http://[febf::1]/', /link-local/],
  ['http://[::ffff:169.254.1.1]/', /link-local \(IPv4-mapped/],
  // cloud metadata: addresses in every spelling, and the well-known names
  ['http://169.254.169.254/latest/meta-data/', /cloud metadata/],
  ['http://2852039166/', /cloud metadata/], // decimal
  ['http://0xa9fea9fe/', /cloud metadata/], // hex
  ['http://0251.0376.0251.0376/', /cloud metadata/], // octal
  ['http://169.254.43518/', /cloud metadata/], // short
  ['http://[::ffff:169.254.169.254]/', /cloud metadata \(IPv4-mapped 169\.254\.169\.254\)/],
  ['http://[::ffff:a9fe:a9fe]/', /cloud metadata \(IPv4-mapped/],
  ['http://[64:ff9b::169.254.169.254]/', /cloud metadata \(NAT64/],
  ['http://[2002:a9fe:a9fe::]/', /cloud metadata \(6to4/],
  ['http://[fd00:ec2::254]/latest/meta-data/', /cloud metadata/],
  ['http://100.100.100.200/latest/meta-data/', /cloud metadata/],
  ['http://169.254.170.2/v2/credentials', /cloud metadata/],
  ['http://metadata.google.internal/computeMetadata/v1/', /cloud metadata host name/],
  ['http://METADATA.Google.Internal./computeMetadata/v1/', /cloud metadata host name/],
  ['http://metadata/computeMetadata/v1/', /cloud metadata host name/],
  ['http://instance-data/latest/', /cloud metadata host name/],
  // multicast
  ['http://224.0.0.1/', /multicast/],
  ['http://239.255.255.250/', /multicast/],
  ['http://[ff02::1]/', /multicast/],
  ['http://[ff0e::1]/', /multicast/],
  // broadcast and reserved
  ['http://255.255.255.255/', /broadcast/],
  ['http://4294967295/', /broadcast/],
  ['http://240.0.0.1/', /reserved/],
  ['http://250.1.2.3/', /reserved/],
  ['http://[100::1]/', /reserved/],
  ['http://[4000::1]/', /reserved/],
  ['http://[2001::1]/', /Teredo/],
  // documentation, benchmarking, protocol assignments
  ['http://192.0.2.1/', /documentation/],
  ['http://198.51.100.1/', /documentation/],
  ['http://203.0.113.1/', /documentation/],
  ['http://[2001:db8::1]/', /documentation/],
  ['http://[3fff::1]/', /documentation/],
  ['http://198.18.0.1/', /benchmarking/],
  ['http://198.19.255.255/', /benchmarking/],
  ['http://[2001:2::1]/', /benchmarking/],
  ['http://192.0.0.1/', /IETF protocol assignment/],
  ['http://192.88.99.1/', /6to4 relay/],
];

describe('refused destinations: no connection, no DNS', () => {
  it.each(REFUSED_URLS)('%s is refused, naming the class', async (url, words) => {
    const resolver = resolverOf({});
    const e = await failure(request(base(url, { resolver })), 'NET_ADDRESS_REFUSED');
    expect(e.message).toMatch(words);
    expect(e.errorClass).toBe('permission');
    expect(e.retryable).toBe(false);
    expect(e.suggestion).toMatch(/IP address|CIDR/);
    expect(connects).toEqual([]);
    expect(resolver.calls).toEqual([]);
    expect(dnsCalls).toEqual([]);
    // The definition-time check agrees.
    const c = checkUrl(url);
    expect(c.ok).toBe(false);
    if (!c.ok) expect(c.reason).toMatch(words);
  });

  it('streams (openRequest) are refused the same way', async () => {
    await failure(openRequest(base('http://169.254.169.254/')), 'NET_ADDRESS_REFUSED');
    await failure(openRequest(base('http://[::ffff:127.0.0.1]/')), 'NET_ADDRESS_REFUSED');
    expect(connects).toEqual([]);
  });

  it('metadata suggestion warns about credentials', async () => {
    const e = await failure(request(base('http://169.254.169.254/')), 'NET_ADDRESS_REFUSED');
    expect(e.suggestion).toMatch(/credentials/);
  });
});

describe('checkAddress (pure)', () => {
  it.each([
    ['127.0.0.1', /loopback/],
    ['2130706433', /loopback/],
    ['0177.0.0.1', /loopback/],
    ['0x7f.1', /loopback/],
    ['127.1', /loopback/],
    ['[::1]', /loopback/],
    ['::ffff:7f00:1', /loopback/],
    ['fe80::1%eth0', /link-local/],
    ['10.1.2.3', /private/],
    ['172.20.0.1', /private/],
    ['100.64.1.1', /carrier-grade NAT/],
    ['169.254.169.254', /cloud metadata/],
    ['fd00:ec2::254', /cloud metadata/],
    ['100.100.100.200', /cloud metadata/],
    ['224.1.1.1', /multicast/],
    ['::', /unspecified/],
    ['not-an-ip', /not an IP address/],
  ])('%s is refused (%s)', (address, words) => {
    const r = checkAddress(address, []);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason).toMatch(words);
  });

  it.each([
    '8.8.8.8',
    '1.1.1.1',
    '11.0.0.1',
    '172.15.255.255',
    '172.32.0.0',
    '100.63.255.255',
    '100.128.0.0',
    '169.253.255.255',
    '169.255.0.0',
    '192.167.255.255',
    '192.169.0.0',
    '198.17.255.255',
    '198.20.0.0',
    '223.255.255.255',
    '2606:4700:4700::1111',
    '2a00:1450:4001::1',
    '::ffff:8.8.8.8',
    '64:ff9b::808:808', // NAT64 of a public address
    '2002:808:808::1', // 6to4 of a public address
  ])('%s is public', (address) => {
    expect(checkAddress(address, [])).toEqual({ ok: true });
  });

  it('an allow entry opens a refused address only inside the operator’s networks, and metadata never', () => {
    // The operator opened nothing: a circle naming a private address still cannot reach it.
    withOperatorNets('', () => {
      expect(checkAddress('10.0.0.5', ['10.0.0.5'])).toMatchObject({
        ok: false,
        code: 'NET_ADDRESS_REFUSED',
        reason: expect.stringContaining('CAIRN_OUTBOUND_PRIVATE_NETS'),
      });
      expect(checkAddress('127.0.0.1', ['127.0.0.0/8']).ok).toBe(false);
      expect(checkUrl('http://127.0.0.1:8080/', ['127.0.0.1']).ok).toBe(false);
      expect(checkAddress('8.8.8.8', ['8.8.8.8']).ok).toBe(true);
    });
    // Even an operator who opened everything does not open the metadata service.
    withOperatorNets('0.0.0.0/0,::/0', () => {
      for (const a of ['169.254.169.254', '::ffff:169.254.169.254', 'fd00:ec2::254', '100.100.100.200'])
        expect(checkAddress(a, ['0.0.0.0/0', '::/0', a]), a).toMatchObject({
          ok: false,
          reason: expect.stringContaining('no allow list opens'),
        });
    });
  });

  it('an IP or CIDR entry unlocks a refused address; a host name entry does not', () => {
    withOperatorNets('10.0.0.0/8,fd00::/8,127.0.0.0/8,::1/128', () => unlocks());
  });
  const unlocks = () => {
    expect(checkAddress('10.0.0.5', ['10.0.0.5']).ok).toBe(true);
    expect(checkAddress('10.0.0.5', ['10.0.0.0/24']).ok).toBe(true);
    expect(checkAddress('10.0.1.5', ['10.0.0.0/24']).ok).toBe(false);
    expect(checkAddress('169.254.169.254', ['169.254.169.254']).ok).toBe(false);
    expect(checkAddress('::1', ['::1']).ok).toBe(true);
    expect(checkAddress('fd00::1', ['fd00::/8']).ok).toBe(true);
    // An IPv4 entry covers the same address spelled IPv4-mapped.
    expect(checkAddress('::ffff:127.0.0.1', ['127.0.0.1']).ok).toBe(true);
    expect(checkAddress('10.0.0.5', ['internal.example.com'])).toMatchObject({
      ok: false,
      code: 'NET_ADDRESS_REFUSED',
    });
    // With an allow list, a public address outside it is not allowed either.
    expect(checkAddress('8.8.8.8', ['api.example.com'])).toMatchObject({
      ok: false,
      code: 'NET_HOST_NOT_ALLOWED',
    });
    expect(checkAddress('8.8.8.8', ['8.8.0.0/16']).ok).toBe(true);
  };
});

describe('URLs refused before anything else', () => {
  it.each([
    ['file:///etc/passwd', /file:/],
    ['ftp://ftp.example.com/x', /ftp:/],
    ['gopher://127.0.0.1:6379/_FLUSHALL', /gopher:/],
    ['data:text/plain,hello', /data:/],
    ['javascript:alert(1)', /javascript:/],
    ['ws://example.com/', /ws:/],
    ['dict://127.0.0.1:11211/', /dict:/],
    ['not a url', /not a valid absolute URL/],
    ['/relative/path', /not a valid absolute URL/],
    ['http://1.2.3.4.5/', /not a valid absolute URL/],
    ['http://[fe80::1%25eth0]/', /not a valid absolute URL/],
    ['http://user:hunter2@example.com/', /credentials/],
    ['http://user@127.0.0.1/', /credentials/],
    ['https://:token@api.example.com/', /credentials/],
  ])('%s → NET_URL_REFUSED', async (url, words) => {
    const resolver = resolverOf({});
    const e = await failure(request(base(url, { resolver })), 'NET_URL_REFUSED');
    expect(e.message).toMatch(words);
    expect(e.message).not.toContain('hunter2');
    expect(JSON.stringify(e.toJSON())).not.toContain('hunter2');
    expect(e.errorClass).toBe('validation');
    expect(connects).toEqual([]);
    expect(resolver.calls).toEqual([]);
    expect(checkUrl(url).ok).toBe(false);
  });

  it('invalid methods and headers → NET_INVALID_REQUEST', async () => {
    await failure(request(base('http://127.0.0.1/', { method: 'GET /x' })), 'NET_INVALID_REQUEST');
    await failure(
      request(base('http://127.0.0.1/', { headers: { 'x-a': 'v\r\nInjected: 1' } })),
      'NET_INVALID_REQUEST',
    );
    await failure(request(base('http://127.0.0.1/', { timeoutMs: 0 })), 'NET_INVALID_REQUEST');
    expect(connects).toEqual([]);
  });
});

describe('DNS: every address checked, resolved once, connection pinned', () => {
  it('a name resolving to one public and one private address is refused, naming the private one', async () => {
    for (const addrs of [
      ['93.184.216.34', '10.0.0.5'],
      ['10.0.0.5', '93.184.216.34'],
    ]) {
      const resolver = resolverOf({ 'evil.test': addrs });
      const e = await failure(request(base('http://evil.test/', { resolver })), 'NET_ADDRESS_REFUSED');
      expect(e.message).toMatch(/evil\.test resolves to 10\.0\.0\.5, which is a private address/);
      expect(resolver.calls).toEqual(['evil.test']);
    }
    expect(connects).toEqual([]);
  });

  it.each([
    ['127.0.0.1', /loopback/],
    ['169.254.169.254', /cloud metadata/],
    ['::ffff:169.254.169.254', /cloud metadata \(IPv4-mapped/],
    ['fd00:ec2::254', /cloud metadata/],
    ['::1', /loopback/],
    ['192.168.0.10', /private/],
  ])('a name resolving to %s is refused', async (address, words) => {
    const resolver = resolverOf({ 'rebind.test': [address] });
    const e = await failure(request(base('http://rebind.test/', { resolver })), 'NET_ADDRESS_REFUSED');
    expect(e.message).toMatch(words);
    expect(connects).toEqual([]);
  });

  it('DNS failures are NET_DNS_FAILED, with no connection', async () => {
    await failure(request(base('http://nxdomain.test/', { resolver: resolverOf({}) })), 'NET_DNS_FAILED');
    await failure(
      request(base('http://empty.test/', { resolver: resolverOf({ 'empty.test': [] }) })),
      'NET_DNS_FAILED',
    );
    await failure(
      request(base('http://junk.test/', { resolver: resolverOf({ 'junk.test': ['not-an-ip'] }) })),
      'NET_DNS_FAILED',
    );
    expect(connects).toEqual([]);
  });

  it('resolves once, connects to the checked address, and sends the name as Host', async () => {
    const s = await serve(ok);
    let calls = 0;
    // A rebinding resolver: the first answer is the allowed loopback, any later one differs.
    const resolver: Resolver = async () =>
      calls++ === 0 ? [{ address: '127.0.0.1', family: 4 }] : [{ address: '127.0.0.2', family: 4 }];
    const r = await request(base(`http://pin.test:${s.port}/p?q=1`, { resolver, allow: ['127.0.0.1'] }));
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe('ok');
    expect(calls).toBe(1);
    expect(r.address).toBe('127.0.0.1');
    expect(connects).toEqual([{ host: '127.0.0.1', port: s.port, path: undefined }]);
    expect(dnsCalls).toEqual([]);
    expect(s.seen[0]!.headers.host).toBe(`pin.test:${s.port}`);
    expect(s.seen[0]!.url).toBe('/p?q=1');
    expect(r.finalUrl).toBe(`http://pin.test:${s.port}/p?q=1`);
  });

  it('tries the next checked address when one refuses the connection (no second lookup)', async () => {
    const s = await serve(ok);
    const resolver = resolverOf({ 'two.test': ['127.0.0.2', '127.0.0.1'] });
    const r = await request(base(`http://two.test:${s.port}/`, { resolver, allow: ['127.0.0.0/8'] }));
    expect(r.status).toBe(200);
    expect(r.address).toBe('127.0.0.1');
    expect(resolver.calls).toEqual(['two.test']);
    expect(connects.map((c) => c.host)).toEqual(['127.0.0.2', '127.0.0.1']);
  });

  it('the default resolver is dns.promises.lookup, called once', async () => {
    const s = await serve(ok);
    dns.promises.lookup = (async (host: string) => {
      dnsCalls.push(host);
      return [{ address: '127.0.0.1', family: 4 }];
    }) as unknown as typeof dns.promises.lookup;
    const r = await request(base(`http://default.test:${s.port}/`, { allow: ['127.0.0.1'] }));
    expect(r.status).toBe(200);
    expect(dnsCalls).toEqual(['default.test']);
  });
});

describe('redirects: each hop checked from scratch', () => {
  const allow = ['127.0.0.1'];

  it.each([
    ['http://169.254.169.254/latest/meta-data', /cloud metadata/],
    ['http://10.0.0.1/', /private/],
    ['http://[::ffff:169.254.169.254]/', /cloud metadata/],
    ['http://0xa9fea9fe/', /cloud metadata/],
  ])('a redirect to %s is refused with no connection to it', async (location, words) => {
    const s = await serve(redirectTo(location));
    const e = await failure(request(base(s.origin, { allow })), 'NET_ADDRESS_REFUSED');
    expect(e.message).toMatch(words);
    expect(e.message).toMatch(/redirect from/);
    expect(connects).toEqual([{ host: '127.0.0.1', port: s.port, path: undefined }]);
    expect(s.seen).toHaveLength(1);
  });

  it('a redirect to another loopback address not in the allow list is refused', async () => {
    const s = await serve(redirectTo('http://127.0.0.2:1/'));
    const e = await failure(request(base(s.origin, { allow: ['127.0.0.1/32'] })), 'NET_ADDRESS_REFUSED');
    expect(e.message).toMatch(/127\.0\.0\.2 is a loopback address/);
    expect(connects.map((c) => c.host)).toEqual(['127.0.0.1']);
  });

  it('a redirect to a non-http scheme or with credentials is refused', async () => {
    for (const location of ['file:///etc/passwd', 'gopher://127.0.0.1:6379/_x', 'http://u:p@127.0.0.1/']) {
      const s = await serve(redirectTo(location));
      await failure(request(base(s.origin, { allow })), 'NET_URL_REFUSED');
    }
  });

  it('a redirect to a name resolving outside the IP entries, or to a public address not listed, is refused', async () => {
    const resolver = resolverOf({ 'a.test': ['127.0.0.1'], 'b.test': ['10.0.0.1'] });
    const s = await serve(redirectTo('http://b.test/'));
    const e = await failure(
      request(base(`http://a.test:${s.port}/`, { allow: ['a.test', '127.0.0.1/32'], resolver })),
      'NET_ADDRESS_REFUSED',
    );
    expect(e.message).toMatch(/b\.test resolves to 10\.0\.0\.1, which is a private address/);
    expect(resolver.calls).toEqual(['a.test', 'b.test']);
    const p = await serve(redirectTo('http://8.8.8.8/'));
    const e2 = await failure(request(base(p.origin, { allow: ['127.0.0.1'] })), 'NET_HOST_NOT_ALLOWED');
    expect(e2.message).toMatch(/8\.8\.8\.8 is not in the allow list/);
    expect(connects.map((c) => c.port)).toEqual([s.port, p.port]);
  });

  it('a redirect to another allowed loopback server is followed, re-resolved and re-checked', async () => {
    const b = await serve((_req, res) => res.end('from b'));
    const a = await serve(redirectTo(`http://b.test:${b.port}/final?x=1`));
    const resolver = resolverOf({ 'a.test': ['127.0.0.1'], 'b.test': ['127.0.0.1'] });
    const r = await request(base(`http://a.test:${a.port}/start`, { allow: ['127.0.0.1/32'], resolver }));
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe('from b');
    expect(r.finalUrl).toBe(`http://b.test:${b.port}/final?x=1`);
    expect(r.redirects).toEqual([{ url: `http://a.test:${a.port}/start`, status: 302 }]);
    expect(resolver.calls).toEqual(['a.test', 'b.test']);
    expect(connects.map((c) => c.port)).toEqual([a.port, b.port]);
    expect(b.seen[0]!.headers.host).toBe(`b.test:${b.port}`);
  });

  it('a relative Location resolves against the current URL', async () => {
    const s = await serve((req, res) => {
      if (req.url === '/a/b') redirectTo('../c?y=2', 301)(req, res, s.seen[0]!);
      else res.end(`at ${req.url}`);
    });
    const r = await request(base(`${s.origin}/a/b`, { allow }));
    expect(r.body.toString()).toBe('at /c?y=2');
    expect(r.finalUrl).toBe(`${s.origin}/c?y=2`);
    expect(r.redirects).toEqual([{ url: `${s.origin}/a/b`, status: 301 }]);
  });

  it('303, and 301/302 on POST, become GET without a body; 307/308 keep method and body', async () => {
    for (const [status, method, expectMethod, expectBody] of [
      [303, 'POST', 'GET', ''],
      [303, 'PUT', 'GET', ''],
      [302, 'POST', 'GET', ''],
      [301, 'POST', 'GET', ''],
      [302, 'PUT', 'PUT', 'payload'],
      [307, 'POST', 'POST', 'payload'],
      [308, 'POST', 'POST', 'payload'],
    ] as const) {
      const s = await serve((req, res) => {
        if (req.url === '/from') redirectTo('/to', status)(req, res, s.seen[0]!);
        else res.end('done');
      });
      const r = await request(
        base(`${s.origin}/from`, {
          method,
          body: 'payload',
          headers: { 'content-type': 'text/plain' },
          allow,
        }),
      );
      expect(r.status).toBe(200);
      const second = s.seen[1]!;
      expect([status, second.method, second.body]).toEqual([status, expectMethod, expectBody]);
      if (expectBody === '') expect(second.headers['content-type']).toBeUndefined();
      else expect(second.headers['content-length']).toBe('7');
    }
  });

  it('drops credentials on a redirect to another origin, keeps them on the same origin', async () => {
    const other = await serve(ok);
    const s = await serve((req, res) => {
      if (req.url === '/start') redirectTo('/same')(req, res, s.seen[0]!);
      else if (req.url === '/same') redirectTo(`http://127.0.0.1:${other.port}/other`)(req, res, s.seen[0]!);
      else res.end();
    });
    const headers = {
      Authorization: 'Bearer secret',
      Cookie: 'sid=1',
      'X-Api-Key': 'k',
      'Proxy-Authorization': 'Basic x',
      'Private-Token': 'gl-secret',
      'X-Trace': 't',
      Accept: 'application/json',
    };
    const r = await request(base(`${s.origin}/start`, { headers, allow }));
    expect(r.status).toBe(200);
    expect(r.redirects.map((x) => x.status)).toEqual([302, 302]);
    expect(s.seen[1]!.headers.authorization).toBe('Bearer secret');
    expect(s.seen[1]!.headers.cookie).toBe('sid=1');
    const o = other.seen[0]!.headers;
    expect([o.authorization, o.cookie, o['x-api-key'], o['proxy-authorization']]).toEqual([
      undefined,
      undefined,
      undefined,
      undefined,
    ]);
    // Any header may carry a credential (a templated secret): only a safe list crosses origins.
    expect(o['private-token']).toBeUndefined();
    expect(o['x-trace']).toBeUndefined();
    expect(o.accept).toBe('application/json');
    expect(s.seen[1]!.headers['private-token']).toBe('gl-secret');
  });

  it('stops after maxRedirects with NET_TOO_MANY_REDIRECTS; 0 answers the redirect as is', async () => {
    let n = 0;
    const s = await serve((req, res) => redirectTo(`/loop${++n}`)(req, res, s.seen[0]!));
    const e = await failure(request(base(s.origin, { allow, maxRedirects: 3 })), 'NET_TOO_MANY_REDIRECTS');
    expect(e.message).toMatch(/more than 3 times/);
    expect(s.seen).toHaveLength(4);
    n = 0;
    const r = await request(base(s.origin, { allow, maxRedirects: 0 }));
    expect(r.status).toBe(302);
    expect(r.headers.location).toBe('/loop1');
    expect(r.redirects).toEqual([]);
    // The default is 5.
    await failure(request(base(s.origin, { allow })), 'NET_TOO_MANY_REDIRECTS');
  });
});

describe('allow list semantics', () => {
  it('a loopback server is refused without an entry, allowed with 127.0.0.1, 127.0.0.1/32 or 127.0.0.0/8', async () => {
    const s = await serve(ok);
    const e = await failure(request(base(s.origin)), 'NET_ADDRESS_REFUSED');
    expect(e.message).toMatch(/loopback/);
    expect(connects).toEqual([]);
    for (const entry of ['127.0.0.1', '127.0.0.1/32', '127.0.0.0/8']) {
      const r = await request(base(s.origin, { allow: [entry] }));
      expect(r.status).toBe(200);
    }
    await failure(request(base(s.origin, { allow: ['127.0.0.2'] })), 'NET_ADDRESS_REFUSED');
    await failure(request(base(s.origin, { allow: ['10.0.0.0/8'] })), 'NET_ADDRESS_REFUSED');
  });

  it('a host-name entry alone does not unlock a non-public address', async () => {
    const s = await serve(ok);
    const resolver = resolverOf({ 'api.test': ['127.0.0.1'] });
    const e = await failure(
      request(base(`http://api.test:${s.port}/`, { allow: ['api.test'], resolver })),
      'NET_ADDRESS_REFUSED',
    );
    expect(e.suggestion).toMatch(/host-name entry alone does not unlock/);
    expect(connects).toEqual([]);
    const r = await request(
      base(`http://api.test:${s.port}/`, { allow: ['api.test', '127.0.0.1'], resolver }),
    );
    expect(r.status).toBe(200);
  });

  it('a name outside the host entries is refused before DNS when no IP entry could cover it', async () => {
    const resolver = resolverOf({ 'other.test': ['127.0.0.1'] });
    const e = await failure(
      request(base('http://other.test/', { allow: ['api.test', '*.svc.test'], resolver })),
      'NET_HOST_NOT_ALLOWED',
    );
    expect(e.errorClass).toBe('permission');
    expect(resolver.calls).toEqual([]);
    expect(connects).toEqual([]);
    // A literal address outside the IP entries.
    await failure(request(base('http://8.8.8.8/', { allow: ['api.test'] })), 'NET_HOST_NOT_ALLOWED');
    expect(connects).toEqual([]);
  });

  it('an IP/CIDR entry lets any name that resolves into it through', async () => {
    const s = await serve(ok);
    const resolver = resolverOf({ 'any.test': ['127.0.0.1'], 'outside.test': ['10.0.0.1'] });
    const r = await request(base(`http://any.test:${s.port}/`, { allow: ['127.0.0.0/8'], resolver }));
    expect(r.status).toBe(200);
    const e = await failure(
      request(base(`http://outside.test:${s.port}/`, { allow: ['127.0.0.0/8'], resolver })),
      'NET_ADDRESS_REFUSED',
    );
    expect(e.message).toMatch(/10\.0\.0\.1, which is a private address/);
    expect(connects.map((c) => c.host)).toEqual(['127.0.0.1']);
  });

  it('wildcards match names below the domain, not the domain or look-alikes', async () => {
    const allow = ['*.svc.test'];
    expect(checkUrl('http://a.svc.test/', allow).ok).toBe(true);
    expect(checkUrl('http://x.y.svc.test/', allow).ok).toBe(true);
    expect(checkUrl('http://A.SVC.TEST./', allow).ok).toBe(true);
    expect(checkUrl('http://svc.test/', allow)).toMatchObject({ ok: false, code: 'NET_HOST_NOT_ALLOWED' });
    expect(checkUrl('http://evilsvc.test/', allow)).toMatchObject({
      ok: false,
      code: 'NET_HOST_NOT_ALLOWED',
    });
    expect(checkUrl('http://svc.test.evil.test/', allow).ok).toBe(false);
    expect(checkUrl('http://api.test/', ['api.test']).ok).toBe(true);
    expect(checkUrl('http://sub.api.test/', ['api.test']).ok).toBe(false);
    expect(checkUrl('http://xn--bcher-kva.test/', ['bücher.test']).ok).toBe(true);
    // Through a request: the wildcard plus the IP entry for the loopback address it resolves to.
    const s = await serve(ok);
    const resolver = resolverOf({ 'a.svc.test': ['127.0.0.1'] });
    const r = await request(
      base(`http://a.svc.test:${s.port}/`, { allow: ['*.svc.test', '127.0.0.1'], resolver }),
    );
    expect(r.status).toBe(200);
  });

  it('metadata and localhost names stay refused whatever host entries say', async () => {
    const resolver = resolverOf({ 'metadata.google.internal': ['127.0.0.1'], localhost: ['127.0.0.1'] });
    for (const url of ['http://metadata.google.internal/', 'http://localhost/']) {
      const host = new URL(url).hostname;
      await failure(request(base(url, { allow: [host], resolver })), 'NET_ADDRESS_REFUSED');
    }
    expect(resolver.calls).toEqual([]);
    expect(connects).toEqual([]);
    // With an IP entry the name is resolved, and only an address that entry covers gets through.
    const s = await serve(ok);
    const r = await request(base(`http://localhost:${s.port}/`, { allow: ['127.0.0.1'], resolver }));
    expect(r.status).toBe(200);
    const e = await failure(
      request(
        base('http://metadata.google.internal/', {
          allow: ['10.0.0.0/8'],
          resolver: resolverOf({ 'metadata.google.internal': ['169.254.169.254'] }),
        }),
      ),
      'NET_ADDRESS_REFUSED',
    );
    expect(e.message).toMatch(/cloud metadata host name/);
  });

  it('IPv6 loopback: refused without an entry, allowed with ::1 (when ::1 is available)', async () => {
    await failure(request(base('http://[::1]:1/')), 'NET_ADDRESS_REFUSED');
    expect(connects).toEqual([]);
    const server = createServer(ok as never);
    const listening = await new Promise<boolean>((r) => {
      server.once('error', () => r(false));
      server.listen(0, '::1', () => r(true));
    });
    if (!listening) return;
    servers.push(server);
    const port = (server.address() as net.AddressInfo).port;
    const r = await request(base(`http://[::1]:${port}/`, { allow: ['::1'] }));
    expect(r.status).toBe(200);
    expect(r.address).toBe('::1');
    expect(connects).toEqual([{ host: '::1', port, path: undefined }]);
  });

  it('parseAllowList accepts names, wildcards, addresses and CIDRs', () => {
    const a = parseAllowList([
      'API.Example.com.',
      '*.example.org',
      'bücher.de',
      '10.0.0.5',
      '::1',
      '[fd00::1]',
      'fd00::/8',
      '10.0.0.1/8',
      '0.0.0.0/0',
      'internal_host.corp',
    ]);
    expect([...a.names]).toEqual(['api.example.com', 'xn--bcher-kva.de', 'internal_host.corp']);
    expect(a.suffixes).toEqual(['.example.org']);
    expect(a.nets).toHaveLength(6);
    // Host bits of a CIDR are cleared: 10.0.0.1/8 is 10.0.0.0/8.
    withOperatorNets('10.0.0.0/8', () => expect(checkAddress('10.200.0.1', ['10.0.0.1/8']).ok).toBe(true));
  });

  it.each([
    ['', /empty/],
    ['   ', /empty/],
    ['http://api.example.com', /URL/],
    ['api.example.com:443', /port/],
    ['api.example.com/path', /not an IP address/],
    ['10.0.0.0/33', /prefix length/],
    ['::/129', /prefix length/],
    ['10.0.0.0/x', /prefix length/],
    ['10.0.0.0/8/8', /CIDR/],
    ['300.1.1.1/8', /not an IP address/],
    ['*', /not a valid host name|wildcard/],
    ['*example.com', /wildcard/],
    ['foo.*.com', /wildcard/],
    ['*.*.com', /wildcard/],
    ['a..b', /not a valid host name/],
    ['-a.com', /not a valid host name/],
    ['a b.com', /not a valid host name/],
    ['127.1', /IPv4/],
    ['0x7f.1', /IPv4/],
    ['2130706433', /IPv4/],
    ['::g', /IPv6/],
  ])('parseAllowList refuses %j', (entry, words) => {
    let caught: unknown;
    try {
      parseAllowList(['ok.example.com', entry]);
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(CairnError);
    const e = caught as CairnError;
    expect(e.code).toBe('INVALID_ALLOW_ENTRY');
    expect(e.errorClass).toBe('validation');
    expect(e.message).toMatch(words);
    expect(e.details).toEqual([expect.objectContaining({ index: 1, entry })]);
  });

  it('a request with a bad allow entry fails before connecting', async () => {
    await failure(request(base('http://127.0.0.1:1/', { allow: ['127.0.0.1/99'] })), 'INVALID_ALLOW_ENTRY');
    expect(connects).toEqual([]);
  });
});

describe('timeouts, limits and abort', () => {
  const allow = ['127.0.0.1'];
  const silent: Handler = () => {};

  it('a server that never answers → NET_TIMEOUT within the budget', async () => {
    const s = await serve(silent);
    const t = Date.now();
    const e = await failure(request(base(s.origin, { allow, timeoutMs: 300 })), 'NET_TIMEOUT');
    const took = Date.now() - t;
    expect(took).toBeGreaterThanOrEqual(290);
    expect(took).toBeLessThan(3_000);
    expect(e.errorClass).toBe('timeout');
    expect(e.retryable).toBe(true);
    await failure(openRequest(base(s.origin, { allow, timeoutMs: 200 })), 'NET_TIMEOUT');
  });

  it('a resolver that never answers → NET_TIMEOUT', async () => {
    const resolver: Resolver = () => new Promise(() => {});
    await failure(request(base('http://slow-dns.test/', { resolver, timeoutMs: 200 })), 'NET_TIMEOUT');
    expect(connects).toEqual([]);
  });

  it('the budget covers the body: a stalled body → NET_TIMEOUT, buffered or streamed', async () => {
    const s = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first chunk');
    });
    await failure(request(base(s.origin, { allow, timeoutMs: 400 })), 'NET_TIMEOUT');
    const open = await openRequest(base(s.origin, { allow, timeoutMs: 400 }));
    expect(open.status).toBe(200);
    const got: string[] = [];
    const e = await failure(
      (async () => {
        for await (const chunk of open.body) got.push(chunk.toString());
      })(),
      'NET_TIMEOUT',
    );
    expect(got.join('')).toBe('first chunk');
    expect(e.errorClass).toBe('timeout');
  });

  it('a connection refused on loopback → NET_CONNECT_FAILED, retryable', async () => {
    const s = await serve(ok);
    const port = s.port;
    s.server.close();
    servers.splice(servers.indexOf(s.server), 1);
    await new Promise((r) => setTimeout(r, 20));
    const e = await failure(request(base(`http://127.0.0.1:${port}/`, { allow })), 'NET_CONNECT_FAILED');
    expect(e.retryable).toBe(true);
    expect(e.message).toMatch(/ECONNREFUSED/);
  });

  it('a body over maxResponseBytes → NET_RESPONSE_TOO_LARGE (declared or chunked)', async () => {
    const big = 'x'.repeat(2_000);
    const declared = await serve((_req, res) => res.end(big));
    const chunked = await serve((_req, res) => {
      res.write(big.slice(0, 600));
      res.write(big.slice(600, 1_200));
      res.end(big.slice(1_200));
    });
    for (const s of [declared, chunked]) {
      const e = await failure(
        request(base(s.origin, { allow, maxResponseBytes: 1_000 })),
        'NET_RESPONSE_TOO_LARGE',
      );
      expect(e.message).toMatch(/1000 bytes/);
      const r = await request(base(s.origin, { allow, maxResponseBytes: 2_000 }));
      expect(r.body.length).toBe(2_000);
    }
    expect(chunked.seen).toHaveLength(2);
    // A declared length over the limit is refused at the head, without waiting for the body.
    const huge = await serve((_req, res) => {
      res.writeHead(200, { 'content-length': String(1e9) });
      res.write('x');
    });
    const t = Date.now();
    await failure(
      request(base(huge.origin, { allow, maxResponseBytes: 1_000, timeoutMs: 5_000 })),
      'NET_RESPONSE_TOO_LARGE',
    );
    expect(Date.now() - t).toBeLessThan(2_000);
  });

  it('an already aborted signal → NET_ABORTED without connecting', async () => {
    const ctl = new AbortController();
    ctl.abort();
    await failure(request(base('http://127.0.0.1:1/', { allow, signal: ctl.signal })), 'NET_ABORTED');
    expect(connects).toEqual([]);
  });

  it('aborting mid-request or mid-body → NET_ABORTED', async () => {
    const s = await serve(silent);
    const ctl = new AbortController();
    setTimeout(() => ctl.abort(), 100);
    await failure(request(base(s.origin, { allow, signal: ctl.signal })), 'NET_ABORTED');

    const streaming = await serve((_req, res) => {
      res.writeHead(200);
      res.write('data: 1\n\n');
    });
    const ctl2 = new AbortController();
    const open = await openRequest(base(streaming.origin, { allow, signal: ctl2.signal }));
    const e = await failure(
      (async () => {
        for await (const _chunk of open.body) ctl2.abort();
      })(),
      'NET_ABORTED',
    );
    expect(e.errorClass).not.toBe('timeout');
  });
});

describe('responses', () => {
  const allow = ['127.0.0.1'];

  it('lower-cases headers, keeps repeated ones, reports sane timings', async () => {
    const s = await serve((_req, res) => {
      setTimeout(() => {
        res.setHeader('X-Custom-Header', 'v');
        res.setHeader('Set-Cookie', ['a=1', 'b=2']);
        res.end('hello');
      }, 40);
    });
    const resolver: Resolver = async () => {
      await new Promise((r) => setTimeout(r, 20));
      return [{ address: '127.0.0.1', family: 4 }];
    };
    const r = await request(base(`http://t.test:${s.port}/`, { allow, resolver }));
    expect(r.headers['x-custom-header']).toBe('v');
    expect(r.headers['set-cookie']).toEqual(['a=1', 'b=2']);
    expect(Object.keys(r.headers).every((k) => k === k.toLowerCase())).toBe(true);
    const t = r.timings;
    expect(t.tls_ms).toBeNull();
    expect(t.dns_ms).toBeGreaterThanOrEqual(15);
    expect(t.connect_ms).toBeGreaterThanOrEqual(0);
    expect(t.ttfb_ms).toBeGreaterThanOrEqual(30);
    expect(t.total_ms).toBeGreaterThanOrEqual(t.dns_ms + t.connect_ms + t.ttfb_ms - 1);
    expect(t.total_ms).toBeLessThan(5_000);
    // A literal address: no DNS time.
    const r2 = await request(base(s.origin, { allow }));
    expect(r2.timings.dns_ms).toBe(0);
    expect(r2.address).toBe('127.0.0.1');
  });

  it('sends the body with its length, and POSTs', async () => {
    const s = await serve((req, res, seen) => res.end(`${req.method} ${seen.body}`));
    const r = await request(
      base(s.origin, {
        method: 'post',
        body: Buffer.from('{"a":1}'),
        allow,
        headers: { 'Content-Length': '999' },
      }),
    );
    expect(r.body.toString()).toBe('POST {"a":1}');
    expect(s.seen[0]!.headers['content-length']).toBe('7');
  });

  it('openRequest streams the body as it arrives; close() frees the socket', async () => {
    let closed = false;
    const s = await serve((req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      let i = 0;
      const tick = setInterval(() => res.write(`data: ${i++}\n\n`), 20);
      req.socket.on('close', () => {
        closed = true;
        clearInterval(tick);
      });
    });
    const open = await openRequest(base(s.origin, { allow, timeoutMs: 5_000 }));
    expect(open.headers['content-type']).toBe('text/event-stream');
    const chunks: string[] = [];
    for await (const chunk of open.body) {
      chunks.push(chunk.toString());
      if (chunks.length === 3) break;
    }
    expect(chunks.join('')).toMatch(/^data: 0\n\ndata: 1\n\n/);
    await new Promise((r) => setTimeout(r, 100));
    expect(closed).toBe(true);
    expect(open.timings.total_ms).toBeGreaterThan(0);

    closed = false;
    const open2 = await openRequest(base(s.origin, { allow }));
    open2.close();
    await new Promise((r) => setTimeout(r, 100));
    expect(closed).toBe(true);
    const rest: Buffer[] = [];
    for await (const c of open2.body) rest.push(c);
    expect(rest.length).toBeLessThan(3);
  });

  it('streams end normally with the whole body', async () => {
    const s = await serve((_req, res) => {
      res.write('a');
      setTimeout(() => res.end('b'), 20);
    });
    const open = await openRequest(base(s.origin, { allow }));
    let all = '';
    for await (const c of open.body) all += c.toString();
    expect(all).toBe('ab');
    expect(open.timings.total_ms).toBeGreaterThanOrEqual(open.timings.ttfb_ms);
  });
});

const hasOpenssl = (() => {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

describe.skipIf(!hasOpenssl)('https (self-signed, loopback)', () => {
  let dir: string;
  let key: string;
  let cert: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'cairn-ssrf-tls-'));
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-keyout',
        join(dir, 'key.pem'),
        '-out',
        join(dir, 'cert.pem'),
        '-days',
        '1',
        '-subj',
        '/CN=secure.test',
        '-addext',
        'subjectAltName=DNS:secure.test',
      ],
      { stdio: 'ignore' },
    );
    key = readFileSync(join(dir, 'key.pem'), 'utf8');
    cert = readFileSync(join(dir, 'cert.pem'), 'utf8');
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('pins to the checked address, sends SNI and Host for the name, verifies the certificate', async () => {
    const s = await serve(ok, createHttpsServer({ key, cert }));
    const resolver = resolverOf({ 'secure.test': ['127.0.0.1'], 'other.test': ['127.0.0.1'] });
    const r = await request(
      base(`https://secure.test:${s.port}/x`, { allow: ['127.0.0.1'], resolver, ca: cert }),
    );
    expect(r.status).toBe(200);
    expect(s.seen[0]!.servername).toBe('secure.test');
    expect(s.seen[0]!.headers.host).toBe(`secure.test:${s.port}`);
    expect(r.timings.tls_ms).not.toBeNull();
    expect(r.timings.tls_ms!).toBeGreaterThan(0);
    expect(r.timings.connect_ms).toBeGreaterThan(0);
    expect(connects.map((c) => c.host)).toEqual(['127.0.0.1']);

    // Untrusted certificate, and a name the certificate does not cover.
    const e = await failure(
      request(base(`https://secure.test:${s.port}/`, { allow: ['127.0.0.1'], resolver })),
      'NET_CONNECT_FAILED',
    );
    expect(e.message).toMatch(/TLS/);
    expect(e.retryable).toBe(false);
    const e2 = await failure(
      request(base(`https://other.test:${s.port}/`, { allow: ['127.0.0.1'], resolver, ca: cert })),
      'NET_CONNECT_FAILED',
    );
    expect(e2.message).toMatch(/ALTNAME|TLS/);
  });
});

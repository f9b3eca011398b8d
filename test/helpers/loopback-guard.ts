/**
 * The testing rule of R-HTTP, enforced: while the guard is on, every socket connect is recorded,
 * and one to anything outside 127.0.0.0/8 or ::1 throws before a packet is sent; DNS lookups of
 * names throw too (a literal still resolves: server.listen looks its own address up). Tests of
 * refusals assert that `connects` holds no connect to what was refused.
 */
import dns from 'node:dns';
import net from 'node:net';

export interface ConnectTarget {
  host?: string;
  port?: number;
  path?: string;
}

export const isLoopback = (host: string) =>
  (net.isIPv4(host) && host.startsWith('127.')) || host === '::1' || /^::ffff:127\./i.test(host);

function targetOf(args: unknown[]): ConnectTarget {
  const a0 = args[0];
  // net.connect passes its normalised arguments as an array.
  const o = Array.isArray(a0) ? (a0[0] as unknown) : a0;
  if (typeof o === 'object' && o !== null) {
    const x = o as ConnectTarget;
    return { host: x.host, port: x.port, path: x.path };
  }
  if (typeof o === 'number') return { port: o, host: args[1] as string };
  if (typeof o === 'string') return { path: o };
  return {};
}

export interface LoopbackGuard {
  connects: ConnectTarget[];
  dnsCalls: string[];
  on(): void;
  off(): void;
}

export function loopbackGuard(): LoopbackGuard {
  const origConnect = net.Socket.prototype.connect;
  const origLookup = dns.lookup;
  const origPromisesLookup = dns.promises.lookup;
  const g: LoopbackGuard = {
    connects: [],
    dnsCalls: [],
    on() {
      net.Socket.prototype.connect = function (this: net.Socket, ...args: unknown[]) {
        const t = targetOf(args);
        g.connects.push(t);
        if (t.path === undefined && !isLoopback(t.host ?? 'localhost'))
          throw new Error(`TEST GUARD: connect to ${t.host}:${t.port} blocked`);
        return (origConnect as (...a: unknown[]) => net.Socket).apply(this, args);
      } as typeof net.Socket.prototype.connect;
      (dns as { lookup: unknown }).lookup = (host: string, ...rest: unknown[]) => {
        if (net.isIP(host)) return (origLookup as (...a: unknown[]) => void)(host, ...rest);
        g.dnsCalls.push(host);
        throw new Error(`TEST GUARD: dns.lookup(${host}) blocked`);
      };
      dns.promises.lookup = ((host: string) => {
        g.dnsCalls.push(host);
        return Promise.reject(new Error(`TEST GUARD: dns.promises.lookup(${host}) blocked`));
      }) as typeof dns.promises.lookup;
    },
    off() {
      net.Socket.prototype.connect = origConnect;
      (dns as { lookup: unknown }).lookup = origLookup;
      dns.promises.lookup = origPromisesLookup;
    },
  };
  return g;
}

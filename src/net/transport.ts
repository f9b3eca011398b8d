/**
 * Outbound HTTP as the platform makes it (the `http` element, LLM providers): the contract between
 * the SSRF-guarded client (src/net/http-client.ts) and its users. Nothing here opens a socket.
 */

/** Resolves a host name to its addresses (tests pass their own; the default is dns.lookup all). */
export type Resolver = (host: string) => Promise<{ address: string; family: 4 | 6 }[]>;

export interface OutboundRequest {
  method: string;
  /** Absolute http: or https: URL. Anything else is refused (NET_URL_REFUSED). */
  url: string;
  headers?: Record<string, string>;
  body?: Buffer | string;
  /**
   * Destinations allowed: host names (`api.example.com`, `*.example.com`), IP addresses and CIDRs.
   * Empty: any public address. A loopback, private, link-local, multicast, metadata or otherwise
   * reserved address is refused unless an IP or CIDR entry covers it.
   */
  allow?: readonly string[];
  /** Whole-request budget (DNS, connect, TLS, headers and body), ms. */
  timeoutMs: number;
  /** Most response-body bytes read (buffered `request` only; default 10 MiB). */
  maxResponseBytes?: number;
  /** Redirects followed, each one checked again (default 5; 0: a redirect is answered as is). */
  maxRedirects?: number;
  signal?: AbortSignal;
  resolver?: Resolver;
  /** Extra trusted CA certificate(s) for https (PEM), on top of the system store's. */
  ca?: string | Buffer;
}

/** Milliseconds, summed over every hop of the exchange (redirects included). */
export interface OutboundTimings {
  dns_ms: number;
  connect_ms: number;
  /** Null on plain http. */
  tls_ms: number | null;
  /** Request sent → first response byte. */
  ttfb_ms: number;
  /** Whole exchange (set when the body has been read). */
  total_ms: number;
}

export interface OutboundResponse {
  status: number;
  /** Lower-case names. */
  headers: Record<string, string | string[]>;
  finalUrl: string;
  /** The address the connection was pinned to (the one that was checked). */
  address: string;
  /** Each redirect followed, in order: the URL that answered with it and its status. */
  redirects: { url: string; status: number }[];
  timings: OutboundTimings;
}

/** A response whose body is read as it arrives (streams: SSE from an LLM provider). */
export interface OpenResponse extends OutboundResponse {
  body: AsyncIterable<Buffer>;
  /** Stops reading and frees the socket. */
  close(): void;
}

export interface BufferedResponse extends OutboundResponse {
  body: Buffer;
}

/** The guarded client's streaming form: what LLM provider adapters call. */
export type Transport = (req: OutboundRequest) => Promise<OpenResponse>;

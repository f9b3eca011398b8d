/**
 * A Server-Sent Events reader over fetch (headers can carry the token, which EventSource cannot),
 * reconnecting with Last-Event-ID after a drop: the events it yields are each the stream's once.
 */
export interface SseEvent {
  id: string | undefined;
  event: string;
  data: string;
}

/** Parses SSE text as it arrives; call push with each chunk, it returns the complete events. */
export class SseParser {
  private buf = '';
  private id: string | undefined;
  private event = 'message';
  private data: string[] = [];
  /** The last id the stream set (what Last-Event-ID must send back). */
  lastId: string | undefined;

  push(chunk: string): SseEvent[] {
    this.buf += chunk;
    const out: SseEvent[] = [];
    let nl: number;
    while ((nl = this.buf.search(/\r\n|\r|\n/)) >= 0) {
      const line = this.buf.slice(0, nl);
      const sep = this.buf[nl] === '\r' && this.buf[nl + 1] === '\n' ? 2 : 1;
      // A lone \r at the end may be half of \r\n: wait for the next chunk.
      if (this.buf[nl] === '\r' && nl + 1 === this.buf.length) break;
      this.buf = this.buf.slice(nl + sep);
      if (line === '') {
        if (this.data.length > 0) {
          if (this.id !== undefined) this.lastId = this.id;
          out.push({ id: this.id, event: this.event, data: this.data.join('\n') });
        }
        this.id = undefined;
        this.event = 'message';
        this.data = [];
        continue;
      }
      if (line.startsWith(':')) continue; // a comment: heartbeats
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') this.data.push(value);
      else if (field === 'event') this.event = value;
      else if (field === 'id' && !value.includes('\0')) this.id = value;
    }
    return out;
  }
}

export interface FollowOptions {
  headers?: Record<string, string>;
  /** Resume after this id. */
  lastEventId?: string;
  signal?: AbortSignal;
  /** Reconnect after a drop (default true), waiting this long first (ms). */
  reconnectMs?: number;
  reconnect?: boolean;
  /** Called when a connection answers with an error status (the stream does not exist, auth). */
  onRefused?: (status: number, body: string) => void;
}

/**
 * Yields a stream's events, reconnecting with Last-Event-ID when the connection drops, until
 * `signal` aborts or the consumer stops iterating. A refused connection (4xx) ends it.
 */
export async function* followEvents(url: string, opts: FollowOptions = {}): AsyncGenerator<SseEvent> {
  let lastId = opts.lastEventId;
  const reconnect = opts.reconnect ?? true;
  for (;;) {
    if (opts.signal?.aborted) return;
    let res: Response | undefined;
    try {
      res = await fetch(url, {
        headers: {
          accept: 'text/event-stream',
          ...opts.headers,
          ...(lastId !== undefined ? { 'last-event-id': lastId } : {}),
        },
        signal: opts.signal,
      });
    } catch {
      res = undefined;
    }
    if (res && res.status >= 400 && res.status < 500) {
      opts.onRefused?.(res.status, await res.text().catch(() => ''));
      return;
    }
    if (res?.ok && res.body) {
      const parser = new SseParser();
      const decoder = new TextDecoder();
      try {
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          for (const e of parser.push(decoder.decode(chunk, { stream: true }))) {
            if (e.id !== undefined) lastId = e.id;
            yield e;
          }
        }
      } catch {
        // dropped: reconnect below
      }
    } else await res?.body?.cancel().catch(() => undefined); // a 5xx: let its connection go
    if (!reconnect || opts.signal?.aborted) return;
    await new Promise((r) => setTimeout(r, opts.reconnectMs ?? 500));
  }
}

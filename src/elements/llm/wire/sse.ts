/**
 * An incremental Server-Sent-Events parser (the WHATWG event-stream format) for provider streams:
 * bytes in as they arrive, whole events out. Lines end in \n, \r\n or \r (a \r\n split across two
 * chunks counts once); `:` lines are comments (keep-alives); `data:` lines of one event join with
 * \n; an event without data is not dispatched, as the spec says.
 */

export interface SseEvent {
  /** The `event:` field; null when absent (the spec's default type, "message"). */
  event: string | null;
  data: string;
  /** The `id:` field of this event, null when absent. */
  id: string | null;
}

/** OpenAI's (and most OpenAI-compatible servers') end-of-stream sentinel, sent as data. */
export const SSE_DONE = '[DONE]';

/** One event larger than this is a broken or hostile stream, not a model answer. */
const DEFAULT_MAX_EVENT_CHARS = 8 * 1024 * 1024;

export class SseParser {
  private readonly decoder = new TextDecoder('utf-8');
  /** The unterminated tail of the last chunk. */
  private line = '';
  /** The previous chunk ended in \r: a \n opening this one belongs to that line end. */
  private pendingCr = false;
  private event: string | null = null;
  private data: string[] = [];
  private dataChars = 0;
  private id: string | null = null;

  constructor(private readonly maxEventChars = DEFAULT_MAX_EVENT_CHARS) {}

  /** Feeds a chunk; returns the events it completed, in order. */
  push(chunk: Buffer | Uint8Array | string): SseEvent[] {
    // stream: true keeps a multi-byte character split across chunks for the next call.
    const text = typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true });
    return this.feed(text);
  }

  /** The stream ended: flushes the decoder; an event not closed by a blank line is dropped (spec). */
  end(): SseEvent[] {
    const out = this.feed(this.decoder.decode());
    this.line = '';
    this.resetEvent();
    return out;
  }

  private feed(text: string): SseEvent[] {
    const out: SseEvent[] = [];
    let start = 0;
    if (this.pendingCr && text.startsWith('\n')) start = 1;
    this.pendingCr = false;
    for (let i = start; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.line += text.slice(start, i);
      this.takeLine(out);
      if (c === 13) {
        if (i + 1 === text.length) this.pendingCr = true;
        else if (text.charCodeAt(i + 1) === 10) i++;
      }
      start = i + 1;
    }
    this.line += text.slice(start);
    if (this.line.length + this.dataChars > this.maxEventChars)
      throw new Error(`SSE event larger than ${this.maxEventChars} characters`);
    return out;
  }

  private takeLine(out: SseEvent[]): void {
    const line = this.line;
    this.line = '';
    if (line === '') {
      if (this.data.length > 0) out.push({ event: this.event, data: this.data.join('\n'), id: this.id });
      this.resetEvent();
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'event':
        this.event = value;
        break;
      case 'data':
        this.data.push(value);
        this.dataChars += value.length + 1;
        if (this.dataChars > this.maxEventChars)
          throw new Error(`SSE event larger than ${this.maxEventChars} characters`);
        break;
      case 'id':
        if (!value.includes('\0')) this.id = value;
        break;
      default:
        // retry: and unknown fields are ignored (we never reconnect a model call mid-answer).
        break;
    }
  }

  private resetEvent(): void {
    this.event = null;
    this.data = [];
    this.dataChars = 0;
    this.id = null;
  }
}

/** Events of a byte stream, as they complete. */
export async function* readSse(body: AsyncIterable<Uint8Array | string>): AsyncGenerator<SseEvent> {
  const parser = new SseParser();
  for await (const chunk of body) yield* parser.push(chunk);
  yield* parser.end();
}

/**
 * A Server-Sent Events reader over fetch, because EventSource cannot send an Authorization
 * header. It parses the stream as the HTML spec says (id:, event:, data:, retry:, comments
 * starting with ":" as heartbeats), and after a drop it reconnects with the Last-Event-ID of
 * the last event it got, backing off 0.5 s, 1 s, 2 s … up to 15 s (reset by each event).
 *
 * A 404 or 405 means the server has no such stream: `onUnsupported` is called and it stops (the
 * caller polls instead). A 401/403 stops it too (`onError`).
 */
import { authHeaders } from './api.js';
import { ApiError } from './errors.js';

/** Feeds text chunks, calls `dispatch({id, event, data})` per complete event and `comment()` per comment line. */
export function createParser(dispatch, comment = () => {}) {
  let buf = '';
  let data = [];
  let event = '';
  let id = null;
  let sawCR = false;
  const line = (l) => {
    if (l === '') {
      if (data.length > 0) dispatch({ id, event: event || 'message', data: data.join('\n') });
      data = [];
      event = '';
      return;
    }
    if (l.startsWith(':')) return comment(l.slice(1).trimStart());
    const i = l.indexOf(':');
    const field = i < 0 ? l : l.slice(0, i);
    let value = i < 0 ? '' : l.slice(i + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') data.push(value);
    else if (field === 'event') event = value;
    else if (field === 'id') {
      if (!value.includes('\0')) id = value;
    } else if (field === 'retry' && /^\d+$/.test(value)) dispatch({ retry: Number(value) });
  };
  return {
    /** @param {string} chunk */
    push(chunk) {
      if (sawCR && chunk.startsWith('\n')) chunk = chunk.slice(1);
      sawCR = false;
      buf += chunk;
      let start = 0;
      for (let k = 0; k < buf.length; k++) {
        const c = buf[k];
        if (c !== '\n' && c !== '\r') continue;
        line(buf.slice(start, k));
        if (c === '\r') {
          if (k + 1 < buf.length) {
            if (buf[k + 1] === '\n') k++;
          } else sawCR = true;
        }
        start = k + 1;
      }
      buf = buf.slice(start);
    },
    get lastEventId() {
      return id;
    },
  };
}

/**
 * Opens a stream. Returns `close()`.
 * @param {string} url
 * @param {{onEvent: (e: {id: string|null, event: string, data: any}) => void,
 *          onOpen?: () => void, onUnsupported?: () => void, onError?: (e: ApiError) => void,
 *          onDrop?: () => void, lastEventId?: string | null}} handlers
 */
export function openStream(url, handlers) {
  const ctl = new AbortController();
  let lastId = handlers.lastEventId ?? null;
  let delay = 500;
  let retryMs = null;
  let closed = false;
  let timer = null;

  const connect = async () => {
    if (closed) return;
    let res;
    try {
      const headers = authHeaders({ Accept: 'text/event-stream' });
      if (lastId !== null) headers['Last-Event-ID'] = lastId;
      res = await fetch(url, { headers, signal: ctl.signal, cache: 'no-store', credentials: 'omit' });
    } catch {
      return again();
    }
    if (res.status === 404 || res.status === 405) {
      closed = true;
      return handlers.onUnsupported?.();
    }
    if (!res.ok || !res.body) {
      const body = await res.json().catch(() => null);
      if (res.status === 401 || res.status === 403 || res.status === 400) {
        closed = true;
        return handlers.onError?.(new ApiError(res.status, body));
      }
      return again();
    }
    handlers.onOpen?.();
    const parser = createParser((e) => {
      if (e.retry !== undefined) {
        retryMs = e.retry;
        return;
      }
      if (e.id !== null) lastId = e.id;
      delay = 500;
      let data = e.data;
      try {
        data = JSON.parse(e.data);
      } catch {
        /* not JSON: passed as text */
      }
      handlers.onEvent({ id: e.id, event: e.event, data });
    });
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value);
      }
    } catch {
      /* dropped */
    }
    again();
  };

  const again = () => {
    if (closed) return;
    handlers.onDrop?.();
    const wait = Math.max(retryMs ?? 0, delay);
    delay = Math.min(delay * 2, 15_000);
    timer = setTimeout(connect, wait + Math.random() * 250);
  };

  void connect();
  return {
    close() {
      closed = true;
      clearTimeout(timer);
      ctl.abort();
    },
    get lastEventId() {
      return lastId;
    },
  };
}

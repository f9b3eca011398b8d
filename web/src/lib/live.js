/**
 * Live updates for a page: the server's event stream when it has one (lib/sse.js), polling
 * otherwise. The answer is the mode, for the page to show: connecting, live, reconnecting,
 * polling.
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import { openStream } from './sse.js';

/**
 * @param {string | null} url the SSE URL (null: nothing to watch)
 * @param {{onEvent: (e: any) => void, poll: () => Promise<number | void> | number | void,
 *          pollMs?: number, idlePollMs?: number, onOpen?: () => void}} opts  poll may answer the next
 *   delay in ms; with no url, poll runs every idlePollMs (if given)
 */
export function useLive(url, opts) {
  const [mode, setMode] = useState('connecting');
  const ref = useRef(opts);
  ref.current = opts;
  useEffect(() => {
    if (!url) {
      // Nothing to stream (a finished run): check now and then, if asked to.
      const idle = ref.current.idlePollMs;
      if (!idle) return undefined;
      setMode('idle');
      const t = setInterval(() => void Promise.resolve(ref.current.poll()).catch(() => undefined), idle);
      return () => clearInterval(t);
    }
    let timer = null;
    let stopped = false;
    let polling = false;
    // Drops in a row without an event: a stream that cannot get going (cut off on every try)
    // is backed up by polling until it delivers again.
    let barren = 0;
    let gotEvent = false;
    let since = Date.now();
    let opened = false;
    const base = ref.current.pollMs ?? 1000;
    const startPolling = () => {
      if (polling || stopped) return;
      polling = true;
      setMode('polling');
      const tick = async () => {
        if (!polling || stopped) return;
        let next = base;
        try {
          const n = await ref.current.poll();
          if (typeof n === 'number') next = n;
        } catch {
          /* the page shows its own error; keep polling */
        }
        if (polling && !stopped) timer = setTimeout(tick, next);
      };
      timer = setTimeout(tick, base);
    };
    const stopPolling = () => {
      polling = false;
      clearTimeout(timer);
    };
    setMode('connecting');
    const stream = openStream(url, {
      onOpen: () => {
        gotEvent = false;
        opened = true;
        since = Date.now();
        if (!polling) setMode('live');
        ref.current.onOpen?.();
      },
      onEvent: (e) => {
        gotEvent = true;
        barren = 0;
        if (polling) {
          stopPolling();
          setMode('live');
        }
        ref.current.onEvent(e);
      },
      onUnsupported: startPolling,
      onError: startPolling,
      onDrop: () => {
        // A stream that lived a while and went quiet is not barren; one cut at once is.
        barren = opened && (gotEvent || Date.now() - since > 5000) ? 0 : barren + 1;
        gotEvent = false;
        opened = false;
        if (barren >= 2) startPolling();
        else if (!polling) setMode('reconnecting');
      },
    });
    return () => {
      stopped = true;
      stopPolling();
      stream.close();
    };
  }, [url, opts.idlePollMs ?? 0]);
  return mode;
}

/**
 * Calls `fn` at most once per `ms`, `ms` after the first request of a burst: a stream of
 * events never starves it (unlike a debounce), and a burst costs one call.
 */
export function coalesce(fn, ms) {
  let timer = null;
  const run = () => {
    timer = null;
    fn();
  };
  const request = () => {
    if (timer === null) timer = setTimeout(run, ms);
  };
  request.cancel = () => {
    clearTimeout(timer);
    timer = null;
  };
  return request;
}

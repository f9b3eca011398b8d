/** Fetching in components: the data, the error, whether it is loading, and reload(). */
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';

/**
 * @template T
 * @param {(signal: AbortSignal) => Promise<T>} fn
 * @param {unknown[]} deps
 */
export function useFetch(fn, deps) {
  const [state, setState] = useState({ data: undefined, error: null, loading: true });
  const seq = useRef(0);
  const ctl = useRef(null);
  const run = useCallback(async (quiet = false) => {
    const n = ++seq.current;
    ctl.current?.abort();
    const c = new AbortController();
    ctl.current = c;
    if (!quiet) setState((s) => ({ ...s, loading: true }));
    try {
      const data = await fn(c.signal);
      if (n === seq.current) setState({ data, error: null, loading: false });
      return data;
    } catch (error) {
      if (error?.name === 'AbortError') return undefined;
      if (n === seq.current) setState((s) => ({ data: s.data, error, loading: false }));
      return undefined;
    }
  }, deps);
  useEffect(() => {
    void run();
    return () => ctl.current?.abort();
  }, [run]);
  return { ...state, reload: run };
}

/** The current time, updated every `ms` (running durations, "3 s ago"). */
export function useNow(ms = 1000, active = true) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (!active) return undefined;
    const t = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(t);
  }, [ms, active]);
  return now;
}

/** How numbers, times and ids read on the page. */

const MICRO = 1_000_000;
const group = new Intl.NumberFormat('en-US', { maximumFractionDigits: 6 });
const whole = new Intl.NumberFormat('en-US');

/**
 * Credits from the API's integer micro-credits (1 credit = 1,000,000): "0.001", "12.5", "1,000".
 * @param {number | null | undefined} micro
 */
export function credits(micro) {
  if (micro === null || micro === undefined || Number.isNaN(Number(micro))) return '—';
  return group.format(Number(micro) / MICRO);
}

/** The exact amount, for a title attribute. */
export function microTitle(micro) {
  if (micro === null || micro === undefined) return '';
  return `${whole.format(Number(micro))} micro-credits`;
}

export function count(n) {
  if (n === null || n === undefined) return '—';
  return whole.format(Number(n));
}

export function percent(x) {
  if (x === null || x === undefined) return '—';
  return `${(x * 100).toFixed(x >= 0.995 || x === 0 ? 0 : 1)} %`;
}

/** 950 ms, 3.2 s, 4 min 12 s, 2 h 5 min. */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(Number(ms))) return '—';
  const v = Number(ms);
  if (v < 1) return `${v.toFixed(2)} ms`;
  if (v < 1000) return `${v < 10 ? v.toFixed(1) : Math.round(v)} ms`;
  if (v < 60_000) return `${(v / 1000).toFixed(v < 10_000 ? 2 : 1)} s`;
  const s = Math.round(v / 1000);
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

const dtf = new Intl.DateTimeFormat(undefined, {
  year: 'numeric',
  month: 'short',
  day: 'numeric',
  hour: '2-digit',
  minute: '2-digit',
  second: '2-digit',
});
const tf = new Intl.DateTimeFormat(undefined, {
  hour: '2-digit',
  minute: '2-digit',
  second: '2-digit',
  hourCycle: 'h23',
});

export function dateTime(iso) {
  if (!iso) return '—';
  return dtf.format(new Date(iso));
}

export function clock(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return `${tf.format(d)}.${String(d.getMilliseconds()).padStart(3, '0')}`;
}

/** "3 min ago", "in 2 h". */
export function ago(iso, now = Date.now()) {
  if (!iso) return '—';
  const d = (Date.parse(iso) - now) / 1000;
  const a = Math.abs(d);
  const [v, u] =
    a < 45
      ? [Math.round(a), 's']
      : a < 2700
        ? [Math.round(a / 60), 'min']
        : a < 64800
          ? [Math.round(a / 3600), 'h']
          : [Math.round(a / 86400), 'd'];
  if (a < 5) return 'just now';
  return d < 0 ? `${v} ${u} ago` : `in ${v} ${u}`;
}

/** The first 8 characters of an id or hash (the full value goes in a title). */
export function short(id, n = 8) {
  if (!id) return '—';
  const s = String(id).replace(/^sha256:/, '');
  return s.length > n ? s.slice(0, n) : s;
}

export function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

/** Who did something, from the API's actor strings (token:…, admin-token:…, worker:…, system). */
export function actor(a) {
  if (!a) return '—';
  const m = /^(admin-token|token|worker|workflow):(.+)$/.exec(a);
  if (!m) return a;
  if (m[1] === 'worker') return `worker ${m[2]}`;
  if (m[1] === 'workflow') return `workflow run ${short(m[2].slice(-12), 12)}`;
  return `${m[1] === 'admin-token' ? 'admin token' : 'token'} ${short(m[2])}`;
}

export const TERMINAL = ['succeeded', 'completed', 'failed', 'cancelled'];
export const isTerminal = (s) => TERMINAL.includes(s);

/** An ISO 8601 timestamp from PostgreSQL's text form ("2026-12-01 18:53:26.157+00"), as events may carry. */
export function iso(s) {
  if (typeof s !== 'string') return s;
  const m = /^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d(?:\.\d+)?)([+-]\d\d)(?::?(\d\d))?$/.exec(s);
  return m ? `${m[1]}T${m[2]}${m[3]}:${m[4] ?? '00'}` : s;
}

/**
 * The run list: filters for status, kind, element, trigger and time (kept in the URL), cursor
 * paging, and live updates (the circle's event stream, or polling while it has none).
 */
import { useEffect, useMemo, useState } from 'preact/hooks';
import { html } from '../lib/html.js';
import { api, qs } from '../lib/api.js';
import { useFetch, useNow } from '../lib/hooks.js';
import { coalesce, useLive } from '../lib/live.js';
import { location, paths, setQuery } from '../lib/router.js';
import { currentCircle } from '../lib/state.js';
import { actor, ago, credits, dateTime, duration, isTerminal, microTitle, short } from '../lib/format.js';
import { PageHead } from '../components/layout.js';
import { ErrorBox, Loading, Empty } from '../components/error.js';
import { Progress, Status } from '../components/status.js';
import { LiveBadge } from '../components/live-badge.js';

const enc = encodeURIComponent;
export const RUN_STATUSES = ['queued', 'running', 'paused', 'succeeded', 'completed', 'failed', 'cancelled'];
const KINDS = ['invoke', 'batch', 'workflow'];
const TRIGGERS = ['manual', 'api', 'webhook', 'schedule', 'upstream', 'replay', 'rerun'];
const RANGES = {
  '': 'Any time',
  '1h': 'Last hour',
  '24h': 'Last 24 hours',
  '7d': 'Last 7 days',
  '30d': 'Last 30 days',
  custom: 'Between…',
};
const RANGE_MS = { '1h': 3_600_000, '24h': 86_400_000, '7d': 7 * 86_400_000, '30d': 30 * 86_400_000 };

/** datetime-local value ↔ ISO 8601 with an offset (what the API takes). */
const toLocal = (iso) => {
  if (!iso) return '';
  const d = new Date(iso);
  return new Date(d.getTime() - d.getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
};
const fromLocal = (v) => (v ? new Date(v).toISOString() : '');

export function RunTable({ runs, compact = false, now = Date.now() }) {
  if (!runs.length) return html`<${Empty}>No runs match.<//>`;
  return html`<div class="table-wrap">
    <table class="table runs-table">
      <thead>
        <tr>
          <th scope="col">Status</th>
          <th scope="col">Run</th>
          <th scope="col">Element</th>
          <th scope="col">Kind</th>
          ${compact ? null : html`<th scope="col">Trigger</th>`}
          <th scope="col">Items</th>
          <th scope="col" class="num">Credits</th>
          <th scope="col" class="num">Duration</th>
          <th scope="col">Queued</th>
        </tr>
      </thead>
      <tbody>
        ${runs.map((r) => {
          const running = !isTerminal(r.status) && r.started_at;
          const ms = r.duration_ms ?? (running ? now - Date.parse(r.started_at) : null);
          return html`<tr key=${r.id} class=${`run-row s-${r.status}`}>
            <td><${Status} status=${r.status} /></td>
            <td><a href=${paths.run(r.id)} class="mono" title=${r.id}>${short(r.id.slice(-12), 12)}</a></td>
            <td>
              <a href=${paths.element(r.circle.slug, r.element.slug)}>${r.element.slug}</a>
              <span class="muted small"> v${r.element.version}</span>
            </td>
            <td>
              ${r.kind}${r.mode && r.mode !== 'live' ? html` <span class="pill">${r.mode}</span>` : null}
            </td>
            ${
              compact
                ? null
                : html`<td>
                    ${r.trigger?.type ?? '—'}
                    <div class="muted small">
                      ${
                        r.parent_run_id
                          ? html`step of${' '}
                              <a href=${paths.run(r.parent_run_id)} class="mono" title=${r.parent_run_id}
                                >${short(r.parent_run_id.slice(-12), 12)}</a
                              >`
                          : actor(r.trigger?.actor)
                      }
                    </div>
                  </td>`
            }
            <td class="items-cell">
              ${
                r.items_total > 1
                  ? html`<${Progress}
                        total=${r.items_total}
                        succeeded=${r.items_succeeded}
                        failed=${r.items_failed}
                        pending=${r.items_pending}
                        compact
                      />
                      <span class="small muted">${r.items_succeeded + r.items_failed}/${r.items_total}</span>`
                  : html`<span class="muted small">${r.items_total === 1 ? '1 item' : '—'}</span>`
              }
            </td>
            <td class="num" title=${microTitle(r.credits_used)}>${credits(r.credits_used)}</td>
            <td class="num">${duration(ms)}</td>
            <td title=${dateTime(r.queued_at)}>${ago(r.queued_at, now)}</td>
          </tr>`;
        })}
      </tbody>
    </table>
  </div>`;
}

function Filters({ f, elements }) {
  const set = (k, v) => setQuery({ ...f, [k]: v });
  const sel = (k, label, options, labels = {}) =>
    html`<label class="filter">
      <span>${label}</span>
      <select name=${k} value=${f[k] ?? ''} onChange=${(e) => set(k, e.currentTarget.value)}>
        <option value="">Any</option>
        ${options.map((o) => html`<option value=${o}>${labels[o] ?? o}</option>`)}
      </select>
    </label>`;
  return html`<form
    class="filters"
    role="search"
    aria-label="Filter runs"
    onSubmit=${(e) => e.preventDefault()}
  >
    ${sel('status', 'Status', RUN_STATUSES)} ${sel('kind', 'Kind', KINDS)}
    ${sel('element', 'Element', elements)} ${sel('trigger', 'Trigger', TRIGGERS)}
    <label class="filter">
      <span>Time</span>
      <select name="range" value=${f.range ?? ''} onChange=${(e) => set('range', e.currentTarget.value)}>
        ${Object.entries(RANGES).map(([k, v]) => html`<option value=${k}>${v}</option>`)}
      </select>
    </label>
    ${
      f.range === 'custom'
        ? html`<label class="filter">
              <span>From</span>
              <input
                type="datetime-local"
                name="since"
                value=${toLocal(f.since)}
                onChange=${(e) => set('since', fromLocal(e.currentTarget.value))}
              />
            </label>
            <label class="filter">
              <span>Until</span>
              <input
                type="datetime-local"
                name="until"
                value=${toLocal(f.until)}
                onChange=${(e) => set('until', fromLocal(e.currentTarget.value))}
              />
            </label>`
        : null
    }
    ${
      Object.values(f).some(Boolean)
        ? html`<button type="button" class="btn ghost small" onClick=${() => setQuery({})}>
            Clear filters
          </button>`
        : null
    }
  </form>`;
}

export function RunsPage({ circle }) {
  useEffect(() => {
    currentCircle.value = circle;
  }, [circle]);
  const q = location.value.query;
  const f = {
    status: q.get('status') ?? '',
    kind: q.get('kind') ?? '',
    element: q.get('element') ?? '',
    trigger: q.get('trigger') ?? '',
    range: q.get('range') ?? '',
    since: q.get('since') ?? '',
    until: q.get('until') ?? '',
  };
  const key = JSON.stringify(f);
  // The cursors of the pages before this one ("Newer" goes back one).
  const [stack, setStack] = useState([]);
  const cursor = stack.at(-1) ?? null;
  useEffect(() => setStack([]), [key, circle]);

  const els = useFetch(() => api(`/api/${enc(circle)}/elements`), [circle]);
  const page = useFetch(() => {
    const since =
      f.range && f.range !== 'custom'
        ? new Date(Date.now() - RANGE_MS[f.range]).toISOString()
        : f.range === 'custom'
          ? f.since
          : '';
    const until = f.range === 'custom' ? f.until : '';
    return api(
      `/api/${enc(circle)}/runs${qs({ status: f.status, kind: f.kind, element: f.element, trigger: f.trigger, since, until, limit: 50, cursor })}`,
    );
  }, [circle, key, cursor]);

  // Live: the newest page follows the circle's events; older pages stay as they were.
  const refresh = useMemo(() => coalesce(() => void page.reload(true), 300), [page.reload]);
  // Only what can change this list: status and item events of runs of its kind and element.
  const stream = `/api/${enc(circle)}/events${qs({ kind: f.kind, element: f.element, types: 'status,item' })}`;
  const mode = useLive(cursor ? null : stream, {
    onEvent: (e) => {
      if (e.event === 'status' || e.event === 'item') refresh();
    },
    poll: async () => {
      await page.reload(true);
      return 2000;
    },
    pollMs: 2000,
    onOpen: refresh,
  });
  useEffect(() => () => refresh.cancel(), [refresh]);
  const anyRunning = (page.data?.runs ?? []).some((r) => !isTerminal(r.status));
  const now = useNow(1000, anyRunning);

  const elements = (els.data?.elements ?? []).map((e) => e.slug);
  return html`<${PageHead}
      title="Runs"
      sub=${`Every execution in ${circle}, newest first`}
      crumbs=${[{ href: paths.circle(circle), label: circle }]}
    >
      ${cursor ? html`<span class="muted small">Live updates show on the newest page</span>` : html`<${LiveBadge} mode=${mode} />`}
    <//>
    <section class="card" aria-label="Runs">
      <${Filters} f=${f} elements=${elements} />
      <${ErrorBox} error=${page.error} />
      ${page.data ? html`<${RunTable} runs=${page.data.runs} now=${now} />` : html`<${Loading} what="Loading runs" />`}
      <nav class="pager" aria-label="Pages">
        <button
          type="button"
          class="btn"
          disabled=${stack.length === 0}
          onClick=${() => setStack(stack.slice(0, -1))}
        >
          ← Newer
        </button>
        <span class="muted small">${stack.length ? `page ${stack.length + 1}` : 'newest'}</span>
        <button
          type="button"
          class="btn"
          disabled=${!page.data?.next_cursor}
          onClick=${() => setStack([...stack, page.data.next_cursor])}
        >
          Older →
        </button>
      </nav>
    </section>`;
}

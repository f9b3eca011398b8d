/**
 * An element: its spec as YAML, its versions with a diff between any two, its runs, and its
 * statistics over the last hour, day and week with the durations of its latest runs.
 */
import { useEffect, useMemo, useState } from 'preact/hooks';
import { html } from '../lib/html.js';
import { api, qs } from '../lib/api.js';
import { useFetch } from '../lib/hooks.js';
import { paths } from '../lib/router.js';
import { currentCircle } from '../lib/state.js';
import { actor, ago, count, credits, dateTime, duration, microTitle, percent } from '../lib/format.js';
import { toYaml } from '../lib/yaml.js';
import { diffLines } from '../lib/diff.js';
import { PageHead } from '../components/layout.js';
import { ErrorBox, Loading, Empty } from '../components/error.js';
import { Health } from '../components/status.js';
import { Code, Hash } from '../components/code.js';
import { Tabs, TabPanel } from '../components/tabs.js';
import { RunTable } from './runs.js';

const enc = encodeURIComponent;
const PERIODS = ['hour', 'day', 'week'];

function StatsCards({ base }) {
  const stats = useFetch(
    () => Promise.all(PERIODS.map((p) => api(`${base}/stats${qs({ period: p })}`))),
    [base],
  );
  if (stats.error) return html`<${ErrorBox} error=${stats.error} />`;
  if (!stats.data) return html`<${Loading} what="Loading statistics" />`;
  return html`<div class="period-grid">
    ${stats.data.map(
      (s) =>
        html`<div class="period card-inset">
          <div class="period-head">
            <h3>Last ${s.period}</h3>
            <${Health} health=${s.health} />
          </div>
          <dl class="kv compact">
            <dt>Runs</dt>
            <dd>
              ${count(s.runs)}${s.active ? html` <span class="muted small">(${s.active} active)</span>` : null}
            </dd>
            <dt>Succeeded</dt>
            <dd>${count(s.succeeded)} <span class="muted small">${percent(s.success_rate)}</span></dd>
            <dt>Failed</dt>
            <dd>${count(s.failed)}</dd>
            <dt>Avg / p95</dt>
            <dd>${duration(s.avg_duration_ms)} / ${duration(s.p95_duration_ms)}</dd>
            <dt>Credits</dt>
            <dd title=${microTitle(s.credits_used)}>${credits(s.credits_used)}</dd>
          </dl>
        </div>`,
    )}
  </div>`;
}

/** The latest runs' durations as bars, oldest left, coloured by status. */
function DurationChart({ runs }) {
  const list = [...runs].reverse().filter((r) => r.duration_ms !== null);
  if (list.length < 2) return null;
  const max = Math.max(...list.map((r) => r.duration_ms), 1);
  const W = 640;
  const H = 90;
  // Bars at most 16 units wide, the latest at the right edge.
  const bw = Math.min(16, W / list.length);
  const x0 = W - bw * list.length;
  return html`<figure class="chart">
    <svg
      viewBox=${`0 0 ${W} ${H}`}
      preserveAspectRatio="none"
      role="img"
      aria-label=${`Durations of the latest ${list.length} runs; the longest took ${duration(max)}`}
    >
      ${list.map((r, i) => {
        const h = Math.max(2, (r.duration_ms / max) * (H - 4));
        return html`<rect
          class=${`bar s-${r.status}`}
          x=${x0 + i * bw + 1}
          y=${H - h}
          width=${Math.max(1, bw - (bw > 4 ? 2 : 0))}
          height=${h}
          ><title>${`${r.status}, ${duration(r.duration_ms)}, ${dateTime(r.queued_at)}`}</title></rect
        >`;
      })}
    </svg>
    <figcaption class="muted small">
      Durations of the latest ${list.length} runs (longest ${duration(max)}), oldest first
    </figcaption>
  </figure>`;
}

function Versions({ base, element }) {
  const v = useFetch(
    () => api(`${base}/version${qs({ history: true, limit: 100 })}`),
    [base, element.version],
  );
  const list = v.data?.versions ?? [];
  const [pick, setPick] = useState(null); // [older, newer]
  useEffect(() => {
    if (list.length) setPick([list[Math.min(1, list.length - 1)].version, list[0].version]);
  }, [v.data]);
  const text = (ver) => {
    const x = list.find((y) => y.version === ver);
    return x ? toYaml({ name: x.name, intention: x.intention ?? null, spec: x.spec }) : '';
  };
  const lines = useMemo(() => (pick ? diffLines(text(pick[0]), text(pick[1])) : []), [pick, v.data]);
  if (v.error) return html`<${ErrorBox} error=${v.error} />`;
  if (!v.data) return html`<${Loading} what="Loading versions" />`;
  const added = lines.filter((l) => l.op === '+').length;
  const removed = lines.filter((l) => l.op === '-').length;
  const picker = (i, label) =>
    html`<label class="filter">
      <span>${label}</span>
      <select
        value=${pick?.[i] ?? ''}
        onChange=${(e) => setPick(i === 0 ? [Number(e.currentTarget.value), pick[1]] : [pick[0], Number(e.currentTarget.value)])}
      >
        ${list.map((x) => html`<option value=${x.version}>v${x.version}${x.version === element.version ? ' (current)' : ''}</option>`)}
      </select>
    </label>`;
  return html`<div class="versions">
    <div class="table-wrap">
      <table class="table">
        <thead>
          <tr>
            <th scope="col">Version</th>
            <th scope="col">When</th>
            <th scope="col">By</th>
            <th scope="col">Note</th>
            <th scope="col">Definition hash</th>
          </tr>
        </thead>
        <tbody>
          ${list.map(
            (x) =>
              html`<tr key=${x.version}>
                <td>
                  <strong>v${x.version}</strong
                  >${x.version === element.version ? html` <span class="pill">current</span>` : null}
                </td>
                <td title=${dateTime(x.created_at)}>${ago(x.created_at)}</td>
                <td class="muted">${actor(x.actor)}</td>
                <td>${x.note ?? ''}</td>
                <td><${Hash} value=${x.definition_hash} /></td>
              </tr>`,
          )}
        </tbody>
      </table>
    </div>
    ${
      list.length > 1
        ? html`<div class="diff-head">
              <h3>Diff</h3>
              ${picker(0, 'From')} ${picker(1, 'To')}
              <span class="small"
                ><span class="plus">+${added}</span> <span class="minus">−${removed}</span></span
              >
            </div>
            <pre
              class="diff code-block"
              tabindex="0"
              aria-label=${`Changes from v${pick?.[0]} to v${pick?.[1]}`}
            >
${lines.map(
                (l) =>
                  html`<span class=${`dl ${l.op === '+' ? 'add' : l.op === '-' ? 'del' : ''}`}
                    ><span class="sign" aria-hidden="true">${l.op}</span>${l.text}
                  </span>`,
              )}</pre>`
        : html`<${Empty}>One version so far: nothing to compare.<//>`
    }
  </div>`;
}

function ElementRuns({ base, circle }) {
  const [stack, setStack] = useState([]);
  const cursor = stack.at(-1) ?? null;
  const runs = useFetch(() => api(`${base}/runs${qs({ limit: 25, cursor })}`), [base, cursor]);
  if (runs.error) return html`<${ErrorBox} error=${runs.error} />`;
  if (!runs.data) return html`<${Loading} what="Loading runs" />`;
  return html`<${RunTable} runs=${runs.data.runs} />
    <nav class="pager" aria-label="Pages of runs">
      <button
        type="button"
        class="btn"
        disabled=${!stack.length}
        onClick=${() => setStack(stack.slice(0, -1))}
      >
        ← Newer
      </button>
      <a class="small" href=${paths.runs(circle, { element: base.split('/').at(-2) })}>In the run list</a>
      <button
        type="button"
        class="btn"
        disabled=${!runs.data.next_cursor}
        onClick=${() => setStack([...stack, runs.data.next_cursor])}
      >
        Older →
      </button>
    </nav>`;
}

export function ElementPage({ circle, slug }) {
  useEffect(() => {
    currentCircle.value = circle;
  }, [circle]);
  const base = `/api/${enc(circle)}/${enc(slug)}/ops`;
  const el = useFetch(() => api(`${base}/get`), [base]);
  const recent = useFetch(() => api(`${base}/runs${qs({ limit: 100 })}`), [base]);
  const [tab, setTab] = useState('spec');
  const e = el.data;
  const crumbs = [
    { href: paths.circle(circle), label: circle },
    { href: paths.circle(circle), label: 'Elements' },
  ];
  if (el.error) return html`<${PageHead} title=${slug} crumbs=${crumbs} /><${ErrorBox} error=${el.error} />`;
  if (!e)
    return html`<${PageHead} title=${slug} crumbs=${crumbs} /><${Loading} what="Loading the element" />`;
  return html`<${PageHead} title=${e.slug} sub=${e.intention ?? e.name} crumbs=${crumbs}>
      <a class="btn" href=${paths.runs(circle, { element: e.slug })}>Its runs</a>
    <//>
    <section class="card summary" aria-label="Element">
      <dl class="kv grid">
        <dt>Type</dt>
        <dd>
          <span class="type-badge t-${e.category}">${e.element_type}</span>
          <span class="muted small">${e.category}</span>
        </dd>
        <dt>State</dt>
        <dd>
          <span class=${`state st-${e.state}`}>${e.state}</span
          >${e.disabled_reason ? html` <span class="muted small">${e.disabled_reason}</span>` : null}
        </dd>
        <dt>Version</dt>
        <dd>v${e.version} <span class="muted small">updated ${ago(e.updated_at)}</span></dd>
        <dt>Definition hash</dt>
        <dd><${Hash} value=${e.definition_hash} /></dd>
        <dt>Name</dt>
        <dd>${e.name}</dd>
        <dt>Created</dt>
        <dd>${dateTime(e.created_at)}</dd>
      </dl>
    </section>
    <section class="card" aria-labelledby="stats-title">
      <h2 id="stats-title">Statistics</h2>
      <${StatsCards} base=${base} />
      ${recent.data ? html`<${DurationChart} runs=${recent.data.runs} />` : null}
    </section>
    <section class="card">
      <${Tabs}
        id="el"
        label="Element"
        current=${tab}
        onChange=${setTab}
        tabs=${[
          { id: 'spec', label: 'Spec' },
          { id: 'versions', label: 'Versions', count: e.version },
          { id: 'runs', label: 'Runs' },
        ]}
      />
      <${TabPanel} id="el" current=${tab}>
        ${
          tab === 'spec'
            ? html`<${Code} value=${e.spec} label=${`Spec of ${e.slug} (YAML)`} />`
            : tab === 'versions'
              ? html`<${Versions} base=${base} element=${e} />`
              : html`<${ElementRuns} base=${base} circle=${circle} />`
        }
      <//>
    </section>`;
}

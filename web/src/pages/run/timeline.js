/**
 * The timeline: the run's status transitions as a lane, then one row per item or task with its
 * status, attempts, duration, credits and a Gantt bar on the run's time axis. The rows are
 * virtualised (only those in view are in the DOM), so 10,000 items scroll like 10; a for_each
 * step's tasks fold under their step. The status filter applies to the rows (a batch's items are
 * filtered by the API, a workflow's tasks here). Arrow keys move the selection.
 */
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { html } from '../../lib/html.js';
import { useNow } from '../../lib/hooks.js';
import { clock, count, credits, duration, isTerminal, microTitle } from '../../lib/format.js';
import { VirtualRows } from '../../components/virtual.js';
import { Status } from '../../components/status.js';
import { ErrorBox, Loading } from '../../components/error.js';

const ROW = 30;
const ITEM_FILTERS = ['succeeded', 'failed', 'running', 'pending', 'retrying', 'skipped', 'cancelled'];
const FOLD_OVER = 12;

/** Nice tick spacing for a span of `ms` (about 6 ticks). */
function ticks(ms) {
  const steps = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 15e3, 3e4, 6e4, 12e4, 3e5, 6e5, 9e5, 18e5, 36e5,
    72e5, 144e5, 288e5, 864e5,
  ];
  const step = steps.find((s) => ms / s <= 6) ?? 864e5 * Math.ceil(ms / 864e5 / 6);
  const out = [];
  for (let t = 0; t <= ms; t += step) out.push(t);
  return out;
}

/** An axis label: 0, 500 ms, 1 s, 2.5 s, 2 min. */
function tickLabel(t) {
  if (t === 0) return '0';
  if (t < 1000) return `${t}\u00a0ms`;
  if (t < 60_000) return `${+(t / 1000).toFixed(2)}\u00a0s`;
  if (t < 3_600_000) return `${+(t / 60_000).toFixed(1)}\u00a0min`;
  return `${+(t / 3_600_000).toFixed(1)}\u00a0h`;
}

/** A label for a row: a workflow task's name, a batch item's row number, an invoke's call. */
function label(x, kind) {
  if (kind === 'workflow') return x.name;
  if (kind === 'batch') return `#${x.ord + 1}`;
  return x.key;
}

function rowsOf(kind, list, folded, filter) {
  if (kind !== 'workflow') return list.map((x) => ({ x, depth: 0 }));
  const children = new Map();
  for (const t of list)
    if (t.index !== null && t.index !== undefined)
      (children.get(t.step) ?? children.set(t.step, []).get(t.step)).push(t);
  const match = (t) => !filter || t.status === filter || (filter === 'running' && t.awaiting);
  const rows = [];
  for (const t of list) {
    if (t.index !== null && t.index !== undefined) continue;
    const kids = children.get(t.name) ?? [];
    const shown = kids.filter(match);
    if (filter && !match(t) && shown.length === 0) continue;
    rows.push({ x: t, depth: 0, kids: kids.length, folded: folded.has(t.name) });
    if (!folded.has(t.name)) for (const k of shown) rows.push({ x: k, depth: 1 });
  }
  return rows;
}

function Bar({ x, t0, span, now }) {
  if (!x.started_at) return null;
  const s = Date.parse(x.started_at);
  const e = x.finished_at ? Date.parse(x.finished_at) : now;
  const left = Math.max(0, ((s - t0) / span) * 100);
  const width = Math.max(0.15, ((e - s) / span) * 100);
  return html`<span
    class=${`gbar s-${x.awaiting ? 'awaiting' : x.status} ${x.finished_at ? '' : 'open'}`}
    style=${{ left: `${left}%`, width: `${Math.min(width, 100 - left)}%` }}
    title=${`${clock(x.started_at)} → ${x.finished_at ? clock(x.finished_at) : 'now'} (${duration(e - s)})`}
  ></span>`;
}

/** The run's statuses over time, from its audit trail, with control and approval marks. */
function TransitionsLane({ audit, t0, span, now, run }) {
  const marks = (audit ?? []).filter((e) => e.type === 'status' && e.to_status);
  const segs = marks.map((e, i) => {
    const s = Date.parse(e.at);
    const last = i + 1 === marks.length;
    // The final status is a short mark ending at the finish; a live one runs to now.
    const end = last ? (isTerminal(e.to_status) ? s : now) : Date.parse(marks[i + 1].at);
    return {
      status: e.to_status,
      s: last && isTerminal(e.to_status) ? s - span * 0.006 : s,
      end,
      actor: e.actor,
    };
  });
  const events = (audit ?? []).filter((e) => e.type === 'control' || e.type === 'approval');
  return html`<div class="lane" role="row" aria-label="Run status over time">
    <span class="cell key" role="rowheader"><strong>Run</strong></span>
    <span class="cell st" role="cell"><${Status} status=${run.status} /></span>
    <span class="cell" role="cell"></span>
    <span class="cell" role="cell"></span>
    <span class="cell" role="cell"></span>
    <span class="cell gantt" role="cell">
      ${segs.map(
        (g) =>
          html`<span
            class=${`lseg s-${g.status}`}
            style=${{ left: `${((g.s - t0) / span) * 100}%`, width: `${Math.max(0.3, ((g.end - g.s) / span) * 100)}%` }}
            title=${`${g.status} at ${clock(new Date(g.s).toISOString())}`}
          ></span>`,
      )}
      ${events.map(
        (e) =>
          html`<span
            class=${`lmark m-${e.type}`}
            style=${{ left: `${((Date.parse(e.at) - t0) / span) * 100}%` }}
            title=${`${e.type}${e.data?.action ? `: ${e.data.action}` : ''}${e.data?.decision ? `: ${e.data.decision}` : ''} at ${clock(e.at)}`}
          ></span>`,
      )}
    </span>
  </div>`;
}

export function Timeline({ model, run, selected, onSelect }) {
  const kind = run.kind;
  const workflow = kind === 'workflow';
  const _items = model.itemsVersion.value; // re-render on item changes
  const tasks = model.tasks.value;
  const st = model.itemsState.value;
  const [wfFilter, setWfFilter] = useState('');
  const filter = workflow ? wfFilter : st.filter;
  const [folded, setFolded] = useState(null);
  const list = workflow ? (tasks ?? []) : model.items;

  // For_each steps with many tasks start folded.
  useEffect(() => {
    if (!workflow || !tasks || folded) return;
    const big = new Set();
    const n = new Map();
    for (const t of tasks) if (t.index !== null) n.set(t.step, (n.get(t.step) ?? 0) + 1);
    for (const [step, k] of n) if (k > FOLD_OVER) big.add(step);
    setFolded(big);
  }, [tasks]);

  const rows = useMemo(
    () => rowsOf(kind, list, folded ?? new Set(), workflow ? wfFilter : ''),
    [list, model.itemsVersion.value, tasks, folded, wfFilter],
  );
  const active = !isTerminal(run.status);
  const now = useNow(active ? 500 : 60_000, active);
  const t0 = Date.parse(run.queued_at);
  const t1 = run.finished_at ? Date.parse(run.finished_at) : now;
  const span = Math.max(1, t1 - t0);

  const selIndex = rows.findIndex((r) => (workflow ? r.x.name : r.x.id) === selected);
  const [focusRow, setFocusRow] = useState(-1);
  const bodyRef = useRef(null);
  // Keyboard selection moves focus to the new row once it is rendered (it may need a scroll first).
  const pendingFocus = useRef(-1);
  useEffect(() => {
    let tries = 0;
    const attempt = () => {
      const i = pendingFocus.current;
      if (i < 0) return;
      const el = bodyRef.current?.querySelector(`[data-row="${i}"] button.rowkey`);
      if (el) {
        pendingFocus.current = -1;
        el.focus({ preventScroll: true });
      } else if (tries++ < 10) requestAnimationFrame(attempt);
    };
    attempt();
  }, [focusRow]);

  const pick = (i) => {
    const r = rows[i];
    if (!r) return;
    onSelect(workflow ? r.x.name : r.x.id);
    pendingFocus.current = i;
    setFocusRow(i);
  };
  const onKey = (e, i) => {
    if (e.key === 'ArrowDown') {
      e.preventDefault();
      pick(Math.min(rows.length - 1, i + 1));
    } else if (e.key === 'ArrowUp') {
      e.preventDefault();
      pick(Math.max(0, i - 1));
    } else if ((e.key === 'ArrowRight' || e.key === 'ArrowLeft') && rows[i]?.kids) {
      e.preventDefault();
      toggle(rows[i].x.name, e.key === 'ArrowLeft');
    }
  };
  const toggle = (step, fold) => {
    const next = new Set(folded ?? []);
    if (fold ?? !next.has(step)) next.add(step);
    else next.delete(step);
    setFolded(next);
  };

  const counts = workflow
    ? Object.fromEntries(ITEM_FILTERS.map((s) => [s, (tasks ?? []).filter((t) => t.status === s).length]))
    : { succeeded: run.items_succeeded, failed: run.items_failed };
  const setFilter = (f) => (workflow ? setWfFilter(f) : void model.loadItems(f));

  const header = html`<div class="vrow vhead" role="row">
    <span class="cell key" role="columnheader"
      >${workflow ? 'Task' : kind === 'batch' ? 'Item' : 'Call'}</span
    >
    <span class="cell st" role="columnheader">Status</span>
    <span class="cell num att" role="columnheader" title="Attempts">Att.</span>
    <span class="cell num dur" role="columnheader">Duration</span>
    <span class="cell num cr" role="columnheader">Credits</span>
    <span class="cell gantt axis" role="columnheader" aria-label="Timeline">
      ${ticks(span)
        .filter((t) => t <= span * 0.93)
        .map(
          (t) => html`<span class="tick" style=${{ left: `${(t / span) * 100}%` }}>${tickLabel(t)}</span>`,
        )}
    </span>
  </div>`;

  const renderRow = (i, style) => {
    const r = rows[i];
    const x = r.x;
    const id = workflow ? x.name : x.id;
    const sel = id === selected;
    return html`<div
      key=${id}
      class=${`vrow ${sel ? 'selected' : ''} d${r.depth}`}
      role="row"
      aria-rowindex=${i + 2}
      data-row=${i}
      data-label=${label(x, kind)}
      style=${style}
    >
      <span class="cell key" role="cell">
        ${
          r.kids
            ? html`<button
                type="button"
                class="fold"
                aria-expanded=${r.folded ? 'false' : 'true'}
                aria-label=${`${r.folded ? 'Unfold' : 'Fold'} ${r.kids} tasks of ${x.name}`}
                onClick=${() => toggle(x.name)}
              >
                ${r.folded ? '▸' : '▾'}
              </button>`
            : html`<span class="fold-space" aria-hidden="true"></span>`
        }
        <button
          type="button"
          class="rowkey"
          aria-pressed=${sel ? 'true' : 'false'}
          onClick=${() => pick(i)}
          onKeyDown=${(e) => onKey(e, i)}
          title=${workflow ? x.name : x.key}
        >
          ${label(x, kind)}${r.kids ? html` <span class="muted small">×${r.kids}</span>` : null}
          ${kind === 'batch' ? html`<span class="muted mono small"> ${x.key.slice(-8)}</span>` : null}
        </button>
      </span>
      <span class="cell st" role="cell"><${Status} status=${x.awaiting ? 'awaiting' : x.status} /></span>
      <span class="cell num att" role="cell">${x.attempt_count ?? x.attempts ?? ''}</span>
      <span class="cell num dur" role="cell"
        >${duration(x.duration_ms ?? (x.started_at && !x.finished_at ? now - Date.parse(x.started_at) : null))}</span
      >
      <span class="cell num cr" role="cell" title=${microTitle(x.credits_used)}
        >${x.credits_used ? credits(x.credits_used) : ''}</span
      >
      <span class="cell gantt" role="cell"><${Bar} x=${x} t0=${t0} span=${span} now=${now} /></span>
    </div>`;
  };

  const total = workflow ? (tasks ?? []).length : run.items_total;
  return html`<div class="timeline">
    <div class="filters chips" role="group" aria-label=${`Filter ${workflow ? 'tasks' : 'items'} by status`}>
      <button
        type="button"
        class="chip"
        aria-pressed=${!filter ? 'true' : 'false'}
        onClick=${() => setFilter('')}
      >
        All <span class="chip-count">${count(total)}</span>
      </button>
      ${ITEM_FILTERS.map(
        (s) =>
          html`<button
            type="button"
            class=${`chip s-${s}`}
            aria-pressed=${filter === s ? 'true' : 'false'}
            onClick=${() => setFilter(s)}
          >
            <span class="dot" aria-hidden="true"></span
            >${s}${counts[s] !== undefined ? html` <span class="chip-count">${count(counts[s])}</span>` : null}
          </button>`,
      )}
      <span class="muted small loaded" aria-live="polite">
        ${workflow ? '' : st.loading ? `loading… ${count(model.items.length)} of ${count(filter ? undefined : total)}` : `${count(rows.length)} shown`}
      </span>
    </div>
    <${ErrorBox} error=${workflow ? model.tasksError.value : st.error} />
    <div class="gantt-wrap" ref=${bodyRef}>
      ${
        (workflow && !tasks) || (!workflow && st.loading && model.items.length === 0)
          ? html`<${Loading} what=${workflow ? 'Loading tasks' : 'Loading items'} />`
          : html`<${VirtualRows}
              count=${rows.length}
              rowHeight=${ROW}
              height=${Math.min(520, Math.max(ROW * 3, rows.length * ROW + 4))}
              renderRow=${renderRow}
              header=${html`${header}<${TransitionsLane} audit=${model.audit.value} t0=${t0} span=${span} now=${now} run=${run} />`}
              label=${workflow ? 'Tasks' : 'Items'}
              scrollTo=${focusRow >= 0 ? focusRow : selIndex}
              onRange=${(a, b) => model.setVisible(a, b)}
            />`
      }
    </div>
  </div>`;
}

/**
 * The workflow DAG with live task states, and the lineage graph (parameters, tasks, the files
 * they read and wrote, outputs), both from GET /api/runs/{id}/lineage and laid out by dagre.
 * A for_each step's tasks fold into their step (×N, with their statuses) past a few, and a
 * batch's thousands of items into one node, so the drawing stays readable and fast.
 */
import { useMemo } from 'preact/hooks';
import { html } from '../../lib/html.js';
import { api } from '../../lib/api.js';
import { useFetch } from '../../lib/hooks.js';
import { duration } from '../../lib/format.js';
import { Graph } from '../../components/graph.js';
import { ErrorBox, Loading, Empty } from '../../components/error.js';

const FOLD_OVER = 6;
const ITEMS_OVER = 40;

function summary(statuses) {
  const n = {};
  for (const s of statuses) n[s] = (n[s] ?? 0) + 1;
  return Object.entries(n)
    .map(([s, k]) => `${k} ${s}`)
    .join(', ');
}

/** The worst status of a group, for its colour. */
function groupStatus(statuses) {
  for (const s of ['failed', 'awaiting', 'running', 'retrying', 'pending', 'cancelled', 'skipped'])
    if (statuses.includes(s)) return s;
  return statuses.length ? 'succeeded' : 'pending';
}

/**
 * Graph nodes and edges from the lineage, with live task statuses, folded.
 * @param {any} g the lineage graph
 * @param {Map<string, any>} tasks name → task (live)
 * @param {{files: boolean}} opts
 */
export function foldGraph(g, tasks, { files }) {
  const status = (n) => {
    const t = tasks.get(n.id);
    if (t?.awaiting) return 'awaiting';
    return t?.status ?? n.status ?? undefined;
  };
  const taskNodes = g.nodes.filter((n) => n.type === 'task');
  const byId = new Map(g.nodes.map((n) => [n.id, n]));
  const statusOf = (id) => status(byId.get(id) ?? { id });
  const into = new Map(); // node id → the node it folds into
  const groups = new Map(); // group id → member ids
  if (g.kind !== 'workflow' && taskNodes.length > ITEMS_OVER) {
    for (const n of taskNodes) into.set(n.id, '$items');
    groups.set(
      '$items',
      taskNodes.map((n) => n.id),
    );
  } else {
    const byStep = new Map();
    for (const n of taskNodes)
      if (n.index !== null && n.index !== undefined)
        (byStep.get(n.step) ?? byStep.set(n.step, []).get(n.step)).push(n.id);
    for (const [step, ids] of byStep) {
      if (ids.length <= FOLD_OVER) continue;
      const target = taskNodes.some((n) => n.id === step) ? step : `${step}[…]`;
      for (const id of ids) into.set(id, target);
      groups.set(target, ids);
    }
  }
  const nodes = [];
  const seen = new Set();
  const add = (n) => {
    if (!seen.has(n.id)) {
      seen.add(n.id);
      nodes.push(n);
    }
  };
  for (const n of g.nodes) {
    if (n.type === 'file' && !files) continue;
    const target = into.get(n.id);
    if (target) {
      if (seen.has(target)) continue;
      const ids = groups.get(target);
      const st = ids.map(statusOf);
      add({
        id: target,
        label:
          target === '$items' ? `items ×${ids.length}` : `${target.replace(/\[…\]$/, '')} ×${ids.length}`,
        sub: summary(st),
        status: groupStatus(st),
        kind: 'group',
      });
      continue;
    }
    if (n.type === 'parameters') add({ id: n.id, label: 'parameters', kind: 'io' });
    else if (n.type === 'outputs') add({ id: n.id, label: 'outputs', kind: 'io' });
    else if (n.type === 'file')
      add({ id: n.id, label: n.name ?? n.sha256.slice(0, 12), sub: n.sha256.slice(0, 12), kind: 'file' });
    else {
      const t = tasks.get(n.id);
      const s = status(n);
      const members = groups.get(n.id);
      add({
        id: n.id,
        label: members ? `${n.id} ×${members.length}` : n.id,
        sub: members
          ? summary(members.map(statusOf))
          : // The status in words too (not by colour alone): "double-it · succeeded · 50 ms".
            [
              n.element?.slug,
              s === 'awaiting' ? 'awaiting approval' : s,
              t?.duration_ms !== undefined && t?.duration_ms !== null ? duration(t.duration_ms) : null,
            ]
              .filter(Boolean)
              .join(' · '),
        status: members ? groupStatus(members.map(statusOf)) : s,
        kind: members ? 'group' : 'task',
      });
    }
  }
  const ids = new Set(nodes.map((n) => n.id));
  const edges = [];
  const keys = new Set();
  for (const e of g.edges) {
    const from = into.get(e.from) ?? e.from;
    const to = into.get(e.to) ?? e.to;
    if (from === to || !ids.has(from) || !ids.has(to)) continue;
    const k = `${from}\u0000${to}`;
    if (keys.has(k)) continue;
    keys.add(k);
    edges.push({ from, to, kind: e.kind });
  }
  return { nodes, edges };
}

function useLineage(model, run) {
  const tasks = model.tasks.value;
  const shape = run.kind === 'workflow' ? (tasks ?? []).length : run.items_total;
  return useFetch(
    () => api(`/api/runs/${encodeURIComponent(run.id)}/lineage`),
    [run.id, shape, run.status === 'running'],
  );
}

export function WorkflowDag({ model, run, selected, onSelect }) {
  const lineage = useLineage(model, run);
  const tasks = model.tasks.value ?? [];
  const byName = useMemo(() => new Map(tasks.map((t) => [t.name, t])), [tasks]);
  const graph = useMemo(
    () => (lineage.data ? foldGraph(lineage.data, byName, { files: false }) : null),
    [lineage.data, byName],
  );
  if (lineage.error) return html`<${ErrorBox} error=${lineage.error} />`;
  if (!graph) return html`<${Loading} what="Laying out the workflow" />`;
  return html`<div class="graph-panel">
    <p class="muted small">
      Steps and their dependencies as the run pinned them; colours follow the tasks live. Select a step to see
      it.
    </p>
    <${Graph}
      nodes=${graph.nodes}
      edges=${graph.edges}
      selected=${selected}
      onSelect=${(id) => byName.has(id) && onSelect(id)}
      label="Workflow steps"
    />
    <${Legend} />
  </div>`;
}

export function LineageGraph({ model, run, selected, onSelect }) {
  const lineage = useLineage(model, run);
  const tasks = model.tasks.value ?? [];
  const byName = useMemo(() => new Map(tasks.map((t) => [t.name, t])), [tasks]);
  const graph = useMemo(
    () => (lineage.data ? foldGraph(lineage.data, byName, { files: true }) : null),
    [lineage.data, byName],
  );
  if (lineage.error) return html`<${ErrorBox} error=${lineage.error} />`;
  if (!graph) return html`<${Loading} what="Loading the lineage" />`;
  const files = lineage.data.nodes.filter((n) => n.type === 'file').length;
  if (graph.nodes.length === 0) return html`<${Empty}>No lineage recorded.<//>`;
  return html`<div class="graph-panel">
    <p class="muted small">
      What the run read and produced: ${files} file${files === 1 ? '' : 's'} by content hash. As OpenLineage
      events:
      <code>cairn runs lineage ${run.id} --format openlineage</code>.
    </p>
    <${Graph}
      nodes=${graph.nodes}
      edges=${graph.edges}
      selected=${selected}
      onSelect=${(id) => (byName.has(id) || model.index?.has?.(id)) && onSelect(id)}
      label="Lineage"
    />
    <${Legend} files />
  </div>`;
}

function Legend({ files = false }) {
  return html`<ul class="legend" aria-label="Legend">
    ${['succeeded', 'running', 'awaiting', 'pending', 'failed', 'skipped'].map(
      (s) =>
        html`<li class=${`s-${s}`}>
          <span class="swatch" aria-hidden="true"></span>${s === 'awaiting' ? 'awaiting approval' : s}
        </li>`,
    )}
    ${files ? html`<li class="k-file"><span class="swatch file" aria-hidden="true"></span>file</li>` : null}
  </ul>`;
}

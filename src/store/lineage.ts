/**
 * Lineage of a run (R-LINEAGE), derived from what its items recorded: the
 * parameters, every task, the content hashes of the files each task read and
 * wrote, and the outputs. Nothing is stored for it: the graph is recomputed
 * from the items and the pinned definition on every read, so it can never
 * drift from the evidence.
 *
 * The graph, `{run_id, kind, nodes, edges}`, every list sorted (nodes by type
 * then id, edges by from, to, kind) so the same run always gives the same JSON:
 *
 *   nodes
 *     {type: 'parameters', id: '$parameters'}                   a workflow run's trigger parameters
 *     {type: 'task', id: <item key>, step, index, status, element, child_run_id,
 *      item_id, started_at, finished_at, error}                   one per item ('add', 'each', 'each[0]' …)
 *     {type: 'file', id: 'sha256:<hex>', sha256, name, names, size, media_type}
 *                                                                 one per distinct content hash
 *     {type: 'outputs', id: '$outputs'}                          a workflow run's output
 *   edges {from, to, kind}
 *     parameters  $parameters → task     a root step's tasks, and every step whose input,
 *                                         when or for_each reads `parameters`
 *     depends     task → task            a step dependency (needs + what expressions read); the
 *                                         dependent side of a for_each step is each of its `name[i]`
 *                                         tasks (its group item when it has none)
 *     collect     name[i] → name         a for_each task into its step's group item, which is
 *                                         what dependents and outputs read
 *     reads       file → task            evidence.input_files
 *     writes      task → file            evidence.output_files
 *     reads       file → $parameters     a `{"$file": "sha256:<hex>"}` reference in the parameters
 *     outputs     task → $outputs        leaf tasks and every step the outputs read
 *     outputs     $parameters → $outputs the outputs read `parameters`
 *     outputs     file → $outputs        a `$file` reference in the run's output
 *
 * The special ids start with `$`, which no step name can (so no task collides
 * with them), and file ids hold a `:`, which no step name can either.
 * Edges are the planned DAG over the tasks that exist: a skipped task keeps its
 * edges, and its status says it did not run. A run of another kind (invoke,
 * batch) has no plan: its items are task nodes with their file edges only.
 */
import type { Queryable } from '../db/types.js';
import type { RunRow } from './runs.js';
import { loadTasks, type TaskRow } from './workflow.js';

const HEX = /^[0-9a-f]{64}$/;

/** What the plan says about one step (the API layer compiles it from the pinned definition). */
export interface LineageStep {
  name: string;
  /** Steps that must end before it starts. */
  deps: string[];
  /** Its input, when or for_each read `parameters`. */
  reads_parameters: boolean;
  /** The element it runs, as pinned (tasks that have not ended have no element in their evidence yet). */
  element?: LineageElement;
}

export interface LineagePlan {
  steps: LineageStep[];
  /** Steps the workflow's outputs read. */
  outputs_read: string[];
  outputs_read_parameters: boolean;
}

export interface LineageElement {
  slug: string;
  version: number;
  element_type?: string;
  op?: string;
}

export interface ParametersNode {
  type: 'parameters';
  id: '$parameters';
}
export interface OutputsNode {
  type: 'outputs';
  id: '$outputs';
}
export interface TaskNode {
  type: 'task';
  id: string;
  /** The step it belongs to (`each` for `each[2]`). */
  step: string;
  /** Its position in a for_each fan-out; null otherwise. */
  index: number | null;
  status: TaskRow['status'];
  element: LineageElement | null;
  child_run_id: string | null;
  item_id: string;
  started_at: string | null;
  finished_at: string | null;
  error: { code: string; message: string } | null;
}
export interface FileNode {
  type: 'file';
  id: string;
  sha256: string;
  /** The smallest of `names` (one content may be recorded under several names); null when none was. */
  name: string | null;
  names: string[];
  size: number | null;
  media_type: string | null;
}
export type LineageNode = ParametersNode | TaskNode | FileNode | OutputsNode;

export type EdgeKind = 'parameters' | 'depends' | 'collect' | 'reads' | 'writes' | 'outputs';
export interface LineageEdge {
  from: string;
  to: string;
  kind: EdgeKind;
}

export interface LineageGraph {
  run_id: string;
  kind: RunRow['kind'];
  nodes: LineageNode[];
  edges: LineageEdge[];
}

export const PARAMETERS_ID = '$parameters';
export const OUTPUTS_ID = '$outputs';

/** A file as a task's evidence records it (`{name, sha256, size, media_type}`). */
interface FileSeen {
  sha256: string;
  name: string | null;
  size: number | null;
  media_type: string | null;
}

function str(v: unknown): string | null {
  return typeof v === 'string' ? v : null;
}

function hexOf(v: unknown): string | null {
  const s = str(v);
  if (s === null) return null;
  const h = s.startsWith('sha256:') ? s.slice(7) : s;
  return HEX.test(h) ? h : null;
}

/**
 * The well-formed entries of an `input_files` / `output_files` list (anything
 * else is ignored). A map of name → entry is read too, the key being the name.
 */
function filesOf(v: unknown): FileSeen[] {
  if (!v || typeof v !== 'object') return [];
  const entries: [string | null, unknown][] = Array.isArray(v)
    ? v.map((f) => [null, f])
    : Object.entries(v as Record<string, unknown>);
  const out: FileSeen[] = [];
  for (const [key, f] of entries) {
    if (!f || typeof f !== 'object') continue;
    const o = f as Record<string, unknown>;
    const sha256 = hexOf(o.sha256);
    if (!sha256) continue;
    const size = typeof o.size === 'number' && Number.isFinite(o.size) ? o.size : null;
    out.push({ sha256, name: str(o.name) ?? key, size, media_type: str(o.media_type) });
  }
  return out;
}

/** Every `{"$file": "sha256:<hex>"}` reference in a JSON value. */
export function fileRefsOf(v: unknown, depth = 0): FileSeen[] {
  if (depth > 64 || v === null || typeof v !== 'object') return [];
  if (Array.isArray(v)) return v.flatMap((x) => fileRefsOf(x, depth + 1));
  const o = v as Record<string, unknown>;
  if (typeof o.$file === 'string') {
    const sha256 = hexOf(o.$file);
    return sha256
      ? [
          {
            sha256,
            name: str(o.name),
            size: typeof o.size === 'number' ? o.size : null,
            media_type: str(o.media_type),
          },
        ]
      : [];
  }
  return Object.values(o).flatMap((x) => fileRefsOf(x, depth + 1));
}

function elementOf(v: unknown): LineageElement | null {
  if (!v || typeof v !== 'object') return null;
  const o = v as Record<string, unknown>;
  if (typeof o.slug !== 'string' || typeof o.version !== 'number') return null;
  return {
    slug: o.slug,
    version: o.version,
    ...(typeof o.element_type === 'string' ? { element_type: o.element_type } : {}),
    ...(typeof o.op === 'string' ? { op: o.op } : {}),
  };
}

const FAN = /^(.*)\[(\d+)\]$/;
const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
const RANK: Record<LineageNode['type'], number> = { parameters: 0, task: 1, file: 2, outputs: 3 };

/**
 * The graph of a run from its rows (pure: `loadLineage` reads them). `plan`
 * is the compiled workflow definition; without it (another kind of run, or a
 * definition that cannot be read) no step depends on another.
 */
export function buildLineage(
  run: Pick<
    RunRow,
    'id' | 'kind' | 'input' | 'output' | 'element_slug' | 'element_version' | 'element_type' | 'operation'
  >,
  tasks: TaskRow[],
  plan?: LineagePlan,
): LineageGraph {
  const workflow = run.kind === 'workflow';
  const nodes = new Map<string, LineageNode>();
  const edges = new Map<string, LineageEdge>();
  const edge = (from: string, to: string, kind: EdgeKind) =>
    edges.set(`${from}\n${to}\n${kind}`, { from, to, kind });
  const files = new Map<string, { seen: FileSeen[] }>();
  const file = (f: FileSeen) => {
    const e = files.get(f.sha256) ?? { seen: [] };
    e.seen.push(f);
    files.set(f.sha256, e);
    return `sha256:${f.sha256}`;
  };

  const steps = new Map((plan?.steps ?? []).map((s) => [s.name, s]));
  const runElement =
    run.element_slug !== null && run.element_version !== null
      ? {
          slug: run.element_slug,
          version: run.element_version,
          ...(run.element_type ? { element_type: run.element_type } : {}),
          op: run.operation,
        }
      : null;

  // Tasks, and what each recorded reading and writing.
  const byStep = new Map<string, { group?: string; fan: string[] }>();
  for (const t of tasks) {
    const m = workflow ? FAN.exec(t.key) : null;
    const step = m ? m[1]! : t.key;
    const ev = t.evidence ?? {};
    const child = t.child_evidence ?? {};
    nodes.set(t.key, {
      type: 'task',
      id: t.key,
      step,
      index: m ? Number(m[2]) : null,
      status: t.status,
      element: elementOf(ev.element) ?? steps.get(step)?.element ?? (workflow ? null : runElement),
      child_run_id: t.child_run_id,
      item_id: t.id,
      started_at: t.started_at,
      finished_at: t.finished_at,
      error: t.error ? { code: t.error.code, message: t.error.message } : null,
    });
    const s = byStep.get(step) ?? { fan: [] };
    if (m) s.fan.push(t.key);
    else s.group = t.key;
    byStep.set(step, s);
    for (const f of [...filesOf(ev.input_files), ...filesOf(child.input_files)])
      edge(file(f), t.key, 'reads');
    for (const f of [...filesOf(ev.output_files), ...filesOf(child.output_files)])
      edge(t.key, file(f), 'writes');
  }

  if (workflow) {
    nodes.set(PARAMETERS_ID, { type: 'parameters', id: PARAMETERS_ID });
    nodes.set(OUTPUTS_ID, { type: 'outputs', id: OUTPUTS_ID });
    const params = (run.input as { parameters?: unknown } | null)?.parameters;
    for (const f of fileRefsOf(params)) edge(file(f), PARAMETERS_ID, 'reads');
    for (const f of fileRefsOf(run.output)) edge(file(f), OUTPUTS_ID, 'outputs');

    // What a dependency edge leaves from (the step's own item) and arrives at (its tasks).
    const exit = (step: string) => byStep.get(step)?.group;
    const entries = (step: string) => {
      const s = byStep.get(step);
      if (!s) return [];
      return s.fan.length > 0 ? s.fan : s.group !== undefined ? [s.group] : [];
    };
    for (const [name, s] of byStep) {
      const info = steps.get(name);
      const deps = info?.deps ?? [];
      for (const to of entries(name)) {
        if (deps.length === 0 || info?.reads_parameters) edge(PARAMETERS_ID, to, 'parameters');
        for (const d of deps) {
          const from = exit(d);
          if (from !== undefined) edge(from, to, 'depends');
        }
      }
      if (s.group !== undefined) for (const k of s.fan) edge(k, s.group, 'collect');
    }
    // Leaves: tasks nothing depends on (a fanned-out task collects into its group, so it is no leaf).
    const hasOut = new Set(
      [...edges.values()].filter((e) => e.kind === 'depends' || e.kind === 'collect').map((e) => e.from),
    );
    for (const t of tasks) if (!hasOut.has(t.key)) edge(t.key, OUTPUTS_ID, 'outputs');
    for (const name of plan?.outputs_read ?? []) {
      const from = exit(name);
      if (from !== undefined) edge(from, OUTPUTS_ID, 'outputs');
    }
    if (plan?.outputs_read_parameters) edge(PARAMETERS_ID, OUTPUTS_ID, 'outputs');
  }

  for (const [sha256, { seen }] of files) {
    const names = [...new Set(seen.map((f) => f.name).filter((n): n is string => n !== null))].sort(cmp);
    nodes.set(`sha256:${sha256}`, {
      type: 'file',
      id: `sha256:${sha256}`,
      sha256,
      name: names[0] ?? null,
      names,
      size: seen.find((f) => f.size !== null)?.size ?? null,
      media_type:
        seen
          .map((f) => f.media_type)
          .filter((x): x is string => x !== null)
          .sort(cmp)[0] ?? null,
    });
  }

  return {
    run_id: run.id,
    kind: run.kind,
    nodes: [...nodes.values()].sort((a, b) => RANK[a.type] - RANK[b.type] || cmp(a.id, b.id)),
    edges: [...edges.values()].sort((a, b) => cmp(a.from, b.from) || cmp(a.to, b.to) || cmp(a.kind, b.kind)),
  };
}

/** The lineage graph of a run, read from its items (and their child runs' evidence). */
export async function loadLineage(q: Queryable, run: RunRow, plan?: LineagePlan): Promise<LineageGraph> {
  return buildLineage(run, await loadTasks(q, run.id), plan);
}

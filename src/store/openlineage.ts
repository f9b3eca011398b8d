/**
 * A run's lineage as OpenLineage RunEvents (spec 2-0-2; the official schemas
 * are vendored in vendor/openlineage/ and every exported event is validated
 * against them in test/workflow/lineage.test.ts). Pure: it maps the graph of
 * store/lineage.ts and the run row, and sends nothing anywhere.
 *
 * The mapping:
 * - the run is an OpenLineage run (runId = the Cairn run id, a UUIDv7) of the
 *   job `{namespace: 'cairn://<circle>', name: <element slug>}`;
 * - each task is a run (runId = its child run's id; its item's id when it has
 *   no child run, as a for_each group item) of the job `<slug>.<task key>`
 *   (`enrich.each[2]`), with a `parent` facet naming the workflow run and job
 *   (and `root` when the workflow run is its own root);
 * - a file is a dataset `{namespace: 'cairn://<circle>', name: 'sha256:<hex>'}`
 *   with the `version` facet's datasetVersion = the hex digest: files are
 *   content-addressed, so the same bytes are the same dataset wherever they
 *   appear, and names (which differ between tasks for the same content) are
 *   not identities. It is an input of the tasks that read it and an output of
 *   the task that wrote it; parameter files are inputs and output files
 *   outputs of the workflow run;
 * - events: START at started_at (inputs), then COMPLETE (succeeded, completed),
 *   FAIL (failed, with an `errorMessage` facet) or ABORT (cancelled) at
 *   finished_at (inputs and outputs). A run or task still going has only its
 *   START; one that never started (pending, skipped) has none, except that
 *   one cancelled or failed before starting gets its START at the time it ended,
 *   since every OpenLineage run that ends must have started.
 * Events are sorted by eventTime (the workflow's START first and its end last on ties).
 */
import { ENGINE_VERSION } from '../core/version.js';
import type { FileNode, LineageGraph, TaskNode } from './lineage.js';
import type { RunRow } from './runs.js';

export const OPENLINEAGE_PRODUCER = 'https://github.com/cairn/cairn';
export const OPENLINEAGE_SCHEMA = 'https://openlineage.io/spec/2-0-2/OpenLineage.json';
export const RUN_EVENT_SCHEMA_URL = `${OPENLINEAGE_SCHEMA}#/$defs/RunEvent`;
const FACETS = 'https://openlineage.io/spec/facets';
const PARENT_FACET = `${FACETS}/1-2-0/ParentRunFacet.json#/$defs/ParentRunFacet`;
const VERSION_FACET = `${FACETS}/1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet`;
const ERROR_FACET = `${FACETS}/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet`;
const ENGINE_FACET = `${FACETS}/1-1-1/ProcessingEngineRunFacet.json#/$defs/ProcessingEngineRunFacet`;
const JOB_TYPE_FACET = `${FACETS}/2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet`;

export type EventType = 'START' | 'RUNNING' | 'COMPLETE' | 'ABORT' | 'FAIL' | 'OTHER';

interface Facet {
  _producer: string;
  _schemaURL: string;
  [k: string]: unknown;
}
export interface OlDataset {
  namespace: string;
  name: string;
  facets: { version: Facet };
}
export interface OlJob {
  namespace: string;
  name: string;
  facets?: Record<string, Facet>;
}
export interface RunEvent {
  eventType: EventType;
  eventTime: string;
  producer: string;
  schemaURL: string;
  run: { runId: string; facets?: Record<string, Facet> };
  job: OlJob;
  inputs: OlDataset[];
  outputs: OlDataset[];
}

export type LineageRun = Pick<
  RunRow,
  | 'id'
  | 'kind'
  | 'status'
  | 'element_slug'
  | 'element_type'
  | 'root_run_id'
  | 'queued_at'
  | 'started_at'
  | 'finished_at'
  | 'error'
>;

const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

const facet = (schemaURL: string, body: Record<string, unknown>): Facet => ({
  _producer: OPENLINEAGE_PRODUCER,
  _schemaURL: schemaURL,
  ...body,
});

function endOf(status: string): EventType | null {
  switch (status) {
    case 'succeeded':
    case 'completed':
      return 'COMPLETE';
    case 'failed':
      return 'FAIL';
    case 'cancelled':
      return 'ABORT';
    default:
      return null;
  }
}

/** The OpenLineage RunEvents of a run and its tasks (see the module comment for the mapping). */
export function openLineageEvents(run: LineageRun, circleSlug: string, graph: LineageGraph): RunEvent[] {
  const namespace = `cairn://${circleSlug}`;
  const jobName = run.element_slug ?? `run-${run.id}`;
  const engine = facet(ENGINE_FACET, { version: ENGINE_VERSION, name: 'cairn' });
  const jobType = (t: string) =>
    facet(JOB_TYPE_FACET, { processingType: 'BATCH', integration: 'CAIRN', jobType: t });
  const fileNodes = new Map(
    graph.nodes.filter((n): n is FileNode => n.type === 'file').map((n) => [n.id, n]),
  );
  const dataset = (id: string): OlDataset => ({
    namespace,
    name: id,
    facets: { version: facet(VERSION_FACET, { datasetVersion: fileNodes.get(id)?.sha256 ?? id.slice(7) }) },
  });
  const filesInto = (to: string) =>
    graph.edges.filter((e) => e.to === to && fileNodes.has(e.from)).map((e) => dataset(e.from));
  const filesOutOf = (from: string) =>
    graph.edges.filter((e) => e.from === from && e.kind === 'writes').map((e) => dataset(e.to));

  const events: { e: RunEvent; rank: number }[] = [];
  const emit = (
    rank: [number, number],
    o: {
      status: string;
      started: string | null;
      finished: string | null;
      fallback: string | null;
      runId: string;
      runFacets: Record<string, Facet>;
      job: OlJob;
      inputs: OlDataset[];
      outputs: OlDataset[];
      error: { code: string; message: string } | null;
      language: string;
    },
  ) => {
    const end = endOf(o.status);
    const startAt = o.started ?? (end ? (o.finished ?? o.fallback) : null);
    if (startAt === null) return;
    const base = { producer: OPENLINEAGE_PRODUCER, schemaURL: RUN_EVENT_SCHEMA_URL, job: o.job };
    events.push({
      rank: rank[0],
      e: {
        eventType: 'START',
        eventTime: startAt,
        ...base,
        run: { runId: o.runId, facets: o.runFacets },
        inputs: o.inputs,
        outputs: [],
      },
    });
    if (!end) return;
    const facets = { ...o.runFacets };
    if (end === 'FAIL' && o.error)
      facets.errorMessage = facet(ERROR_FACET, {
        message: `${o.error.code}: ${o.error.message}`,
        programmingLanguage: o.language,
      });
    events.push({
      rank: rank[1],
      e: {
        eventType: end,
        eventTime: o.finished ?? startAt,
        ...base,
        run: { runId: o.runId, facets },
        inputs: o.inputs,
        outputs: o.outputs,
      },
    });
  };

  const parentJob = { namespace, name: jobName };
  const parent = facet(PARENT_FACET, {
    run: { runId: run.id },
    job: parentJob,
    ...(run.root_run_id === null || run.root_run_id === run.id
      ? { root: { run: { runId: run.id }, job: parentJob } }
      : {}),
  });
  const workflow = run.kind === 'workflow';
  emit([0, 2], {
    status: run.status,
    started: run.started_at,
    finished: run.finished_at,
    fallback: run.queued_at,
    runId: run.id,
    runFacets: { processing_engine: engine },
    job: { ...parentJob, facets: { jobType: jobType(run.kind.toUpperCase()) } },
    inputs: workflow ? filesInto('$parameters') : [],
    outputs: workflow
      ? graph.edges.filter((e) => e.to === '$outputs' && fileNodes.has(e.from)).map((e) => dataset(e.from))
      : [],
    error: run.error ? { code: run.error.code, message: run.error.message } : null,
    language: run.element_type ?? run.kind,
  });
  for (const t of graph.nodes.filter((n): n is TaskNode => n.type === 'task')) {
    if (t.status === 'skipped' || t.status === 'pending') continue;
    emit([1, 1], {
      status: t.status,
      started: t.started_at,
      finished: t.finished_at,
      fallback: null,
      runId: t.child_run_id ?? t.item_id,
      runFacets: { parent, processing_engine: engine },
      job: { namespace, name: `${jobName}.${t.id}`, facets: { jobType: jobType('TASK') } },
      inputs: filesInto(t.id),
      outputs: filesOutOf(t.id),
      error: t.error,
      language: t.element?.element_type ?? run.element_type ?? run.kind,
    });
  }
  const order = (e: RunEvent) => (e.eventType === 'START' ? 0 : 1);
  return events
    .sort(
      (a, b) =>
        Date.parse(a.e.eventTime) - Date.parse(b.e.eventTime) ||
        cmp(a.e.eventTime, b.e.eventTime) ||
        a.rank - b.rank ||
        cmp(a.e.job.name, b.e.job.name) ||
        order(a.e) - order(b.e),
    )
    .map((x) => x.e);
}

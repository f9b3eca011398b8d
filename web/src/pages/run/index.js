/**
 * The run page, which every run's web_url opens (/runs/:id): header, controls, then tabs —
 * timeline with items or tasks, the workflow DAG, lineage, logs, input and output, ledger and
 * audit — with the selected item's detail beside them. It follows the run live: the run's event
 * stream when the server has one, else it polls every second.
 */
import { useEffect, useMemo } from 'preact/hooks';
import { html } from '../../lib/html.js';
import { useLive } from '../../lib/live.js';
import { location, setQuery } from '../../lib/router.js';
import { currentCircle } from '../../lib/state.js';
import { count, isTerminal } from '../../lib/format.js';
import { ErrorBox, Loading } from '../../components/error.js';
import { Tabs, TabPanel } from '../../components/tabs.js';
import { RunModel } from './model.js';
import { RunHeader } from './header.js';
import { Controls } from './controls.js';
import { Timeline } from './timeline.js';
import { Detail } from './detail.js';
import { WorkflowDag, LineageGraph } from './graphs.js';
import { Audit, RunLedger } from './history.js';
import { RunIO, RunLogs } from './io.js';

export function RunPage({ id }) {
  const model = useMemo(() => new RunModel(id), [id]);
  useEffect(() => {
    void model.loadRun();
    return () => model.dispose();
  }, [model]);
  const run = model.run.value;
  // The stream while the run is active (once its first page of items or tasks is in, so the
  // history the stream replays does not compete with it); a finished run is checked every 5 s.
  const streaming = Boolean(run && !isTerminal(run.status) && model.ready.value);
  const mode = useLive(streaming ? `/api/runs/${encodeURIComponent(id)}/events` : null, {
    onEvent: (e) => model.onEvent(e),
    onOpen: () => model.onOpen(),
    poll: () => model.poll(),
    pollMs: 1000,
    idlePollMs: run && isTerminal(run.status) ? 5000 : 0,
  });
  useEffect(() => {
    if (run) {
      currentCircle.value = run.circle.slug;
      document.title = `${run.kind} ${run.element.slug} · ${run.status} · Cairn`;
    }
  }, [run?.circle.slug, run?.status]);
  useEffect(() => () => (document.title = 'Cairn'), []);

  const q = location.value.query;
  const workflow = run?.kind === 'workflow';
  const tab = q.get('tab') ?? (workflow ? 'graph' : 'timeline');
  const selected = q.get('item');
  const nav = (patch) => setQuery({ tab: q.get('tab'), item: selected, ...patch });

  if (model.error.value && !run)
    return html`<${ErrorBox} error=${model.error.value} title="This run cannot be shown" />`;
  if (!run) return html`<${Loading} what="Loading the run" />`;

  const tabs = [
    ...(workflow ? [{ id: 'graph', label: 'Graph' }] : []),
    {
      id: 'timeline',
      label: workflow ? 'Timeline & tasks' : 'Timeline & items',
      count: count(workflow ? (model.tasks.value ?? []).length : run.items_total),
    },
    { id: 'lineage', label: 'Lineage' },
    { id: 'logs', label: 'Logs' },
    { id: 'io', label: 'Input & output' },
    { id: 'ledger', label: 'Ledger' },
    { id: 'audit', label: 'Audit', count: model.audit.value ? count(model.audit.value.length) : null },
  ];
  const withDetail = ['timeline', 'graph', 'lineage'].includes(tab);
  const select = (item) => nav({ item });
  let body;
  if (tab === 'graph')
    body = html`<${WorkflowDag} model=${model} run=${run} selected=${selected} onSelect=${select} />`;
  else if (tab === 'lineage')
    body = html`<${LineageGraph} model=${model} run=${run} selected=${selected} onSelect=${select} />`;
  else if (tab === 'logs') body = html`<${RunLogs} run=${run} />`;
  else if (tab === 'io') body = html`<${RunIO} run=${run} />`;
  else if (tab === 'ledger') body = html`<${RunLedger} model=${model} run=${run} />`;
  else if (tab === 'audit') body = html`<${Audit} model=${model} />`;
  else body = html`<${Timeline} model=${model} run=${run} selected=${selected} onSelect=${select} />`;

  return html`<div class="run-page">
    <${RunHeader} run=${run} mode=${mode} />
    <${Controls} model=${model} run=${run} />
    ${model.error.value ? html`<${ErrorBox} error=${model.error.value} title="The last refresh failed" />` : null}
    <div class=${`run-body ${withDetail && selected ? 'with-detail' : ''}`}>
      <section class="card run-main">
        <${Tabs} id="run" label="Run views" tabs=${tabs} current=${tab} onChange=${(t) => nav({ tab: t })} />
        <${TabPanel} id="run" current=${tab}>${body}<//>
      </section>
      ${withDetail && selected ? html`<${Detail} model=${model} run=${run} selected=${selected} onClose=${() => nav({ item: null })} />` : null}
    </div>
  </div>`;
}

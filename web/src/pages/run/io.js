/** The run's own input, output, error, policy decision and snapshot (its bill of materials). */
import { html } from '../../lib/html.js';
import { api } from '../../lib/api.js';
import { useFetch } from '../../lib/hooks.js';
import { Code, Hash } from '../../components/code.js';
import { ErrorBox, Loading } from '../../components/error.js';
import { LogView } from './detail.js';

export function RunIO({ run }) {
  return html`<div class="io">
    ${
      run.error
        ? html`<h3>Error</h3>
            <${ErrorBox} error=${run.error} />`
        : null
    }
    <div class="two">
      <div>
        <h3>Input</h3>
        <${Code} value=${run.input} label="Run input" />
      </div>
      <div>
        <h3>Output</h3>
        <${Code} value=${run.output} label="Run output" empty=${run.finished_at ? 'null' : 'not yet'} />
      </div>
    </div>
    ${
      run.policy
        ? html`<h3>Policy decision</h3>
            <${Code} value=${run.policy} label="Policy decision" />`
        : null
    }
    <h3>Snapshot <${Hash} value=${run.snapshot_hash} /></h3>
    <details>
      <summary>The definitions, toolchains and prices this run pinned</summary>
      <${Code} value=${run.snapshot} label="Snapshot" />
    </details>
    ${run.trace_id ? html`<p class="muted small">Trace id <code>${run.trace_id}</code></p>` : null}
  </div>`;
}

export function RunLogs({ run }) {
  const logs = useFetch(
    () => api(`/api/runs/${encodeURIComponent(run.id)}/logs?tail=5000`),
    [run.id, run.status, run.items_succeeded + run.items_failed],
  );
  if (logs.error) return html`<${ErrorBox} error=${logs.error} />`;
  if (!logs.data) return html`<${Loading} what="Loading logs" />`;
  return html`<${LogView} lines=${logs.data.lines} live=${run.status === 'running'} label="Run logs" />`;
}

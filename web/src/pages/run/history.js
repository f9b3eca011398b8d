/** Money and history: the run's ledger movements with their totals, and its audit trail. */
import { useState } from 'preact/hooks';
import { html } from '../../lib/html.js';
import { api } from '../../lib/api.js';
import { useFetch } from '../../lib/hooks.js';
import { actor, clock, credits, dateTime, microTitle } from '../../lib/format.js';
import { toYaml } from '../../lib/yaml.js';
import { ErrorBox, Loading, Empty } from '../../components/error.js';
import { Status } from '../../components/status.js';
import { LedgerTable } from '../wallet.js';

export function RunLedger({ model, run }) {
  const v = model.costVersion.value;
  const ledger = useFetch(
    () => api(`/api/runs/${encodeURIComponent(run.id)}/ledger`),
    [run.id, v, run.status, run.credits_used],
  );
  if (ledger.error) return html`<${ErrorBox} error=${ledger.error} />`;
  if (!ledger.data) return html`<${Loading} what="Loading the ledger" />`;
  const t = ledger.data.totals;
  return html`<div>
    <dl class="totals" aria-label="Totals">
      ${['reserved', 'captured', 'released', 'held'].map(
        (k) =>
          html`<div class="total">
            <dt>${k}</dt>
            <dd title=${microTitle(t[k])}>${credits(t[k])}</dd>
          </div>`,
      )}
    </dl>
    <p class="muted small">
      The run reserved its estimate when it was created, captures what succeeded and releases the rest; "held"
      is what it still reserves.
    </p>
    <${LedgerTable} transfers=${ledger.data.transfers} showRun=${false} />
  </div>`;
}

const SHOW = 300;

export function Audit({ model }) {
  const events = model.audit.value;
  const [all, setAll] = useState(false);
  if (!events) return html`<${Loading} what="Loading the audit trail" />`;
  if (!events.length) return html`<${Empty}>No events.<//>`;
  const shown = all ? events : events.slice(-SHOW);
  return html`<div>
    ${
      events.length > SHOW && !all
        ? html`<p class="muted small">
            The last ${SHOW} of ${events.length} events.
            <button type="button" class="btn ghost small" onClick=${() => setAll(true)}>Show all</button>
          </p>`
        : null
    }
    <div class="table-wrap">
      <table class="table audit">
        <thead>
          <tr>
            <th scope="col">#</th>
            <th scope="col">When</th>
            <th scope="col">Event</th>
            <th scope="col">Change</th>
            <th scope="col">By</th>
            <th scope="col">Data</th>
          </tr>
        </thead>
        <tbody>
          ${shown.map(
            (e) =>
              html`<tr key=${e.id} class=${`ev-${e.type}`}>
                <td class="muted">${e.id}</td>
                <td title=${dateTime(e.at)}>${clock(e.at)}</td>
                <td><span class="pill">${e.type}</span></td>
                <td>
                  ${
                    e.to_status
                      ? html`${e.from_status ? html`<${Status} status=${e.from_status} /> → ` : null}<${Status}
                            status=${e.to_status}
                          />`
                      : (e.data?.action ?? e.data?.movement ?? e.data?.decision ?? '')
                  }
                  ${e.data?.amount !== undefined ? html` <span class="muted small" title=${microTitle(e.data.amount)}>${credits(e.data.amount)} cr</span>` : null}
                </td>
                <td class="muted">${actor(e.actor)}</td>
                <td>
                  ${
                    e.data && Object.keys(e.data).length
                      ? html`<details>
                          <summary class="small">${Object.keys(e.data).slice(0, 4).join(', ')}</summary>
                          <pre class="code-block small">${toYaml(e.data)}</pre>
                        </details>`
                      : null
                  }
                </td>
              </tr>`,
          )}
        </tbody>
      </table>
    </div>
  </div>`;
}

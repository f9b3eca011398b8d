/** The run page's header: status, kind, trigger and actor, definition hash, time, credits, flags. */
import { html } from '../../lib/html.js';
import { useNow } from '../../lib/hooks.js';
import { paths } from '../../lib/router.js';
import {
  actor,
  ago,
  count,
  credits,
  dateTime,
  duration,
  isTerminal,
  microTitle,
  short,
} from '../../lib/format.js';
import { Progress, Status } from '../../components/status.js';
import { Hash } from '../../components/code.js';
import { LiveBadge } from '../../components/live-badge.js';

function RunLink({ id, label }) {
  if (!id) return null;
  return html`<span class="rel"
    >${label} <a href=${paths.run(id)} class="mono" title=${id}>${short(id.slice(-12), 12)}</a></span
  >`;
}

export function RunHeader({ run: r, mode }) {
  const active = !isTerminal(r.status);
  const now = useNow(500, active && Boolean(r.started_at));
  const ms =
    r.duration_ms ??
    (r.started_at ? (r.finished_at ? Date.parse(r.finished_at) : now) - Date.parse(r.started_at) : null);
  const done = r.items_succeeded + r.items_failed;
  return html`<section class="card run-header" aria-label="Run">
    <div class="run-title">
      <div>
        <div class="crumbs">
          <a href=${paths.circle(r.circle.slug)}>${r.circle.slug}</a>
          <span aria-hidden="true"> / </span>
          <a href=${paths.runs(r.circle.slug)}>Runs</a>
        </div>
        <h1>
          <span class="run-kind">${r.kind}</span> of${' '}
          <a href=${paths.element(r.circle.slug, r.element.slug)}>${r.element.slug}</a>
          <span class="muted small"> v${r.element.version} · ${r.operation}</span>
        </h1>
        <p class="mono muted small" title="Run id">${r.id}</p>
      </div>
      <div class="run-status">
        <span class="status-big" data-testid="run-status" data-status=${r.status}
          ><${Status} status=${r.status}
        /></span>
        <${LiveBadge} mode=${mode} />
      </div>
    </div>
    ${
      r.items_total > 1
        ? html`<div class="run-progress">
            <${Progress}
              total=${r.items_total}
              succeeded=${r.items_succeeded}
              failed=${r.items_failed}
              pending=${r.items_pending}
            />
            <p
              class="counts"
              data-testid="run-counts"
              data-done=${done}
              data-succeeded=${r.items_succeeded}
              data-failed=${r.items_failed}
              data-total=${r.items_total}
              aria-live="polite"
            >
              <span><strong>${count(done)}</strong> of ${count(r.items_total)} done</span>
              <span class="c-succeeded"
                ><span class="dot" aria-hidden="true"></span>${count(r.items_succeeded)} succeeded</span
              >
              <span class="c-failed"
                ><span class="dot" aria-hidden="true"></span>${count(r.items_failed)} failed</span
              >
              <span class="c-pending"
                ><span class="dot" aria-hidden="true"></span>${count(r.items_pending)} pending</span
              >
            </p>
          </div>`
        : null
    }
    <dl class="kv grid run-facts">
      <dt>Trigger</dt>
      <dd>
        <strong>${r.trigger?.type ?? '—'}</strong> by ${actor(r.trigger?.actor)}
        ${r.trigger?.role ? html`<span class="muted small"> (${r.trigger.role})</span>` : null}
      </dd>
      <dt>Duration</dt>
      <dd>
        ${duration(ms)}${active && r.started_at ? html` <span class="muted small">so far</span>` : null}
      </dd>
      <dt>Credits</dt>
      <dd>
        <span title=${microTitle(r.credits_used)}><strong>${credits(r.credits_used)}</strong> used</span
        ><span class="muted"> · </span
        ><span title=${`${microTitle(r.credits_reserved)} held for the run when it was last read`}
          >${credits(r.credits_reserved)} reserved</span
        >
        ${
          r.budget !== null && r.budget !== undefined
            ? html`<span class="muted small"> · budget ${credits(r.budget)} (${r.budget_policy})</span>`
            : null
        }
      </dd>
      <dt>Definition</dt>
      <dd><${Hash} value=${r.definition_hash} /></dd>
      <dt>Queued</dt>
      <dd title=${dateTime(r.queued_at)}>${ago(r.queued_at, now)}</dd>
      <dt>Started / finished</dt>
      <dd>
        ${r.started_at ? dateTime(r.started_at) : 'not yet'} →${' '}
        ${r.finished_at ? dateTime(r.finished_at) : '…'}
      </dd>
      <dt>Mode</dt>
      <dd>
        ${r.mode}${r.attempt > 1 ? html` · attempt ${r.attempt}` : null}${r.concurrency ? html` · concurrency ${r.concurrency}` : null}
      </dd>
      <dt>Flags</dt>
      <dd data-testid="run-flags">
        ${r.flags?.length ? r.flags.map((f) => html`<span class="pill warn">${f}</span> `) : html`<span class="muted">none</span>`}
        ${r.pinned ? html`<span class="pill">pinned</span>` : null}
      </dd>
      ${
        r.host || r.worker
          ? html`<dt>Host</dt>
              <dd>
                ${r.host ?? '—'}${r.worker ? html` <span class="muted small">${r.worker}</span>` : null}
              </dd>`
          : null
      }
      ${
        r.parent_run_id || r.replay_of || r.rerun_of || (r.root_run_id && r.root_run_id !== r.id)
          ? html`<dt>Related</dt>
              <dd class="related">
                <${RunLink} id=${r.parent_run_id} label="parent" />
                <${RunLink}
                  id=${r.root_run_id !== r.id && r.root_run_id !== r.parent_run_id ? r.root_run_id : null}
                  label="root"
                />
                <${RunLink} id=${r.replay_of} label="replay of" />
                <${RunLink} id=${r.rerun_of} label="rerun of" />
              </dd>`
          : null
      }
    </dl>
  </section>`;
}

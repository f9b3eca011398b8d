/** Status and health badges: one colour per status, the same everywhere (app.css --st-*). */
import { html } from '../lib/html.js';

const LABELS = {
  queued: 'queued',
  running: 'running',
  paused: 'paused',
  succeeded: 'succeeded',
  completed: 'completed',
  failed: 'failed',
  cancelled: 'cancelled',
  pending: 'pending',
  retrying: 'retrying',
  skipped: 'skipped',
  awaiting: 'awaiting approval',
};

export function Status({ status, title }) {
  if (!status) return html`<span class="muted">—</span>`;
  return html`<span class="status s-${status}" title=${title ?? null}
    ><span class="dot" aria-hidden="true"></span>${LABELS[status] ?? status}</span
  >`;
}

const HEALTH = { healthy: 'healthy', warning: 'warning', error: 'error', unknown: 'no runs yet' };

export function Health({ health, title }) {
  if (!health) return html`<span class="muted">…</span>`;
  return html`<span class="health h-${health}" title=${title ?? null}
    ><span class="dot" aria-hidden="true"></span>${HEALTH[health] ?? health}</span
  >`;
}

/** A bar of succeeded / failed / pending out of total, with the numbers beside it. */
export function Progress({ total, succeeded, failed, pending, compact = false }) {
  const t = Math.max(0, Number(total) || 0);
  const pct = (n) => (t > 0 ? `${(100 * n) / t}%` : '0%');
  const other = Math.max(0, t - succeeded - failed - pending);
  return html`<div class="progress ${compact ? 'compact' : ''}">
    <div
      class="bar"
      role="img"
      aria-label=${`${succeeded} succeeded, ${failed} failed, ${pending} pending of ${t}`}
    >
      <span class="seg s-succeeded" style=${{ width: pct(succeeded) }}></span>
      <span class="seg s-failed" style=${{ width: pct(failed) }}></span>
      <span class="seg s-other" style=${{ width: pct(other) }}></span>
    </div>
  </div>`;
}

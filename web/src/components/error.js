/** A typed API error as the API wrote it: code, message, and what to do (_suggestion). */
import { html } from '../lib/html.js';

export function ErrorBox({ error, title }) {
  if (!error) return null;
  const e = error.error ?? error;
  const suggestion = e.suggestion ?? e._suggestion;
  const stack = e.details?.stack ?? e.stack_trace ?? null;
  return html`<div class="error-box" role="alert">
    <div class="error-head">
      ${title ? html`<strong>${title}</strong>` : null}
      ${e.code ? html`<code class="code">${e.code}</code>` : null}
      ${e.status ? html`<span class="muted">HTTP ${e.status}</span>` : null}
    </div>
    <p class="error-message">${e.message}</p>
    ${suggestion ? html`<p class="suggestion"><span aria-hidden="true">→ </span>${suggestion}</p>` : null}
    ${
      stack
        ? html`<details>
            <summary>Stack</summary>
            <pre class="code-block">${stack}</pre>
          </details>`
        : null
    }
  </div>`;
}

/** Loading / error / empty states of a fetched section. */
export function Loading({ what = 'Loading' }) {
  return html`<p class="loading" role="status"><span class="spinner" aria-hidden="true"></span>${what}…</p>`;
}

export function Empty({ children }) {
  return html`<p class="empty">${children}</p>`;
}

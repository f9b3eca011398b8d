/** Tabs as the ARIA pattern has them: arrow keys move between tabs, the panel follows. */
import { html } from '../lib/html.js';

export function Tabs({ tabs, current, onChange, label, id = 'tabs' }) {
  const keys = (e) => {
    const i = tabs.findIndex((t) => t.id === current);
    let j = null;
    if (e.key === 'ArrowRight') j = (i + 1) % tabs.length;
    else if (e.key === 'ArrowLeft') j = (i - 1 + tabs.length) % tabs.length;
    else if (e.key === 'Home') j = 0;
    else if (e.key === 'End') j = tabs.length - 1;
    if (j === null) return;
    e.preventDefault();
    onChange(tabs[j].id);
    document.getElementById(`${id}-tab-${tabs[j].id}`)?.focus();
  };
  return html`<div class="tabs" role="tablist" aria-label=${label} onKeyDown=${keys}>
    ${tabs.map(
      (t) =>
        html`<button
          type="button"
          role="tab"
          id=${`${id}-tab-${t.id}`}
          aria-selected=${t.id === current ? 'true' : 'false'}
          aria-controls=${`${id}-panel`}
          tabindex=${t.id === current ? 0 : -1}
          class="tab"
          onClick=${() => onChange(t.id)}
        >
          ${t.label}${t.count !== undefined && t.count !== null ? html` <span class="tab-count">${t.count}</span>` : null}
        </button>`,
    )}
  </div>`;
}

export function TabPanel({ id = 'tabs', current, children }) {
  return html`<div
    class="tab-panel"
    role="tabpanel"
    id=${`${id}-panel`}
    aria-labelledby=${`${id}-tab-${current}`}
  >
    ${children}
  </div>`;
}

/** Values as YAML (or JSON) in a code block, with a copy button. */
import { useState } from 'preact/hooks';
import { html } from '../lib/html.js';
import { toYaml } from '../lib/yaml.js';

export function CopyButton({ text, label = 'Copy' }) {
  const [done, setDone] = useState(false);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text);
      setDone(true);
      setTimeout(() => setDone(false), 1200);
    } catch {
      /* no clipboard (http, permissions): nothing to do */
    }
  };
  return html`<button
    type="button"
    class="btn ghost small"
    onClick=${copy}
    aria-label=${`${label} to clipboard`}
  >
    ${done ? 'Copied' : label}
  </button>`;
}

export function Code({ value, format = 'yaml', label, empty = 'none' }) {
  if (value === undefined || value === null) return html`<p class="muted">${empty}</p>`;
  const text =
    typeof value === 'string' && format === 'text'
      ? value
      : format === 'json'
        ? JSON.stringify(value, null, 2)
        : toYaml(value);
  return html`<div class="code-wrap">
    <div class="code-tools"><${CopyButton} text=${text} /></div>
    <pre class="code-block" tabindex="0" aria-label=${label ?? 'code'}>${text}</pre>
  </div>`;
}

/** A hash or id, shortened, with the full value as its title and a copy button. */
export function Hash({ value, n = 12 }) {
  if (!value) return html`<span class="muted">—</span>`;
  const s = String(value);
  const shown = s.replace(/^sha256:/, '').slice(0, n);
  return html`<span class="hash"
    ><code title=${s}>${shown}</code><${CopyButton} text=${s} label="Copy"
  /></span>`;
}

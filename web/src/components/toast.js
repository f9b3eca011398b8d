/** Short notices after an action ("Run paused"), read out by screen readers (aria-live). */
import { signal } from '@preact/signals';
import { html } from '../lib/html.js';

const notes = signal([]);
let seq = 0;

export function notify(text, kind = 'info', ms = 4000) {
  const id = ++seq;
  notes.value = [...notes.value, { id, text, kind }];
  setTimeout(() => (notes.value = notes.value.filter((n) => n.id !== id)), ms);
}

export function Toaster() {
  return html`<div class="toaster" role="status" aria-live="polite">
    ${notes.value.map((n) => html`<div class=${`toast ${n.kind}`} key=${n.id}>${n.text}</div>`)}
  </div>`;
}

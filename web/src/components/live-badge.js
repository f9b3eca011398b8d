/** Whether a page is live: streaming, polling (the server has no stream), or reconnecting. */
import { html } from '../lib/html.js';

const TEXT = {
  connecting: ['Connecting…', 'Opening the event stream'],
  live: ['Live', 'Updates stream from the server as they happen'],
  reconnecting: ['Reconnecting…', 'The stream dropped; it resumes from the last event'],
  polling: ['Live (polling)', 'This server has no event stream: the page asks for changes every second'],
  idle: ['Finished', 'The run has ended; the page checks it every few seconds (a retry or resume shows)'],
  off: ['Not live', ''],
};

export function LiveBadge({ mode }) {
  const [text, title] = TEXT[mode] ?? TEXT.off;
  return html`<span class=${`live-badge m-${mode}`} title=${title} role="status"
    ><span class="dot" aria-hidden="true"></span>${text}</span
  >`;
}

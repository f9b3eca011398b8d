/** The circles the token sees (an instance admin sees every circle). */
import { html } from '../lib/html.js';
import { circles, circlesError, loadCircles, currentCircle } from '../lib/state.js';
import { paths } from '../lib/router.js';
import { dateTime } from '../lib/format.js';
import { PageHead } from '../components/layout.js';
import { ErrorBox, Loading, Empty } from '../components/error.js';
import { useEffect } from 'preact/hooks';

export function Circles() {
  useEffect(() => {
    currentCircle.value = null;
    void loadCircles();
  }, []);
  const list = circles.value;
  return html`<${PageHead}
      title="Circles"
      sub="Each circle is a tenant: its own schema, elements, runs and wallet."
    />
    <${ErrorBox} error=${circlesError.value} />
    ${
      list === null
        ? html`<${Loading} what="Loading circles" />`
        : list.length === 0
          ? html`<${Empty}>No circles yet. <code>cairn circles create acme</code> makes one.<//>`
          : html`<ul class="cards" aria-label="Circles">
              ${list.map(
                (c) =>
                  html`<li class="card circle-card">
                    <a href=${paths.circle(c.slug)} class="card-link"><strong>${c.slug}</strong></a>
                    <p class="muted small">created ${dateTime(c.created_at)}</p>
                    <p class="small">
                      <a href=${paths.runs(c.slug)}>Runs</a> · <a href=${paths.wallet(c.slug)}>Wallet</a>
                    </p>
                  </li>`,
              )}
            </ul>`
    }`;
}

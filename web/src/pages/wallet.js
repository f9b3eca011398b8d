/** The circle's wallet: balance and what is held, grants with what is left of each, the ledger. */
import { useEffect, useState } from 'preact/hooks';
import { html } from '../lib/html.js';
import { api, qs } from '../lib/api.js';
import { useFetch } from '../lib/hooks.js';
import { me } from '../lib/auth.js';
import { paths } from '../lib/router.js';
import { currentCircle } from '../lib/state.js';
import { actor, credits, dateTime, microTitle, short } from '../lib/format.js';
import { PageHead } from '../components/layout.js';
import { ErrorBox, Loading, Empty } from '../components/error.js';
import { confirmAction } from '../components/dialog.js';
import { notify } from '../components/toast.js';

const enc = encodeURIComponent;

function Money({ micro, sign = false, hold = false }) {
  const v = Number(micro ?? 0);
  const cls = hold ? 'hold' : sign ? (v > 0 ? 'plus' : v < 0 ? 'minus' : '') : '';
  const text = v < 0 ? `\u2212${credits(-v)}` : `${sign && v > 0 ? '+' : ''}${credits(v)}`;
  const title = `${microTitle(v)}${hold ? ' (held or freed, not spent)' : ''}`;
  return html`<span class=${`money ${cls}`} title=${title}>${text}</span>`;
}

function Stat({ label, micro, help, big = false }) {
  return html`<div class=${`stat ${big ? 'big' : ''}`}>
    <div class="stat-label">${label}</div>
    <div class="stat-value"><${Money} micro=${micro} /> <span class="unit">credits</span></div>
    ${help ? html`<div class="stat-help">${help}</div>` : null}
  </div>`;
}

/** How a transfer moves the balance: grants add, captures and expiries take, holds only reserve. */
const EFFECT = { grant: 1, capture: -1, expire: -1, reserve: 0, release: 0 };

export function LedgerTable({ transfers, showRun = true }) {
  if (!transfers.length) return html`<${Empty}>No movements.<//>`;
  return html`<div class="table-wrap">
    <table class="table">
      <thead>
        <tr>
          <th scope="col">When</th>
          <th scope="col">Movement</th>
          <th scope="col" class="num">Amount (credits)</th>
          ${showRun ? html`<th scope="col">Run</th>` : null}
          <th scope="col">By</th>
          <th scope="col">Transfer</th>
        </tr>
      </thead>
      <tbody>
        ${transfers.map(
          (t) =>
            html`<tr key=${t.id}>
              <td>${dateTime(t.at)}</td>
              <td>
                <span class=${`movement mv-${t.kind}`}>${t.kind}</span
                >${t.data?.reason ? html` <span class="muted small">${t.data.reason}</span>` : null}
              </td>
              <td class="num">
                <${Money}
                  micro=${(EFFECT[t.kind] ?? 0) === 0 ? t.amount : EFFECT[t.kind] * t.amount}
                  sign=${EFFECT[t.kind] !== 0}
                  hold=${EFFECT[t.kind] === 0}
                />
              </td>
              ${showRun ? html`<td>${t.run_id ? html`<a href=${paths.run(t.run_id)} class="mono" title=${t.run_id}>${short(t.run_id.slice(-12), 12)}</a>` : '—'}</td>` : null}
              <td class="muted">${actor(t.actor)}</td>
              <td class="mono small muted" title=${t.id}>
                ${t.id.length > 28 ? `${t.id.slice(0, 12)}…${t.id.slice(-10)}` : t.id}
              </td>
            </tr>`,
        )}
      </tbody>
    </table>
  </div>`;
}

export function WalletPage({ circle }) {
  useEffect(() => {
    currentCircle.value = circle;
  }, [circle]);
  const wallet = useFetch(() => api(`/api/${enc(circle)}/wallet`), [circle]);
  const grants = useFetch(() => api(`/api/${enc(circle)}/wallet/grants`), [circle]);
  const [before, setBefore] = useState([]);
  const cursor = before.at(-1) ?? null;
  const ledger = useFetch(
    () => api(`/api/${enc(circle)}/wallet/ledger${qs({ limit: 50, before: cursor })}`),
    [circle, cursor],
  );
  const w = wallet.data;
  const rows = ledger.data?.transfers ?? [];

  const grant = () =>
    confirmAction({
      title: `Grant credits to ${circle}`,
      body: html`<p>Adds credit to the circle's wallet. The grant is a ledger transfer, recorded once.</p>`,
      confirmLabel: 'Grant',
      fields: [
        { name: 'amount', label: 'Credits', value: '10', help: '1 credit = 1,000,000 micro-credits.' },
        { name: 'category', label: 'Category', type: 'select', options: ['paid', 'promotional', 'topup'] },
        { name: 'note', label: 'Note (optional)' },
      ],
      action: async (v) => {
        const amount = Math.round(Number(v.amount) * 1_000_000);
        if (!Number.isFinite(amount) || amount <= 0)
          throw {
            code: 'INVALID_INPUT',
            message: 'The amount must be a positive number of credits.',
            suggestion: 'Write e.g. 10 or 0.5.',
          };
        const r = await api(`/api/${enc(circle)}/wallet/grants`, {
          method: 'POST',
          body: { amount, category: v.category, ...(v.note ? { note: v.note } : {}) },
          idempotencyKey: crypto.randomUUID(),
        });
        notify(`Granted ${credits(amount)} credits`, 'ok');
        void wallet.reload(true);
        void grants.reload(true);
        setBefore([]);
        void ledger.reload(true);
        return r;
      },
    });

  return html`<${PageHead}
      title="Wallet"
      sub=${`Credits of ${circle}; amounts in credits (the API counts micro-credits)`}
      crumbs=${[{ href: paths.circle(circle), label: circle }]}
    >
      ${me.value?.instance_admin ? html`<button type="button" class="btn primary" onClick=${grant}>Grant credits</button>` : null}
    <//>
    <${ErrorBox} error=${wallet.error} />
    ${
      w
        ? html`<section class="stats card" aria-label="Balance">
            <${Stat} label="Available" micro=${w.available} help="What new runs can reserve" big />
            <${Stat} label="Balance" micro=${w.balance} help="Granted minus spent" />
            <${Stat} label="Reserved" micro=${w.debits_pending} help="Held by running work" />
            <${Stat} label="Granted" micro=${w.credits_posted} />
            <${Stat} label="Spent" micro=${w.debits_posted} />
            ${
              w.spend_limit
                ? html`<${Stat}
                    label=${`Spend limit (per ${w.spend_limit.period ?? w.spend_period ?? 'period'})`}
                    micro=${w.spend_limit.credits ?? w.spend_limit}
                  />`
                : null
            }
          </section>`
        : html`<${Loading} what="Loading the wallet" />`
    }
    <section class="card" aria-labelledby="grants-title">
      <h2 id="grants-title">Grants</h2>
      <${ErrorBox} error=${grants.error} />
      ${
        grants.data
          ? grants.data.grants.length
            ? html`<div class="table-wrap">
                <table class="table">
                  <thead>
                    <tr>
                      <th scope="col">Granted</th>
                      <th scope="col">Category</th>
                      <th scope="col" class="num">Amount</th>
                      <th scope="col" class="num">Left</th>
                      <th scope="col">Expires</th>
                      <th scope="col">Note</th>
                      <th scope="col">By</th>
                    </tr>
                  </thead>
                  <tbody>
                    ${grants.data.grants.map(
                      (g) =>
                        html`<tr key=${g.id}>
                          <td>${dateTime(g.created_at)}</td>
                          <td><span class="pill">${g.category}</span></td>
                          <td class="num"><${Money} micro=${g.amount} /></td>
                          <td class="num">
                            <${Money} micro=${g.remaining} />
                            <div class="meter" aria-hidden="true">
                              <span
                                style=${{ width: `${g.amount > 0 ? (100 * g.remaining) / g.amount : 0}%` }}
                              ></span>
                            </div>
                          </td>
                          <td>
                            ${g.expires_at ? dateTime(g.expires_at) : html`<span class="muted">never</span>`}
                          </td>
                          <td>${g.note ?? ''}</td>
                          <td class="muted">${actor(g.actor)}</td>
                        </tr>`,
                    )}
                  </tbody>
                </table>
              </div>`
            : html`<${Empty}>No grants.<//>`
          : html`<${Loading} />`
      }
    </section>
    <section class="card" aria-labelledby="ledger-title">
      <h2 id="ledger-title">Ledger</h2>
      <p class="muted small">
        Every movement, newest first. A run reserves its estimate, captures what succeeded and releases the
        rest.
      </p>
      <${ErrorBox} error=${ledger.error} />
      ${ledger.data ? html`<${LedgerTable} transfers=${rows} />` : html`<${Loading} />`}
      <nav class="pager" aria-label="Ledger pages">
        <button
          type="button"
          class="btn"
          disabled=${before.length === 0}
          onClick=${() => setBefore(before.slice(0, -1))}
        >
          ← Newer
        </button>
        <button
          type="button"
          class="btn"
          disabled=${rows.length < 50}
          onClick=${() => setBefore([...before, rows.at(-1).at])}
        >
          Older →
        </button>
      </nav>
    </section>`;
}

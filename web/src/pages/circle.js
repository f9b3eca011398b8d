/** A circle's elements: type, state and health (each element's `stats` op), and its latest runs. */
import { useEffect, useState } from 'preact/hooks';
import { html } from '../lib/html.js';
import { api, pool, qs } from '../lib/api.js';
import { useFetch } from '../lib/hooks.js';
import { paths } from '../lib/router.js';
import { currentCircle } from '../lib/state.js';
import { ago, count, duration, percent, credits, microTitle } from '../lib/format.js';
import { PageHead } from '../components/layout.js';
import { ErrorBox, Loading, Empty } from '../components/error.js';
import { Health } from '../components/status.js';
import { RunTable } from './runs.js';

const enc = encodeURIComponent;

/** What an element is for (its intention), else its name when it says more than the slug. */
function subtitle(e) {
  if (e.intention) return e.intention;
  const plain = (x) => x.toLowerCase().replace(/[^a-z0-9]/g, '');
  return e.name && plain(e.name) !== plain(e.slug) ? e.name : null;
}

export function CirclePage({ circle }) {
  useEffect(() => {
    currentCircle.value = circle;
  }, [circle]);
  const els = useFetch(() => api(`/api/${enc(circle)}/elements`), [circle]);
  const recent = useFetch(() => api(`/api/${enc(circle)}/runs${qs({ limit: 8 })}`), [circle]);
  const [stats, setStats] = useState({});
  useEffect(() => {
    const list = els.data?.elements;
    if (!list) return;
    let live = true;
    void pool(list, 4, async (e) => {
      try {
        const s = await api(`/api/${enc(circle)}/${enc(e.slug)}/ops/stats`);
        if (live) setStats((m) => ({ ...m, [e.slug]: s }));
      } catch (err) {
        if (live) setStats((m) => ({ ...m, [e.slug]: { error: err } }));
      }
    });
    return () => {
      live = false;
    };
  }, [els.data]);

  const list = els.data?.elements ?? [];
  return html`<${PageHead}
      title=${circle}
      sub="Elements, with their health over the last day"
      crumbs=${[{ href: '/circles', label: 'Circles' }]}
    >
      <a class="btn" href=${paths.runs(circle)}>All runs</a>
      <a class="btn" href=${paths.wallet(circle)}>Wallet</a>
    <//>
    <section aria-labelledby="els-title" class="card">
      <h2 id="els-title">Elements <span class="count">${els.data ? list.length : ''}</span></h2>
      <${ErrorBox} error=${els.error} />
      ${
        els.loading && !els.data
          ? html`<${Loading} what="Loading elements" />`
          : list.length === 0
            ? html`<${Empty}
                >No elements yet: <code>cairn apply -f element.yaml --circle ${circle}</code>.<//
              >`
            : html`<div class="table-wrap">
                <table class="table">
                  <thead>
                    <tr>
                      <th scope="col">Element</th>
                      <th scope="col">Type</th>
                      <th scope="col">State</th>
                      <th scope="col">Health</th>
                      <th scope="col" class="num">Runs (24 h)</th>
                      <th scope="col" class="num">Success</th>
                      <th scope="col" class="num">p95</th>
                      <th scope="col" class="num">Credits (24 h)</th>
                      <th scope="col">Last run</th>
                    </tr>
                  </thead>
                  <tbody>
                    ${list.map((e) => {
                      const s = stats[e.slug];
                      return html`<tr key=${e.slug}>
                        <td>
                          <a href=${paths.element(circle, e.slug)} class="strong">${e.slug}</a>
                          ${subtitle(e) ? html`<div class="muted small subtitle">${subtitle(e)}</div>` : null}
                        </td>
                        <td><span class="type-badge t-${e.category}">${e.element_type}</span></td>
                        <td>
                          <span class=${`state st-${e.state}`} title=${e.disabled_reason ?? null}
                            >${e.state}</span
                          >
                          <span class="muted small"> v${e.version}</span>
                        </td>
                        <td>
                          ${s?.error ? html`<span class="muted" title=${s.error.message}>n/a</span>` : html`<${Health} health=${s?.health} />`}
                        </td>
                        <td class="num">${s && !s.error ? count(s.runs) : ''}</td>
                        <td class="num">${s && !s.error ? percent(s.success_rate) : ''}</td>
                        <td class="num">${s && !s.error ? duration(s.p95_duration_ms) : ''}</td>
                        <td class="num" title=${s ? microTitle(s.credits_used) : null}>
                          ${s && !s.error ? credits(s.credits_used) : ''}
                        </td>
                        <td class="muted">
                          ${s?.last_run_at ? ago(s.last_run_at) : s && !s.error ? 'never' : ''}
                        </td>
                      </tr>`;
                    })}
                  </tbody>
                </table>
              </div>`
      }
    </section>
    <section aria-labelledby="recent-title" class="card">
      <div class="section-head">
        <h2 id="recent-title">Latest runs</h2>
        <a href=${paths.runs(circle)}>See all</a>
      </div>
      <${ErrorBox} error=${recent.error} />
      ${recent.data ? html`<${RunTable} runs=${recent.data.runs} compact />` : html`<${Loading} what="Loading runs" />`}
    </section>`;
}

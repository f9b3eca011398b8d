/** The frame of every page: the header (circle, sections, who is signed in) and the main area. */
import { html } from '../lib/html.js';
import { me, signOut } from '../lib/auth.js';
import { location, navigate, paths } from '../lib/router.js';
import { circles, currentCircle } from '../lib/state.js';

function Logo() {
  return html`<svg class="logo" viewBox="0 0 32 32" width="26" height="26" aria-hidden="true">
    <ellipse cx="16" cy="26" rx="11" ry="4" class="stone s1" />
    <ellipse cx="16" cy="18.5" rx="8" ry="3.6" class="stone s2" />
    <ellipse cx="16" cy="11.5" rx="5.5" ry="3" class="stone s3" />
    <ellipse cx="16" cy="5.6" rx="3" ry="2.1" class="stone s4" />
  </svg>`;
}

function NavLink({ href, children }) {
  const here = location.value.path;
  const active = here === href || (href.endsWith('/runs') && here.startsWith(href));
  return html`<a
    href=${href}
    class=${`nav-link ${active ? 'active' : ''}`}
    aria-current=${active ? 'page' : undefined}
    >${children}</a
  >`;
}

function CirclePicker() {
  const list = circles.value ?? [];
  const c = currentCircle.value;
  if (list.length <= 1) return c ? html`<span class="circle-name" title="Circle">${c}</span>` : null;
  return html`<label class="circle-picker">
    <span class="visually-hidden">Circle</span>
    <select
      value=${c ?? ''}
      onChange=${(e) => {
        const v = e.currentTarget.value;
        if (v) navigate(paths.circle(v));
      }}
    >
      ${c ? null : html`<option value="">Choose a circle</option>`}
      ${list.map((x) => html`<option value=${x.slug}>${x.slug}</option>`)}
    </select>
  </label>`;
}

export function Layout({ children }) {
  const m = me.value;
  const c = currentCircle.value;
  return html`<div class="app">
    <a class="skip" href="#main">Skip to content</a>
    <header class="topbar">
      <a class="brand" href="/"><${Logo} /><span>Cairn</span></a>
      ${
        m
          ? html`<${CirclePicker} />
              ${
                c
                  ? html`<nav class="nav" aria-label="Sections">
                      <${NavLink} href=${paths.circle(c)}>Elements<//>
                      <${NavLink} href=${paths.runs(c)}>Runs<//>
                      <${NavLink} href=${paths.wallet(c)}>Wallet<//>
                    </nav>`
                  : null
              }
              <div class="who">
                <span
                  class="role-badge"
                  title=${m.instance_admin ? 'An instance-admin token: every circle' : `A ${m.role} token of ${m.circle}`}
                >
                  ${m.instance_admin ? 'instance admin' : m.role}
                </span>
                <button
                  type="button"
                  class="btn ghost small"
                  onClick=${() => {
                    signOut();
                    navigate('/sign-in');
                  }}
                >
                  Sign out
                </button>
              </div>`
          : null
      }
    </header>
    <main id="main" class="main" tabindex="-1">${children}</main>
  </div>`;
}

/** A page's title row: the heading, a line under it, and actions on the right. */
export function PageHead({ title, sub, children, crumbs }) {
  return html`<div class="page-head">
    <div>
      ${
        crumbs
          ? html`<nav class="crumbs" aria-label="Breadcrumb">
              ${crumbs.map((c, i) => html`${i ? html`<span aria-hidden="true"> / </span>` : null}<a href=${c.href}>${c.label}</a>`)}
            </nav>`
          : null
      }
      <h1>${title}</h1>
      ${sub ? html`<p class="sub">${sub}</p>` : null}
    </div>
    <div class="page-actions">${children}</div>
  </div>`;
}

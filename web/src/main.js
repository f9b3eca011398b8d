/** The web UI's entry: sign-in state, the route → page table, and the frame around them. */
import { render } from 'preact';
import { useEffect } from 'preact/hooks';
import { html } from './lib/html.js';
import { me, restore, token } from './lib/auth.js';
import { location, match, navigate, paths } from './lib/router.js';
import { loadCircles, circles } from './lib/state.js';
import { Layout } from './components/layout.js';
import { DialogHost } from './components/dialog.js';
import { Toaster } from './components/toast.js';
import { Loading, ErrorBox } from './components/error.js';
import { SignIn } from './pages/signin.js';
import { Circles } from './pages/circles.js';
import { CirclePage } from './pages/circle.js';
import { ElementPage } from './pages/element.js';
import { RunsPage } from './pages/runs.js';
import { WalletPage } from './pages/wallet.js';
import { RunPage } from './pages/run/index.js';

function Home() {
  const m = me.value;
  const list = circles.value;
  useEffect(() => {
    // A circle token has one circle: go there. An instance admin picks one.
    const only = m?.circle ?? (list?.length === 1 ? list[0].slug : null);
    if (only) navigate(paths.circle(only), { replace: true });
  }, [m, list]);
  return html`<${Circles} />`;
}

function Page() {
  const { path } = location.value;
  const r = match(path);
  if (!token.value || r.name === 'sign-in') {
    if (token.value && me.value && r.name === 'sign-in') return html`<${Home} />`;
    return html`<${SignIn} />`;
  }
  if (!me.value) return html`<${Loading} what="Signing in" />`;
  switch (r.name) {
    case 'home':
      return html`<${Home} />`;
    case 'circles':
      return html`<${Circles} />`;
    case 'circle':
      return html`<${CirclePage} circle=${r.params.circle} />`;
    case 'element':
      return html`<${ElementPage} circle=${r.params.circle} slug=${r.params.slug} />`;
    case 'runs':
      return html`<${RunsPage} circle=${r.params.circle} />`;
    case 'wallet':
      return html`<${WalletPage} circle=${r.params.circle} />`;
    case 'run':
      return html`<${RunPage} id=${r.params.id} key=${r.params.id} />`;
    default:
      return html`<${ErrorBox}
        error=${{ code: 'PAGE_NOT_FOUND', message: `No page at ${path}.`, suggestion: 'Go to the circles, or open a run from its web_url.' }}
      />`;
  }
}

function App() {
  // A page opened without a session (a web_url from a terminal) comes back here after sign-in.
  useEffect(() => {
    if (!token.value && location.value.path !== '/sign-in' && location.value.path !== '/') {
      const next = location.value.path + window.location.search;
      navigate(`/sign-in?next=${encodeURIComponent(next)}`, { replace: true });
    }
  }, [token.value]);
  useEffect(() => {
    if (token.value && !me.value) void restore().then((m) => m && loadCircles());
    else if (token.value && me.value && circles.value === null) void loadCircles();
  }, [token.value]);
  return html`<${Layout}><${Page} /><//>
    <${DialogHost} />
    <${Toaster} />`;
}

render(html`<${App} />`, document.getElementById('app'));

/** Sign in with a token pasted into a form. It is kept for this tab only (sessionStorage). */
import { useState } from 'preact/hooks';
import { html } from '../lib/html.js';
import { signIn, signOutReason } from '../lib/auth.js';
import { navigate, location } from '../lib/router.js';
import { loadCircles } from '../lib/state.js';
import { ErrorBox } from '../components/error.js';

export function SignIn() {
  const [secret, setSecret] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    if (!secret.trim()) return;
    setBusy(true);
    setError(null);
    try {
      await signIn(secret);
      await loadCircles();
      const next = location.value.query.get('next');
      navigate(next && next.startsWith('/') && !next.startsWith('//') ? next : '/', { replace: true });
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return html`<div class="signin">
    <form class="card signin-card" onSubmit=${submit} aria-labelledby="signin-title">
      <h1 id="signin-title">Sign in to Cairn</h1>
      <p class="sub">
        Paste an API token. An instance admin's is printed at first start (also in
        <code>.cairn/bootstrap-token</code>); <code>cairn tokens create --role read</code> makes one for a
        circle.
      </p>
      ${signOutReason.value ? html`<p class="notice warn">${signOutReason.value}</p>` : null}
      <div class="field">
        <label for="token">Token</label>
        <input
          id="token"
          name="token"
          type="password"
          autocomplete="off"
          spellcheck="false"
          required
          value=${secret}
          onInput=${(e) => setSecret(e.currentTarget.value)}
          autofocus
        />
        <p class="help">Kept in this tab only and sent as an Authorization header; never put in a URL.</p>
      </div>
      <${ErrorBox} error=${error} title="Not signed in" />
      <button type="submit" class="btn primary wide" disabled=${busy}>
        ${busy ? 'Checking…' : 'Sign in'}
      </button>
    </form>
  </div>`;
}

/**
 * Confirmation dialogs on the native <dialog> (showModal: the page behind is inert, focus stays
 * in the dialog, Esc closes it). `confirmAction({title, body, confirmLabel, danger, fields,
 * action})` opens one; `action(values)` runs on confirm: a refusal (ApiError) stays in the
 * dialog with the API's message and suggestion, success closes it.
 */
import { signal } from '@preact/signals';
import { useEffect, useRef, useState } from 'preact/hooks';
import { html } from '../lib/html.js';
import { ErrorBox } from './error.js';

const current = signal(null);

/**
 * @param {{title: string, body?: any, confirmLabel?: string, danger?: boolean, cost?: boolean,
 *          fields?: {name: string, label: string, type?: 'text'|'textarea'|'json'|'select', options?: string[], value?: string, help?: string}[],
 *          action: (values: Record<string, any>) => Promise<any>}} opts
 * @returns {Promise<any>} what action answered, or null when cancelled
 */
export function confirmAction(opts) {
  return new Promise((resolve) => {
    current.value = { ...opts, resolve };
  });
}

function Field({ f, value, onInput }) {
  const id = `dlg-f-${f.name}`;
  const common = { id, name: f.name, value, onInput: (e) => onInput(e.currentTarget.value) };
  let input;
  if (f.type === 'textarea' || f.type === 'json')
    input = html`<textarea
      ...${common}
      rows=${f.type === 'json' ? 4 : 3}
      spellcheck=${f.type === 'json' ? 'false' : 'true'}
      class=${f.type === 'json' ? 'mono' : ''}
    ></textarea>`;
  else if (f.type === 'select')
    input = html`<select ...${common} onChange=${common.onInput}>
      ${f.options.map((o) => html`<option value=${o}>${o}</option>`)}
    </select>`;
  else input = html`<input type="text" ...${common} />`;
  return html`<div class="field">
    <label for=${id}>${f.label}</label>
    ${input} ${f.help ? html`<p class="help">${f.help}</p>` : null}
  </div>`;
}

export function DialogHost() {
  const ref = useRef(null);
  const d = current.value;
  const [values, setValues] = useState({});
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);

  useEffect(() => {
    const el = ref.current;
    if (!el) return;
    if (d) {
      setValues(Object.fromEntries((d.fields ?? []).map((f) => [f.name, f.value ?? f.options?.[0] ?? ''])));
      setError(null);
      setBusy(false);
      if (!el.open) el.showModal();
    } else if (el.open) el.close();
  }, [d]);

  const finish = (answer) => {
    const r = current.value?.resolve;
    current.value = null;
    r?.(answer);
  };

  const submit = async (e) => {
    e.preventDefault();
    if (busy || !d) return;
    const out = {};
    for (const f of d.fields ?? []) {
      const v = values[f.name] ?? '';
      if (f.type === 'json') {
        if (v.trim() === '') continue;
        try {
          out[f.name] = JSON.parse(v);
        } catch (err) {
          setError({
            code: 'INVALID_JSON',
            message: `${f.label}: ${err.message}`,
            suggestion: 'Write a JSON value, or leave it empty.',
          });
          return;
        }
      } else if (v !== '') out[f.name] = v;
    }
    setBusy(true);
    setError(null);
    try {
      const answer = await d.action(out);
      finish(answer ?? true);
    } catch (err) {
      setBusy(false);
      setError(err);
    }
  };

  // Tab and Shift+Tab cycle inside the dialog (showModal makes the page inert, but lets focus leave to the browser).
  const trap = (e) => {
    if (e.key !== 'Tab' || !ref.current) return;
    const list = [
      ...ref.current.querySelectorAll(
        'button, input, select, textarea, [href], [tabindex]:not([tabindex="-1"])',
      ),
    ].filter((el) => !el.disabled && el.offsetParent !== null);
    if (!list.length) return;
    const first = list[0];
    const last = list[list.length - 1];
    if (e.shiftKey && (document.activeElement === first || !ref.current.contains(document.activeElement))) {
      e.preventDefault();
      last.focus();
    } else if (
      !e.shiftKey &&
      (document.activeElement === last || !ref.current.contains(document.activeElement))
    ) {
      e.preventDefault();
      first.focus();
    }
  };

  return html`<dialog
    ref=${ref}
    onKeyDown=${trap}
    class="dialog"
    aria-labelledby="dlg-title"
    aria-describedby="dlg-body"
    onCancel=${(e) => {
      e.preventDefault();
      if (!busy) finish(null);
    }}
  >
    ${
      d
        ? html`<form method="dialog" onSubmit=${submit}>
            <h2 id="dlg-title">${d.title}</h2>
            <div id="dlg-body" class="dialog-body">${d.body}</div>
            ${
              d.cost
                ? html`<p class="notice warn">
                    <span aria-hidden="true">⚠ </span>This can cost credits and repeat side effects.
                  </p>`
                : null
            }
            ${(d.fields ?? []).map(
              (f) =>
                html`<${Field}
                  f=${f}
                  value=${values[f.name] ?? ''}
                  onInput=${(v) => setValues({ ...values, [f.name]: v })}
                />`,
            )}
            <${ErrorBox} error=${error} />
            <div class="dialog-actions">
              <button
                type="button"
                class="btn"
                onClick=${() => finish(null)}
                disabled=${busy}
                autofocus=${d.danger ? true : undefined}
              >
                Cancel
              </button>
              <button
                type="submit"
                class=${`btn ${d.danger ? 'danger' : 'primary'}`}
                disabled=${busy}
                autofocus=${d.danger || (d.fields ?? []).length ? undefined : true}
              >
                ${busy ? 'Working…' : (d.confirmLabel ?? 'Confirm')}
              </button>
            </div>
          </form>`
        : null
    }
  </dialog>`;
}

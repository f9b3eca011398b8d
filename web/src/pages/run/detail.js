/**
 * The selected item or task: its input and output, its error with the suggestion and stack, its
 * evidence (command, hashes, exit code, host, peak memory …) and its logs, which follow live
 * (`log` events) while it runs.
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import { html } from '../../lib/html.js';
import { api, qs } from '../../lib/api.js';
import { paths } from '../../lib/router.js';
import { bytes, clock, credits, dateTime, duration, microTitle, short } from '../../lib/format.js';
import { can } from '../../lib/auth.js';
import { Status } from '../../components/status.js';
import { Code, Hash } from '../../components/code.js';
import { ErrorBox } from '../../components/error.js';
import { decide } from './controls.js';

const KNOWN = new Set([
  'command',
  'exit_code',
  'signal',
  'verdict',
  'host',
  'worker',
  'peak_memory_kb',
  'timing',
  'toolchain',
  'input_hashes',
  'output_hashes',
  'stdout',
  'stderr',
  'log_lines',
  'input_files',
  'output_files',
  'query_hash',
  'sandbox',
  'element',
  'awaiting',
  'decision',
]);

function Hashes({ value }) {
  if (!value || typeof value !== 'object') return html`<span class="muted">—</span>`;
  const entries = Object.entries(value);
  if (!entries.length) return html`<span class="muted">none</span>`;
  return html`<ul class="plain">
    ${entries.map(([k, v]) => html`<li><span class="muted">${k}</span> <${Hash} value=${v} /></li>`)}
  </ul>`;
}

function Stream({ s }) {
  if (!s) return html`<span class="muted">—</span>`;
  return html`${bytes(s.bytes)}${s.truncated ? html` <span class="pill warn">truncated</span>` : null}
    <${Hash} value=${s.sha256} n=${8} />`;
}

function Files({ list }) {
  if (!list?.length) return html`<span class="muted">none</span>`;
  return html`<ul class="plain">
    ${list.map((f) => html`<li>${f.name} <span class="muted small">${bytes(f.size)}</span> <${Hash} value=${f.sha256} n=${8} /></li>`)}
  </ul>`;
}

export function Evidence({ ev }) {
  if (!ev || !Object.keys(ev).length)
    return html`<p class="muted">No evidence recorded (the item has not run).</p>`;
  const rest = Object.fromEntries(Object.entries(ev).filter(([k]) => !KNOWN.has(k)));
  const cmd = Array.isArray(ev.command) ? ev.command.join(' ') : ev.command;
  return html`<dl class="kv evidence">
      <dt>Command</dt>
      <dd>${cmd ? html`<code>${cmd}</code>` : html`<span class="muted">—</span>`}</dd>
      <dt>Exit</dt>
      <dd>
        ${ev.exit_code ?? '—'}${ev.signal ? html` <span class="pill warn">signal ${ev.signal}</span>` : null}${
          ev.verdict ? html` <span class="muted small">${ev.verdict}</span>` : null
        }
      </dd>
      <dt>Host</dt>
      <dd>${ev.host ?? '—'}${ev.worker ? html` <span class="muted small">${ev.worker}</span>` : null}</dd>
      <dt>Peak memory</dt>
      <dd>
        ${ev.peak_memory_kb !== undefined && ev.peak_memory_kb !== null ? bytes(ev.peak_memory_kb * 1024) : '—'}
      </dd>
      <dt>Timing</dt>
      <dd>
        ${
          ev.timing
            ? Object.entries(ev.timing)
                .map(([k, v]) => `${k.replace(/_ms$/, '')} ${typeof v === 'number' ? duration(v) : v}`)
                .join(' · ')
            : '—'
        }
      </dd>
      <dt>Toolchain</dt>
      <dd>
        ${
          ev.toolchain
            ? Object.entries(ev.toolchain)
                .map(([k, v]) => `${k} ${typeof v === 'object' ? JSON.stringify(v) : v}`)
                .join(' · ')
            : '—'
        }
      </dd>
      <dt>Input hashes</dt>
      <dd><${Hashes} value=${ev.input_hashes} /></dd>
      <dt>Output hashes</dt>
      <dd><${Hashes} value=${ev.output_hashes} /></dd>
      ${
        ev.query_hash
          ? html`<dt>Query hash</dt>
              <dd><${Hash} value=${ev.query_hash} /></dd>`
          : null
      }
      <dt>stdout</dt>
      <dd><${Stream} s=${ev.stdout} /></dd>
      <dt>stderr</dt>
      <dd><${Stream} s=${ev.stderr} /></dd>
      ${
        ev.sandbox
          ? html`<dt>Sandbox</dt>
              <dd>
                ${ev.sandbox.backend}${ev.sandbox.uid !== undefined ? ` · uid ${ev.sandbox.uid}` : ''}${
                  ev.sandbox.limits
                    ? ` · ${ev.sandbox.limits.memory_mb} MiB, ${duration(ev.sandbox.limits.timeout_ms)}`
                    : ''
                }
              </dd>`
          : null
      }
      ${
        ev.input_files?.length || ev.output_files?.length
          ? html`<dt>Files read</dt>
              <dd><${Files} list=${ev.input_files} /></dd>
              <dt>Files written</dt>
              <dd><${Files} list=${ev.output_files} /></dd>`
          : null
      }
    </dl>
    ${
      Object.keys(rest).length
        ? html`<details class="more">
            <summary>Other evidence</summary>
            <${Code} value=${rest} label="Other evidence" />
          </details>`
        : null
    }`;
}

/** Log lines ([ms, stream, text] or {ts, stream, line}), following the end while `follow` is on. */
export function LogView({ lines, live = false, label = 'Logs' }) {
  const ref = useRef(null);
  const [follow, setFollow] = useState(true);
  useEffect(() => {
    if (follow && ref.current) ref.current.scrollTop = ref.current.scrollHeight;
  }, [lines.length, follow]);
  return html`<div class="logs">
    <div class="logs-head">
      <span class="muted small"
        >${lines.length} line${lines.length === 1 ? '' : 's'}${live ? ' · live' : ''}</span
      >
      <label class="check small"
        ><input type="checkbox" checked=${follow} onChange=${(e) => setFollow(e.currentTarget.checked)} />
        Follow</label
      >
    </div>
    ${
      lines.length
        ? html`<pre class="log-lines" ref=${ref} tabindex="0" aria-label=${label}>
${lines.map((l) => {
              const [ms, stream, text] = Array.isArray(l) ? l : [Date.parse(l.ts), l.stream, l.line];
              return html`<span class=${`ll ${stream}`}
                ><span class="lt">${clock(new Date(ms).toISOString())}</span
                ><span class="ls">${stream === 'stderr' ? 'err' : 'out'}</span>${text}
              </span>`;
            })}</pre>`
        : html`<p class="muted small">No output${live ? ' yet' : ''}.</p>`
    }
  </div>`;
}

function TaskLogs({ task, model }) {
  const [lines, setLines] = useState(null);
  const _logs = model.logsVersion.value;
  useEffect(() => {
    if (!task.child_run_id) return;
    let live = true;
    api(`/api/runs/${encodeURIComponent(task.child_run_id)}/logs${qs({ tail: 2000 })}`)
      .then((r) => live && setLines(r.lines))
      .catch(() => live && setLines([]));
    return () => {
      live = false;
    };
  }, [task.child_run_id, task.status]);
  if (!task.child_run_id) return html`<p class="muted small">This task runs no code of its own.</p>`;
  return html`<${LogView} lines=${lines ?? []} live=${task.status === 'running'} />`;
}

export function Detail({ model, run, selected, onClose }) {
  const workflow = run.kind === 'workflow';
  const _items = model.itemsVersion.value;
  const _logs = model.logsVersion.value;
  const x = workflow
    ? (model.tasks.value ?? []).find((t) => t.name === selected)
    : model.items[model.index.get(selected) ?? -1];
  if (!x)
    return html`<aside class="detail card" aria-label="Selection">
      <p class="muted">
        ${selected ? 'That item is not loaded (filtered out?).' : `Select ${workflow ? 'a task' : 'an item'} to see its input, output, evidence and logs.`}
      </p>
    </aside>`;
  const ev = x.evidence ?? {};
  const liveLines = model.liveLogs.get(x.id) ?? [];
  const lines = [
    ...(ev.log_lines ?? []),
    ...liveLines.filter((l) => !(ev.log_lines ?? []).length || l[0] > (ev.log_lines.at(-1)?.[0] ?? 0)),
  ];
  const title = workflow ? x.name : run.kind === 'batch' ? `Item #${x.ord + 1}` : `Call`;
  return html`<aside class="detail card" aria-labelledby="detail-title" data-testid="detail">
    <div class="detail-head">
      <h2 id="detail-title">${title}</h2>
      <button type="button" class="btn ghost small" onClick=${onClose} aria-label="Close the detail">
        ✕
      </button>
    </div>
    <dl class="kv compact">
      <dt>Status</dt>
      <dd>
        <${Status} status=${x.awaiting ? 'awaiting' : x.status} />${' '}
        <span class="muted small">· attempt ${x.attempt_count ?? x.attempts}</span>
      </dd>
      ${
        workflow
          ? html`<dt>Element</dt>
              <dd>
                ${
                  x.element
                    ? html`<a href=${paths.element(run.circle.slug, x.element.slug)}>${x.element.slug}</a>
                        <span class="muted small">v${x.element.version}</span>`
                    : '—'
                }
                ${x.child_run_id ? html` · <a href=${paths.run(x.child_run_id)} title=${x.child_run_id}>child run ${short(x.child_run_id.slice(-8))}</a>` : null}
              </dd>`
          : html`<dt>Key</dt>
              <dd class="mono small">${x.key}</dd>`
      }
      <dt>Time</dt>
      <dd>
        ${x.started_at ? dateTime(x.started_at) : 'not started'}${x.duration_ms !== null && x.duration_ms !== undefined ? ` · ${duration(x.duration_ms)}` : ''}
      </dd>
      <dt>Credits</dt>
      <dd title=${microTitle(x.credits_used)}>${credits(x.credits_used)}</dd>
      ${
        x.retry_at
          ? html`<dt>Retry at</dt>
              <dd>${dateTime(x.retry_at)}</dd>`
          : null
      }
    </dl>
    ${
      x.awaiting
        ? html`<div class="approval-box">
            <p>
              <strong>Waiting for approval</strong> <span class="muted small">(role ${x.awaiting.role})</span>
            </p>
            <p class="instructions">${x.awaiting.instructions}</p>
            ${
              can(x.awaiting.role, run.circle.slug)
                ? html`<div class="btn-row">
                    <button
                      type="button"
                      class="btn primary"
                      onClick=${() => decide(model, run, x, 'approve')}
                    >
                      Approve…
                    </button>
                    <button type="button" class="btn danger" onClick=${() => decide(model, run, x, 'reject')}>
                      Reject…
                    </button>
                  </div>`
                : null
            }
          </div>`
        : null
    }
    ${
      x.decision
        ? html`<p class="notice">
            Decision: <strong>${x.decision.decision}</strong> by
            ${x.decision.approver}${x.decision.comment ? ` — “${x.decision.comment}”` : ''}
          </p>`
        : null
    }
    ${
      x.error
        ? html`<h3>Error</h3>
            <${ErrorBox} error=${x.error} />`
        : null
    }
    <h3>Input</h3>
    <${Code} value=${x.inputs} label="Input" />
    <h3>Output</h3>
    <${Code}
      value=${x.outputs}
      label="Output"
      empty=${x.status === 'succeeded' ? 'null' : x.finished_at ? 'none' : 'none yet'}
    />
    <h3>Evidence</h3>
    <${Evidence} ev=${ev} />
    <h3>Logs</h3>
    ${workflow ? html`<${TaskLogs} task=${x} model=${model} />` : html`<${LogView} lines=${lines} live=${x.status === 'running'} />`}
  </aside>`;
}

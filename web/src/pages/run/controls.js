/**
 * Run control: pause, resume, cancel, retry-failed, rerun, replay, and approve/reject of a task
 * that waits. Shown when the run's state allows it and the token's role reaches it; the API
 * still decides (a refusal shows its typed error in the dialog). What costs money or repeats
 * side effects asks first (resume, retry-failed, rerun, replay), and so does cancel.
 */
import { html } from '../../lib/html.js';
import { api } from '../../lib/api.js';
import { can } from '../../lib/auth.js';
import { navigate, paths } from '../../lib/router.js';
import { credits, dateTime, isTerminal } from '../../lib/format.js';
import { confirmAction } from '../../components/dialog.js';
import { notify } from '../../components/toast.js';

const enc = encodeURIComponent;

/** A control's button: its label, its variant (primary, danger or plain) and what it does. */
function button(label, variant, onClick) {
  return html`<button type="button" class=${variant ? `btn ${variant}` : 'btn'} onClick=${onClick}>
    ${label}
  </button>`;
}

function post(run, action, body = {}) {
  return api(`/api/runs/${enc(run.id)}/${action}`, {
    method: 'POST',
    body,
    idempotencyKey: crypto.randomUUID(),
  });
}

/** Approve or reject one task (also used by the task detail). */
export function decide(model, run, task, decision) {
  const approve = decision === 'approve';
  return confirmAction({
    title: `${approve ? 'Approve' : 'Reject'} “${task.task ?? task.name}”`,
    body: html`<p class="instructions">${task.instructions ?? task.awaiting?.instructions ?? ''}</p>
      <p class="muted small">
        ${approve ? 'The task succeeds and the workflow goes on.' : 'The task fails with HITL_REJECTED; its dependents are skipped.'}
        A task is decided once; the decision goes in the audit trail.
      </p>`,
    confirmLabel: approve ? 'Approve' : 'Reject',
    danger: !approve,
    fields: [
      { name: 'comment', label: 'Comment', type: 'textarea' },
      ...(approve
        ? [
            {
              name: 'response',
              label: 'Response (JSON, optional)',
              type: 'json',
              help: 'Needed when the approval has a response_schema.',
            },
          ]
        : []),
    ],
    action: async (v) => {
      const r = await api(`/api/runs/${enc(run.id)}/tasks/${enc(task.task ?? task.name)}/${decision}`, {
        method: 'POST',
        body: v,
        idempotencyKey: crypto.randomUUID(),
      });
      notify(`${approve ? 'Approved' : 'Rejected'} ${task.task ?? task.name}`, 'ok');
      void model.loadRun(true);
      void model.loadTasks();
      return r;
    },
  });
}

export function Controls({ model, run: r }) {
  const circle = r.circle.slug;
  const exec = can('execute', circle);
  const s = r.status;
  const terminal = isTerminal(s);
  const after = (label) => (res) => {
    notify(label, 'ok');
    void model.loadRun(true);
    return res;
  };
  const estimate = r.credits_reserved
    ? html` It reserved <strong>${credits(r.credits_reserved)}</strong> credits last time.`
    : null;

  const actions = [];
  if (exec && (s === 'queued' || s === 'running') && r.kind !== 'invoke')
    actions.push(
      button('Pause', '', () =>
        post(r, 'pause').then(after('Paused: running items finish, no new one starts'), (e) =>
          notify(`${e.code}: ${e.message}`, 'error', 7000),
        ),
      ),
    );
  if (exec && s === 'paused')
    actions.push(
      button('Resume…', 'primary', () =>
        confirmAction({
          title: 'Resume this run?',
          body: html`<p>
            Its ${r.items_pending} pending items start again and are charged as they succeed.
          </p>`,
          cost: true,
          confirmLabel: 'Resume',
          action: () => post(r, 'resume').then(after('Resumed')),
        }),
      ),
    );
  if (exec && !terminal)
    actions.push(
      button('Cancel…', 'danger', () =>
        confirmAction({
          title: 'Cancel this run?',
          body: html`<p>
            Running work is stopped, pending items are cancelled and the run's reservation is released. This
            cannot be undone.
          </p>`,
          danger: true,
          confirmLabel: 'Cancel run',
          fields: [{ name: 'reason', label: 'Reason (optional)' }],
          action: (v) => post(r, 'cancel', v.reason ? { reason: v.reason } : {}).then(after('Cancelled')),
        }),
      ),
    );
  if (exec && (s === 'completed' || s === 'failed') && r.items_failed > 0)
    actions.push(
      button('Retry failed…', '', () =>
        confirmAction({
          title: `Retry the ${r.items_failed} failed ${r.kind === 'workflow' ? 'tasks' : 'items'}?`,
          body: html`<p>They run again in this run (attempt + 1); each is charged if it succeeds.</p>`,
          cost: true,
          confirmLabel: 'Retry failed',
          fields: [
            {
              name: 'definition',
              label: 'Definition',
              type: 'select',
              options: ['pinned', 'latest'],
              help: 'pinned: the version this run was created with; latest: the element as it is now.',
            },
          ],
          action: (v) =>
            post(r, 'retry-failed', { definition: v.definition ?? 'pinned' }).then((res) => {
              notify(res.retried ? `Retrying ${res.retried}` : res.message, 'ok');
              void model.loadRun(true);
              return res;
            }),
        }),
      ),
    );
  if (exec && terminal)
    actions.push(
      button('Rerun…', '', () =>
        confirmAction({
          title: 'Rerun with the same inputs?',
          body: html`<p>A new run of the same element and inputs.${estimate}</p>`,
          cost: true,
          confirmLabel: 'Rerun',
          action: async () => {
            const next = await post(r, 'rerun');
            notify('Rerun started', 'ok');
            navigate(paths.run(next.id));
            return next;
          },
        }),
      ),
      button('Replay…', '', () =>
        confirmAction({
          title: 'Replay this run?',
          body: html`<p>
            A new run of the recorded input on the definitions of this run's snapshot, whatever changed
            since.${estimate}
          </p>`,
          cost: true,
          confirmLabel: 'Replay',
          fields: [
            {
              name: 'policy',
              label: 'Policy',
              type: 'select',
              options: ['strict', 'permissive'],
              help: 'strict refuses to repeat a side effect unless a policy permits the replay.',
            },
            ...(r.kind === 'workflow'
              ? [
                  {
                    name: 'from_task',
                    label: 'From step (optional)',
                    help: 'Reuse the recorded outputs of the steps before it.',
                  },
                ]
              : []),
          ],
          action: async (v) => {
            const next = await post(r, 'replay', v);
            notify('Replay started', 'ok');
            navigate(paths.run(next.run_id));
            return next;
          },
        }),
      ),
    );

  const waiting = r.awaiting_approval ?? [];
  return html`<div class="controls-wrap">
    ${
      waiting.length
        ? html`<section class="approval card" aria-label="Waiting for approval" data-testid="approvals">
            ${waiting.map(
              (a) =>
                html`<div class="approval-row">
                  <div>
                    <strong>Waiting for approval:</strong> <span class="mono">${a.task}</span>${' '}
                    <span class="muted small">
                      (role ${a.role}${a.deadline ? `, until ${dateTime(a.deadline)}` : ''})</span
                    >
                    <p class="instructions">${a.instructions}</p>
                  </div>
                  ${
                    can(a.role, circle)
                      ? html`<div class="btn-row">
                          <button
                            type="button"
                            class="btn primary"
                            onClick=${() => decide(model, r, a, 'approve')}
                          >
                            Approve…
                          </button>
                          <button
                            type="button"
                            class="btn danger"
                            onClick=${() => decide(model, r, a, 'reject')}
                          >
                            Reject…
                          </button>
                        </div>`
                      : html`<p class="muted small">
                          Your token's role cannot decide it (${a.role} needed).
                        </p>`
                  }
                </div>`,
            )}
          </section>`
        : null
    }
    ${
      actions.length
        ? html`<div class="controls" role="toolbar" aria-label="Run controls">${actions}</div>`
        : !exec
          ? html`<p class="muted small">Read-only token: run controls need the execute role.</p>`
          : null
    }
  </div>`;
}

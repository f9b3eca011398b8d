import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser } from 'playwright-core';
import { freshDb } from '../helpers/db.js';
import { TERMINAL_STATUSES, waitRun } from '../helpers/app.js';
import { launch, newPage, signIn, waitDone, waitStatus, type UiPage } from './browser.js';
import {
  awaitingTask,
  columnRun,
  insertRows,
  seedElements,
  startUiServer,
  trigger,
  type Circle,
  type UiServer,
} from './fixture.js';

/**
 * Issue 14: the run page follows a running batch without a reload — each item that settles (as
 * the API says) shows in the page's counts within 1 s — and cancel and approve work from the UI,
 * checked through the API afterwards; a refusal shows the API's typed error and suggestion.
 * The batch's items are python functions that sleep in the bubblewrap sandbox.
 */
describe('the run page, live', () => {
  let db: Awaited<ReturnType<typeof freshDb>>;
  let s: UiServer;
  let c: Circle;
  let browser: Browser;
  let p: UiPage;

  beforeAll(async () => {
    db = await freshDb('pglite');
    s = await startUiServer(db.db, { concurrency: 4 });
    c = await s.t.circle('live');
    await seedElements(s.t, c);
    browser = await launch();
  }, 180_000);
  afterAll(async () => {
    await browser?.close();
    await s?.close();
    await db?.drop();
  });

  const run = async (id: string) => (await s.t.call('GET', `/api/runs/${id}`)).body;
  const done = (r: any) => r.items_succeeded + r.items_failed;
  /** A batch of `n` slow jobs (keys from `from`), running one at a time, its page open for an execute token. */
  const runningBatchPage = async (n: number, from: number): Promise<string> => {
    await insertRows(
      s.t,
      c,
      'jobs',
      Array.from({ length: n }, (_, k) => ({ n: from + k, ms: 1500, fail: false })),
    );
    const id = await columnRun(s.t, c, 'jobs', 'out', { rows: 'empty', concurrency: 1 });
    await waitRun(s.t, id, c.tokens.admin, { done: (r) => r.status === 'running' });
    p = await newPage(browser);
    await signIn(p, s.url, c.tokens.execute);
    await p.page.goto(`${s.url}/runs/${id}`);
    return id;
  };

  it('shows a running batch’s status and counts change within 1 s of each change, without a reload', async () => {
    await insertRows(
      s.t,
      c,
      'jobs',
      Array.from({ length: 8 }, (_, n) => ({ n, ms: 900, fail: false })),
    );
    const id = await columnRun(s.t, c, 'jobs', 'out', { concurrency: 1 });
    p = await newPage(browser);
    await signIn(p, s.url, c.tokens.execute);
    let navigations = 0;
    p.page.on('framenavigated', (f) => {
      if (f === p.page.mainFrame()) navigations++;
    });
    await p.page.goto(`${s.url}/runs/${id}`);
    const counts = p.page.getByTestId('run-counts');
    await counts.waitFor();
    const loads = navigations;
    const shown = async () => Number(await counts.getAttribute('data-done'));

    // Each time the API's count moves, the page must show it within 1 s.
    const lags: number[] = [];
    let seen = done(await run(id));
    const deadline = Date.now() + 120_000;
    while (lags.length < 3) {
      if (Date.now() > deadline)
        throw new Error(`the batch did not progress: ${JSON.stringify(await run(id))}`);
      const r = await run(id);
      if (TERMINAL_STATUSES.includes(r.status) && done(r) === seen)
        throw new Error(`the run ended before the page was checked: ${r.status}, ${JSON.stringify(r.error)}`);
      if (done(r) === seen) {
        await new Promise((res) => setTimeout(res, 10));
        continue;
      }
      const changed = Date.now();
      seen = done(r);
      await waitDone(p.page, seen);
      lags.push(Date.now() - changed);
    }
    expect(await p.page.getByTestId('run-status').getAttribute('data-status')).toBe('running');
    // The change is in the page within 1 s of the API having it (the stream, or polling every second).
    if (process.env.CAIRN_UI_VERBOSE) console.log('stream lags (ms):', lags);
    expect(Math.max(...lags), `lags ${lags.join(', ')} ms`).toBeLessThanOrEqual(1000);
    expect(await shown()).toBeGreaterThanOrEqual(3);

    // The end: succeeded, every count, still without a reload.
    const final = await waitRun(s.t, id, c.tokens.admin, { ms: 120_000 });
    const ended = Date.now();
    expect(final.status).toBe('succeeded');
    await waitStatus(p.page, 'succeeded');
    expect(Date.now() - ended).toBeLessThanOrEqual(1000);
    expect(await shown()).toBe(8);
    expect(navigations).toBe(loads);
    // The items' rows followed too.
    await p.page.locator('.vrow .status', { hasText: 'succeeded' }).nth(7).waitFor();
    expect(p.errors).toEqual([]);
    await p.close();
  }, 180_000);

  it('falls back to polling every second when the server has no event stream (404)', async () => {
    await insertRows(
      s.t,
      c,
      'jobs',
      // Long enough (8 × 0.9 s) that a loaded machine still signs in and opens the page while it runs.
      Array.from({ length: 8 }, (_, n) => ({ n: 50 + n, ms: 900, fail: false })),
    );
    const id = await columnRun(s.t, c, 'jobs', 'out', { rows: 'empty', concurrency: 1 });
    p = await newPage(browser);
    await signIn(p, s.url, c.tokens.read);
    await p.page.route('**/api/runs/*/events', (route) =>
      route.fulfill({
        status: 404,
        contentType: 'application/json',
        body: JSON.stringify({
          error: { code: 'ROUTE_NOT_FOUND', class: 'not_found', message: 'No route.' },
        }),
      }),
    );
    p.expectError(/404/);
    await p.page.goto(`${s.url}/runs/${id}`);
    await p.page.locator('.live-badge', { hasText: 'polling' }).waitFor();
    let seen = done(await run(id));
    const lags: number[] = [];
    while (lags.length < 2) {
      const r = await run(id);
      if (TERMINAL_STATUSES.includes(r.status) && done(r) === seen)
        throw new Error(`the run ended before the page was checked: ${r.status}, ${JSON.stringify(r.error)}`);
      if (done(r) === seen) {
        await new Promise((res) => setTimeout(res, 10));
        continue;
      }
      const changed = Date.now();
      seen = done(r);
      await waitDone(p.page, seen);
      lags.push(Date.now() - changed);
    }
    // A poll a second, plus its request.
    expect(Math.max(...lags), `lags ${lags.join(', ')} ms`).toBeLessThanOrEqual(1600);
    await waitRun(s.t, id, c.tokens.admin, { ms: 60_000 });
    await p.page.getByTestId('run-status').getByText('succeeded').waitFor({ timeout: 5_000 });
    expect(p.errors).toEqual([]);
    await p.close();
  }, 120_000);

  it('pauses a running batch and resumes it (confirmed: it costs credits) from the page', async () => {
    await insertRows(
      s.t,
      c,
      'jobs',
      Array.from({ length: 6 }, (_, n) => ({ n: 300 + n, ms: 700, fail: false })),
    );
    const id = await columnRun(s.t, c, 'jobs', 'out', { rows: 'empty', concurrency: 1 });
    await waitRun(s.t, id, c.tokens.admin, { done: (r) => r.status === 'running' });
    p = await newPage(browser);
    await signIn(p, s.url, c.tokens.execute);
    await p.page.goto(`${s.url}/runs/${id}`);
    await p.page.getByRole('button', { name: 'Pause' }).click();
    await waitStatus(p.page, 'paused');
    expect((await run(id)).status).toBe('paused');
    await p.page.getByRole('button', { name: 'Resume…' }).click();
    const dialog = p.page.getByRole('dialog');
    await dialog.getByText('can cost credits').waitFor();
    await dialog.getByRole('button', { name: 'Resume', exact: true }).click();
    await dialog.waitFor({ state: 'hidden' });
    expect(['queued', 'running']).toContain((await run(id)).status);
    const final = await waitRun(s.t, id, c.tokens.admin, { ms: 60_000 });
    // Every item ran, the one running at the pause included (test/batch/pause-resume.test.ts).
    expect(final.items_failed).toBe(0);
    expect(final.items_succeeded).toBe(final.items_total);
    expect(final.items_pending).toBe(0);
    const actions = (await s.t.call('GET', `/api/runs/${id}/audit`)).body.events
      .filter((e: any) => e.type === 'control')
      .map((e: any) => e.data.action);
    expect(actions).toEqual(['pause', 'resume']);
    await waitStatus(p.page, final.status);
    expect(p.errors).toEqual([]);
    await p.close();
  }, 120_000);

  it('cancels a running batch from the page (confirmed in a dialog); the API says cancelled', async () => {
    const id = await runningBatchPage(12, 100);
    await p.page.getByRole('button', { name: 'Cancel…' }).click();
    const dialog = p.page.getByRole('dialog');
    await dialog.getByText('Cancel this run?').waitFor();
    // Esc closes it and nothing happens.
    await p.page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
    expect((await run(id)).status).toBe('running');

    await p.page.getByRole('button', { name: 'Cancel…' }).click();
    await dialog.getByLabel('Reason (optional)').fill('not needed any more');
    await dialog.getByRole('button', { name: 'Cancel run' }).click();
    await dialog.waitFor({ state: 'hidden' });
    const after = await waitRun(s.t, id, c.tokens.admin);
    expect(after.status).toBe('cancelled');
    const audit = (await s.t.call('GET', `/api/runs/${id}/audit`)).body.events;
    const cancel = audit.find((e: any) => e.to_status === 'cancelled');
    expect(cancel.data.reason ?? JSON.stringify(cancel.data)).toContain('not needed any more');
    expect((await s.t.call('GET', `/api/runs/${id}/ledger`)).body.totals.held).toBe(0);
    await p.page.getByTestId('run-status').getByText('cancelled').waitFor();
    expect(await p.page.getByRole('button', { name: 'Cancel…' }).count()).toBe(0);
    expect(p.errors).toEqual([]);
    await p.close();
  }, 120_000);

  it('shows a refused control as the typed error with its suggestion', async () => {
    const id = await runningBatchPage(4, 200);
    await p.page.getByRole('button', { name: 'Cancel…' }).click();
    const dialog = p.page.getByRole('dialog');
    await dialog.getByText('Cancel this run?').waitFor();
    // Someone else cancels it meanwhile: the page's cancel is refused, typed.
    expect((await s.t.call('POST', `/api/runs/${id}/cancel`, {})).status).toBe(200);
    p.expectError(/409/);
    await dialog.getByRole('button', { name: 'Cancel run' }).click();
    await dialog.locator('.error-box').getByText('RUN_ALREADY_FINISHED').waitFor();
    expect(await dialog.locator('.suggestion').innerText()).toMatch(/\w/);
    await dialog.getByRole('button', { name: 'Cancel', exact: true }).click();
    await dialog.waitFor({ state: 'hidden' });
    await p.page.getByTestId('run-status').getByText('cancelled').waitFor();
    expect(p.errors).toEqual([]);
    await p.close();
  }, 120_000);

  it('approves a task that waits for approval from the page; the API says approved and the run goes on', async () => {
    const id = await trigger(s.t, c, 'enrich', { n: 4 });
    await awaitingTask(s.t, id, 'sign-off', c.tokens.admin);
    p = await newPage(browser);
    await signIn(p, s.url, c.tokens.execute);
    await p.page.goto(`${s.url}/runs/${id}`);
    const waiting = p.page.getByTestId('approvals');
    await waiting.getByText('Check the numbers, then approve.').waitFor();
    await p.page.locator('svg.graph g.node.s-awaiting', { hasText: 'sign-off' }).waitFor();
    await waiting.getByRole('button', { name: 'Approve…' }).click();
    const dialog = p.page.getByRole('dialog');
    await dialog.getByLabel('Comment').fill('numbers check out');
    await dialog.getByRole('button', { name: 'Approve', exact: true }).click();
    await dialog.waitFor({ state: 'hidden' });

    const task = (await s.t.call('GET', `/api/runs/${id}/tasks/sign-off`)).body;
    expect(task.decision).toMatchObject({ decision: 'approved', comment: 'numbers check out' });
    expect(task.decision.approver).toMatch(/^token:/);
    const final = await waitRun(s.t, id, c.tokens.admin);
    expect(final.status).toBe('succeeded');
    // The page follows: the run succeeds and every step of the DAG turns green.
    await p.page.getByTestId('run-status').getByText('succeeded').waitFor({ timeout: 10_000 });
    await p.page.locator('svg.graph g.node.s-succeeded', { hasText: 'finish' }).waitFor({ timeout: 10_000 });
    expect(await p.page.getByTestId('approvals').count()).toBe(0);
    expect(p.errors).toEqual([]);
    await p.close();
  }, 120_000);
});

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser } from 'playwright-core';
import { freshDb } from '../helpers/db.js';
import { axe, launch, newPage, signIn, type UiPage } from './browser.js';
import {
  invoke,
  seedElements,
  seedRuns,
  startUiServer,
  trigger,
  type Circle,
  type UiServer,
} from './fixture.js';
import { waitRun } from '../helpers/app.js';

/**
 * Issue 14, the web UI in a real browser (Debian's Chromium): the server serves it with a strict
 * CSP; sign-in keeps the token out of URLs; the run list's filters; an invoke's web_url opens its
 * run page; the element, wallet and workflow pages render; no page logs a console error; and
 * axe-core finds no serious or critical accessibility violation on any of them.
 */
describe('the web UI', () => {
  let db: Awaited<ReturnType<typeof freshDb>>;
  let s: UiServer;
  let c: Circle;
  let runs: Awaited<ReturnType<typeof seedRuns>>;
  let browser: Browser;
  let p: UiPage;

  beforeAll(async () => {
    db = await freshDb('pglite');
    s = await startUiServer(db.db);
    c = await s.t.circle('acme');
    await seedElements(s.t, c);
    runs = await seedRuns(s.t, c);
    browser = await launch();
  }, 180_000);
  afterAll(async () => {
    await browser?.close();
    await s?.close();
    await db?.drop();
  });

  it('serves the UI at / with a strict CSP, the vendor modules it needs and nothing else of node_modules', async () => {
    const res = await fetch(`${s.url}/runs/${runs.batch}`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/html/);
    const csp = res.headers.get('content-security-policy') ?? '';
    expect(csp).toMatch(/script-src 'self' 'sha256-[A-Za-z0-9+/=]+'(;|$)/);
    expect(csp).toContain("default-src 'none'");
    expect(csp).not.toContain('unsafe-inline');
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
    const html = await res.text();
    expect(html).toContain('<script type="importmap">');
    expect(html).not.toContain('cairn:importmap');
    for (const url of ['/', '/sign-in', '/circles', '/circles/acme/runs', '/circles/acme/elements/add-one'])
      expect((await fetch(s.url + url)).status, url).toBe(200);
    const vendor = await fetch(`${s.url}/ui/vendor/preact.mjs`);
    expect(vendor.status).toBe(200);
    expect(vendor.headers.get('content-type')).toMatch(/javascript/);
    // Only the allowlist: no path into node_modules, no traversal, no raw template.
    for (const url of [
      '/ui/vendor/preact/package.json',
      '/ui/vendor/../package.json',
      '/ui/../package.json',
      '/ui/node_modules/preact/package.json',
    ])
      expect((await fetch(s.url + url)).status, url).toBe(404);
    expect(await (await fetch(`${s.url}/ui/index.html`)).text()).not.toContain('cairn:importmap');
    // The API around it is unchanged: JSON 404s, health, the OpenAPI document.
    const missing = await fetch(`${s.url}/api/no/such/route`);
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as any).error.code).toBe('ROUTE_NOT_FOUND');
    expect((await fetch(`${s.url}/healthz`)).status).toBe(200);
    expect(((await (await fetch(`${s.url}/openapi.json`)).json()) as any).paths['/api/whoami']).toBeDefined();
  });

  it('signs in with a token (a wrong one shows the typed error), keeps it out of URLs, signs out', async () => {
    p = await newPage(browser);
    const { page } = p;
    const urls: string[] = [];
    page.on('request', (r) => urls.push(r.url()));
    await page.goto(`${s.url}/`);
    await page.waitForSelector('#token');
    p.expectError(/401/);
    await page.fill('#token', 'cairn_not-a-token');
    await page.click('form button[type=submit]');
    await page.getByText('UNAUTHENTICATED').waitFor();
    expect(await page.locator('.error-box').innerText()).toMatch(/unknown or revoked/);

    await page.fill('#token', c.tokens.read);
    await page.click('form button[type=submit]');
    // A circle token goes to its circle.
    await page.waitForURL(`${s.url}/circles/acme`);
    await page.getByRole('link', { name: 'add-one' }).first().waitFor();
    expect(await page.locator('.role-badge').innerText()).toBe('read');
    // The token is in sessionStorage (this tab), never in a URL, a cookie or localStorage.
    expect(await page.evaluate("sessionStorage.getItem('cairn.token')")).toBe(c.tokens.read);
    expect(await page.evaluate('localStorage.length')).toBe(0);
    expect((await p.context.cookies()).length).toBe(0);
    expect(urls.some((u) => u.includes(c.tokens.read))).toBe(false);
    expect(urls.some((u) => u.includes('cairn_not-a-token'))).toBe(false);
    // Health from each element's stats op.
    await page.locator('tr', { hasText: 'add-one' }).locator('.health').getByText('warning').waitFor();

    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.waitForURL(`${s.url}/sign-in`);
    expect(await page.evaluate("sessionStorage.getItem('cairn.token')")).toBeNull();
    expect(p.errors).toEqual([]);
    await p.close();
  });

  it("a read token sees the run page without controls; the API's role decides, the UI follows", async () => {
    p = await newPage(browser);
    await signIn(p, s.url, c.tokens.read);
    await p.page.goto(`${s.url}/runs/${runs.workflow}`);
    await p.page.getByText('Waiting for approval:').waitFor();
    expect(await p.page.getByRole('button', { name: /Approve/ }).count()).toBe(0);
    expect(await p.page.getByRole('button', { name: /Cancel/ }).count()).toBe(0);
    await p.page.getByText('Read-only token').waitFor();
    expect(p.errors).toEqual([]);
    await p.close();
  });

  it("an invoke's web_url opens its run page (signing in first keeps the deep link)", async () => {
    const r = await invoke(s.t, c, 'add-one', { params: [41] });
    expect(r.status).toBe('succeeded');
    expect(r.web_url).toBe(`${s.url}/runs/${r.run_id}`);
    p = await newPage(browser);
    await p.page.goto(r.web_url);
    // Not signed in: the form, and back to the run after it.
    await p.page.waitForSelector('#token');
    expect(p.page.url()).toContain(`next=${encodeURIComponent(`/runs/${r.run_id}`)}`);
    await p.page.fill('#token', s.t.admin);
    await p.page.click('form button[type=submit]');
    await p.page.waitForURL(r.web_url);
    const status = p.page.getByTestId('run-status');
    await status.getByText('succeeded').waitFor();
    await p.page.getByRole('heading', { name: /invoke of add-one/i }).waitFor();
    expect(await p.page.locator('.run-facts').innerText()).toMatch(/0\.001\s+used/);
    // The item, its output and evidence.
    await p.page.getByRole('button', { name: 'call' }).click();
    const detail = p.page.getByTestId('detail');
    await detail.getByText('"n": 42').or(detail.getByText('n: 42')).first().waitFor();
    await detail.getByText('SelectStmt').waitFor();
    // Input & output, ledger and audit tabs.
    await p.page.getByRole('tab', { name: 'Input & output' }).click();
    await p.page.getByText('params:').waitFor();
    await p.page.getByRole('tab', { name: 'Ledger' }).click();
    await p.page.locator('.totals').getByText('captured').waitFor();
    await p.page.getByRole('tab', { name: /Audit/ }).click();
    await p.page.locator('table.audit').getByText('status').first().waitFor();
    expect(await axe(p.page)).toEqual([]);
    expect(p.errors).toEqual([]);
    await p.close();
  });

  it('filters the run list by status, kind, element, trigger and time, and pages with the cursor', async () => {
    p = await newPage(browser);
    await signIn(p, s.url, s.t.admin);
    const { page } = p;
    const count = async () => page.locator('table.runs-table tbody tr').count();
    const statuses = async () => page.locator('table.runs-table tbody tr .status').allInnerTexts();
    const api = async (q: string) =>
      (await s.t.call('GET', `/api/acme/runs?limit=500&${q}`)).body.runs.length;
    await page.goto(`${s.url}/circles/acme/runs`);
    await page.locator('table.runs-table tbody tr').first().waitFor();
    expect(await count()).toBeGreaterThan(10);

    await page.selectOption('select[name=status]', 'failed');
    await page.waitForURL(/status=failed/);
    const failed = await api('status=failed');
    expect(failed).toBeGreaterThanOrEqual(2);
    await expect.poll(statuses).toEqual(Array(failed).fill('failed'));
    await page.selectOption('select[name=element]', 'slow-step');
    await expect.poll(count).toBe(1);
    expect(await page.locator('table.runs-table tbody tr').innerText()).toContain('slow-step');
    await page.getByRole('button', { name: 'Clear filters' }).click();

    for (const kind of ['batch', 'workflow']) {
      await page.selectOption('select[name=kind]', kind);
      const n = await api(`kind=${kind}`);
      expect(n).toBeGreaterThanOrEqual(2);
      await expect.poll(count).toBe(n);
      expect(await page.locator('table.runs-table tbody').innerText()).not.toMatch(
        /\binvoke\b\s+(api|manual|workflow)/,
      );
    }
    await page.selectOption('select[name=kind]', '');
    await page.selectOption('select[name=trigger]', 'manual');
    const manual = await api('trigger=manual');
    expect(manual).toBeGreaterThan(0);
    await expect.poll(count).toBe(manual);
    await page.selectOption('select[name=trigger]', '');

    // Time: everything is from the last minutes; "between" a window in the past finds nothing.
    await page.selectOption('select[name=range]', '1h');
    await expect.poll(count).toBeGreaterThan(10);
    await page.selectOption('select[name=range]', 'custom');
    await page.fill('input[name=since]', '2020-01-01T00:00');
    await page.fill('input[name=until]', '2020-01-02T00:00');
    await page.locator('input[name=until]').dispatchEvent('change');
    await page.getByText('No runs match.').waitFor();
    await page.getByRole('button', { name: 'Clear filters' }).click();
    await expect.poll(count).toBeGreaterThan(10);

    // A filtered page is a URL: reload keeps it.
    await page.goto(`${s.url}/circles/acme/runs?status=succeeded&kind=invoke&element=add-one`);
    const n = await api('status=succeeded&kind=invoke&element=add-one');
    expect(n).toBeGreaterThan(2);
    await expect.poll(statuses).toEqual(Array(n).fill('succeeded'));

    // Cursor paging: 50 a page.
    for (let i = 0; i < 35; i++) await invoke(s.t, c, 'double-it', { params: [i] });
    const total = await api('');
    expect(total).toBeGreaterThan(50);
    await page.goto(`${s.url}/circles/acme/runs`);
    await expect.poll(count).toBe(50);
    const first = await page.locator('table.runs-table tbody tr').first().innerText();
    await page.getByRole('button', { name: 'Older →' }).click();
    await expect.poll(count).toBe(total - 50);
    await page.getByRole('button', { name: '← Newer' }).click();
    await expect.poll(count).toBe(50);
    expect(await page.locator('table.runs-table tbody tr').first().innerText()).toBe(first);
    expect(await axe(page)).toEqual([]);
    expect(p.errors).toEqual([]);
    await p.close();
  });

  it('the run list follows new runs live (the circle stream), without a reload', async () => {
    p = await newPage(browser);
    await signIn(p, s.url, c.tokens.read);
    const { page } = p;
    await page.goto(`${s.url}/circles/acme/runs?element=greet-sql`);
    await page.locator('.live-badge', { hasText: /^Live/ }).waitFor();
    const rows = page.locator('table.runs-table tbody tr');
    await rows.first().waitFor();
    const before = await rows.count();
    const loads: string[] = [];
    page.on('framenavigated', (f) => f === page.mainFrame() && loads.push(f.url()));
    const r = await invoke(s.t, c, 'greet-sql', { params: ['Live'] });
    await page.locator(`a[href="/runs/${r.run_id}"]`).waitFor({ timeout: 10_000 });
    expect(await rows.count()).toBe(before + 1);
    expect(loads).toEqual([]);
    expect(p.errors).toEqual([]);
    await p.close();
  });

  it('shows elements, an element (spec, versions with a diff, runs, stats), the wallet and a workflow DAG', async () => {
    p = await newPage(browser);
    await signIn(p, s.url, s.t.admin);
    const { page } = p;
    await page.goto(`${s.url}/circles/acme`);
    await page.locator('tr', { hasText: 'slow-step' }).getByText('python').waitFor();
    await page.locator('tr', { hasText: 'slow-step' }).locator('.health').getByText('error').waitFor();
    expect(await axe(page)).toEqual([]);

    await page.getByRole('link', { name: 'add-one' }).first().click();
    await page.waitForURL(/\/elements\/add-one$/);
    await page.getByText('query: "select $1::int + 1 as n, now() as at"').waitFor();
    await page.locator('.period').first().getByText('Runs').waitFor();
    await page.getByRole('tab', { name: /Versions/ }).click();
    await page.getByText('say when').waitFor();
    // v2 → v3 changed the query: one line out, one in.
    const diff = page.locator('pre.diff');
    await diff.locator('.dl.del', { hasText: 'select $1::int + 1 as n"' }).waitFor();
    await diff.locator('.dl.add', { hasText: 'now() as at' }).waitFor();
    await page.getByRole('tab', { name: 'Runs' }).click();
    await page.locator('table.runs-table tbody tr').first().waitFor();
    expect(await axe(page)).toEqual([]);

    await page.goto(`${s.url}/circles/acme/wallet`);
    await page.getByText('welcome credits').waitFor();
    await page.locator('table').nth(1).getByText('capture').first().waitFor();
    expect(await page.locator('.stat').first().innerText()).toMatch(/Available\s+[\d,.]+\s+credits/);
    expect(await axe(page)).toEqual([]);

    await page.goto(`${s.url}/runs/${runs.workflow}`);
    const dag = page.locator('svg.graph');
    await dag.locator('g.node', { hasText: 'sign-off' }).waitFor();
    expect(await dag.locator('g.node.s-awaiting').count()).toBe(1);
    expect(await dag.locator('g.node.s-succeeded').count()).toBeGreaterThanOrEqual(5);
    expect(await dag.locator('path.edge').count()).toBeGreaterThanOrEqual(8);
    // Selecting a step opens it; the lineage tab draws the same run's graph.
    await dag.locator('g.node', { hasText: 'double' }).click();
    await page.getByTestId('detail').getByText('double-it').waitFor();
    await page.getByRole('tab', { name: 'Lineage' }).click();
    await page.locator('svg.graph g.node', { hasText: 'parameters' }).waitFor();
    await page.getByRole('tab', { name: /Timeline/ }).click();
    await page.locator('.vrow', { hasText: 'greet[2]' }).waitFor();
    expect(await axe(page)).toEqual([]);

    await page.goto(`${s.url}/circles`);
    await page.getByRole('link', { name: 'acme' }).waitFor();
    expect(await axe(page)).toEqual([]);
    expect(p.errors).toEqual([]);
    await p.close();
  });

  it('folds a fan-out of 20 tasks in the timeline and the graph', async () => {
    const id = await trigger(s.t, c, 'fan', {});
    expect((await waitRun(s.t, id, s.t.admin)).status).toBe('succeeded');
    p = await newPage(browser);
    await signIn(p, s.url, s.t.admin);
    const { page } = p;
    await page.goto(`${s.url}/runs/${id}`);
    await page.locator('svg.graph g.node', { hasText: 'each ×20' }).waitFor();
    expect(await page.locator('svg.graph g.node', { hasText: 'each[3]' }).count()).toBe(0);
    await page.getByRole('tab', { name: /Timeline/ }).click();
    const fold = page.getByRole('button', { name: 'Unfold 20 tasks of each' });
    await fold.waitFor();
    expect(await fold.getAttribute('aria-expanded')).toBe('false');
    expect(await page.locator('.vrow[data-label="each[0]"]').count()).toBe(0);
    await fold.click();
    await page.locator('.vrow[data-label="each[19]"]').waitFor();
    // The keyboard folds it again (← on the step's row).
    await page.locator('.vrow[data-label="each"] button.rowkey').focus();
    await page.keyboard.press('ArrowLeft');
    await page.locator('.vrow[data-label="each[0]"]').waitFor({ state: 'detached' });
    await page.locator('.vrow[data-label="sum"]').waitFor();
    expect(await axe(page)).toEqual([]);
    expect(p.errors).toEqual([]);
    await p.close();
  });

  it('shows an item’s logs, error and evidence; reruns, replays and retries failed items from the page', async () => {
    p = await newPage(browser);
    await signIn(p, s.url, c.tokens.execute);
    const { page } = p;
    await page.goto(`${s.url}/runs/${runs.python}`);
    await page.locator('.vrow[data-label="#1"] button.rowkey').click();
    const detail = page.getByTestId('detail');
    await detail.locator('.log-lines').getByText('working on 0').waitFor();
    await detail.getByText('Peak memory').waitFor();
    await detail.getByText('bubblewrap').waitFor();
    await page.locator('.vrow[data-label="#5"] button.rowkey').click();
    await detail.locator('.error-box .error-message').getByText('ValueError: n=4 is not allowed').waitFor();
    // The stack, folded under the error.
    await detail.locator('.error-box summary', { hasText: 'Stack' }).click();
    await detail.locator('.error-box pre').getByText('Traceback').waitFor();
    expect(await detail.locator('.error-box .suggestion').innerText()).toMatch(/\w/);

    // Retry failed: confirmed (it costs credits), the same run goes again.
    const before = await s.t.call('GET', `/api/runs/${runs.python}/items?status=failed`);
    const attempts = before.body.items.map((i: any) => i.attempt_count);
    await page.getByRole('button', { name: 'Retry failed…' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByText('can cost credits').waitFor();
    await dialog.getByRole('button', { name: 'Retry failed', exact: true }).click();
    await dialog.waitFor({ state: 'hidden' });
    const retried = await waitRun(s.t, runs.python, s.t.admin, {
      done: (r) => r.status === 'completed' && r.items_failed === 2 && r.items_pending === 0,
      ms: 60_000,
    });
    expect(retried.items_succeeded).toBe(12);
    const after = await s.t.call('GET', `/api/runs/${runs.python}/items?status=failed`);
    expect(after.body.items.map((i: any) => i.attempt_count)).toEqual(attempts.map((a: number) => a + 1));
    const audit = (await s.t.call('GET', `/api/runs/${runs.python}/audit`)).body.events;
    expect(audit.some((e: any) => e.from_status === 'completed' && e.to_status === 'queued')).toBe(true);

    // Rerun: a new run of the same input; the page goes to it.
    const one = await invoke(s.t, c, 'add-one', { params: [7] });
    await page.goto(one.web_url);
    await page.getByRole('button', { name: 'Rerun…' }).click();
    await dialog.getByRole('button', { name: 'Rerun', exact: true }).click();
    await page.waitForURL((u) => u.pathname.startsWith('/runs/') && !u.pathname.endsWith(one.run_id));
    const rerunId = page.url().split('/runs/')[1]!.split('?')[0]!;
    const rerun = await waitRun(s.t, rerunId, s.t.admin);
    expect(rerun).toMatchObject({ rerun_of: one.run_id, status: 'succeeded', input: { params: [7] } });
    expect(rerun.trigger.type).toBe('rerun');
    await page.getByTestId('run-status').getByText('succeeded').waitFor();

    // Replay, strict: a read-only query repeats no side effect.
    await page.goto(one.web_url);
    await page.getByRole('button', { name: 'Replay…' }).click();
    await dialog.getByLabel('Policy').selectOption('strict');
    await dialog.getByRole('button', { name: 'Replay', exact: true }).click();
    await page.waitForURL((u) => u.pathname.startsWith('/runs/') && !u.pathname.endsWith(one.run_id));
    const replayId = page.url().split('/runs/')[1]!.split('?')[0]!;
    expect(await waitRun(s.t, replayId, s.t.admin)).toMatchObject({
      replay_of: one.run_id,
      status: 'succeeded',
    });
    expect(p.errors).toEqual([]);
    await p.close();
  }, 120_000);

  it('shows a 403 as the typed error and its suggestion, in the dialog that asked', async () => {
    p = await newPage(browser);
    await signIn(p, s.url, c.tokens.execute);
    const { page } = p;
    const one = await invoke(s.t, c, 'add-one', { params: [3] });
    // The role's refusal as the API words it (a policy or a role change the page cannot know of).
    await page.route('**/api/runs/*/rerun', (route) =>
      route.fulfill({
        status: 403,
        contentType: 'application/json',
        body: JSON.stringify({
          error: {
            code: 'FORBIDDEN',
            class: 'permission',
            message: 'This needs the execute role; the token has read.',
            retryable: false,
            _suggestion: 'Create a token with role execute or higher: cairn tokens create --role execute.',
          },
        }),
      }),
    );
    p.expectError(/403/);
    await page.goto(one.web_url);
    await page.getByRole('button', { name: 'Rerun…' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByRole('button', { name: 'Rerun', exact: true }).click();
    const box = dialog.locator('.error-box');
    await box.getByText('FORBIDDEN').waitFor();
    expect(await box.innerText()).toContain('This needs the execute role; the token has read.');
    expect(await box.locator('.suggestion').innerText()).toContain('cairn tokens create --role execute');
    expect(page.url()).toBe(one.web_url);
    expect(p.errors).toEqual([]);
    await p.close();
  });

  it('is correct in dark mode: the same pages pass axe with the dark colours', async () => {
    p = await newPage(browser, { dark: true });
    await signIn(p, s.url, s.t.admin);
    const { page } = p;
    expect(await page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")).toBe(true);
    for (const [url, ready] of [
      [`/runs/${runs.python}?item=`, '.vrow[data-label="#3"]'],
      [`/runs/${runs.workflow}`, 'svg.graph g.node.s-awaiting'],
      ['/circles/acme/runs', 'table.runs-table tbody tr'],
      ['/circles/acme/wallet', '.stat'],
      ['/circles/acme', 'tr .health'],
    ] as const) {
      await page.goto(s.url + url);
      await page.locator(ready).first().waitFor();
      expect(await axe(page), url).toEqual([]);
    }
    // The page background really is dark.
    const bg = await page.evaluate('getComputedStyle(document.body).backgroundColor');
    expect(bg).toBe('rgb(14, 17, 22)');
    expect(p.errors).toEqual([]);
    await p.close();
  });

  it('is keyboard-usable: dialogs trap focus and Esc closes them; the timeline moves with arrow keys', async () => {
    p = await newPage(browser);
    await signIn(p, s.url, s.t.admin);
    const { page } = p;
    await page.goto(`${s.url}/runs/${runs.batch}?tab=timeline`);
    await page.locator('.vrow button.rowkey').first().waitFor();
    await page.locator('.vrow button.rowkey').first().focus();
    await page.keyboard.press('Enter');
    await page.getByTestId('detail').getByRole('heading', { name: 'Item #1' }).waitFor();
    await page.locator('.vrow button.rowkey').first().focus();
    await page.keyboard.press('ArrowDown');
    await page.getByTestId('detail').getByRole('heading', { name: 'Item #2' }).waitFor();
    // Focus follows the selection (once the row is rendered).
    await expect.poll(() => page.evaluate('document.activeElement?.textContent')).toContain('#2');

    await page.getByRole('button', { name: 'Rerun…' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByText('Rerun with the same inputs?').waitFor();
    await dialog.getByText('can cost credits').waitFor();
    for (let i = 0; i < 6; i++) {
      await page.keyboard.press('Tab');
      expect(await page.evaluate("Boolean(document.activeElement?.closest('dialog'))")).toBe(true);
    }
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
    expect(p.errors).toEqual([]);
    await p.close();
  });
});

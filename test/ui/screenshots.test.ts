import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import { freshDb } from '../helpers/db.js';
import { ROOT } from '../helpers/bin.js';
import { launch, newPage, signIn, type UiPage } from './browser.js';
import { seedElements, seedRuns, startUiServer, type Circle, type UiServer } from './fixture.js';

/**
 * The README's screenshots (docs/img/*.png) of the main pages, light and one dark. Written only
 * when asked: `scripts/screenshots` (CAIRN_SCREENSHOTS=1), so the suite leaves the tree alone.
 */
const OUT = join(ROOT, 'docs', 'img');

describe.skipIf(!process.env.CAIRN_SCREENSHOTS)('screenshots of the web UI', () => {
  let db: Awaited<ReturnType<typeof freshDb>>;
  let s: UiServer;
  let c: Circle;
  let runs: Awaited<ReturnType<typeof seedRuns>>;
  let browser: Browser;

  beforeAll(async () => {
    mkdirSync(OUT, { recursive: true });
    db = await freshDb('pglite');
    s = await startUiServer(db.db);
    c = await s.t.circle('acme');
    await seedElements(s.t, c);
    runs = await seedRuns(s.t, c);
    browser = await launch();
  }, 240_000);
  afterAll(async () => {
    await browser?.close();
    await s?.close();
    await db?.drop();
  });

  const shot = async (page: Page, name: string) => {
    // Let the last fetches and layout settle (the page keeps its event stream open: never network-idle).
    await page.waitForTimeout(700);
    await page.screenshot({ path: join(OUT, `${name}.png`), animations: 'disabled' });
  };

  const pages = async (p: UiPage, dark: boolean) => {
    const { page } = p;
    const suffix = dark ? '-dark' : '';
    await page.goto(`${s.url}/runs/${runs.python}?item=`);
    await page.locator('.vrow').nth(4).waitFor();
    // Select the first failed item: its error, suggestion, evidence and logs.
    const failed = page.locator('.vrow', { has: page.locator('.status', { hasText: 'failed' }) }).first();
    await failed.locator('button.rowkey').click();
    await page.getByTestId('detail').getByText('ValueError').first().waitFor();
    await shot(page, `run-batch${suffix}`);
    if (dark) return;

    await page.goto(`${s.url}/runs/${runs.workflow}`);
    await page.locator('svg.graph g.node', { hasText: 'sign-off' }).waitFor();
    await shot(page, 'run-workflow');

    await page.goto(`${s.url}/circles/acme/runs`);
    await page.locator('table.runs-table tbody tr').nth(8).waitFor();
    await shot(page, 'run-list');

    await page.goto(`${s.url}/circles/acme`);
    await page.locator('tr', { hasText: 'slow-step' }).locator('.health').getByText('error').waitFor();
    await shot(page, 'elements');

    await page.setViewportSize({ width: 1400, height: 1140 });
    await page.goto(`${s.url}/circles/acme/elements/add-one`);
    await page.getByRole('tab', { name: /Versions/ }).click();
    await page.locator('pre.diff .dl.add').first().waitFor();
    await page.locator('.chart').waitFor();
    await shot(page, 'element');

    await page.setViewportSize({ width: 1400, height: 900 });
    await page.goto(`${s.url}/circles/acme/wallet`);
    await page.getByText('welcome credits').waitFor();
    await shot(page, 'wallet');
  };

  it('saves the main pages, light', async () => {
    const p = await newPage(browser, { width: 1400, height: 900 });
    await signIn(p, s.url, s.t.admin);
    await pages(p, false);
    await p.close();
  }, 120_000);

  it('saves the batch run page, dark', async () => {
    const p = await newPage(browser, { width: 1400, height: 900, dark: true });
    await signIn(p, s.url, s.t.admin);
    await pages(p, true);
    await p.close();
  }, 120_000);
});

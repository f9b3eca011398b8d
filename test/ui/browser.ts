/**
 * The browser side of the UI tests: Debian's Chromium driven by playwright-core, a page that
 * records every console error and uncaught exception, sign-in through the form, and axe-core.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { ROOT } from '../helpers/bin.js';

export const CHROMIUM = process.env.CAIRN_CHROMIUM ?? '/usr/bin/chromium';

export async function launch(): Promise<Browser> {
  if (!existsSync(CHROMIUM))
    throw new Error(`${CHROMIUM} is missing: ./scripts/setup --with-test-deps installs Debian's chromium`);
  return chromium.launch({
    executablePath: CHROMIUM,
    // No user namespaces for Chromium's own sandbox when the tests run as root in a container.
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
  });
}

export interface UiPage {
  page: Page;
  context: BrowserContext;
  /** Console errors and page errors so far (the "no console errors" check). */
  errors: string[];
  /** Errors the test expects (a 401 while signing in with a wrong token), matched and removed. */
  expectError(re: RegExp): void;
  close(): Promise<void>;
}

export async function newPage(
  browser: Browser,
  opts: { dark?: boolean; width?: number; height?: number } = {},
): Promise<UiPage> {
  const context = await browser.newContext({
    viewport: { width: opts.width ?? 1440, height: opts.height ?? 1000 },
    colorScheme: opts.dark ? 'dark' : 'light',
    reducedMotion: 'reduce',
  });
  const page = await context.newPage();
  const errors: string[] = [];
  const expected: RegExp[] = [];
  const record = (text: string) => {
    const i = expected.findIndex((re) => re.test(text));
    if (i >= 0) expected.splice(i, 1);
    else errors.push(text);
  };
  page.on('console', (m) => {
    if (m.type() === 'error') record(`console.error: ${m.text()} (${m.location().url})`);
  });
  page.on('pageerror', (e) => record(`pageerror: ${e.message}\n${e.stack ?? ''}`));
  return {
    page,
    context,
    errors,
    expectError: (re) => expected.push(re),
    close: () => context.close(),
  };
}

/** Signs in through the form (the token goes in the password field, never in a URL). */
export async function signIn(p: UiPage, base: string, token: string, next?: string): Promise<void> {
  await p.page.goto(`${base}/sign-in${next ? `?next=${encodeURIComponent(next)}` : ''}`);
  await p.page.fill('#token', token);
  await p.page.click('form button[type=submit]');
  await p.page.waitForSelector('.topbar .who', { timeout: 20_000 });
}

const AXE = readFileSync(join(ROOT, 'node_modules', 'axe-core', 'axe.min.js'), 'utf8');

/** axe-core's serious and critical violations on the page as it is (WCAG 2 A/AA rules). */
export async function axe(page: Page): Promise<{ id: string; impact: string; nodes: string[] }[]> {
  // addScriptTag with content is an inline script, which the page's CSP refuses: evaluate it instead.
  await page.evaluate(AXE);
  // A string, evaluated in the page (this file is type-checked without the DOM library).
  const r: any = await page.evaluate(`axe.run(document, {
    runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] },
    resultTypes: ['violations'],
  })`);
  return (r.violations as any[])
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => ({
      id: v.id as string,
      impact: v.impact as string,
      nodes: (v.nodes as any[]).slice(0, 5).map((n) => `${n.target.join(' ')}: ${n.failureSummary}`),
    }));
}

/** The page's run counts show at least `n` items done (the run page's data-done), checked every frame. */
export async function waitDone(page: Page, n: number, timeout = 10_000): Promise<void> {
  await page.waitForFunction(
    (k) => Number((globalThis as any).document.querySelector('[data-testid=run-counts]')?.dataset.done) >= k,
    n,
    { timeout, polling: 'raf' },
  );
}

/** The run page shows this status, checked every frame. */
export async function waitStatus(page: Page, status: string, timeout = 10_000): Promise<void> {
  await page.waitForFunction(
    (st) => (globalThis as any).document.querySelector('[data-testid=run-status]')?.dataset.status === st,
    status,
    { timeout, polling: 'raf' },
  );
}

import { it } from 'vitest';
import { freshDb } from '../test/helpers/db.js';
import { waitRun } from '../test/helpers/app.js';
import { launch, newPage, signIn } from '../test/ui/browser.js';
import { columnRun, insertRows, seedElements, startUiServer } from '../test/ui/fixture.js';
import { machine, median, writeSection } from './lib.js';

/**
 * The run page of a 10,000-item batch in headless Chromium (issue 14): time from navigation to
 * the first item rows on screen, against the same page of a 10-item batch, rounds alternating in
 * one browser. Goal: first render ≤ 1 s.
 */
const N = Number(process.env.BENCH_UI_ITEMS ?? 10_000);
const ROUNDS = Number(process.env.BENCH_UI_ROUNDS ?? 5);
const COMMAND = 'npx vitest run --config bench/vitest.config.ts bench/ui.bench.ts';
const f0 = (x: number) => x.toFixed(0);

it(`first render of a ${N}-item batch's run page`, async () => {
  const db = await freshDb('pglite');
  const s = await startUiServer(db.db, { concurrency: 4 });
  const browser = await launch();
  try {
    const c = await s.t.circle('bench-ui');
    await seedElements(s.t, c);
    const ids: Record<'big' | 'small', string> = { big: '', small: '' };
    for (const [name, n] of [
      ['small', 10],
      ['big', N],
    ] as const) {
      await s.t.call(
        'POST',
        `/api/${c.slug}/ops/create`,
        {
          element_type: 'table',
          slug: `t-${name}`,
          spec: {
            fields: { k: { type: 'integer', required: true }, args: { type: 'array' } },
            columns: { r: { element: 'div', input: { params: 'args' }, concurrency: 8 } },
          },
        },
        c.tokens.admin,
      );
      await insertRows(
        s.t,
        c,
        `t-${name}`,
        Array.from({ length: n }, (_, k) => ({ k, args: [k] })),
      );
      ids[name] = await columnRun(s.t, c, `t-${name}`, 'r');
      await waitRun(s.t, ids[name], c.tokens.admin, { ms: 900_000 });
    }
    const p = await newPage(browser);
    await signIn(p, s.url, c.tokens.read);
    const times: Record<'big' | 'small', number[]> = { big: [], small: [] };
    const render = async (id: string) => {
      await p.page.goto('about:blank');
      const t0 = Date.now();
      await p.page.goto(`${s.url}/runs/${id}`);
      await p.page.locator('.vrow[data-label="#1"]').waitFor({ timeout: 60_000 });
      return Date.now() - t0;
    };
    await render(ids.small); // warm the browser's module cache
    for (let r = 0; r < ROUNDS; r++)
      for (const k of r % 2 === 0 ? (['small', 'big'] as const) : (['big', 'small'] as const))
        times[k].push(await render(ids[k]));
    await p.close();
    const big = median(times.big);
    writeSection(
      'ui',
      `## The run page in a browser

Command: \`${COMMAND}\`
Machine: ${machine()}; Debian's Chromium, headless, driven by playwright-core; the app on PGlite in the same process, over
real HTTP on loopback; signed in once, each round navigating from about:blank (modules cached, data not).

| run page | first item row on screen, median of ${ROUNDS} | rounds |
|---|---|---|
| batch of ${N.toLocaleString('en-US')} items | ${f0(big)} ms | ${times.big.map(f0).join(', ')} |
| batch of 10 items (baseline) | ${f0(median(times.small))} ms | ${times.small.map(f0).join(', ')} |

Goal first render ≤ 1 s: ${big <= 1000 ? '✓' : '✗'} (${(big / median(times.small)).toFixed(2)}× the 10-item page: the first page of items is fetched and
drawn, the rest load in the background into a virtualised list).
`,
    );
  } finally {
    await browser.close();
    await s.close();
    await db.drop();
  }
}, 1_200_000);

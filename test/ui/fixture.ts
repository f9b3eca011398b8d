/**
 * The web UI's test server and data: the real app (test/helpers/app.ts) listening on loopback
 * on a real database, and a circle with elements and runs of every kind, made through the API.
 * Shared by the browser tests, the screenshots and `scripts/ui-dev`.
 */
import type { Db } from '../../src/db/types.js';
import { testApp, waitRun, type TestApp } from '../helpers/app.js';

export interface UiServer {
  t: TestApp;
  /** http://127.0.0.1:<port> */
  url: string;
  close(): Promise<void>;
}

/** The app on `db`, listening on an ephemeral loopback port; run web_urls point at it. */
export async function startUiServer(db: Db, opts: Parameters<typeof testApp>[1] = {}): Promise<UiServer> {
  const t = await testApp(db, opts);
  await t.app.listen({ port: 0, host: '127.0.0.1' });
  const addr = t.app.server.address();
  if (!addr || typeof addr === 'string') throw new Error('no address');
  const url = `http://127.0.0.1:${addr.port}`;
  // web_url = CAIRN_PUBLIC_URL or http://host:port: the port is known only now.
  t.deps.config.publicUrl = url;
  return { t, url, close: () => t.close() };
}

export type Circle = Awaited<ReturnType<TestApp['circle']>>;

export async function ok(
  t: TestApp,
  method: string,
  url: string,
  body: unknown,
  token: string,
  headers: Record<string, string> = {},
): Promise<any> {
  const r = await t.call(method, url, body, token, headers);
  if (r.status >= 300) throw new Error(`${method} ${url}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

export async function create(t: TestApp, circle: string, token: string, el: unknown): Promise<any> {
  return ok(t, 'POST', `/api/${circle}/ops/apply`, el, token);
}

/** A python function that sleeps `ms` (from its input) and answers n + 1; fails when fail is true. */
export const SLOW_PY = {
  element_type: 'python',
  slug: 'slow-step',
  name: 'Slow step',
  intention: 'Sleeps a while, then adds one (a stand-in for an API call).',
  spec: {
    source: {
      type: 'inline',
      code: [
        'import time',
        '',
        'def handler(input):',
        '    time.sleep(input.get("ms", 200) / 1000)',
        '    print("working on", input.get("n"))',
        '    if input.get("fail"):',
        '        raise ValueError("n=%s is not allowed" % input.get("n"))',
        '    return {"n": input.get("n", 0) + 1}',
        '',
      ].join('\n'),
    },
  },
};

/** The elements the pages show: sql queries, a python function, tables, an approval and a workflow. */
export async function seedElements(t: TestApp, c: Circle): Promise<void> {
  const A = c.tokens.admin;
  const mk = (el: unknown) => create(t, c.slug, A, el);
  await mk({
    element_type: 'sql',
    slug: 'add-one',
    name: 'Add one',
    intention: 'Adds one to a number.',
    spec: { query: 'select $1::int + 1 as n' },
  });
  await mk({ element_type: 'sql', slug: 'double-it', spec: { query: 'select $1::int * 2 as n' } });
  await mk({
    element_type: 'sql',
    slug: 'greet-sql',
    spec: { query: "select 'Hello, ' || $1::text || '!' as message, length($1::text) as letters" },
  });
  // 100 / 0 for every 20th row: a batch over it completes with 5 % failed.
  await mk({
    element_type: 'sql',
    slug: 'div',
    spec: { query: 'select 100 / (case when $1::int % 20 = 0 then 0 else 1 end) as r' },
  });
  await mk(SLOW_PY);
  await mk({
    element_type: 'table',
    slug: 'people',
    spec: {
      fields: { name: { type: 'string', required: true }, country: { type: 'string' } },
      columns: { greeting: { element: 'greet-sql', input: { params: ['name'] }, concurrency: 4 } },
    },
  });
  await mk({
    element_type: 'table',
    slug: 'nums',
    spec: {
      fields: { k: { type: 'integer', required: true }, args: { type: 'array' } },
      columns: { r: { element: 'div', input: { params: 'args' }, concurrency: 8 } },
    },
  });
  await mk({
    element_type: 'table',
    slug: 'jobs',
    spec: {
      fields: { n: { type: 'integer', required: true }, ms: { type: 'integer' }, fail: { type: 'boolean' } },
      columns: { out: { element: 'slow-step', input: { n: 'n', ms: 'ms', fail: 'fail' }, concurrency: 2 } },
    },
  });
  await mk({
    element_type: 'hitl',
    slug: 'manager-approval',
    spec: { instructions: 'Check the numbers, then approve.', approvers: { role: 'execute' } },
  });
  await mk({
    element_type: 'workflow',
    slug: 'enrich',
    name: 'Enrich',
    intention: 'Doubles a number, adds one, greets a few people and asks for a sign-off.',
    spec: {
      parameters: { type: 'object', properties: { n: { type: 'integer' } }, required: ['n'] },
      steps: [
        { name: 'double', element: 'double-it', input: { params: ['${{ parameters.n }}'] } },
        { name: 'add', element: 'add-one', input: { params: ['${{ steps.double.output.rows[0].n }}'] } },
        {
          name: 'greet',
          element: 'greet-sql',
          for_each: "${{ ['Ada', 'Grace', 'Linus'] }}",
          input: { params: ['${{ item }}'] },
        },
        { name: 'sign-off', element: 'manager-approval', needs: ['add', 'greet'] },
        { name: 'finish', element: 'add-one', needs: ['sign-off'], input: { params: [1] } },
      ],
      outputs: { result: '${{ steps.add.output.rows[0].n }}' },
    },
  });
  await mk(FAN);
}

/** A workflow that fans out to 20 tasks (folded in the timeline and the graph). */
export const FAN = {
  element_type: 'workflow',
  slug: 'fan',
  spec: {
    steps: [
      {
        name: 'each',
        element: 'double-it',
        for_each: `\${{ [${Array.from({ length: 20 }, (_, i) => i + 1).join(', ')}] }}`,
        input: { params: ['${{ item }}'] },
      },
      { name: 'sum', element: 'add-one', needs: ['each'], input: { params: [1] } },
    ],
  },
};

export async function insertRows(t: TestApp, c: Circle, table: string, rows: unknown[]): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < rows.length; i += 5000)
    ids.push(
      ...(
        await ok(
          t,
          'POST',
          `/api/${c.slug}/${table}/ops/rows`,
          { rows: rows.slice(i, i + 5000) },
          c.tokens.admin,
        )
      ).ids,
    );
  return ids;
}

/** A column run; answers the run id (without waiting for it). */
export async function columnRun(
  t: TestApp,
  c: Circle,
  table: string,
  column: string,
  body = {},
): Promise<string> {
  return (await ok(t, 'POST', `/api/${c.slug}/${table}/ops/columns/${column}/run`, body, c.tokens.admin))
    .run_id;
}

export async function invoke(
  t: TestApp,
  c: Circle,
  slug: string,
  input: unknown,
  async = false,
): Promise<any> {
  return ok(
    t,
    'POST',
    `/api/${c.slug}/${slug}/ops/invoke${async ? '?async=1' : ''}`,
    input,
    c.tokens.execute,
    {
      'x-cairn-trigger': 'manual',
    },
  );
}

export async function trigger(t: TestApp, c: Circle, slug: string, parameters: unknown): Promise<string> {
  return (await ok(t, 'POST', `/api/${c.slug}/${slug}/ops/trigger`, { parameters }, c.tokens.execute)).run_id;
}

/** Waits until a workflow run's task awaits a decision. */
export async function awaitingTask(t: TestApp, runId: string, task: string, token: string): Promise<void> {
  await waitRun(t, runId, token, {
    done: (r) => (r.awaiting_approval ?? []).some((a: any) => a.task === task),
  });
}

/** Everything the screenshots and the dev server show: finished runs of each kind, one waiting. */
export async function seedRuns(
  t: TestApp,
  c: Circle,
): Promise<{ batch: string; workflow: string; python: string }> {
  const A = c.tokens.admin;
  // Two more versions of add-one, for the element page's diff.
  await ok(
    t,
    'PATCH',
    `/api/${c.slug}/add-one/ops/update`,
    { spec: { timeout_ms: 2000 }, note: 'tighter timeout' },
    A,
  );
  await ok(
    t,
    'PATCH',
    `/api/${c.slug}/add-one/ops/update`,
    { spec: { query: 'select $1::int + 1 as n, now() as at' }, note: 'say when' },
    A,
  );
  for (const n of [41, 1, 99]) await invoke(t, c, 'add-one', { params: [n] });
  await invoke(t, c, 'add-one', { params: ['x'] }); // fails: SQL_DATA_ERROR
  await invoke(t, c, 'slow-step', { n: 3, ms: 50 });
  await invoke(t, c, 'slow-step', { n: 4, ms: 10, fail: true });
  await insertRows(
    t,
    c,
    'people',
    ['Alice', 'Bob', 'Chloé', 'Dmitri', 'Eve', 'Farah'].map((name) => ({ name })),
  );
  await waitRun(t, await columnRun(t, c, 'people', 'greeting'), A);
  await insertRows(
    t,
    c,
    'nums',
    Array.from({ length: 400 }, (_, k) => ({ k, args: [k] })),
  );
  const batch = await columnRun(t, c, 'nums', 'r');
  await waitRun(t, batch, A);
  // Python items of different lengths, two of them failing, three at a time: a Gantt worth seeing.
  const widths = [420, 180, 650, 300, 240, 520, 160, 380, 700, 260, 450, 200, 330, 590];
  await insertRows(
    t,
    c,
    'jobs',
    widths.map((ms, n) => ({ n, ms, fail: n === 4 || n === 9 })),
  );
  const python = await columnRun(t, c, 'jobs', 'out', { concurrency: 3 });
  await waitRun(t, python, A, { ms: 120_000 });
  const done = await trigger(t, c, 'enrich', { n: 5 });
  await awaitingTask(t, done, 'sign-off', A);
  await ok(t, 'POST', `/api/runs/${done}/tasks/sign-off/approve`, { comment: 'Looks right.' }, A);
  await waitRun(t, done, A);
  const workflow = await trigger(t, c, 'enrich', { n: 20 });
  await awaitingTask(t, workflow, 'sign-off', A);
  return { batch, workflow, python };
}

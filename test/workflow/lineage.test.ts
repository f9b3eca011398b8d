import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newAjv } from '../../src/core/json-schema.js';
import { buildLineage } from '../../src/store/lineage.js';
import { openLineageEvents, RUN_EVENT_SCHEMA_URL, type RunEvent } from '../../src/store/openlineage.js';
import type { TaskRow } from '../../src/store/workflow.js';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, expectTypedError, type TestApp, waitRun } from '../helpers/app.js';
import { ROOT } from '../helpers/bin.js';

/**
 * Lineage (R-LINEAGE) through the real API on both drivers, with sql
 * elements as steps: the graph of a workflow run (dependencies, for_each
 * fan-out, parameters → root steps, leaves → outputs), files recorded in
 * items' evidence as nodes and edges, and the OpenLineage export — every
 * event and every facet validated against the vendored official schemas.
 */

const H1 = 'a'.repeat(64);
const H2 = '0123456789abcdef'.repeat(4);
const H3 = 'f'.repeat(63) + '0';

// The vendored OpenLineage schemas: the RunEvent, and each facet by the facet key it defines.
const VENDOR = join(ROOT, 'vendor', 'openlineage');
const ajv = newAjv();
const main = JSON.parse(readFileSync(join(VENDOR, 'OpenLineage.json'), 'utf8'));
ajv.addSchema(main);
const facetSchemaOf = new Map<string, string>();
const facetIds = new Set<string>();
for (const f of readdirSync(join(VENDOR, 'facets')).filter((x) => x.endsWith('.json'))) {
  const s = JSON.parse(readFileSync(join(VENDOR, 'facets', f), 'utf8'));
  ajv.addSchema(s);
  facetIds.add(s.$id);
  for (const k of Object.keys(s.properties ?? {})) facetSchemaOf.set(k, s.$id);
}
const validateRunEvent = ajv.compile({ $ref: `${main.$id}#/$defs/RunEvent` });

/** Problems of one event: the RunEvent schema, then every facet against its own facet schema. */
function problems(e: unknown): string[] {
  const out: string[] = [];
  if (!validateRunEvent(e))
    out.push(...(validateRunEvent.errors ?? []).map((x) => `${x.instancePath} ${x.message}`));
  const ev = e as any;
  const groups: [string, unknown][] = [
    ['run', ev?.run?.facets],
    ['job', ev?.job?.facets],
    ...[...(ev?.inputs ?? []), ...(ev?.outputs ?? [])].flatMap((d: any): [string, unknown][] => [
      ['dataset', d?.facets],
      ['dataset', d?.inputFacets],
      ['dataset', d?.outputFacets],
    ]),
  ];
  for (const [where, facets] of groups) {
    for (const [k, v] of Object.entries((facets ?? {}) as Record<string, any>)) {
      const id = facetSchemaOf.get(k);
      if (!id) {
        out.push(`${where} facet ${k} has no vendored schema`);
        continue;
      }
      const validate = ajv.getSchema(id)!;
      if (!validate({ [k]: v }))
        out.push(...(validate.errors ?? []).map((x) => `${where}.${k}${x.instancePath} ${x.message}`));
      // Its _schemaURL names that very schema (the vendored $id and a pointer into it).
      if (typeof v?._schemaURL !== 'string' || !v._schemaURL.startsWith(`${id}#/$defs/`))
        out.push(`${where}.${k}._schemaURL ${v?._schemaURL} is not ${id}#/$defs/…`);
    }
  }
  return out;
}

function expectValid(events: unknown[]) {
  for (const e of events) expect(problems(e), JSON.stringify(e)).toEqual([]);
}

const file = (name: string, sha256: string, size: number, media_type: string) => ({
  name,
  sha256,
  size,
  media_type,
});

describe('the OpenLineage validation itself', () => {
  const good: RunEvent = {
    eventType: 'START',
    eventTime: '2025-01-01T00:00:00.000000Z',
    producer: 'https://github.com/cairn/cairn',
    schemaURL: RUN_EVENT_SCHEMA_URL,
    run: {
      runId: '0190a8b4-0000-7000-8000-000000000000',
      facets: {
        parent: {
          _producer: 'https://github.com/cairn/cairn',
          _schemaURL: 'https://openlineage.io/spec/facets/1-2-0/ParentRunFacet.json#/$defs/ParentRunFacet',
          run: { runId: '0190a8b4-0000-7000-8000-000000000001' },
          job: { namespace: 'cairn://c', name: 'w' },
        },
      },
    },
    job: { namespace: 'cairn://c', name: 'w.t' },
    inputs: [
      {
        namespace: 'cairn://c',
        name: `sha256:${H1}`,
        facets: {
          version: {
            _producer: 'https://github.com/cairn/cairn',
            _schemaURL:
              'https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet',
            datasetVersion: H1,
          },
        },
      },
    ],
    outputs: [],
  };
  const broken = (f: (e: any) => void) => {
    const e = structuredClone(good) as any;
    f(e);
    return e;
  };

  it('accepts a well-formed event and refuses broken ones (so the checks below are real)', () => {
    expect(problems(good)).toEqual([]);
    for (const [why, e] of [
      ['no eventTime', broken((e) => delete e.eventTime)],
      ['an eventTime that is no date-time', broken((e) => (e.eventTime = 'yesterday'))],
      ['a runId that is no UUID', broken((e) => (e.run.runId = 'run-1'))],
      ['no job name', broken((e) => delete e.job.name)],
      ['an unknown eventType', broken((e) => (e.eventType = 'DONE'))],
      ['a facet without _producer', broken((e) => delete e.run.facets.parent._producer)],
      ['a dataset facet without _schemaURL', broken((e) => delete e.inputs[0].facets.version._schemaURL)],
      // Only the facets' own schemas know these:
      ['a parent facet without its job', broken((e) => delete e.run.facets.parent.job)],
      ['a parent runId that is no UUID', broken((e) => (e.run.facets.parent.run.runId = 'x'))],
      [
        'a version facet without datasetVersion',
        broken((e) => delete e.inputs[0].facets.version.datasetVersion),
      ],
      [
        'a facet no vendored schema defines',
        broken((e) => (e.run.facets.mystery = { ...e.run.facets.parent })),
      ],
    ] as const)
      expect(problems(e).length, why).toBeGreaterThan(0);
    // The RunEvent schema alone misses what only a facet's schema says.
    expect(validateRunEvent(broken((e) => delete e.inputs[0].facets.version.datasetVersion))).toBe(true);
  });

  it('a cancelled run and its tasks end with ABORT; a task that never started has no events', () => {
    const run = {
      id: '0190a8b4-0000-7000-8000-00000000000a',
      kind: 'workflow' as const,
      status: 'cancelled' as const,
      element_slug: 'w',
      element_type: 'workflow',
      element_version: 1,
      operation: 'trigger',
      root_run_id: '0190a8b4-0000-7000-8000-00000000000a',
      queued_at: '2025-01-01T00:00:00.000000Z',
      started_at: '2025-01-01T00:00:01.000000Z',
      finished_at: '2025-01-01T00:00:05.000000Z',
      error: null,
      input: { parameters: {} },
      output: null,
    };
    const task = (key: string, status: TaskRow['status'], started: string | null): TaskRow =>
      ({
        id: `0190a8b4-0000-7000-8000-0000000000${key === 'a' ? '0b' : '0c'}`,
        key,
        ord: 0,
        status,
        attempt_count: 1,
        inputs: {},
        outputs: null,
        error: null,
        evidence: {},
        credits_used: 0,
        child_run_id: null,
        retry_at: null,
        started_at: started,
        finished_at: started ? '2025-01-01T00:00:04.000000Z' : null,
        duration_ms: null,
        child_status: null,
        child_output: null,
        child_error: null,
        child_credits: null,
        child_duration_ms: null,
        child_evidence: null,
      }) as TaskRow;
    const graph = buildLineage(run, [
      task('a', 'cancelled', '2025-01-01T00:00:02.000000Z'),
      task('b', 'skipped', null),
    ]);
    const events = openLineageEvents(run, 'c', graph);
    expectValid(events);
    expect(events.map((e) => [e.job.name, e.eventType])).toEqual([
      ['w', 'START'],
      ['w.a', 'START'],
      ['w.a', 'ABORT'],
      ['w', 'ABORT'],
    ]);
  });
});

describeEachDriver('lineage', ({ db: getDb, driver }) => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  let A: string;
  const slug = `lin-${driver}`;
  const mk = async (body: unknown) => t.call('POST', `/api/${slug}/ops/create`, body, A);
  let run: any;
  let tasks: Record<string, any>;

  beforeAll(async () => {
    t = await testApp(getDb(), { concurrency: 4 });
    c = await t.circle(slug);
    A = c.tokens.admin;
    for (const b of [
      { element_type: 'sql', slug: 'double-it', spec: { query: 'select $1::int * 2 as n' } },
      { element_type: 'sql', slug: 'add-one', spec: { query: 'select $1::int + 1 as n' } },
      {
        element_type: 'sql',
        slug: 'list',
        spec: { query: "select * from (values ('ann'), ('bob'), ('cy')) as t(name)" },
      },
      { element_type: 'sql', slug: 'greeter', spec: { query: "select 'hello ' || $1::text as greeting" } },
      { element_type: 'sql', slug: 'boom', spec: { query: 'select 1 / 0 as x' } },
      {
        element_type: 'workflow',
        slug: 'flow',
        spec: {
          parameters: { type: 'object', properties: { n: { type: 'integer' } }, required: ['n'] },
          steps: [
            { name: 'double', element: 'double-it', input: { params: ['${{ parameters.n }}'] } },
            { name: 'add', element: 'add-one', input: { params: ['${{ steps.double.output.rows[0].n }}'] } },
            { name: 'list', element: 'list' },
            {
              name: 'each',
              element: 'greeter',
              for_each: '${{ steps.list.output.rows }}',
              input: { params: ['${{ item.name }}'] },
            },
            // Depends on the fan-out and reads the parameters.
            {
              name: 'final',
              element: 'add-one',
              needs: ['each'],
              input: { params: ['${{ parameters.n }}'] },
            },
          ],
          outputs: {
            result: '${{ steps.add.output.rows[0].n }}',
            final: '${{ steps.final.output.rows[0].n }}',
            label: 'n=${{ parameters.n }}',
          },
        },
      },
      {
        element_type: 'workflow',
        slug: 'breaks',
        spec: {
          steps: [
            { name: 'first', element: 'boom' },
            { name: 'after', element: 'add-one', needs: ['first'], input: { params: [1] } },
          ],
        },
      },
    ]) {
      const r = await mk(b);
      expect(r.status, JSON.stringify(r.body)).toBe(201);
    }
    const r = await t.call(
      'POST',
      `/api/${slug}/flow/ops/trigger`,
      { parameters: { n: 3 } },
      c.tokens.execute,
    );
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    run = await waitRun(t, r.body.run_id, A);
    expect(run.status, JSON.stringify(run.error)).toBe('succeeded');
    tasks = Object.fromEntries(
      ((await t.call('GET', `/api/runs/${run.id}/tasks`, undefined, A)).body.tasks as any[]).map((x) => [
        x.name,
        x,
      ]),
    );
  }, 120_000);
  afterAll(async () => t?.close());

  it("a workflow run's graph: parameters → root steps, dependencies, for_each fan-out, leaves → outputs", async () => {
    const r = await t.call('GET', `/api/runs/${run.id}/lineage`, undefined, c.tokens.read);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    const g = r.body;
    expect(g.run_id).toBe(run.id);
    expect(g.kind).toBe('workflow');
    expect(g.nodes.map((n: any) => `${n.type}:${n.id}`)).toEqual([
      'parameters:$parameters',
      'task:add',
      'task:double',
      'task:each',
      'task:each[0]',
      'task:each[1]',
      'task:each[2]',
      'task:final',
      'task:list',
      'outputs:$outputs',
    ]);
    expect(g.edges).toEqual([
      { from: '$parameters', to: '$outputs', kind: 'outputs' }, // label reads parameters.n
      { from: '$parameters', to: 'double', kind: 'parameters' },
      { from: '$parameters', to: 'final', kind: 'parameters' }, // not a root, but reads parameters.n
      { from: '$parameters', to: 'list', kind: 'parameters' }, // a root: reads nothing
      { from: 'add', to: '$outputs', kind: 'outputs' },
      { from: 'double', to: 'add', kind: 'depends' },
      { from: 'each', to: 'final', kind: 'depends' },
      { from: 'each[0]', to: 'each', kind: 'collect' },
      { from: 'each[1]', to: 'each', kind: 'collect' },
      { from: 'each[2]', to: 'each', kind: 'collect' },
      { from: 'final', to: '$outputs', kind: 'outputs' },
      { from: 'list', to: 'each[0]', kind: 'depends' },
      { from: 'list', to: 'each[1]', kind: 'depends' },
      { from: 'list', to: 'each[2]', kind: 'depends' },
    ]);
    const by = Object.fromEntries(g.nodes.map((n: any) => [n.id, n]));
    for (const k of ['add', 'double', 'each[0]', 'each[1]', 'each[2]', 'final', 'list']) {
      expect(by[k].status).toBe('succeeded');
      expect(by[k].child_run_id).toBe(tasks[k].child_run_id);
      expect(by[k].child_run_id).toMatch(/^[0-9a-f-]{36}$/);
      expect(by[k].started_at).toBe(tasks[k].started_at);
      expect(by[k].finished_at).toBe(tasks[k].finished_at);
    }
    expect(by.add.element).toMatchObject({ slug: 'add-one', version: 1, element_type: 'sql', op: 'invoke' });
    expect(by['each[1]']).toMatchObject({ step: 'each', index: 1, element: { slug: 'greeter', version: 1 } });
    expect(by.each).toMatchObject({ step: 'each', index: null, child_run_id: null, status: 'succeeded' });
    expect(by.each.element).toMatchObject({ slug: 'greeter', version: 1 }); // from the pinned definition

    // The same graph every time (deterministic).
    expect((await t.call('GET', `/api/runs/${run.id}/lineage?format=graph`, undefined, A)).body).toEqual(g);
  });

  it('files recorded in evidence and referenced by parameters are nodes with reads / writes edges', async () => {
    const db = getDb();
    const ev = async (key: string, extra: unknown) =>
      db.query(`UPDATE cairn.items SET evidence = evidence || $1::jsonb WHERE run_id = $2 AND key = $3`, [
        JSON.stringify(extra),
        run.id,
        key,
      ]);
    await ev('double', { output_files: [file('doubled.csv', H1, 12, 'text/csv')] });
    await ev('add', {
      input_files: [file('in.csv', H1, 12, 'text/csv'), { name: 'junk', sha256: 'not-a-hash' }],
      output_files: [file('sum.json', H2, 7, 'application/json')],
    });
    await ev('each[1]', { input_files: [file('names.txt', H3, 3, 'text/plain')] });
    await db.query(
      `UPDATE cairn.runs SET input = jsonb_set(input, '{parameters,names}', $1::jsonb) WHERE id = $2`,
      [JSON.stringify({ $file: `sha256:${H3}` }), run.id],
    );

    const g = (await t.call('GET', `/api/runs/${run.id}/lineage`, undefined, A)).body;
    const files = g.nodes.filter((n: any) => n.type === 'file');
    expect(files).toEqual([
      {
        type: 'file',
        id: `sha256:${H2}`,
        sha256: H2,
        name: 'sum.json',
        names: ['sum.json'],
        size: 7,
        media_type: 'application/json',
      },
      {
        type: 'file',
        id: `sha256:${H1}`,
        sha256: H1,
        name: 'doubled.csv',
        names: ['doubled.csv', 'in.csv'], // one content, two names: one node
        size: 12,
        media_type: 'text/csv',
      },
      {
        type: 'file',
        id: `sha256:${H3}`,
        sha256: H3,
        name: 'names.txt',
        names: ['names.txt'],
        size: 3,
        media_type: 'text/plain',
      },
    ]);
    const fileEdges = g.edges.filter((e: any) => e.kind === 'reads' || e.kind === 'writes');
    expect(fileEdges).toEqual([
      { from: 'add', to: `sha256:${H2}`, kind: 'writes' },
      { from: 'double', to: `sha256:${H1}`, kind: 'writes' },
      { from: `sha256:${H1}`, to: 'add', kind: 'reads' },
      { from: `sha256:${H3}`, to: '$parameters', kind: 'reads' },
      { from: `sha256:${H3}`, to: 'each[1]', kind: 'reads' },
    ]);
    // The DAG itself is unchanged.
    expect(g.edges.filter((e: any) => e.kind === 'depends')).toHaveLength(5);
  });

  it('exports OpenLineage RunEvents that the official schemas accept, files as versioned datasets', async () => {
    const r = await t.call('GET', `/api/runs/${run.id}/lineage?format=openlineage`, undefined, c.tokens.read);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.run_id).toBe(run.id);
    const events = r.body.events as RunEvent[];
    expectValid(events);

    const ns = `cairn://${slug}`;
    // START and COMPLETE for the run and for each of its 8 tasks; the run's START first, its COMPLETE last.
    expect(events).toHaveLength(18);
    expect(events[0]).toMatchObject({
      eventType: 'START',
      run: { runId: run.id },
      job: { namespace: ns, name: 'flow' },
    });
    expect(events[17]).toMatchObject({
      eventType: 'COMPLETE',
      run: { runId: run.id },
      job: { namespace: ns, name: 'flow' },
    });
    expect(events[0]!.eventTime).toBe(run.started_at);
    expect(events[17]!.eventTime).toBe(run.finished_at);
    const times = events.map((e) => Date.parse(e.eventTime));
    expect([...times].sort((a, b) => a - b)).toEqual(times);
    for (const e of events) {
      expect(e.schemaURL).toBe('https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent');
      expect(e.producer).toBe('https://github.com/cairn/cairn');
    }

    const of = (key: string) => events.filter((e) => e.job.name === `flow.${key}`);
    for (const key of ['add', 'double', 'each', 'each[0]', 'each[1]', 'each[2]', 'final', 'list']) {
      const [start, end] = of(key);
      expect(of(key).map((e) => e.eventType)).toEqual(['START', 'COMPLETE']);
      expect(start!.job.namespace).toBe(ns);
      expect(start!.eventTime).toBe(tasks[key].started_at);
      expect(end!.eventTime).toBe(tasks[key].finished_at);
      expect(start!.run.runId).toBe(end!.run.runId);
      // A task's run is its child run; the group item of a for_each step has none, so its item's id.
      if (key !== 'each') expect(start!.run.runId).toBe(tasks[key].child_run_id);
      expect(start!.run.runId).toMatch(
        /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
      );
      for (const e of [start!, end!])
        expect(e.run.facets!.parent).toMatchObject({
          run: { runId: run.id },
          job: { namespace: ns, name: 'flow' },
        });
    }
    const ds = (sha: string) => ({
      namespace: ns,
      name: `sha256:${sha}`,
      facets: { version: expect.objectContaining({ datasetVersion: sha }) },
    });
    const [dStart, dEnd] = of('double');
    expect(dStart!.outputs).toEqual([]);
    expect(dEnd!.outputs).toEqual([ds(H1)]);
    expect(dEnd!.inputs).toEqual([]);
    const [aStart, aEnd] = of('add');
    expect(aStart!.inputs).toEqual([ds(H1)]);
    expect(aEnd!.inputs).toEqual([ds(H1)]);
    expect(aEnd!.outputs).toEqual([ds(H2)]);
    expect(of('each[1]')[1]!.inputs).toEqual([ds(H3)]);
    expect(events[0]!.inputs).toEqual([ds(H3)]); // a parameter file is an input of the run
  });

  it('a failed workflow: FAIL events with the error, skipped dependents have none', async () => {
    const r = await t.call('POST', `/api/${slug}/breaks/ops/trigger`, {}, c.tokens.execute);
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    const failed = await waitRun(t, r.body.run_id, A);
    expect(failed.status).toBe('failed');
    const g = (await t.call('GET', `/api/runs/${failed.id}/lineage`, undefined, A)).body;
    expect(g.edges).toEqual([
      { from: '$parameters', to: 'first', kind: 'parameters' },
      { from: 'after', to: '$outputs', kind: 'outputs' },
      { from: 'first', to: 'after', kind: 'depends' },
    ]);
    const byId = Object.fromEntries(g.nodes.map((n: any) => [n.id, n]));
    expect(byId.first.status).toBe('failed');
    expect(byId.first.error.code).toBeTruthy();
    expect(byId.after.status).toBe('skipped');
    const events = (await t.call('GET', `/api/runs/${failed.id}/lineage?format=openlineage`, undefined, A))
      .body.events as RunEvent[];
    expectValid(events);
    expect(events.map((e) => [e.job.name, e.eventType])).toEqual([
      ['breaks', 'START'],
      ['breaks.first', 'START'],
      ['breaks.first', 'FAIL'],
      ['breaks', 'FAIL'],
    ]);
    expect(events[2]!.run.facets!.errorMessage).toMatchObject({
      message: expect.stringContaining(byId.first.error.code),
      programmingLanguage: 'sql',
    });
  });

  it('a run of another kind: its items are task nodes; its export validates too', async () => {
    const inv = await t.call('POST', `/api/${slug}/add-one/ops/invoke`, { params: [41] }, c.tokens.execute);
    expect(inv.status, JSON.stringify(inv.body)).toBe(200);
    const id = inv.body.run_id ?? inv.body.id;
    const g = (await t.call('GET', `/api/runs/${id}/lineage`, undefined, A)).body;
    expect(g.kind).toBe('invoke');
    expect(g.edges).toEqual([]);
    expect(g.nodes).toHaveLength(1);
    expect(g.nodes[0]).toMatchObject({
      type: 'task',
      id: 'call',
      status: 'succeeded',
      element: { slug: 'add-one', version: 1 },
    });
    const events = (await t.call('GET', `/api/runs/${id}/lineage?format=openlineage`, undefined, A)).body
      .events as RunEvent[];
    expectValid(events);
    expect(events.map((e) => [e.job.name, e.eventType]).sort()).toEqual(
      [
        ['add-one', 'COMPLETE'],
        ['add-one', 'START'],
        ['add-one.call', 'COMPLETE'],
        ['add-one.call', 'START'],
      ].sort(),
    );
  });

  it('is refused to other circles and for an unknown format (typed errors)', async () => {
    const other = await t.circle(`lin-other-${driver}`);
    const r = await t.call('GET', `/api/runs/${run.id}/lineage`, undefined, other.tokens.admin);
    expect(r.status).toBe(404);
    expectTypedError(r.body);
    const bad = await t.call('GET', `/api/runs/${run.id}/lineage?format=rdf`, undefined, A);
    expect(bad.status).toBe(400);
    expectTypedError(bad.body);
  });
});

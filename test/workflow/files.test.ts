import { createHash } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, expectTypedError, type TestApp, waitRun } from '../helpers/app.js';

/**
 * Files (R-FILES) end to end, in the real sandbox: a python step writes
 * /out/report.csv, the next python step reads it at /in/data.csv together
 * with an uploaded file passed as a parameter; both hashes appear in the
 * tasks, in /files and in /lineage. Uploads are content-addressed per circle.
 */

const sha = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');

const WRITER = `
import os
def handler(data):
    with open("/out/report.csv", "w") as f:
        f.write("n\\n" + "".join("%d\\n" % i for i in range(data["n"])))
    os.symlink("/etc/passwd", "/out/sneaky")
    os.mkdir("/out/sub")
    return {"wrote": data["n"]}
`;
const READER = `
def handler(data):
    with open("/in/data.csv") as f:
        lines = f.read().splitlines()
    with open("/in/extra.txt") as f:
        extra = f.read()
    try:
        open("/in/data.csv", "a").write("x")
        writable = True
    except OSError:
        writable = False
    return {"lines": len(lines), "last": lines[-1], "extra": extra, "in_writable": writable}
`;

const GO_SUMMARY = `package main

import (
	"os"
	"strconv"
	"strings"
)

func Handler(input map[string]interface{}) (map[string]interface{}, error) {
	b, err := os.ReadFile("/in/data.csv")
	if err != nil {
		return nil, err
	}
	lines := strings.Count(string(b), "\\n")
	if err := os.WriteFile("/out/summary.txt", []byte("lines="+strconv.Itoa(lines)+"\\n"), 0o644); err != nil {
		return nil, err
	}
	return map[string]interface{}{"lines": lines}, nil
}
`;

describeEachDriver('files', ({ db, driver }) => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  let A: string;
  const slug = `files-${driver}`;
  const mk = async (body: unknown) => {
    const r = await t.call('POST', `/api/${slug}/ops/create`, body, A);
    expect(r.status, JSON.stringify(r.body)).toBe(201);
  };
  const upload = (body: string, circle = slug, token = A, type = 'text/plain') =>
    t.call('POST', `/api/${circle}/files?name=extra.txt`, body, token, { 'content-type': type });

  beforeAll(async () => {
    t = await testApp(db());
    c = await t.circle(slug);
    A = c.tokens.admin;
    await mk({ element_type: 'python', slug: 'writer', spec: { source: { code: WRITER } } });
    await mk({ element_type: 'python', slug: 'reader', spec: { source: { code: READER } } });
    await mk({
      element_type: 'go-fn',
      slug: 'summarize',
      spec: { source: { type: 'inline', code: GO_SUMMARY } },
    });
    await mk({
      element_type: 'workflow',
      slug: 'go-pipeline',
      spec: {
        steps: [
          { name: 'report', element: 'writer', input: { n: 2 } },
          {
            name: 'sum',
            element: 'summarize',
            files: { 'data.csv': "${{ steps.report.files['report.csv'] }}" },
          },
        ],
      },
    });
    await mk({
      element_type: 'workflow',
      slug: 'pipeline',
      spec: {
        parameters: { type: 'object', required: ['n', 'extra'] },
        steps: [
          { name: 'report', element: 'writer', input: { n: '${{ parameters.n }}' } },
          {
            name: 'read',
            element: 'reader',
            files: {
              'data.csv': "${{ steps.report.files['report.csv'] }}",
              'extra.txt': '${{ parameters.extra }}',
            },
          },
        ],
        outputs: { read: '${{ steps.read.output }}' },
      },
    });
  }, 120_000);
  afterAll(async () => t?.close());

  it('uploads are content-addressed, deduplicated, and readable only in their circle', async () => {
    const body = 'hello, files\n';
    const r = await upload(body);
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    expect(r.body.sha256).toBe(sha(body));
    expect(r.body.size).toBe(body.length);
    expect(r.body.ref).toEqual({ $file: `sha256:${sha(body)}` });
    const got = await t.app.inject({
      method: 'GET',
      url: `/api/${slug}/files/${r.body.sha256}`,
      headers: { authorization: `Bearer ${c.tokens.read}` },
    });
    expect(got.statusCode).toBe(200);
    expect(got.body).toBe(body);
    expect(got.headers['content-type']).toMatch(/^text\/plain/);
    // The same bytes from another circle: one blob, two references; neither reads through the other's.
    const other = await t.circle(`${slug}-other`);
    expect(
      (await t.call('GET', `/api/${other.slug}/files/${r.body.sha256}`, undefined, other.tokens.admin))
        .status,
    ).toBe(404);
    const again = await upload(body, other.slug, other.tokens.admin);
    expect(again.body.sha256).toBe(r.body.sha256);
    const blobs = await db().query<{ n: number }>(
      'SELECT count(*)::int AS n FROM cairn.blobs WHERE sha256 = $1',
      [r.body.sha256],
    );
    expect(blobs.rows[0]!.n).toBe(1);
    // JSON bytes are a file too, not parsed; an empty body and a bad hash are typed errors.
    const json = await upload('{"a": 1}', slug, A, 'application/json');
    expect(json.body.sha256).toBe(sha('{"a": 1}'));
    const empty = await t.call('POST', `/api/${slug}/files`, undefined, A);
    expect(empty.status).toBe(400);
    expectTypedError(empty.body);
    expect((await t.call('GET', `/api/${slug}/files/not-a-hash`, undefined, A)).status).toBe(400);
    expect(
      (await t.call('POST', `/api/${slug}/files`, 'x', c.tokens.read, { 'content-type': 'text/plain' }))
        .status,
    ).toBe(403);
  });

  it('a step writes a file, the next reads it; both hashes are in the tasks, /files and /lineage', async () => {
    const extra = 'the extra file\n';
    const up = await upload(extra);
    const r = await t.call(
      'POST',
      `/api/${slug}/pipeline/ops/trigger`,
      { parameters: { n: 3, extra: up.body.ref } },
      A,
    );
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    const run = await waitRun(t, r.body.run_id, A);
    expect(run.status, JSON.stringify(run.error)).toBe('succeeded');
    const report = 'n\n0\n1\n2\n';
    expect(run.output.read).toEqual({ lines: 4, last: '2', extra, in_writable: false });

    const tasks = Object.fromEntries(
      ((await t.call('GET', `/api/runs/${run.id}/tasks`, undefined, A)).body.tasks as any[]).map((x) => [
        x.name,
        x,
      ]),
    );
    const out = tasks.report.evidence.output_files;
    expect(out).toEqual([
      { name: 'report.csv', sha256: sha(report), size: report.length, media_type: 'text/csv' },
    ]);
    expect(tasks.report.evidence.output_hashes['out/report.csv']).toBe(`sha256:${sha(report)}`);
    // The symlink and the directory were refused, not followed or stored.
    expect(tasks.report.evidence.refused_files).toEqual([
      { name: 'sneaky', refused: 'symlink' },
      { name: 'sub', refused: 'directory' },
    ]);
    const inputs = tasks.read.evidence.input_files as any[];
    expect(inputs.map((f) => [f.name, f.sha256]).sort()).toEqual(
      [
        ['data.csv', sha(report)],
        ['extra.txt', sha(extra)],
      ].sort(),
    );
    expect(tasks.read.evidence.input_hashes['in/data.csv']).toBe(`sha256:${sha(report)}`);
    // Every task field the seed lists, for a python step.
    for (const k of [
      'command',
      'toolchain',
      'exit_code',
      'stdout',
      'stderr',
      'host',
      'timing',
      'input_hashes',
      'output_hashes',
    ])
      expect(tasks.report.evidence[k], k).toBeDefined();

    const files = (await t.call('GET', `/api/runs/${run.id}/files`, undefined, A)).body.files as any[];
    expect(files.find((f) => f.direction === 'output' && f.task === 'report').sha256).toBe(sha(report));
    expect(
      files
        .filter((f) => f.direction === 'input' && f.task === 'read')
        .map((f) => f.sha256)
        .sort(),
    ).toEqual([sha(report), sha(extra)].sort());
    expect(files.some((f) => f.direction === 'input' && f.task === null && f.sha256 === sha(extra))).toBe(
      true,
    );
    // The written file is a file of the circle now: its bytes by its hash.
    const got = await t.app.inject({
      method: 'GET',
      url: `/api/${slug}/files/${sha(report)}`,
      headers: { authorization: `Bearer ${A}` },
    });
    expect(got.body).toBe(report);

    const lineage = (await t.call('GET', `/api/runs/${run.id}/lineage`, undefined, A)).body;
    const fileNode = lineage.nodes.find((n: any) => n.id === `sha256:${sha(report)}`);
    expect(fileNode).toBeTruthy();
    const edges = lineage.edges.map((e: any) => `${e.from}>${e.to}`);
    expect(edges).toContain(`report>sha256:${sha(report)}`);
    expect(edges).toContain(`sha256:${sha(report)}>read`);
    const ol = (await t.call('GET', `/api/runs/${run.id}/lineage?format=openlineage`, undefined, A)).body
      .events as any[];
    const readDone = ol.find((e) => e.eventType === 'COMPLETE' && e.job.name.endsWith('.read'));
    expect(readDone.inputs.map((d: any) => d.facets.version.datasetVersion)).toContain(sha(report));
  });

  it('a go-fn step reads its input file at /in and writes /out like the scripts', async () => {
    const r = await t.call('POST', `/api/${slug}/go-pipeline/ops/trigger`, {}, A);
    const run = await waitRun(t, r.body.run_id, A, { ms: 120_000 });
    expect(run.status, JSON.stringify(run.error)).toBe('succeeded');
    const sum = (await t.call('GET', `/api/runs/${run.id}/tasks/sum`, undefined, A)).body;
    expect(sum.outputs).toEqual({ lines: 3 });
    expect(sum.input_files.map((f: any) => f.sha256)).toEqual([sha('n\n0\n1\n')]);
    expect(sum.output_files).toEqual([
      { name: 'summary.txt', sha256: sha('lines=3\n'), size: 8, media_type: 'text/plain' },
    ]);
  }, 150_000);

  it('a parameter naming a file the circle does not have is a typed 400, and no run', async () => {
    const other = await t.circle(`${slug}-third`);
    const theirs = await upload('theirs only\n', other.slug, other.tokens.admin);
    for (const ref of [{ $file: `sha256:${'a'.repeat(64)}` }, theirs.body.ref, { $file: 'sha256:nothex' }]) {
      const r = await t.call(
        'POST',
        `/api/${slug}/pipeline/ops/trigger`,
        { parameters: { n: 1, extra: ref } },
        A,
      );
      expect(r.status, JSON.stringify(r.body)).toBe(400);
      expect(r.body.error.code).toBe('FILE_NOT_FOUND');
    }
  });
});

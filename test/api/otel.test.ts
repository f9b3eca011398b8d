import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshDb } from '../helpers/db.js';
import { testApp, waitRun, type TestApp } from '../helpers/app.js';
import { until } from '../helpers/bin.js';
import { flushTracing, initTracing, runSpanId, shutdownTracing } from '../../src/telemetry/tracing.js';
import { reply, startOpenAiServer } from '../support/llm-servers.js';

interface ExportedSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  attributes: Record<string, unknown>;
  status?: { code?: number };
  service: string;
}

/** A real OTLP/HTTP receiver on loopback: it keeps every span the SDK exports (JSON encoding). */
function receiver(): { server: Server; spans: ExportedSpan[]; paths: string[] } {
  const spans: ExportedSpan[] = [];
  const paths: string[] = [];
  const value = (v: any): unknown =>
    v.stringValue ?? v.boolValue ?? (v.intValue !== undefined ? Number(v.intValue) : (v.doubleValue ?? v));
  const attrs = (a: any[] = []) => Object.fromEntries(a.map((x) => [x.key, value(x.value)]));
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      paths.push(`${req.method} ${req.url} ${req.headers['content-type']}`);
      const doc = JSON.parse(body);
      for (const rs of doc.resourceSpans ?? []) {
        const service = String(attrs(rs.resource?.attributes)['service.name']);
        for (const ss of rs.scopeSpans ?? [])
          for (const s of ss.spans ?? [])
            spans.push({
              traceId: s.traceId,
              spanId: s.spanId,
              parentSpanId: s.parentSpanId || undefined,
              name: s.name,
              attributes: attrs(s.attributes),
              status: s.status,
              service,
            });
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  return { server, spans, paths };
}

describe('OpenTelemetry spans, exported over OTLP/HTTP to a real receiver', () => {
  const r = receiver();
  let t: TestApp;
  let drop: () => Promise<void>;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  beforeAll(async () => {
    await new Promise<void>((res) => r.server.listen(0, '127.0.0.1', () => res()));
    const port = (r.server.address() as { port: number }).port;
    // Nothing is set up without an endpoint…
    expect(initTracing({})).toBe(false);
    // …and the standard variables configure the SDK.
    expect(
      initTracing({
        OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
        OTEL_SERVICE_NAME: 'cairn-otel-test',
      }),
    ).toBe(true);
    const h = await freshDb('pglite');
    drop = h.drop;
    t = await testApp(h.db);
    c = await t.circle('otel');
    for (const [slug, element_type, spec] of [
      ['add-one', 'sql', { query: 'select $1::int + 1 as n' }],
      ['py', 'python', { source: { code: 'def handler(d):\n    return {"ok": True}\n' } }],
      [
        'flow',
        'workflow',
        {
          steps: [
            { name: 'a', element: 'add-one', input: { params: [1] } },
            { name: 'b', element: 'add-one', needs: ['a'], input: { params: [2] } },
          ],
        },
      ],
      [
        'nums',
        'table',
        {
          fields: { k: { type: 'integer', required: true } },
          columns: { r: { element: 'add-one', input: { params: ['k'] }, concurrency: 2 } },
        },
      ],
    ] as const)
      expect(
        (await t.call('POST', `/api/${c.slug}/ops/create`, { element_type, slug, spec }, c.tokens.write))
          .status,
      ).toBe(201);
  }, 120_000);
  afterAll(async () => {
    await t?.close();
    await drop?.();
    await shutdownTracing();
    r.server.close();
  });

  const spansOf = async (traceId: string, want: (s: ExportedSpan[]) => boolean) => {
    await until(
      async () => {
        await flushTracing();
        return want(r.spans.filter((s) => s.traceId === traceId));
      },
      20_000,
      'the spans to be exported',
    );
    return r.spans.filter((s) => s.traceId === traceId);
  };

  it('a request with a W3C traceparent: the run continues the caller’s trace, its span the caller’s child', async () => {
    const callerTrace = '4bf92f3577b34da6a3ce929d0e0e4736';
    const callerSpan = '00f067aa0ba902b7';
    const res = await t.call('POST', `/api/${c.slug}/add-one/ops/invoke`, { params: [1] }, c.tokens.execute, {
      traceparent: `00-${callerTrace}-${callerSpan}-01`,
    });
    expect(res.body.status).toBe('succeeded');
    const run = (await t.call('GET', `/api/runs/${res.body.run_id}`, undefined, c.tokens.read)).body;
    expect(run.trace_id).toBe(callerTrace);
    const spans = await spansOf(callerTrace, (s) => s.some((x) => x.name === 'settle'));
    const exec = spans.find((s) => s.name === 'ops.execute')!;
    expect(exec).toBeDefined();
    expect(exec.service).toBe('cairn-otel-test');
    expect(exec.parentSpanId).toBe(callerSpan);
    expect(exec.spanId).toBe(runSpanId(run.id));
    expect(exec.attributes).toMatchObject({
      'cairn.circle': c.slug,
      'cairn.element': 'add-one',
      'cairn.element_type': 'sql',
      'cairn.operation': 'invoke',
      'cairn.run_id': run.id,
      'cairn.status': 'succeeded',
    });
    expect(exec.status?.code).toBe(1); // OK
    const settle = spans.find((s) => s.name === 'settle')!;
    expect(settle.parentSpanId).toBe(exec.spanId);
    // A malformed traceparent is ignored: a trace of the run's own.
    const other = await t.call(
      'POST',
      `/api/${c.slug}/add-one/ops/invoke`,
      { params: [1] },
      c.tokens.execute,
      {
        traceparent: `00-${'0'.repeat(32)}-${callerSpan}-01`,
      },
    );
    const r2 = (await t.call('GET', `/api/runs/${other.body.run_id}`, undefined, c.tokens.read)).body;
    expect(r2.trace_id).toMatch(/^[0-9a-f]{32}$/);
    expect(r2.trace_id).not.toBe('0'.repeat(32));
  });

  it('a code action: the run span is a root whose trace id is the run’s, with its sandbox as a child', async () => {
    const res = await t.call('POST', `/api/${c.slug}/py/ops/invoke`, {}, c.tokens.execute);
    expect(res.body.status).toBe('succeeded');
    const run = (await t.call('GET', `/api/runs/${res.body.run_id}`, undefined, c.tokens.read)).body;
    const spans = await spansOf(run.trace_id, (s) => s.some((x) => x.name === 'ops.execute'));
    const exec = spans.find((s) => s.name === 'ops.execute')!;
    expect(exec.parentSpanId).toBeUndefined();
    expect(exec.attributes['cairn.element_type']).toBe('python');
    const sandbox = spans.find((s) => s.name === 'sandbox')!;
    expect(sandbox, JSON.stringify(spans.map((s) => s.name))).toBeDefined();
    expect(sandbox.parentSpanId).toBe(exec.spanId);
    expect(sandbox.attributes['cairn.sandbox.verdict']).toBe('ok');
  });

  it('an llm call: a chat span, child of the run’s, with the GenAI semantic-convention attributes', async () => {
    const ai = await startOpenAiServer();
    try {
      for (const [slug, element_type, spec] of [
        ['prov', 'llm-provider', { api: 'openai', base_url: ai.url, allow: ['127.0.0.1'] }],
        [
          'ask',
          'llm',
          {
            model: 'prov/gpt-4o-mini',
            messages: [{ role: 'user', content: 'hi' }],
            max_tokens: 50,
            temperature: 0.2,
          },
        ],
      ] as const)
        expect(
          (await t.call('POST', `/api/${c.slug}/ops/create`, { element_type, slug, spec }, c.tokens.write))
            .status,
        ).toBe(201);
      ai.enqueue(
        reply({
          text: 'hello',
          model: 'gpt-4o-mini-2024-07-18',
          id: 'chatcmpl-otel',
          usage: {
            prompt_tokens: 12,
            completion_tokens: 3,
            total_tokens: 15,
            prompt_tokens_details: { cached_tokens: 4 },
          },
        }),
      );
      const res = await t.call('POST', `/api/${c.slug}/ask/ops/invoke`, {}, c.tokens.execute);
      expect(res.body.status).toBe('succeeded');
      const run = (await t.call('GET', `/api/runs/${res.body.run_id}`, undefined, c.tokens.read)).body;
      const spans = await spansOf(run.trace_id, (s) => s.some((x) => x.name === 'chat gpt-4o-mini'));
      const exec = spans.find((s) => s.name === 'ops.execute')!;
      const chat = spans.find((s) => s.name === 'chat gpt-4o-mini')!;
      expect(chat.parentSpanId).toBe(exec.spanId);
      expect(chat.attributes).toMatchObject({
        'gen_ai.operation.name': 'chat',
        'gen_ai.provider.name': 'openai',
        'gen_ai.request.model': 'gpt-4o-mini',
        'gen_ai.request.max_tokens': 50,
        'gen_ai.request.temperature': 0.2,
        'gen_ai.response.model': 'gpt-4o-mini-2024-07-18',
        'gen_ai.response.id': 'chatcmpl-otel',
        'gen_ai.usage.input_tokens': 12,
        'gen_ai.usage.output_tokens': 3,
        'gen_ai.usage.cache_read.input_tokens': 4,
        'server.address': '127.0.0.1',
      });
    } finally {
      await ai.close();
    }
  });

  it("a batch run: each item is a child span of the run's", async () => {
    expect(
      (
        await t.call(
          'POST',
          `/api/${c.slug}/nums/ops/rows`,
          { rows: [{ k: 1 }, { k: 2 }, { k: 3 }] },
          c.tokens.write,
        )
      ).status,
    ).toBeLessThan(300);
    const res = await t.call('POST', `/api/${c.slug}/nums/ops/columns/r/run`, {}, c.tokens.execute);
    expect(res.status).toBe(202);
    const id = res.body.run_id;
    const run = await waitRun(t, id, c.tokens.read, { ms: 30_000 });
    expect(run.status).toBe('succeeded');
    const spans = await spansOf(run.trace_id, (s) => s.some((x) => x.name === 'ops.execute'));
    const root = spans.find((s) => s.name === 'ops.execute')!;
    expect(root.attributes).toMatchObject({ 'cairn.run_kind': 'batch', 'cairn.status': 'succeeded' });
    const items = spans.filter((s) => s.name === 'item');
    expect(items).toHaveLength(3);
    for (const item of items) {
      expect(item.parentSpanId).toBe(root.spanId);
      expect(item.attributes['cairn.status']).toBe('succeeded');
    }
  });

  it("a workflow: its tasks' runs are children of the workflow run's span, in one trace", async () => {
    const res = await t.call('POST', `/api/${c.slug}/flow/ops/trigger`, { parameters: {} }, c.tokens.execute);
    expect(res.status).toBe(202);
    const id = res.body.run_id;
    const run = await waitRun(t, id, c.tokens.read, { ms: 30_000 });
    expect(run.status).toBe('succeeded');
    const spans = await spansOf(run.trace_id, (s) => s.filter((x) => x.name === 'ops.execute').length >= 3);
    const root = spans.find((s) => s.name === 'ops.execute' && s.attributes['cairn.run_id'] === id)!;
    expect(root.attributes).toMatchObject({ 'cairn.element_type': 'workflow', 'cairn.status': 'succeeded' });
    const tasks = spans.filter((s) => s.name === 'ops.execute' && s.attributes['cairn.run_id'] !== id);
    expect(tasks).toHaveLength(2);
    for (const task of tasks) expect(task.parentSpanId).toBe(root.spanId);
    // The export is OTLP/HTTP's traces path.
    expect(r.paths.every((p) => p.startsWith('POST /v1/traces application/json'))).toBe(true);
  });
});

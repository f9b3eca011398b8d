/**
 * R-SECRETS, the "Done means" of issue 15: one secret reaches a go-fn's environment, an http
 * element's header and an LLM provider's key, and then is searched for everywhere a user or an
 * operator can look: every API answer about the element and its runs (runs, items and their
 * evidence, logs, audit, snapshot, ledger, the live event history, the element's versions and
 * attachments, the OpenAPI document) and every table of the platform schema. It is in none.
 * The key rotation is here too: after it, only the new key opens the secret.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import pino from 'pino';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { testApp, type TestApp } from '../helpers/app.js';
import { Keyring, keyring, setKeyring } from '../../src/core/sealed.js';
import { checkKeyring } from '../../src/runtime.js';
import { reply, startOpenAiServer, type LlmServer, type OpenAiBehaviour } from '../support/llm-servers.js';

const SECRET = 'cairn-SeCrEt-0d9c8b7a6f5e4d3c';

describeEachDriver('a secret, everywhere it goes', ({ db }) => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  let ai: LlmServer<OpenAiBehaviour>;
  let echo: Server;
  let echoUrl: string;
  const seenByEcho: string[] = [];
  const answers: { what: string; body: unknown }[] = [];
  const op = (slug: string, name: string) => `/api/${c.slug}/${slug}/ops/${name}`;
  /** Every answer goes through here, so the final search covers it. */
  const call = async (method: string, url: string, body?: unknown, token?: string) => {
    const r = await t.call(method, url, body, token ?? c.tokens.admin);
    answers.push({ what: `${method} ${url}`, body: r.body });
    return r;
  };
  const oldKey = Keyring.generateKey();
  const logLines: string[] = [];

  beforeAll(async () => {
    setKeyring(new Keyring(oldKey));
    ai = await startOpenAiServer({ api_key: SECRET });
    echo = createServer((req, res) => {
      seenByEcho.push(String(req.headers.authorization ?? ''));
      // A server that echoes the credential back: the run must not record it.
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ you_sent: req.headers.authorization ?? null }));
    });
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
    echoUrl = `http://127.0.0.1:${(echo.address() as AddressInfo).port}`;
    // Every log line the app and the engine write, at the most verbose level, kept for the search.
    t = await testApp(db(), {
      log: pino({ level: 'trace' }, { write: (line: string) => void logLines.push(line) }),
    });
    c = await t.circle('keeper');
  });
  afterAll(async () => {
    await t.close();
    await ai.close();
    await new Promise((r) => echo.close(r));
  });

  it('reaches a go-fn, an http header and a provider key, and shows up nowhere', async () => {
    expect(
      (
        await call('POST', `/api/${c.slug}/ops/create`, {
          element_type: 'secret',
          slug: 'token',
          spec: { value: SECRET },
        })
      ).status,
    ).toBe(201);
    const go = await call('POST', `/api/${c.slug}/ops/create`, {
      element_type: 'go-fn',
      slug: 'env-reader',
      spec: {
        source: {
          code:
            'package main\n\nimport (\n\t"fmt"\n\t"os"\n)\n\n' +
            'func Handler(input map[string]interface{}) (map[string]interface{}, error) {\n' +
            '\tv := os.Getenv("TOKEN")\n\tfmt.Println("the token is", v)\n\tfmt.Fprintln(os.Stderr, "stderr:", v)\n' +
            '\treturn map[string]interface{}{"token": v, "length": len(v)}, nil\n}\n',
        },
      },
    });
    expect(go.status, JSON.stringify(go.body)).toBe(201);
    const web = await call('POST', `/api/${c.slug}/ops/create`, {
      element_type: 'http',
      slug: 'caller',
      spec: {
        url: `${echoUrl}/whoami`,
        headers: { Authorization: 'Bearer ${{ secrets.token }}' },
        allow: ['127.0.0.1'],
      },
    });
    expect(web.status, JSON.stringify(web.body)).toBe(201);
    expect(
      (
        await call('POST', `/api/${c.slug}/ops/create`, {
          element_type: 'llm-provider',
          slug: 'prov',
          spec: { api: 'openai', base_url: ai.url, allow: ['127.0.0.1'] },
        })
      ).status,
    ).toBe(201);
    expect(
      (
        await call('POST', `/api/${c.slug}/ops/create`, {
          element_type: 'llm',
          slug: 'talk',
          spec: { model: 'prov/gpt-4o-mini', messages: [{ role: 'user', content: 'hi ${{ input.who }}' }] },
        })
      ).status,
    ).toBe(201);
    for (const [target, name] of [
      ['env-reader', 'TOKEN'],
      ['caller', 'token'],
      ['prov', 'api_key'],
    ])
      expect(
        (await call('POST', op('token', 'attach'), { target_id: target, name }, c.tokens.execute)).status,
      ).toBe(201);

    const goRun = await call('POST', op('env-reader', 'invoke'), {}, c.tokens.execute);
    expect(goRun.status, JSON.stringify(goRun.body)).toBe(200);
    // The process saw the whole value (its length), the record only the scrubbed form.
    expect(goRun.body.output).toEqual({ token: '[secret:token]', length: SECRET.length });
    const webRun = await call('POST', op('caller', 'invoke'), {}, c.tokens.execute);
    expect(webRun.status, JSON.stringify(webRun.body)).toBe(200);
    expect(seenByEcho.at(-1)).toBe(`Bearer ${SECRET}`);
    expect(webRun.body.output.body).toEqual({ you_sent: 'Bearer [secret:token]' });
    ai.enqueue(reply({ text: 'hello', usage: { prompt_tokens: 5, completion_tokens: 1, total_tokens: 6 } }));
    const llmRun = await call('POST', op('talk', 'invoke'), { who: 'you' }, c.tokens.execute);
    expect(llmRun.body.status, JSON.stringify(llmRun.body)).toBe('succeeded');
    expect(ai.requests.at(-1)!.headers.authorization).toBe(`Bearer ${SECRET}`);

    const logs = await call('GET', `/api/runs/${goRun.body.run_id}/logs`);
    expect(JSON.stringify(logs.body)).toContain('the token is [secret:token]');
    for (const run of [goRun, webRun, llmRun]) {
      const id = run.body.run_id;
      for (const path of ['', '/items', '/audit', '/logs', '/snapshot', '/ledger', '/lineage'])
        expect((await call('GET', `/api/runs/${id}${path}`)).status, path).toBeLessThan(500);
      // The run's live history (its events from the start), read until the stream is idle.
      const ctl = new AbortController();
      const base = await listening();
      const res = await fetch(`${base}/api/runs/${id}/events`, {
        headers: { authorization: `Bearer ${c.tokens.read}` },
        signal: ctl.signal,
      });
      let text = '';
      const reader = res.body!.getReader();
      const dec = new TextDecoder();
      const until = Date.now() + 1500;
      while (Date.now() < until && !/"run_status":"succeeded"/.test(text)) {
        const r = await Promise.race([
          reader.read(),
          new Promise<{ done: true }>((ok) => setTimeout(() => ok({ done: true }), 300)),
        ]);
        if (r.done) continue;
        text += dec.decode((r as { value: Uint8Array }).value);
      }
      ctl.abort();
      expect(text.length).toBeGreaterThan(0);
      answers.push({ what: `events of ${id}`, body: text });
    }
    for (const slug of ['token', 'env-reader', 'caller', 'prov', 'talk'])
      for (const name of [
        'get',
        'version?history=true',
        'attachments',
        'attached',
        'targets',
        'runs',
        'stats',
      ])
        await call('GET', op(slug, name));
    await call('GET', `/api/${c.slug}/elements`);
    await call('GET', `/api/${c.slug}/runs`);
    await call('GET', '/openapi.json');

    const leaks = answers.filter((a) => JSON.stringify(a.body).includes(SECRET)).map((a) => a.what);
    expect(leaks).toEqual([]);
    expect(logLines.length).toBeGreaterThan(0);
    expect(logLines.filter((l) => l.includes(SECRET))).toEqual([]);
    // Every table of the platform schema, every row as text.
    const tables = await db().query<{ t: string }>(
      `SELECT table_name AS t FROM information_schema.tables WHERE table_schema = 'cairn' AND table_type = 'BASE TABLE'`,
    );
    expect(tables.rows.length).toBeGreaterThan(10);
    const found: string[] = [];
    for (const { t: table } of tables.rows) {
      const r = await db().query<{ n: number }>(
        `SELECT count(*)::int AS n FROM cairn.${table} x WHERE x::text LIKE '%' || $1 || '%'`,
        [SECRET],
      );
      if (r.rows[0]!.n > 0) found.push(table);
    }
    expect(found).toEqual([]);
  }, 180_000);

  it('a key rotation re-seals: afterwards only the new key opens the secret', async () => {
    const newKey = Keyring.generateKey();
    // The new key current, the old one still known (CAIRN_SECRETS_KEY / CAIRN_SECRETS_KEY_PREVIOUS).
    setKeyring(new Keyring(newKey, [oldKey]));
    const rotated = await t.call('POST', '/api/admin/secrets/rotate', {}, t.admin);
    expect(rotated.status, JSON.stringify(rotated.body)).toBe(200);
    expect(rotated.body).toMatchObject({ key_id: keyring().currentId });
    expect(rotated.body.resealed).toBeGreaterThanOrEqual(2); // the element and its version
    // The deployment's key id moved with it (a process holding another key warns when it starts).
    const recorded = await db().query<{ value: string }>(
      `SELECT value FROM cairn.instance_settings WHERE name = 'secrets_key_id'`,
    );
    expect(recorded.rows[0]!.value).toBe(keyring().currentId);
    const errors: unknown[] = [];
    const log = {
      error: (o: unknown) => errors.push(o),
      warn: () => {},
      info: () => {},
      debug: () => {},
    } as never;
    await checkKeyring(db(), keyring(), log);
    expect(errors).toEqual([]);
    await checkKeyring(db(), new Keyring(Keyring.generateKey()), log);
    expect(errors).toEqual([expect.objectContaining({ deployment_key_id: keyring().currentId })]);
    const again = await t.call('POST', '/api/admin/secrets/rotate', {}, t.admin);
    expect(again.body.resealed).toBe(0);
    const byCircle = await t.call('POST', '/api/admin/secrets/rotate', {}, c.tokens.admin);
    expect(byCircle.status).toBe(403);
    // Only the new key from now on: the secret still opens, and the definition did not change.
    setKeyring(new Keyring(newKey));
    const run = await t.call('POST', op('env-reader', 'invoke'), {}, c.tokens.execute);
    expect(run.body.output).toEqual({ token: '[secret:token]', length: SECRET.length });
    const el = await t.call('GET', op('token', 'get'), undefined, c.tokens.read);
    expect(el.body.version).toBe(1);
    // A process holding only the old key cannot open it any more.
    setKeyring(new Keyring(oldKey));
    const stale = await t.call('POST', op('env-reader', 'invoke'), {}, c.tokens.execute);
    expect(stale.body.status).toBe('failed');
    expect(stale.body.error.code).toBe('SECRET_UNREADABLE');
    setKeyring(new Keyring(newKey));
  }, 60_000);

  let base: string | undefined;
  async function listening(): Promise<string> {
    base ??= await t.app.listen({ port: 0, host: '127.0.0.1' });
    return base;
  }
});

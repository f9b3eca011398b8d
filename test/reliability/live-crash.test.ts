import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pgWithCircle } from '../helpers/db.js';
import { cairn, ensureBuilt, until, type Proc } from '../helpers/bin.js';
import { followEvents } from '../../src/cli/sse.js';
import { comparePos, parsePos } from '../../src/store/live.js';

/**
 * R-LIVE reliability: the API process serving a live stream is SIGKILLed while a workflow runs.
 * The client reconnects to another process with Last-Event-ID and, counted against an independent
 * read of the same stream, receives every event exactly once.
 */
const TOKEN = 'live-crash-bootstrap-token-0123456789';

interface Serve extends Proc {
  url: string;
  dir: string;
}

async function serve(dbUrl: string, worker: boolean): Promise<Serve> {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-live-'));
  const p = cairn(['serve', '--port', '0', '--data', dir], {
    DATABASE_URL: dbUrl,
    CAIRN_BOOTSTRAP_TOKEN: TOKEN,
    CAIRN_LOG_LEVEL: 'warn',
    CAIRN_EMBEDDED_WORKER: worker ? '1' : '0',
    CAIRN_PREWARM: '0',
    CAIRN_RETENTION_INTERVAL_MS: '0',
  });
  const url = await until(
    async () => {
      if (p.child.exitCode !== null) throw new Error(`serve exited:\n${p.output()}`);
      return /serving on (http:\/\/\S+)/.exec(p.output())?.[1];
    },
    60_000,
    'serve to start',
  );
  return { ...p, url, dir };
}

interface Ev {
  id: string;
  type: string;
  run_id: string | null;
  data: Record<string, unknown>;
}

describe('a live stream whose API process is killed mid-run', () => {
  let dbUrl: string;
  let drop: () => Promise<void>;
  let slug: string;
  const procs: Serve[] = [];

  beforeAll(async () => {
    ensureBuilt();
    const h = await pgWithCircle('live-crash');
    dbUrl = h.url;
    drop = h.drop;
    slug = h.circle.slug;
  }, 120_000);

  afterAll(async () => {
    for (const p of procs) {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
      rmSync(p.dir, { recursive: true, force: true });
    }
    await drop?.();
  });

  it('the client resumes on another process with Last-Event-ID and gets every event exactly once', async () => {
    // A serves only the API (the stream); B runs the worker and serves the API too.
    const a = await serve(dbUrl, false);
    const b = await serve(dbUrl, true);
    procs.push(a, b);
    const auth = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
    const post = async (base: string, path: string, body: unknown) => {
      const r = await fetch(base + path, { method: 'POST', headers: auth, body: JSON.stringify(body) });
      return { status: r.status, body: (await r.json()) as any };
    };
    expect(
      (
        await post(a.url, `/api/${slug}/ops/create`, {
          element_type: 'python',
          slug: 'nap',
          spec: {
            source: {
              code: 'import time\ndef handler(d):\n    time.sleep(0.3)\n    print("napped")\n    return {}\n',
            },
          },
        })
      ).status,
    ).toBe(201);
    const steps = Array.from({ length: 8 }, (_, i) => ({
      name: `s${i}`,
      element: 'nap',
      ...(i > 0 ? { needs: [`s${i - 1}`] } : {}),
    }));
    expect(
      (
        await post(a.url, `/api/${slug}/ops/create`, {
          element_type: 'workflow',
          slug: 'naps',
          spec: { steps },
        })
      ).status,
    ).toBe(201);

    const got: Ev[] = [];
    const started: { run?: string } = {};
    const ended = () =>
      got.some(
        (e) =>
          e.type === 'status' &&
          e.run_id === started.run &&
          ['succeeded', 'failed', 'completed', 'cancelled'].includes(String(e.data.to)),
      );
    // Read from A until it dies, then from B with the last id.
    const read = async (base: string, lastEventId: string | undefined, stopAfter?: number) => {
      const ac = new AbortController();
      const timer = setTimeout(() => ac.abort(), 90_000);
      try {
        for await (const e of followEvents(`${base}/api/${slug}/events`, {
          headers: { authorization: `Bearer ${TOKEN}` },
          lastEventId,
          signal: ac.signal,
          reconnect: false,
        })) {
          const body = JSON.parse(e.data);
          got.push({ id: e.id!, type: body.type, run_id: body.run_id, data: body.data });
          if (stopAfter !== undefined && got.length === stopAfter) a.child.kill('SIGKILL');
          if (ended()) break;
        }
      } catch {
        // the connection died with its process
      } finally {
        clearTimeout(timer);
        ac.abort();
      }
    };
    const first = read(a.url, undefined, 12);
    await new Promise((r) => setTimeout(r, 500));
    const t = await post(b.url, `/api/${slug}/naps/ops/trigger`, { parameters: {} });
    expect(t.status).toBe(202);
    started.run = t.body.run_id;
    await first;
    await a.exited;
    expect(a.child.signalCode).toBe('SIGKILL'); // A is gone
    const beforeCrash = got.length;
    expect(beforeCrash).toBeGreaterThanOrEqual(12);
    expect(ended()).toBe(false); // killed mid-run
    await read(b.url, got.at(-1)!.id);
    expect(ended()).toBe(true);

    // Exactly once: no id twice, in stream order, and equal to an independent read of the same span.
    const ids = got.map((e) => e.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (let i = 1; i < ids.length; i++)
      expect(comparePos(parsePos(ids[i - 1]!)!, parsePos(ids[i]!)!)).toBe(-1);
    const again: string[] = [];
    const ac = new AbortController();
    const quiet = setTimeout(() => ac.abort(), 3_000);
    try {
      for await (const e of followEvents(`${b.url}/api/${slug}/events`, {
        headers: { authorization: `Bearer ${TOKEN}` },
        lastEventId: ids[0],
        signal: ac.signal,
        reconnect: false,
      })) {
        again.push(e.id!);
        if (again.length === ids.length - 1) break;
      }
    } catch {
      // aborted
    } finally {
      clearTimeout(quiet);
      ac.abort();
    }
    expect(again).toEqual(ids.slice(1));
    // Every task's run ended and was seen: eight task runs plus the workflow's.
    const terminal = got.filter(
      (e) =>
        e.type === 'status' && ['succeeded', 'failed', 'completed', 'cancelled'].includes(String(e.data.to)),
    );
    expect(new Set(terminal.map((e) => e.run_id)).size, JSON.stringify(terminal.map((e) => e.data))).toBe(9);
  }, 180_000);
});

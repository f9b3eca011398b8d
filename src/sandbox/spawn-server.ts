import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execHelper } from './exec-helper.js';

/**
 * The exec helper's spawn server (`cairn-sandbox-exec --serve`), one per
 * sandbox instance: every sandbox run is a connection to it. Node never forks
 * itself for a run (a fork of this large process costs the event loop
 * milliseconds); the server is tiny and forks one child per connection (see
 * helper.c). Started on first use, restarted if it died.
 */
export class SpawnServer {
  private proc: ChildProcess | undefined;
  private ready: Promise<string> | undefined;
  private lastError = '';

  private start(): Promise<string> {
    const helper = execHelper();
    // A directory only this uid can enter; the server also checks each peer's uid.
    const dir = mkdtempSync(join(tmpdir(), 'cairn-spawn-'));
    const path = join(dir, 's');
    const p = spawn(helper, ['--serve', path], { env: {}, stdio: ['pipe', 'pipe', 'pipe'] });
    this.proc = p;
    const forget = () => {
      if (this.proc === p) {
        this.proc = undefined;
        this.ready = undefined;
      }
      rmSync(dir, { recursive: true, force: true });
    };
    p.stderr!.on(
      'data',
      (d: Buffer) => (this.lastError = (this.lastError + d.toString('utf8')).slice(-2000)),
    );
    p.on('exit', forget);
    p.on('error', forget);
    // Neither the server nor its pipes keep Cairn alive; its stdin closing tells it Cairn is gone.
    p.unref();
    for (const s of [p.stdin, p.stdout, p.stderr]) (s as unknown as { unref?: () => void }).unref?.();
    return new Promise((resolve, reject) => {
      let out = '';
      p.stdout!.on('data', (d: Buffer) => {
        out += d.toString('utf8');
        if (out.includes('ready\n')) resolve(path);
      });
      p.on('exit', (code) =>
        reject(
          new Error(`the sandbox spawn server exited (${code}): ${this.lastError.trim() || 'no message'}`),
        ),
      );
      p.on('error', reject);
    });
  }

  /** A connection to the spawn server (started on first use, restarted if it died). */
  async connect(): Promise<Socket> {
    this.ready ??= this.start();
    const path = await this.ready.catch((e) => {
      this.ready = undefined;
      throw e;
    });
    return createConnection(path);
  }

  /** Stops the server (its stdin closing ends it; sandboxes already running are reaped by their helpers). */
  close(): void {
    const p = this.proc;
    this.proc = undefined;
    this.ready = undefined;
    p?.stdin?.end();
  }
}

/** One frame of the helper's protocol: a type byte, a little-endian u32 length, the bytes. */
export function frame(type: string, data: Buffer | string = ''): Buffer {
  const body = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  const h = Buffer.alloc(5);
  h.write(type, 0, 'latin1');
  h.writeUInt32LE(body.length, 1);
  return Buffer.concat([h, body]);
}

/** Splits a byte stream into frames as they complete. */
export function frameReader(onFrame: (type: string, data: Buffer) => void): (chunk: Buffer) => void {
  let buf: Buffer = Buffer.alloc(0);
  return (chunk) => {
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
    while (buf.length >= 5) {
      const n = buf.readUInt32LE(1);
      if (buf.length < 5 + n) break;
      onFrame(String.fromCharCode(buf[0]!), buf.subarray(5, 5 + n));
      buf = buf.subarray(5 + n);
    }
  };
}

/**
 * Files (R-FILES) behind one storage interface: content-addressed blobs
 * (sha256) with per-circle references. The PostgreSQL store keeps each blob
 * once, in 1 MiB chunks; a circle reads a blob only through its own
 * reference. Another store (S3-compatible) implements the same interface.
 */
import { createHash } from 'node:crypto';
import type { Queryable } from '../db/types.js';

/** A file as runs and the API name it. */
export interface FileRef {
  name: string;
  sha256: string;
  size: number;
  media_type: string;
}

/** Where blobs live. Every call is scoped to a circle. */
export interface FileStore {
  /** Stores bytes for a circle (once per content); answers their hash and size. */
  put(circleId: string, data: Buffer, meta?: { media_type?: string; name?: string }): Promise<FileRef>;
  /** The bytes, when the circle holds a reference to them; undefined otherwise. */
  get(circleId: string, sha256: string): Promise<Buffer | undefined>;
  /** Which of these the circle does not hold. */
  missing(circleId: string, sha256s: string[]): Promise<string[]>;
  /** What the circle knows of a file, without its bytes. */
  stat(circleId: string, sha256: string): Promise<FileRef | undefined>;
}

export const CHUNK_BYTES = 1024 * 1024;
export const SHA256_RE = /^[0-9a-f]{64}$/;

export function sha256Of(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** The PostgreSQL file store (the default): chunks in cairn.blob_chunks, references in cairn.circle_files. */
export class PgFileStore implements FileStore {
  constructor(private readonly q: Queryable) {}

  async put(
    circleId: string,
    data: Buffer,
    meta: { media_type?: string; name?: string } = {},
  ): Promise<FileRef> {
    const sha256 = sha256Of(data);
    const media_type = meta.media_type ?? 'application/octet-stream';
    const chunks: Buffer[] = [];
    for (let i = 0; i < data.length; i += CHUNK_BYTES) chunks.push(data.subarray(i, i + CHUNK_BYTES));
    if (chunks.length === 0) chunks.push(Buffer.alloc(0));
    const known = await this.q.query<{ n: number }>(
      'SELECT count(*)::int AS n FROM cairn.blob_chunks WHERE sha256 = $1',
      [sha256],
    );
    // Written whole unless every chunk is there (a write cut short is completed, not trusted).
    if (known.rows[0]!.n < chunks.length) {
      // One statement per chunk keeps each parameter small; a concurrent writer of the same
      // bytes loses the race harmlessly (ON CONFLICT). The circle's reference comes last.
      for (let seq = 0; seq < chunks.length; seq++)
        await this.q.query(
          `WITH b AS (INSERT INTO cairn.blobs (sha256, size) VALUES ($1, $4) ON CONFLICT DO NOTHING)
           INSERT INTO cairn.blob_chunks (sha256, seq, data) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
          [sha256, seq, chunks[seq], data.length],
        );
    }
    await this.q.query(
      `INSERT INTO cairn.circle_files (circle_id, sha256, media_type, name) VALUES ($1, $2, $3, $4)
       ON CONFLICT (circle_id, sha256) DO NOTHING`,
      [circleId, sha256, media_type, meta.name ?? null],
    );
    return { name: meta.name ?? sha256, sha256, size: data.length, media_type };
  }

  async get(circleId: string, sha256: string): Promise<Buffer | undefined> {
    if (!SHA256_RE.test(sha256)) return undefined;
    const r = await this.q.query<{ data: Uint8Array }>(
      `SELECT c.data FROM cairn.circle_files f JOIN cairn.blob_chunks c ON c.sha256 = f.sha256
       WHERE f.circle_id = $1 AND f.sha256 = $2 ORDER BY c.seq`,
      [circleId, sha256],
    );
    if (r.rows.length === 0) return (await this.stat(circleId, sha256)) ? Buffer.alloc(0) : undefined;
    return Buffer.concat(r.rows.map((x) => Buffer.from(x.data)));
  }

  async missing(circleId: string, sha256s: string[]): Promise<string[]> {
    const want = [...new Set(sha256s)];
    if (want.length === 0) return [];
    const r = await this.q.query<{ sha256: string }>(
      'SELECT sha256 FROM cairn.circle_files WHERE circle_id = $1 AND sha256 = ANY($2::text[])',
      [circleId, want],
    );
    const have = new Set(r.rows.map((x) => x.sha256));
    return want.filter((s) => !have.has(s));
  }

  async stat(circleId: string, sha256: string): Promise<FileRef | undefined> {
    if (!SHA256_RE.test(sha256)) return undefined;
    const r = await this.q.query<{ sha256: string; size: string; media_type: string; name: string | null }>(
      `SELECT f.sha256, b.size::text AS size, f.media_type, f.name FROM cairn.circle_files f
       JOIN cairn.blobs b ON b.sha256 = f.sha256 WHERE f.circle_id = $1 AND f.sha256 = $2`,
      [circleId, sha256],
    );
    const x = r.rows[0];
    return (
      x && { name: x.name ?? x.sha256, sha256: x.sha256, size: Number(x.size), media_type: x.media_type }
    );
  }
}

/**
 * A file reference as users write it: `{"$file": "sha256:<hex>"}`, `"sha256:<hex>"`, or a file
 * object `{sha256, …}` (what `steps.<name>.files[…]` gives). Undefined when it is none of these.
 */
export function fileRefOf(v: unknown): string | undefined {
  if (typeof v === 'string') {
    const m = /^sha256:([0-9a-f]{64})$/.exec(v);
    return m?.[1];
  }
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    const o = v as Record<string, unknown>;
    if (typeof o.$file === 'string') return fileRefOf(o.$file);
    if (typeof o.sha256 === 'string') return SHA256_RE.test(o.sha256) ? o.sha256 : fileRefOf(o.sha256);
  }
  return undefined;
}

/** Every `{"$file": …}` reference inside a JSON value (trigger parameters). */
export function fileRefsIn(v: unknown, out: string[] = []): string[] {
  if (Array.isArray(v)) for (const x of v) fileRefsIn(x, out);
  else if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    if (typeof o.$file === 'string' && Object.keys(o).length === 1) {
      const h = fileRefOf(o.$file);
      out.push(h ?? o.$file);
    } else for (const x of Object.values(o)) fileRefsIn(x, out);
  }
  return out;
}

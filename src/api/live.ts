/**
 * The live event hub of one API process (R-LIVE). It listens once on `cairn_live` (the NOTIFY
 * carries a circle id, nothing else) and, per circle someone watches, reads the new rows of
 * cairn.live_events once and fans them out to that circle's subscribers. A subscriber that
 * resumes (Last-Event-ID) first reads what it missed itself, up to the feed's position, then
 * joins it; every delivery is checked against the subscriber's own position, so nothing is
 * sent twice and nothing is skipped. On PGlite the NOTIFY is in-process; on PostgreSQL it
 * reaches every API process, whichever process committed the change.
 */
import type { Db } from '../db/types.js';
import {
  comparePos,
  formatPos,
  livePosHead,
  readLive,
  START,
  type LivePos,
  type LiveRow,
} from '../store/live.js';

export interface LiveOptions {
  /** A safety read of every watched circle this often, should a NOTIFY be lost (ms). */
  pollMs: number;
  /** Bytes a subscriber may have unsent before it is cut off (it resumes with Last-Event-ID). */
  maxBufferBytes: number;
  /** Rows per read. */
  batch: number;
}

/** Pause between back-to-back reads of a busy circle (ms). */
const BUSY_READ_GAP_MS = 3;

const DEFAULTS: LiveOptions = { pollMs: 1000, maxBufferBytes: 1 << 20, batch: 1000 };

/** One watcher: its filter, where it is, and where its events go. */
export interface Subscriber {
  /** Only rows of this run (a run stream). */
  runId?: string;
  accepts(row: LiveRow): boolean;
  /**
   * Writes one event; returns false when the subscriber must be cut off (too slow, gone). While
   * it catches up (`live` false) it is paced by `drained` instead, never cut off for its backlog.
   */
  send(row: LiveRow, frame: string, live: boolean): boolean;
  /** Resolves once what was sent is mostly written out (catching up waits on it between reads). */
  drained?(): Promise<void>;
  close(): void;
}

interface Sub {
  s: Subscriber;
  pos: LivePos;
  active: boolean;
  closed: boolean;
}

/** The SSE frame of a row, made once per row whatever the number of subscribers. */
const frames = new WeakMap<LiveRow, string>();
export function frameOf(row: LiveRow): string {
  let f = frames.get(row);
  if (f === undefined) {
    const id = formatPos(row.pos);
    const data = JSON.stringify({
      id,
      type: row.type,
      circle_id: row.circle_id,
      run_id: row.run_id,
      element_id: row.element_id,
      element_slug: row.element_slug,
      kind: row.kind,
      run_status: row.run_status,
      at: row.at,
      data: row.data,
    });
    // JSON has no raw newline, so one data line holds the whole event.
    f = `id: ${id}\nevent: ${row.type}\ndata: ${data}\n\n`;
    frames.set(row, f);
  }
  return f;
}

class CircleFeed {
  cursor: LivePos = START;
  readonly subs = new Set<Sub>();
  private reading = false;
  private again = false;
  private retry: NodeJS.Timeout | undefined;
  private retryMs = 2;
  readonly ready: Promise<void>;

  constructor(
    private readonly hub: LiveHub,
    readonly circleId: string,
  ) {
    this.ready = livePosHead(hub.db, circleId).then((p) => {
      this.cursor = p;
    });
  }

  /** Reads what is new and fans it out; coalesces wake-ups that arrive meanwhile. */
  wake(): void {
    if (this.reading) {
      this.again = true;
      return;
    }
    this.reading = true;
    void this.readLoop().finally(() => {
      this.reading = false;
    });
  }

  private async readLoop(): Promise<void> {
    await this.ready.catch(() => undefined);
    do {
      this.again = false;
      let b;
      try {
        b = await readLive(this.hub.db, { circleId: this.circleId }, this.cursor, this.hub.opts.batch);
      } catch {
        if (this.hub.closed) return;
        this.scheduleRetry(200);
        return;
      }
      for (const row of b.rows) {
        this.cursor = row.pos;
        for (const sub of this.subs) if (sub.active) this.hub.deliver(sub, row);
      }
      if (b.full) this.again = true;
      if (b.heldBack) this.scheduleRetry();
      else this.retryMs = 2;
      // Changes came in while this read ran: a busy circle. A short pause lets the next read take
      // a burst of them at once (an isolated change is read at once: nothing is in flight then).
      if (this.again && !b.full) await new Promise((r) => setTimeout(r, BUSY_READ_GAP_MS));
    } while (this.again && !this.hub.closed);
  }

  /** A transaction that wrote rows is not over yet: look again shortly (backing off to 250 ms). */
  private scheduleRetry(ms?: number): void {
    if (this.retry) return;
    const wait = ms ?? this.retryMs;
    this.retryMs = Math.min(this.retryMs * 2, 250);
    this.retry = setTimeout(() => {
      this.retry = undefined;
      this.wake();
    }, wait);
    this.retry.unref();
  }

  stop(): void {
    if (this.retry) clearTimeout(this.retry);
  }
}

export class LiveHub {
  readonly opts: LiveOptions;
  private readonly feeds = new Map<string, CircleFeed>();
  private unlisten: (() => Promise<void>) | undefined;
  private listening: Promise<void> | undefined;
  private poll: NodeJS.Timeout | undefined;
  closed = false;

  constructor(
    readonly db: Db,
    opts: Partial<LiveOptions> = {},
  ) {
    this.opts = { ...DEFAULTS, ...opts };
  }

  private async listen(): Promise<void> {
    // A failed LISTEN is tried again by the next subscriber, not kept.
    this.listening ??= (async () => {
      this.unlisten = await this.db.listen('cairn_live', (circleId) => this.feeds.get(circleId)?.wake());
      this.poll = setInterval(() => {
        for (const f of this.feeds.values()) f.wake();
      }, this.opts.pollMs);
      this.poll.unref();
    })().catch((e: unknown) => {
      this.listening = undefined;
      throw e;
    });
    return this.listening;
  }

  /** Number of subscribers, per circle (diagnostics and tests). */
  subscribers(): number {
    let n = 0;
    for (const f of this.feeds.values()) n += f.subs.size;
    return n;
  }

  /**
   * Adds a subscriber of a circle's events from `from` (exclusive); `from` undefined means
   * only what happens from now on. Returns the function that removes it.
   */
  async subscribe(circleId: string, s: Subscriber, from: LivePos | undefined): Promise<() => void> {
    if (this.closed) throw new Error('the live hub is closed');
    await this.listen();
    const sub: Sub = { s, pos: from ?? START, active: false, closed: false };
    let feed: CircleFeed;
    for (;;) {
      let f = this.feeds.get(circleId);
      if (!f) {
        const created = new CircleFeed(this, circleId);
        f = created;
        this.feeds.set(circleId, created);
        // A feed whose first read failed is dropped, so the next subscriber starts a fresh one.
        created.ready.catch(() => {
          if (this.feeds.get(circleId) === created && created.subs.size === 0) this.feeds.delete(circleId);
        });
      }
      // Counted before the wait, so the last subscriber leaving meanwhile does not drop this feed.
      f.subs.add(sub);
      try {
        await f.ready;
      } catch (e) {
        f.subs.delete(sub);
        if (this.feeds.get(circleId) === f && f.subs.size === 0) this.feeds.delete(circleId);
        throw e;
      }
      if (this.feeds.get(circleId) === f) {
        feed = f;
        break;
      }
      f.subs.delete(sub); // it was removed while we waited: join the current one
    }
    if (!from) sub.pos = feed.cursor;
    const remove = () => {
      sub.closed = true;
      feed.subs.delete(sub);
      if (feed.subs.size === 0 && this.feeds.get(circleId) === feed) {
        feed.stop();
        this.feeds.delete(circleId);
      }
    };
    try {
      // Catch up alone, up to where the feed is; the feed's rows up to there are final.
      while (!sub.closed && comparePos(sub.pos, feed.cursor) < 0) {
        const bound = feed.cursor;
        const scope = s.runId ? { runId: s.runId } : { circleId };
        const b = await readLive(this.db, scope, sub.pos, this.opts.batch);
        let reached = false;
        for (const row of b.rows) {
          if (comparePos(row.pos, bound) > 0) {
            reached = true;
            break;
          }
          this.deliver(sub, row);
          if (sub.closed) break;
        }
        // Every row of its scope up to the bound is delivered (or the read was full, or rows were
        // held back by a transaction not over yet: read on from the last delivered one).
        if ((reached || (!b.full && !b.heldBack)) && comparePos(sub.pos, bound) < 0) sub.pos = bound;
        else if (b.heldBack && !reached) await new Promise((r) => setTimeout(r, 5));
        // A long history (a 10,000-item run) goes out as fast as the client reads it, not faster.
        if (!sub.closed) await s.drained?.();
      }
    } catch (e) {
      remove();
      throw e;
    }
    // Synchronously at the feed's position: from here on the feed delivers to it.
    sub.active = !sub.closed;
    return remove;
  }

  /** Sends a row to a subscriber if it is new to it and passes its filter; cuts off one too slow. */
  deliver(sub: Sub, row: LiveRow): void {
    if (sub.closed || comparePos(row.pos, sub.pos) <= 0) return;
    sub.pos = row.pos;
    if (sub.s.runId !== undefined && row.run_id !== sub.s.runId) return;
    if (!sub.s.accepts(row)) return;
    if (!sub.s.send(row, frameOf(row), sub.active)) {
      sub.closed = true;
      sub.s.close();
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.poll) clearInterval(this.poll);
    for (const f of this.feeds.values()) {
      f.stop();
      for (const sub of f.subs) {
        sub.closed = true;
        sub.s.close();
      }
    }
    this.feeds.clear();
    await this.listening?.catch(() => undefined);
    await this.unlisten?.().catch(() => undefined);
  }
}

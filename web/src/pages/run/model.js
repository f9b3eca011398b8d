/**
 * The state of one run page: the run, its items (a batch's or an invoke's) or tasks (a
 * workflow's), its audit trail, and the live updates that change them. Items load a page at a
 * time (250 first, then 2,000) in the background up to ITEM_CAP, then on scroll; an `item` event patches its
 * row in place, so a 10,000-item run is never refetched whole while it runs.
 */
import { signal } from '@preact/signals';
import { api, qs } from '../../lib/api.js';
import { coalesce } from '../../lib/live.js';
import { isTerminal, iso } from '../../lib/format.js';

/** The first page is small (the first rows show sooner), the next ones larger. */
const FIRST = 250;
const PAGE = 2000;
const ITEM_CAP = 20_000;
const enc = encodeURIComponent;

const RANK = { pending: 0, running: 1, retrying: 1, succeeded: 2, failed: 2, skipped: 2, cancelled: 2 };

/** A status event that continues from what the page shows. */
function forward(r, d) {
  if (d.from === r.status) return true;
  const done = (x) => (x.items_succeeded ?? 0) + (x.items_failed ?? 0);
  return d.to === r.status && done(d) >= done(r);
}

/** An item event newer than the item as loaded: a later attempt, or a later state of the same one. */
function newer(x, d) {
  const a = d.attempt ?? x.attempt_count;
  if (a !== x.attempt_count) return a > x.attempt_count;
  return (RANK[d.status] ?? 0) >= (RANK[x.status] ?? 0) && d.status !== x.status;
}

export class RunModel {
  constructor(id) {
    this.id = id;
    this.run = signal(null);
    this.error = signal(null);
    /** The first page of items (or the tasks) is in. */
    this.ready = signal(false);
    this.audit = signal(null);
    this.tasks = signal(null);
    this.tasksError = signal(null);
    /** The loaded items (array, patched in place) and a counter bumped on every change. */
    this.items = [];
    /** item id → its index in items. */
    this.index = new Map();
    this.itemsVersion = signal(0);
    this.itemsState = signal({ loading: false, done: false, error: null, filter: '' });
    /** Log lines that arrived live, per item id: [[ms, stream, text], …]. */
    this.liveLogs = new Map();
    this.logsVersion = signal(0);
    /** Bumped on cost events (the ledger tab reloads). */
    this.costVersion = signal(0);
    this.pages = [];
    this.visible = [0, 50];
    this.gen = 0;
    this.disposed = false;
    this.lastSeen = '';
    this.refreshRun = coalesce(() => void this.loadRun(true), 200);
    this.refreshAudit = coalesce(() => void this.loadAudit(), 400);
    this.refreshTasks = coalesce(() => void this.loadTasks(), 250);
    this.refreshItems = coalesce(() => void this.refreshVisibleItems(), 1000);
  }

  get kind() {
    return this.run.value?.kind;
  }

  async loadRun(quiet = false) {
    try {
      const before = this.run.value;
      const r = await api(`/api/runs/${enc(this.id)}`);
      if (this.disposed) return r;
      this.run.value = r;
      this.error.value = null;
      if (!before) this.start(r);
      else this.changed(before, r, quiet);
      return r;
    } catch (e) {
      if (!this.disposed) this.error.value = e;
      return null;
    }
  }

  /** The first load: what the run's kind needs. */
  start(r) {
    void this.loadAudit();
    if (r.kind === 'workflow') void this.loadTasks();
    else void this.loadItems('');
  }

  /** After a refetch: what else to refresh, from what moved. */
  changed(a, b) {
    const sig = (r) =>
      `${r.status}|${r.items_succeeded}|${r.items_failed}|${r.items_pending}|${r.finished_at}|${(r.awaiting_approval ?? []).length}`;
    if (sig(a) === sig(b)) return;
    if (a.status !== b.status || (a.awaiting_approval ?? []).length !== (b.awaiting_approval ?? []).length)
      this.refreshAudit();
    if (b.kind === 'workflow') this.refreshTasks();
    else if (isTerminal(b.status) && !isTerminal(a.status)) void this.loadItems(this.itemsState.value.filter);
    else this.refreshItems();
  }

  /** What polling does (the server has no event stream): the run, and what moved. Answers the next delay. */
  async poll() {
    const r = await this.loadRun(true);
    return r && isTerminal(r.status) ? 5000 : 1000;
  }

  async loadAudit() {
    try {
      const a = await api(`/api/runs/${enc(this.id)}/audit`);
      if (!this.disposed) this.audit.value = a.events;
    } catch {
      /* the audit tab shows nothing new; the header has the run */
    }
  }

  async loadTasks() {
    try {
      const t = await api(`/api/runs/${enc(this.id)}/tasks`);
      if (this.disposed) return;
      this.tasks.value = t.tasks;
      this.tasksError.value = null;
      this.ready.value = true;
    } catch (e) {
      if (!this.disposed) this.tasksError.value = e;
      this.ready.value = true;
    }
  }

  /** (Re)loads the items from the first page, with a status filter ('' for all). */
  async loadItems(filter) {
    const gen = ++this.gen;
    this.pages = [];
    const fresh = [];
    this.itemsState.value = { loading: true, done: false, error: null, filter };
    // The old list stays on screen until the first page of the new one arrives.
    let after = null;
    for (;;) {
      let page;
      try {
        const limit = this.pages.length === 0 ? FIRST : PAGE;
        page = await api(`/api/runs/${enc(this.id)}/items${qs({ status: filter, limit, after })}`);
      } catch (e) {
        if (gen === this.gen) this.itemsState.value = { ...this.itemsState.value, loading: false, error: e };
        this.ready.value = true;
        return;
      }
      if (gen !== this.gen || this.disposed) return;
      this.pages.push({ after, count: page.items.length });
      fresh.push(...page.items);
      this.items = fresh;
      this.reindex();
      this.itemsVersion.value++;
      this.ready.value = true;
      after = page.next_after;
      const done = after === null;
      this.itemsState.value = { loading: !done, done, error: null, filter };
      if (done) return;
      // Past the cap, the next page loads when the list is scrolled near its end.
      if (fresh.length >= ITEM_CAP) {
        this.itemsState.value = { loading: false, done: false, error: null, filter, after };
        return;
      }
    }
  }

  /** The next page past the cap (scrolled to the end). */
  async loadMoreItems() {
    const st = this.itemsState.value;
    if (st.loading || st.done || st.after === undefined) return;
    const gen = this.gen;
    this.itemsState.value = { ...st, loading: true };
    try {
      const page = await api(
        `/api/runs/${enc(this.id)}/items${qs({ status: st.filter, limit: PAGE, after: st.after })}`,
      );
      if (gen !== this.gen) return;
      this.pages.push({ after: st.after, count: page.items.length });
      this.items = [...this.items, ...page.items];
      this.reindex();
      this.itemsVersion.value++;
      this.itemsState.value = {
        loading: false,
        done: page.next_after === null,
        error: null,
        filter: st.filter,
        after: page.next_after ?? undefined,
      };
    } catch (e) {
      this.itemsState.value = { ...st, loading: false, error: e };
    }
  }

  reindex() {
    this.index = new Map(this.items.map((x, i) => [x.id, i]));
  }

  setVisible(first, last) {
    this.visible = [first, last];
    const st = this.itemsState.value;
    if (!st.done && !st.loading && last >= this.items.length - 50) void this.loadMoreItems();
  }

  /** Refetches the pages that hold the rows in view (a filtered list reloads from the start). */
  async refreshVisibleItems() {
    if (this.kind === 'workflow' || this.itemsState.value.loading) return;
    const filter = this.itemsState.value.filter;
    if (filter) return this.loadItems(filter);
    const gen = this.gen;
    const [first, last] = this.visible;
    let start = 0;
    for (const p of this.pages) {
      const end = start + p.count;
      if (end > first && start <= last) {
        try {
          const page = await api(
            `/api/runs/${enc(this.id)}/items${qs({ limit: p.count || PAGE, after: p.after })}`,
          );
          if (gen !== this.gen) return;
          for (let i = 0; i < page.items.length && start + i < this.items.length; i++)
            this.items[start + i] = page.items[i];
          this.reindex();
          this.itemsVersion.value++;
        } catch {
          return;
        }
      }
      start = end;
    }
  }

  /** One live event (lib/sse.js): patch what it says at once, refetch the rest shortly. */
  onEvent(e) {
    const ev = e.data;
    if (!ev || typeof ev !== 'object') return;
    const d = ev.data ?? {};
    const mine = ev.run_id === this.id;
    // The stream first replays the run's history: only what moves the page forward is applied
    // at once (a transition from the status shown; an item's later attempt or state).
    if (e.event === 'status' && mine && this.run.value && forward(this.run.value, d)) {
      const r = this.run.value;
      const patch = { status: d.to ?? r.status };
      for (const k of [
        'items_total',
        'items_succeeded',
        'items_failed',
        'items_pending',
        'credits_reserved',
        'credits_used',
      ])
        if (typeof d[k] === 'number') patch[k] = d[k];
      this.run.value = { ...r, ...patch };
    }
    const at = iso(ev.at);
    if (e.event === 'item' && mine && d.item_id) {
      const i = this.index.get(d.item_id) ?? -1;
      const x = i >= 0 ? this.items[i] : null;
      if (x && x.id === d.item_id && newer(x, d)) {
        this.items[i] = {
          ...x,
          status: d.status ?? x.status,
          attempt_count: d.attempt ?? x.attempt_count,
          duration_ms: d.duration_ms ?? x.duration_ms,
          started_at: x.started_at ?? (d.status === 'running' ? at : x.started_at),
          finished_at: ['succeeded', 'failed', 'cancelled', 'skipped'].includes(d.status)
            ? (x.finished_at ?? at)
            : x.finished_at,
        };
        this.itemsVersion.value++;
      }
    }
    if (e.event === 'log' && d.item_id && Array.isArray(d.lines)) {
      const list = this.liveLogs.get(d.item_id) ?? [];
      list.push(...d.lines);
      this.liveLogs.set(d.item_id, list.slice(-2000));
      this.logsVersion.value++;
    }
    if (e.event === 'cost') this.costVersion.value++;
    if (e.event === 'audit' || e.event === 'approval' || e.event === 'status') this.refreshAudit();
    if (this.kind === 'workflow') this.refreshTasks();
    this.refreshRun();
  }

  /** After the stream (re)opens: whatever happened while it was closed. */
  onOpen() {
    this.refreshRun();
    if (this.kind === 'workflow') this.refreshTasks();
    else this.refreshItems();
  }

  dispose() {
    this.disposed = true;
    this.gen++;
    this.refreshRun.cancel();
    this.refreshAudit.cancel();
    this.refreshTasks.cancel();
    this.refreshItems.cancel();
  }
}

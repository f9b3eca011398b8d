-- The live event stream (R-LIVE, issue 14). Every change a watcher sees is a row here, written by
-- triggers in the same transaction as the change itself: a run's status, an item's or task's status
-- and its log lines, a run's counts, a ledger transfer, an audit event, an approval asked or given.
--
-- A row's position is (xid, id): the writing transaction's id, then the row's. Readers deliver only
-- rows whose xid is below the snapshot's xmin (cairn.live_watermark()), i.e. rows of transactions
-- that are over; every row committed later has a larger xid than any delivered, so a position
-- resumed from (Last-Event-ID) never skips a row that commits late and never repeats one. No
-- counter is shared between writers, so no circle's writes wait on another's.
CREATE TABLE cairn.live_events (
  xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
  id bigint GENERATED ALWAYS AS IDENTITY,
  circle_id uuid NOT NULL,
  run_id uuid,
  type text NOT NULL CHECK (type IN ('status', 'item', 'log', 'cost', 'audit', 'approval')),
  kind text,
  element_id uuid,
  element_slug text,
  run_status text,
  data jsonb NOT NULL DEFAULT '{}',
  at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX live_events_circle ON cairn.live_events (circle_id, xid, id);
CREATE INDEX live_events_run ON cairn.live_events (run_id, xid, id) WHERE run_id IS NOT NULL;
-- The stream is a window (CAIRN_LIVE_RETENTION_HOURS), not a record: the audit trail, the items and
-- the ledger are. Pruned by age.
CREATE INDEX live_events_at ON cairn.live_events USING brin (at);

-- The position below which no transaction can still add a row: every transaction older than it
-- is over, or is a circle's own SQL. A circle's session logs in as the circle's role, which cannot
-- write to cairn.*, so its transactions never add live events: they are not waited for, and a
-- circle that holds a writing transaction open stalls no one's stream. (Where pg_stat_activity
-- does not show another role's transaction ids, nothing is left out and the bound is the xmin.)
CREATE FUNCTION cairn.live_watermark() RETURNS xid8 LANGUAGE sql STABLE AS $$
  WITH s AS (SELECT pg_current_snapshot() AS snap)
  SELECT CASE WHEN pg_snapshot_xmin(s.snap) = pg_snapshot_xmax(s.snap) THEN pg_snapshot_xmax(s.snap)
    ELSE coalesce((
      SELECT min(x) FROM pg_snapshot_xip(s.snap) AS x
      WHERE (x::text::numeric % 4294967296)::bigint NOT IN (
        SELECT a.backend_xid::text::bigint FROM pg_stat_activity a JOIN cairn.circles c ON c.role_name = a.usename
        WHERE a.backend_xid IS NOT NULL)), pg_snapshot_xmax(s.snap)) END
  FROM s
$$;

-- A run created or changing status.
CREATE FUNCTION cairn.live_run_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO cairn.live_events (circle_id, run_id, type, kind, element_id, element_slug, run_status, data)
  VALUES (NEW.circle_id, NEW.id, 'status', NEW.kind, NEW.element_id, NEW.element_slug, NEW.status,
    jsonb_build_object('from', CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, 'to', NEW.status,
      'operation', NEW.operation, 'parent_run_id', NEW.parent_run_id, 'trigger', NEW.trigger ->> 'type',
      'items_total', NEW.items_total, 'items_succeeded', NEW.items_succeeded,
      'items_failed', NEW.items_failed, 'items_pending', NEW.items_pending,
      'credits_reserved', NEW.credits_reserved, 'credits_used', NEW.credits_used,
      'error_code', NEW.error ->> 'code', 'duration_ms', NEW.duration_ms));
  PERFORM pg_notify('cairn_live', NEW.circle_id::text);
  RETURN NULL;
END $$;
-- Deferred to the commit, so a run's status event follows everything its transaction wrote (its
-- items, log lines, ledger movements): a watcher that stops at a terminal status has seen it all.
CREATE CONSTRAINT TRIGGER runs_live_insert AFTER INSERT ON cairn.runs
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION cairn.live_run_status();
CREATE CONSTRAINT TRIGGER runs_live_status AFTER UPDATE OF status ON cairn.runs
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
  EXECUTE FUNCTION cairn.live_run_status();

-- A run's counts moving while its status stays (batch progress): an `item` event without an item.
CREATE FUNCTION cairn.live_run_counts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO cairn.live_events (circle_id, run_id, type, kind, element_id, element_slug, run_status, data)
  VALUES (NEW.circle_id, NEW.id, 'item', NEW.kind, NEW.element_id, NEW.element_slug, NEW.status,
    jsonb_build_object('items_total', NEW.items_total, 'items_succeeded', NEW.items_succeeded,
      'items_failed', NEW.items_failed, 'items_pending', NEW.items_pending,
      'credits_reserved', NEW.credits_reserved, 'credits_used', NEW.credits_used));
  PERFORM pg_notify('cairn_live', NEW.circle_id::text);
  RETURN NULL;
END $$;
CREATE TRIGGER runs_live_counts AFTER UPDATE OF items_total, items_succeeded, items_failed, items_pending ON cairn.runs
  FOR EACH ROW WHEN (OLD.status IS NOT DISTINCT FROM NEW.status
    AND (OLD.items_total, OLD.items_succeeded, OLD.items_failed, OLD.items_pending)
      IS DISTINCT FROM (NEW.items_total, NEW.items_succeeded, NEW.items_failed, NEW.items_pending))
  EXECUTE FUNCTION cairn.live_run_counts();

-- An item or task changing status (and its log lines once it ends), or a task asking for approval.
CREATE FUNCTION cairn.live_item() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  r record;
  asked boolean := NEW.evidence ? 'awaiting' AND NOT coalesce(OLD.evidence ? 'awaiting', false);
BEGIN
  SELECT kind, element_id, element_slug, status INTO r FROM cairn.runs WHERE id = NEW.run_id;
  IF OLD.status IS DISTINCT FROM NEW.status THEN
    INSERT INTO cairn.live_events (circle_id, run_id, type, kind, element_id, element_slug, run_status, data)
    VALUES (NEW.circle_id, NEW.run_id, 'item', r.kind, r.element_id, r.element_slug, r.status,
      jsonb_strip_nulls(jsonb_build_object('item_id', NEW.id, 'key', NEW.key, 'status', NEW.status,
        'attempt', NEW.attempt_count, 'duration_ms', NEW.duration_ms, 'error_code', NEW.error ->> 'code',
        'child_run_id', NEW.child_run_id, 'started_at', NEW.started_at, 'finished_at', NEW.finished_at)));
    IF NEW.finished_at IS NOT NULL AND jsonb_typeof(NEW.evidence -> 'log_lines') = 'array'
        AND jsonb_array_length(NEW.evidence -> 'log_lines') > 0 THEN
      INSERT INTO cairn.live_events (circle_id, run_id, type, kind, element_id, element_slug, run_status, data)
      VALUES (NEW.circle_id, NEW.run_id, 'log', r.kind, r.element_id, r.element_slug, r.status,
        jsonb_build_object('item_id', NEW.id, 'key', NEW.key, 'lines', NEW.evidence -> 'log_lines'));
    END IF;
  END IF;
  IF asked THEN
    INSERT INTO cairn.live_events (circle_id, run_id, type, kind, element_id, element_slug, run_status, data)
    VALUES (NEW.circle_id, NEW.run_id, 'approval', r.kind, r.element_id, r.element_slug, r.status,
      jsonb_build_object('requested', true, 'task', NEW.key, 'item_id', NEW.id, 'awaiting', NEW.evidence -> 'awaiting'));
  END IF;
  PERFORM pg_notify('cairn_live', NEW.circle_id::text);
  RETURN NULL;
END $$;
-- Items written already past pending (a workflow's fanned-out tasks, items refused at submit).
CREATE TRIGGER items_live_insert AFTER INSERT ON cairn.items
  FOR EACH ROW WHEN (NEW.status <> 'pending' OR NEW.evidence ? 'awaiting') EXECUTE FUNCTION cairn.live_item();
CREATE TRIGGER items_live AFTER UPDATE OF status, evidence ON cairn.items
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
    OR (NEW.evidence ? 'awaiting' AND NOT OLD.evidence ? 'awaiting'))
  EXECUTE FUNCTION cairn.live_item();

-- Audit events and decisions: one statement-level trigger per inserting statement. The trail's
-- status transitions and ledger movements are not repeated: they are the `status` and `cost` events.
CREATE FUNCTION cairn.live_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO cairn.live_events (circle_id, run_id, type, kind, element_id, element_slug, run_status, data, at)
  SELECT n.circle_id, n.run_id, CASE WHEN n.type = 'approval' THEN 'approval' ELSE 'audit' END,
    r.kind, r.element_id, r.element_slug, r.status,
    jsonb_build_object('audit_id', n.id, 'type', n.type, 'from_status', n.from_status,
      'to_status', n.to_status, 'actor', n.actor, 'data', n.data), n.at
  FROM new_events n LEFT JOIN cairn.runs r ON r.id = n.run_id
  WHERE n.type NOT IN ('status', 'ledger')
  ORDER BY n.id;
  PERFORM pg_notify('cairn_live', c::text)
  FROM (SELECT DISTINCT circle_id AS c FROM new_events WHERE type NOT IN ('status', 'ledger')) x;
  RETURN NULL;
END $$;
CREATE TRIGGER run_events_live AFTER INSERT ON cairn.run_events
  REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION cairn.live_audit();

-- Ledger movements (reserve, capture, release, grant, expire).
CREATE FUNCTION cairn.live_cost() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO cairn.live_events (circle_id, run_id, type, kind, element_id, element_slug, run_status, data, at)
  SELECT n.circle_id, n.run_id, 'cost', r.kind, r.element_id, r.element_slug, r.status,
    jsonb_strip_nulls(jsonb_build_object('transfer_id', n.id, 'kind', n.kind, 'amount', n.amount,
      'grant_id', n.grant_id, 'actor', n.actor)), n.at
  FROM new_transfers n LEFT JOIN cairn.runs r ON r.id = n.run_id
  ORDER BY n.at, n.id;
  PERFORM pg_notify('cairn_live', c::text) FROM (SELECT DISTINCT circle_id AS c FROM new_transfers) x;
  RETURN NULL;
END $$;
CREATE TRIGGER ledger_live AFTER INSERT ON cairn.ledger_transfers
  REFERENCING NEW TABLE AS new_transfers FOR EACH STATEMENT EXECUTE FUNCTION cairn.live_cost();

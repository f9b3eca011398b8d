-- Run retention (issue 11, step 5). A circle keeps its runs `days` days after they end
-- (NULL: the instance default, CAIRN_RETENTION_DAYS), its failed runs `failed_days`
-- (NULL: as the others). A garbage collector in every worker deletes expired runs with
-- their items, audit trail, element events and holds, a batch per transaction, and
-- records what it deleted in cairn.retention_log. It never deletes a run that is not
-- final, that is pinned, that another run still points to (replay_of, rerun_of,
-- parent_run_id, root_run_id) or that still holds credit; the ledger is kept forever.

ALTER TABLE cairn.runs ADD COLUMN pinned boolean NOT NULL DEFAULT false;

CREATE TABLE cairn.retention_policies (
  circle_id uuid PRIMARY KEY REFERENCES cairn.circles (id),
  days int CHECK (days BETWEEN 1 AND 3650),
  failed_days int CHECK (failed_days BETWEEN 1 AND 3650),
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  updated_by text NOT NULL
);

-- What the collector deleted, per circle per (UTC) day: the history shows it happened.
CREATE TABLE cairn.retention_log (
  circle_id uuid NOT NULL REFERENCES cairn.circles (id),
  day date NOT NULL,
  runs bigint NOT NULL DEFAULT 0,
  items bigint NOT NULL DEFAULT 0,
  run_events bigint NOT NULL DEFAULT 0,
  events bigint NOT NULL DEFAULT 0,
  holds bigint NOT NULL DEFAULT 0,
  idempotency bigint NOT NULL DEFAULT 0,
  batches int NOT NULL DEFAULT 0,
  first_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (circle_id, day)
);

-- The collector's scan: per circle and final status, oldest first, past the cutoff only
-- (an entry is added when a run ends, the one index insert its settle pays for this).
CREATE INDEX runs_retention ON cairn.runs (circle_id, status, (coalesce(finished_at, queued_at)))
  WHERE status IN ('succeeded', 'completed', 'failed', 'cancelled') AND NOT pinned;
-- Who points at a run (most runs point at nothing, so these stay small; a root run's
-- root_run_id is itself).
CREATE INDEX runs_replay_of ON cairn.runs (replay_of) WHERE replay_of IS NOT NULL;
CREATE INDEX runs_rerun_of ON cairn.runs (rerun_of) WHERE rerun_of IS NOT NULL;
CREATE INDEX runs_parent ON cairn.runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
CREATE INDEX runs_root ON cairn.runs (root_run_id) WHERE root_run_id <> id;

-- How many days a run of this status is kept under a policy (NULLs fall back in order).
CREATE FUNCTION cairn.retention_days(p_status text, p_days int, p_failed_days int, p_default int)
RETURNS int LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN p_status = 'failed' THEN coalesce(p_failed_days, p_days, p_default)
    ELSE coalesce(p_days, p_default) END
$$;

-- The instance default as the collector's transaction states it (SET LOCAL
-- cairn.retention_default_days), else 30.
CREATE FUNCTION cairn.retention_default() RETURNS int LANGUAGE sql STABLE AS $$
  SELECT coalesce(nullif(current_setting('cairn.retention_default_days', true), '')::int, 30)
$$;

-- Whether a run is final, not pinned and past its circle's retention, now.
CREATE FUNCTION cairn.run_expired(p_run uuid) RETURNS boolean LANGUAGE sql STABLE AS $$
  SELECT coalesce((
    SELECT r.status IN ('succeeded', 'completed', 'failed', 'cancelled') AND NOT r.pinned
      AND coalesce(r.finished_at, r.queued_at)
        < now() - make_interval(days => cairn.retention_days(r.status, p.days, p.failed_days,
          cairn.retention_default()))
    FROM cairn.runs r LEFT JOIN cairn.retention_policies p ON p.circle_id = r.circle_id
    WHERE r.id = p_run), false)
$$;

-- The audit trail and element events stay append-only for live runs. UPDATE and TRUNCATE
-- are refused always, on every append-only table; DELETE of a run_events or events row
-- only inside a transaction that turned retention on (SET LOCAL cairn.retention = 'on')
-- and only for a run that is final and expired (the collector deletes a run's rows before
-- the run itself, in the same transaction, holding the run FOR UPDATE). The ledger
-- (ledger_transfers) is never deleted from. Circle roles have no privilege on schema
-- cairn at all, so none of this is reachable from a circle's SQL.
CREATE OR REPLACE FUNCTION cairn.forbid_mutation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' AND TG_TABLE_SCHEMA = 'cairn' AND TG_TABLE_NAME IN ('run_events', 'events') THEN
    IF current_setting('cairn.retention', true) = 'on' THEN
      IF cairn.run_expired(OLD.run_id) THEN
        RETURN OLD;
      END IF;
      RAISE EXCEPTION 'cairn.% is append-only: run % is not final and past its retention', TG_TABLE_NAME,
        OLD.run_id USING ERRCODE = 'insufficient_privilege';
    END IF;
  END IF;
  RAISE EXCEPTION 'cairn.% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;

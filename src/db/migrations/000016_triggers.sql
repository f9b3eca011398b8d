-- Triggers (R-TRIGGERS): schedule, webhook and upstream elements write what the engine needs into
-- tables of their own with every version they save; the scheduler, the hook route and the outbox
-- read these tables, never an element's spec, so the engine knows no element type.

-- A schedule's clock. next_at is the next nominal time not yet recorded; any number of processes
-- advance it by compare-and-set (WHERE next_at = the value read), and the same statement records
-- the occurrences it passed, so each nominal time is recorded (and fires) exactly once.
CREATE TABLE cairn.schedules (
  element_id uuid PRIMARY KEY REFERENCES cairn.elements (id),
  circle_id uuid NOT NULL REFERENCES cairn.circles (id),
  cron text NOT NULL,
  timezone text NOT NULL,
  overlap text NOT NULL CHECK (overlap IN ('skip', 'buffer_one', 'allow_all', 'cancel_previous')),
  catchup_window_ms bigint NOT NULL,
  paused boolean NOT NULL,
  target jsonb NOT NULL,
  next_at timestamptz,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX schedules_due ON cairn.schedules (next_at) WHERE next_at IS NOT NULL;

-- Every occurrence, including those that started no run. firing: claimed, its run being started
-- (a sweep finishes it when the process that claimed it died: the run's idempotency key makes
-- that start happen once).
CREATE TABLE cairn.schedule_occurrences (
  schedule_id uuid NOT NULL REFERENCES cairn.elements (id),
  circle_id uuid NOT NULL,
  nominal_at timestamptz NOT NULL,
  status text NOT NULL CHECK (status IN ('firing', 'fired', 'caught_up', 'buffered', 'skipped_overlap',
    'skipped_paused', 'missed', 'failed')),
  backfill boolean NOT NULL DEFAULT false,
  run_id uuid,
  recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  fired_at timestamptz,
  error jsonb,
  PRIMARY KEY (schedule_id, nominal_at)
);
CREATE INDEX schedule_occurrences_open ON cairn.schedule_occurrences (recorded_at)
  WHERE status IN ('firing', 'buffered');

-- A webhook's public address and how it verifies; secrets live apart from the spec (never
-- returned after the answer that created them). Several may be valid at once (rotation overlap).
CREATE TABLE cairn.webhooks (
  element_id uuid PRIMARY KEY REFERENCES cairn.elements (id),
  circle_id uuid NOT NULL REFERENCES cairn.circles (id),
  slug text NOT NULL,
  signing text NOT NULL CHECK (signing IN ('standard', 'github', 'none')),
  max_body_bytes int NOT NULL,
  target jsonb NOT NULL,
  input jsonb NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Not unique: the hook route finds a webhook by its live element's slug (a deleted one frees it).
CREATE INDEX webhooks_circle_slug ON cairn.webhooks (circle_id, slug);
CREATE TABLE cairn.webhook_secrets (
  id uuid PRIMARY KEY,
  element_id uuid NOT NULL REFERENCES cairn.elements (id),
  secret text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  expires_at timestamptz
);
CREATE INDEX webhook_secrets_element ON cairn.webhook_secrets (element_id);
-- One row per delivery id: the first delivery of an id wins, replays answer its run. A claim whose
-- target did not start is deleted (a retry of the delivery may start it later).
CREATE TABLE cairn.webhook_deliveries (
  element_id uuid NOT NULL REFERENCES cairn.elements (id),
  delivery_id text NOT NULL,
  circle_id uuid NOT NULL,
  run_id uuid,
  body_sha256 text NOT NULL,
  received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (element_id, delivery_id)
);

-- Upstream links: run the target when a run of the source ends.
CREATE TABLE cairn.upstreams (
  element_id uuid PRIMARY KEY REFERENCES cairn.elements (id),
  circle_id uuid NOT NULL REFERENCES cairn.circles (id),
  source_element_id uuid NOT NULL REFERENCES cairn.elements (id),
  statuses text[] NOT NULL,
  target jsonb NOT NULL,
  input jsonb NOT NULL,
  max_depth int NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX upstreams_source ON cairn.upstreams (source_element_id);

-- The outbox: one row per (upstream, source run), written by the source run's terminal transition
-- itself (a row trigger in the same transaction), so a crash can neither lose nor double it.
CREATE TABLE cairn.run_outbox (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  upstream_id uuid NOT NULL REFERENCES cairn.elements (id),
  source_run_id uuid NOT NULL,
  circle_id uuid NOT NULL,
  source_status text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  claimed_until timestamptz,
  done_at timestamptz,
  run_id uuid,
  error jsonb,
  UNIQUE (upstream_id, source_run_id)
);
CREATE INDEX run_outbox_open ON cairn.run_outbox (id) WHERE done_at IS NULL;

CREATE FUNCTION cairn.write_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n int;
BEGIN
  INSERT INTO cairn.run_outbox (upstream_id, source_run_id, circle_id, source_status)
  SELECT u.element_id, NEW.id, NEW.circle_id, NEW.status
    FROM cairn.upstreams u JOIN cairn.elements e ON e.id = u.element_id AND e.state = 'ready'
   WHERE u.source_element_id = NEW.element_id
     AND NEW.status = ANY (u.statuses)
  ON CONFLICT DO NOTHING;
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n > 0 THEN PERFORM pg_notify('cairn_outbox', ''); END IF;
  RETURN NULL;
END $$;

-- Only a root live run's first terminal transition hands off (a workflow's task runs do not).
CREATE TRIGGER runs_outbox AFTER UPDATE OF status ON cairn.runs FOR EACH ROW
  WHEN (NEW.status IN ('succeeded', 'completed', 'failed', 'cancelled')
        AND OLD.status NOT IN ('succeeded', 'completed', 'failed', 'cancelled')
        AND NEW.parent_run_id IS NULL AND NEW.mode = 'live' AND NEW.element_id IS NOT NULL)
  EXECUTE FUNCTION cairn.write_outbox();

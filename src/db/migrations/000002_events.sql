-- Element events (seed 004: go_fn.invoked, .completed, .failed, .build_completed …),
-- written in the same statement that settles their run. Append-only, like the audit trail.
CREATE TABLE cairn.events (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  circle_id uuid NOT NULL,
  run_id uuid REFERENCES cairn.runs (id),
  element_id uuid,
  name text NOT NULL,
  data jsonb NOT NULL DEFAULT '{}',
  at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX events_circle ON cairn.events (circle_id, id);
CREATE INDEX events_run ON cairn.events (run_id, id);
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON cairn.events
  FOR EACH ROW EXECUTE FUNCTION cairn.forbid_mutation();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON cairn.events
  FOR EACH STATEMENT EXECUTE FUNCTION cairn.forbid_mutation();

-- The run's bill of materials, content-addressed (issue 13): a run's snapshot (its element
-- definitions, policy set, toolchains, engine version, prices) is stored once per distinct content
-- in cairn.snapshots and the run keeps its hash. A row trigger does it for every writer of
-- runs.snapshot, so no statement that creates or re-pins a run can forget it: it hashes the jsonb
-- text (jsonb's text form is canonical: equal documents give equal text), inserts the body once,
-- and leaves runs.snapshot empty. Retention deletes a snapshot when its last run is deleted.
CREATE TABLE cairn.snapshots (
  hash text PRIMARY KEY,
  body jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

ALTER TABLE cairn.runs ADD COLUMN snapshot_hash text REFERENCES cairn.snapshots (hash);
CREATE INDEX runs_snapshot_hash ON cairn.runs (snapshot_hash);

CREATE FUNCTION cairn.store_snapshot() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE h text;
BEGIN
  h := encode(sha256(convert_to(NEW.snapshot::text, 'UTF8')), 'hex');
  INSERT INTO cairn.snapshots (hash, body) VALUES (h, NEW.snapshot) ON CONFLICT DO NOTHING;
  NEW.snapshot_hash := h;
  NEW.snapshot := '{}'::jsonb;
  RETURN NEW;
END $$;

CREATE TRIGGER runs_snapshot BEFORE INSERT OR UPDATE OF snapshot ON cairn.runs FOR EACH ROW
  WHEN (NEW.snapshot <> '{}'::jsonb)
  EXECUTE FUNCTION cairn.store_snapshot();

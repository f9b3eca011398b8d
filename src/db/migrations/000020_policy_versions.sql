-- The policy hook reads a circle's policy set before every run starts (R-POLICY). So that it can
-- keep the set it compiled, each circle's set has a version, bumped by every change of its
-- policies (a row trigger) and of a policy element's state (disabled, deleted, enabled): one
-- primary-key read tells a process whether what it holds is still the set. Each set is also
-- stored once, content-addressed, for the snapshots of the runs it decided (they keep its hash).
CREATE TABLE cairn.policy_versions (
  circle_id uuid PRIMARY KEY REFERENCES cairn.circles (id),
  version bigint NOT NULL
);
INSERT INTO cairn.policy_versions (circle_id, version) SELECT DISTINCT circle_id, 1 FROM cairn.policies;

CREATE FUNCTION cairn.bump_policy_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO cairn.policy_versions AS v (circle_id, version)
  VALUES (coalesce(NEW.circle_id, OLD.circle_id), 1)
  ON CONFLICT (circle_id) DO UPDATE SET version = v.version + 1;
  RETURN NULL;
END $$;
CREATE TRIGGER policies_version AFTER INSERT OR UPDATE OR DELETE ON cairn.policies
  FOR EACH ROW EXECUTE FUNCTION cairn.bump_policy_version();

-- A state change of an element touches its policy row, if it has one (which bumps the version).
CREATE FUNCTION cairn.touch_policy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE cairn.policies SET updated_at = clock_timestamp() WHERE element_id = NEW.id;
  RETURN NULL;
END $$;
CREATE TRIGGER elements_policy_state AFTER UPDATE OF state ON cairn.elements
  FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION cairn.touch_policy();

CREATE TABLE cairn.policy_sets (
  hash text PRIMARY KEY,
  circle_id uuid NOT NULL,
  body jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

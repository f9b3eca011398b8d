-- Policy hooks (R-POLICY): the circle's enabled policy elements form its policy set. The policy
-- type writes each version's Cedar text and patches here; the engine reads the set from this table
-- before any run starts, never an element's spec.
CREATE TABLE cairn.policies (
  element_id uuid PRIMARY KEY REFERENCES cairn.elements (id),
  circle_id uuid NOT NULL REFERENCES cairn.circles (id),
  slug text NOT NULL,
  version int NOT NULL,
  cedar text NOT NULL,
  patches jsonb NOT NULL DEFAULT '{}',
  enabled boolean NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX policies_circle ON cairn.policies (circle_id) WHERE enabled;

-- The decision taken before the run started: policy-set hash, decision, deciding policies, the
-- patch applied and the input's hash before and after it (also in the run's first audit event).
ALTER TABLE cairn.runs ADD COLUMN policy jsonb;

-- Attachments (R-SECRETS, seed 004): a modifier or resource element (a secret, a variable)
-- attached to the element that uses it. `name` is what the target sees it as (an environment
-- variable, a template name, a provider key); `priority` orders evaluation (lower first);
-- `version_pin` fixes the modifier's version (NULL: its current version when a run starts).
CREATE TABLE cairn.attachments (
  id uuid PRIMARY KEY,
  circle_id uuid NOT NULL REFERENCES cairn.circles (id),
  target_id uuid NOT NULL REFERENCES cairn.elements (id),
  modifier_id uuid NOT NULL REFERENCES cairn.elements (id),
  name text NOT NULL,
  priority int NOT NULL DEFAULT 100,
  version_pin int,
  created_by text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  CONSTRAINT attachments_not_self CHECK (target_id <> modifier_id)
);
CREATE UNIQUE INDEX attachments_target_modifier ON cairn.attachments (target_id, modifier_id);
CREATE UNIQUE INDEX attachments_target_name ON cairn.attachments (target_id, name);
CREATE INDEX attachments_modifier ON cairn.attachments (modifier_id);

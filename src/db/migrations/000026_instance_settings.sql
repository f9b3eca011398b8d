-- Facts about the whole deployment that every process checks itself against at start: first, the
-- id of the key that seals secrets (a process holding another key would fail every run that
-- needs one, so it says so loudly when it starts).
CREATE TABLE cairn.instance_settings (
  name text PRIMARY KEY,
  value text NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

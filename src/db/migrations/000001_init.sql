-- Cairn platform schema. Forward-only; never edit a migration that has shipped.

-- Platform tables live in schema "cairn"; nothing in it is visible to circle roles.
REVOKE ALL ON SCHEMA cairn FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

CREATE TABLE cairn.circles (
  id uuid PRIMARY KEY,
  slug text NOT NULL UNIQUE,
  schema_name text NOT NULL UNIQUE,
  role_name text NOT NULL UNIQUE,
  role_password text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE cairn.tokens (
  id uuid PRIMARY KEY,
  circle_id uuid REFERENCES cairn.circles (id),   -- NULL: an instance-admin token
  role text NOT NULL CHECK (role IN ('read', 'write', 'execute', 'admin')),
  token_hash text NOT NULL UNIQUE,
  name text,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  revoked_at timestamptz
);
CREATE INDEX tokens_circle ON cairn.tokens (circle_id);

CREATE TABLE cairn.elements (
  id uuid PRIMARY KEY,
  circle_id uuid NOT NULL REFERENCES cairn.circles (id),
  slug text NOT NULL,
  element_type text NOT NULL,
  category text NOT NULL,
  name text NOT NULL,
  intention text,
  state text NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'disabled', 'deleted')),
  spec jsonb NOT NULL,
  meta jsonb NOT NULL DEFAULT '{}',
  readme text NOT NULL DEFAULT '',
  version int NOT NULL DEFAULT 1,
  definition_hash text NOT NULL,
  disabled_reason text,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  deleted_at timestamptz
);
-- A slug is unique among the circle's live elements; a deleted one frees it.
CREATE UNIQUE INDEX elements_circle_slug ON cairn.elements (circle_id, slug) WHERE state <> 'deleted';

CREATE TABLE cairn.element_versions (
  element_id uuid NOT NULL REFERENCES cairn.elements (id),
  version int NOT NULL,
  spec jsonb NOT NULL,
  name text NOT NULL,
  intention text,
  definition_hash text NOT NULL,
  note text,
  actor text,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (element_id, version)
);

CREATE TABLE cairn.runs (
  id uuid PRIMARY KEY,
  circle_id uuid NOT NULL REFERENCES cairn.circles (id),
  kind text NOT NULL CHECK (kind IN ('invoke', 'workflow', 'batch')),
  element_id uuid REFERENCES cairn.elements (id),
  element_slug text,
  element_type text,
  element_version int,
  definition_hash text,
  operation text NOT NULL,
  status text NOT NULL CHECK (status IN ('queued', 'running', 'paused', 'succeeded', 'completed', 'failed', 'cancelled')),
  mode text NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'dry_run', 'smoke_test')),
  trigger jsonb NOT NULL,
  input jsonb NOT NULL DEFAULT '{}',
  output jsonb,
  error jsonb,
  parent_run_id uuid,
  root_run_id uuid,
  replay_of uuid,
  rerun_of uuid,
  attempt int NOT NULL DEFAULT 0,
  max_attempts int NOT NULL DEFAULT 1,
  retryable_on_loss boolean NOT NULL DEFAULT false,
  queued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  run_after timestamptz NOT NULL DEFAULT clock_timestamp(),
  started_at timestamptz,
  finished_at timestamptz,
  duration_ms double precision,
  engine_version text NOT NULL,
  host text,
  worker_id text,
  lease_expires_at timestamptz,
  items_total int NOT NULL DEFAULT 0,
  items_succeeded int NOT NULL DEFAULT 0,
  items_failed int NOT NULL DEFAULT 0,
  items_pending int NOT NULL DEFAULT 0,
  credits_reserved bigint NOT NULL DEFAULT 0,
  credits_used bigint NOT NULL DEFAULT 0,
  budget bigint,
  flags text[] NOT NULL DEFAULT '{}',
  snapshot jsonb NOT NULL DEFAULT '{}',
  trace_id text NOT NULL,
  idempotency_key text,
  timeout_ms int NOT NULL DEFAULT 60000
);
-- The queue is this table: claim the oldest queued runs with FOR UPDATE SKIP LOCKED.
CREATE INDEX runs_queue ON cairn.runs (run_after, id) WHERE status = 'queued';
CREATE INDEX runs_leases ON cairn.runs (lease_expires_at) WHERE status = 'running';
CREATE INDEX runs_circle ON cairn.runs (circle_id, id DESC);
CREATE INDEX runs_element ON cairn.runs (element_id, id DESC);
CREATE UNIQUE INDEX runs_idempotency ON cairn.runs (circle_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE cairn.items (
  id uuid PRIMARY KEY,
  run_id uuid NOT NULL REFERENCES cairn.runs (id),
  circle_id uuid NOT NULL,
  key text NOT NULL,
  status text NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'retrying', 'skipped', 'cancelled')),
  attempt_count int NOT NULL DEFAULT 0,
  inputs jsonb NOT NULL DEFAULT '{}',
  outputs jsonb,
  error jsonb,
  credits_used bigint NOT NULL DEFAULT 0,
  started_at timestamptz,
  finished_at timestamptz,
  duration_ms double precision,
  evidence jsonb NOT NULL DEFAULT '{}',
  UNIQUE (run_id, key)
);

-- The audit trail (R-AUDIT): append-only, enforced by the database itself.
CREATE TABLE cairn.run_events (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  run_id uuid NOT NULL REFERENCES cairn.runs (id),
  circle_id uuid NOT NULL,
  type text NOT NULL,
  from_status text,
  to_status text,
  actor text NOT NULL,
  data jsonb NOT NULL DEFAULT '{}',
  at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX run_events_run ON cairn.run_events (run_id, id);

CREATE FUNCTION cairn.forbid_mutation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'cairn.% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER run_events_append_only BEFORE UPDATE OR DELETE ON cairn.run_events
  FOR EACH ROW EXECUTE FUNCTION cairn.forbid_mutation();
CREATE TRIGGER run_events_no_truncate BEFORE TRUNCATE ON cairn.run_events
  FOR EACH STATEMENT EXECUTE FUNCTION cairn.forbid_mutation();

-- Identity-changing and platform-signalling built-ins are not for circle roles.
-- (On PGlite every session is the superuser's, so SET ROLE is all that stands
-- between a circle and the platform; set_config('role', …) must not undo it.)
DO $$
BEGIN
  REVOKE EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) FROM PUBLIC;
  REVOKE EXECUTE ON FUNCTION pg_catalog.pg_notify(text, text) FROM PUBLIC;
EXCEPTION WHEN insufficient_privilege THEN
  RAISE NOTICE 'cairn: not allowed to revoke built-in functions; circle SQL relies on per-role logins';
END $$;

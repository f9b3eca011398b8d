-- The run state machine, enforced where every status change happens (issue 10).
-- cairn.run_transitions is core/status.ts's table, row for row (a test holds them
-- equal); a trigger refuses any UPDATE of a run's status that it does not list, so
-- no statement, SQL function or batched settle can write a transition the state
-- diagram does not allow.
CREATE TABLE cairn.run_transitions (
  from_status text NOT NULL,
  to_status text NOT NULL,
  PRIMARY KEY (from_status, to_status)
);
INSERT INTO cairn.run_transitions (from_status, to_status) VALUES
  ('queued', 'running'), ('queued', 'cancelled'), ('queued', 'failed'), ('queued', 'paused'),
  ('queued', 'succeeded'), ('queued', 'completed'),
  ('running', 'succeeded'), ('running', 'completed'), ('running', 'failed'), ('running', 'cancelled'),
  ('running', 'paused'), ('running', 'queued'),
  ('paused', 'queued'), ('paused', 'cancelled'),
  ('completed', 'queued'),
  ('failed', 'queued');

-- The check is the trigger's WHEN clause, a plain expression over the same pairs (cheap on every
-- settle and claim: no function runs unless a transition is refused); a test holds the clause,
-- the table and core/status.ts equal.
CREATE FUNCTION cairn.refuse_run_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'a run that is % cannot become % (run %)', OLD.status, NEW.status, OLD.id
    USING ERRCODE = '23514', HINT = 'core/status.ts lists the allowed transitions';
END $$;

CREATE TRIGGER runs_transition BEFORE UPDATE OF status ON cairn.runs
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND (OLD.status || '>' || NEW.status) NOT IN (
    'queued>running', 'queued>cancelled', 'queued>failed', 'queued>paused', 'queued>succeeded', 'queued>completed',
    'running>succeeded', 'running>completed', 'running>failed', 'running>cancelled', 'running>paused',
    'running>queued', 'paused>queued', 'paused>cancelled', 'completed>queued', 'failed>queued'))
  EXECUTE FUNCTION cairn.refuse_run_transition();

-- A child run that ends wakes its parent's orchestrator on a channel of its own, cairn_run_child,
-- with "parent:child" as payload: cairn_run_control means "the run's status changed, read it
-- again" (pause, cancel), which a child's end does not; and the worker that settled the child
-- itself has already told its orchestrator, so it can skip its own notifications.
CREATE OR REPLACE FUNCTION cairn.notify_parent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('cairn_run_child', NEW.parent_run_id::text || ':' || NEW.id::text);
  RETURN NULL;
END $$;

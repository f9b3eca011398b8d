-- Workflows (issue 12, R-WORKFLOW): a workflow run is a run of kind 'workflow' whose items are its
-- tasks (one per step; a for_each step's tasks are keyed name[i]); each task's execution is a child
-- run (parent_run_id, root_run_id) that any worker claims from the queue like any other run.

-- The definitions a workflow run pinned, content-addressed: the workflow's spec and, for every step,
-- the exact element version it resolved to. A trigger by hash runs exactly this, whatever changed since.
-- Written once per distinct definition (not per run), kept like the ledger: retention deletes runs, not this.
CREATE TABLE cairn.workflow_definitions (
  circle_id uuid NOT NULL REFERENCES cairn.circles (id),
  hash text NOT NULL,
  element_id uuid NOT NULL,
  element_slug text NOT NULL,
  definition jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (circle_id, hash)
);

-- A task's execution: its child run (no foreign key, so that retention can delete a child and
-- then its parent; the task keeps the id it ran as evidence).
ALTER TABLE cairn.items ADD COLUMN child_run_id uuid;

-- A child run that ends wakes the worker orchestrating its parent (it listens on cairn_run_control).
-- A row trigger with a WHEN clause: nothing runs for runs without a parent.
CREATE FUNCTION cairn.notify_parent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('cairn_run_control', NEW.parent_run_id::text);
  RETURN NULL;
END $$;
CREATE TRIGGER runs_child_done AFTER UPDATE OF status ON cairn.runs
  FOR EACH ROW WHEN (NEW.parent_run_id IS NOT NULL AND OLD.status IS DISTINCT FROM NEW.status
    AND NEW.status IN ('succeeded', 'completed', 'failed', 'cancelled'))
  EXECUTE FUNCTION cairn.notify_parent();

-- Funds a task's child run: what its parent reserved at trigger moves to the child (a release from
-- the parent's hold, then the child's own reservation), so the wallet's available balance is what
-- it was and the child captures and releases its own cost like any run. Beyond what the parent
-- still holds, the child reserves from the available balance; when that cannot cover it, nothing
-- moves and it returns false (the task fails, typed).
CREATE FUNCTION cairn.fund_child(p_parent uuid, p_child uuid, p_circle uuid, p_amount bigint, p_actor text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE moved bigint := 0;
BEGIN
  IF p_amount <= 0 THEN RETURN true; END IF;
  SELECT least(held, p_amount) INTO moved FROM cairn.run_holds WHERE run_id = p_parent FOR UPDATE;
  moved := coalesce(moved, 0);
  IF moved > 0 THEN
    PERFORM cairn.ledger_release(p_parent::text || ':fund:' || p_child::text, p_parent, moved, p_actor,
      jsonb_build_object('reason', 'funds_task', 'child_run_id', p_child));
  END IF;
  IF cairn.ledger_reserve(p_child::text || ':reserve:0', p_circle, p_child, p_amount, p_actor) THEN
    RETURN true;
  END IF;
  IF moved > 0 THEN
    PERFORM cairn.ledger_reserve(p_parent::text || ':refund:' || p_child::text, p_circle, p_parent, moved, p_actor);
  END IF;
  RETURN false;
END $$;

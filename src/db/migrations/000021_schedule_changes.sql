-- A schedule created, changed, paused or resumed wakes every scheduler at once (instead of at its
-- next idle poll): the row's own writes of next_at (every occurrence) notify nothing.
CREATE FUNCTION cairn.notify_schedule() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('cairn_schedule', NEW.element_id::text);
  RETURN NULL;
END $$;
CREATE TRIGGER schedules_changed AFTER INSERT OR UPDATE OF cron, timezone, paused, overlap, target ON cairn.schedules
  FOR EACH ROW EXECUTE FUNCTION cairn.notify_schedule();

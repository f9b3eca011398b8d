-- An item is billed what its execution cost, whatever its status: an LLM call whose answer was
-- refused (or that is retried) was still paid for. Executors that charge nothing for a failure
-- report 0 credits for it, so only those that spend on a failure change (R-LLM, issue 15).
CREATE OR REPLACE FUNCTION cairn.settle_items(p_run uuid, p_worker text, p_items jsonb, p_schema text, p_table text,
  p_column text)
RETURNS TABLE (succeeded int, failed int, retrying int, captured bigint) LANGUAGE plpgsql AS $$
DECLARE ok int; bad int; retry int; cost bigint; cells jsonb; s int; held bigint; avail bigint; circle uuid;
BEGIN
  -- Lock order run → items → hold, as cancel, pause and recovery take them: no deadlock with them.
  PERFORM 1 FROM cairn.runs WHERE id = p_run FOR UPDATE;
  WITH x AS (
    SELECT * FROM jsonb_to_recordset(p_items)
      AS x(id uuid, status text, output jsonb, error jsonb, credits bigint, evidence jsonb, retry_in_ms int)),
  u AS (
    UPDATE cairn.items i SET status = x.status,
      outputs = x.output, error = x.error,
      credits_used = i.credits_used + x.credits,
      finished_at = CASE WHEN x.status = 'retrying' THEN NULL ELSE clock_timestamp() END,
      duration_ms = round((extract(epoch FROM clock_timestamp() - i.started_at) * 1000)::numeric, 3),
      evidence = x.evidence, worker_id = NULL,
      retry_at = CASE WHEN x.status = 'retrying'
        THEN clock_timestamp() + make_interval(secs => x.retry_in_ms / 1000.0) END
    FROM x WHERE i.id = x.id AND i.run_id = p_run AND i.status = 'running' AND i.worker_id = p_worker
    RETURNING i.id, i.key, i.status, i.attempt_count, i.outputs, i.error, x.credits)
  SELECT count(*) FILTER (WHERE u.status = 'succeeded'), count(*) FILTER (WHERE u.status = 'failed'),
    count(*) FILTER (WHERE u.status = 'retrying'),
    coalesce(sum(u.credits), 0),
    coalesce(jsonb_agg(jsonb_build_object('key', u.key, 'cell', jsonb_strip_nulls(jsonb_build_object(
      'status', u.status, 'value', u.outputs, 'error', u.error, 'item_id', u.id, 'run_id', p_run,
      'attempts', u.attempt_count, 'at', clock_timestamp()))))
      FILTER (WHERE u.status <> 'retrying'), '[]'::jsonb)
  INTO ok, bad, retry, cost, cells FROM u;

  IF p_table IS NOT NULL AND jsonb_array_length(cells) > 0 THEN
    EXECUTE format(
      'UPDATE %I.%I t SET cells = t.cells || jsonb_build_object(%L, c.cell), updated_at = clock_timestamp()
       FROM jsonb_to_recordset($1) AS c(key uuid, cell jsonb) WHERE t.id = c.key', p_schema, p_table, p_column)
    USING cells;
  END IF;

  -- Capture what the items cost: from the run's hold, beyond it only what the wallet can cover.
  IF cost > 0 THEN
    SELECT h.held, h.circle_id INTO held, circle FROM cairn.run_holds h WHERE h.run_id = p_run;
    SELECT w.credits_posted - w.debits_posted - w.debits_pending - w.floor INTO avail
    FROM cairn.wallets w WHERE w.circle_id = coalesce(circle, (SELECT r.circle_id FROM cairn.runs r WHERE r.id = p_run));
    cost := least(cost, coalesce(held, 0) + greatest(coalesce(avail, 0), 0));
    UPDATE cairn.run_holds SET seq = seq + 1 WHERE run_id = p_run RETURNING seq INTO s;
    PERFORM cairn.ledger_capture(p_run || ':items:' || coalesce(s, 0) || ':' || md5(p_items::text), p_run, cost,
      'worker:' || p_worker);
  END IF;

  UPDATE cairn.runs SET items_succeeded = items_succeeded + ok, items_failed = items_failed + bad,
    items_pending = items_pending - ok - bad, credits_used = credits_used + cost
  WHERE id = p_run;
  RETURN QUERY SELECT ok, bad, retry, cost;
END $$;

-- A workflow task's child that the parent's hold does not cover reserves the rest from the wallet:
-- that part passes the circle's spending limit too, like any reservation (000019).
CREATE OR REPLACE FUNCTION cairn.fund_child(p_parent uuid, p_child uuid, p_circle uuid, p_amount bigint, p_actor text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE held_now bigint; moved bigint; rest bigint;
BEGIN
  IF p_amount <= 0 THEN RETURN true; END IF;
  IF EXISTS (SELECT 1 FROM cairn.ledger_transfers WHERE id = p_child::text || ':reserve:0') THEN RETURN true; END IF;
  SELECT held INTO held_now FROM cairn.run_holds WHERE run_id = p_parent FOR UPDATE;
  moved := least(coalesce(held_now, 0), p_amount);
  rest := p_amount - moved;
  IF rest > 0 THEN
    UPDATE cairn.wallets SET debits_pending = debits_pending + rest, updated_at = clock_timestamp()
    WHERE circle_id = p_circle AND credits_posted - debits_posted - debits_pending - rest >= floor
      AND (spend_limit IS NULL
           OR cairn.period_spent(p_circle, spend_period) + debits_pending + rest <= spend_limit);
    IF NOT FOUND THEN RETURN false; END IF;
  END IF;
  IF moved > 0 THEN
    UPDATE cairn.run_holds SET held = held - moved WHERE run_id = p_parent;
    INSERT INTO cairn.ledger_transfers (id, circle_id, kind, amount, run_id, actor, data)
    VALUES (p_parent::text || ':fund:' || p_child::text, p_circle, 'release', moved, p_parent, p_actor,
      jsonb_build_object('reason', 'funds_task', 'child_run_id', p_child));
    INSERT INTO cairn.run_events (run_id, circle_id, type, actor, data)
    VALUES (p_parent, p_circle, 'ledger', p_actor, jsonb_build_object('movement', 'release', 'amount', moved,
      'transfer_id', p_parent::text || ':fund:' || p_child::text, 'reason', 'funds_task', 'child_run_id', p_child));
  END IF;
  INSERT INTO cairn.ledger_transfers (id, circle_id, kind, amount, run_id, actor, data)
  VALUES (p_child::text || ':reserve:0', p_circle, 'reserve', p_amount, p_child, p_actor,
    CASE WHEN moved > 0 THEN jsonb_build_object('from_run_id', p_parent, 'moved', moved) ELSE '{}'::jsonb END);
  INSERT INTO cairn.run_holds (run_id, circle_id, held) VALUES (p_child, p_circle, p_amount)
  ON CONFLICT (run_id) DO UPDATE SET held = cairn.run_holds.held + p_amount;
  IF rest > 0 THEN PERFORM cairn.wallet_thresholds(p_circle); END IF;
  RETURN true;
END $$;

-- period_spent is VOLATILE: when a reservation waits for the wallet row (a capture holds it) and
-- re-checks its condition on the committed row, the function reads the captures committed with it
-- (a STABLE function would keep the statement's snapshot and miss them, letting two pass together).
ALTER FUNCTION cairn.period_spent(uuid, text) VOLATILE;

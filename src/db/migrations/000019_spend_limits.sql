-- A circle's spending limit (R-LEDGER): at most `spend_limit` micro-credits captured or held per
-- calendar day or month (UTC). The check is part of the reservation's own wallet update, whose row
-- lock serialises a circle's reservations, so concurrent runs cannot pass it together.
ALTER TABLE cairn.wallets ADD COLUMN spend_limit bigint CHECK (spend_limit IS NULL OR spend_limit >= 0);
ALTER TABLE cairn.wallets ADD COLUMN spend_period text CHECK (spend_period IN ('day', 'month'));

-- What the circle spent in its current period: captured in it, plus what is held now.
CREATE FUNCTION cairn.period_spent(p_circle uuid, p_period text) RETURNS bigint LANGUAGE sql STABLE AS $$
  SELECT coalesce(sum(amount), 0)::bigint FROM cairn.ledger_transfers
   WHERE circle_id = p_circle AND kind = 'capture'
     AND at >= date_trunc(p_period, now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
$$;

CREATE OR REPLACE FUNCTION cairn.ledger_reserve(p_id text, p_circle uuid, p_run uuid, p_amount bigint, p_actor text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF p_amount < 0 THEN RAISE EXCEPTION 'ledger: negative amount %', p_amount USING ERRCODE = '22023'; END IF;
  IF EXISTS (SELECT 1 FROM cairn.ledger_transfers WHERE id = p_id) THEN RETURN true; END IF;
  IF p_amount = 0 THEN RETURN true; END IF;
  UPDATE cairn.wallets SET debits_pending = debits_pending + p_amount, updated_at = clock_timestamp()
  WHERE circle_id = p_circle AND credits_posted - debits_posted - debits_pending - p_amount >= floor
    AND (spend_limit IS NULL
         OR cairn.period_spent(p_circle, spend_period) + debits_pending + p_amount <= spend_limit);
  IF NOT FOUND THEN RETURN false; END IF;
  INSERT INTO cairn.ledger_transfers (id, circle_id, kind, amount, run_id, actor)
  VALUES (p_id, p_circle, 'reserve', p_amount, p_run, p_actor);
  INSERT INTO cairn.run_holds (run_id, circle_id, held) VALUES (p_run, p_circle, p_amount)
  ON CONFLICT (run_id) DO UPDATE SET held = cairn.run_holds.held + p_amount;
  PERFORM cairn.ledger_audit(p_run, p_circle, 'reserve', p_amount, p_id, p_actor);
  PERFORM cairn.wallet_thresholds(p_circle);
  RETURN true;
END $$;

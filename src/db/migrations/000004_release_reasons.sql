-- Every release of a run's hold says why (issue 9, finding 5): a run whose
-- handler executed is either captured or refunded with its reason in the
-- audit trail and on the transfer. Callers that know the reason pass it; the
-- older four-argument forms derive it from the run as it stands.

CREATE FUNCTION cairn.ledger_release(p_id text, p_run uuid, p_amount bigint, p_actor text, p_reason jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE h cairn.run_holds; amt bigint; why jsonb := coalesce(p_reason, '{}'::jsonb);
BEGIN
  IF p_amount < 0 THEN RAISE EXCEPTION 'ledger: negative amount %', p_amount USING ERRCODE = '22023'; END IF;
  IF EXISTS (SELECT 1 FROM cairn.ledger_transfers WHERE id = p_id) THEN RETURN 0; END IF;
  SELECT * INTO h FROM cairn.run_holds WHERE run_id = p_run FOR UPDATE;
  IF NOT FOUND THEN RETURN 0; END IF;
  amt := least(h.held, coalesce(p_amount, h.held));
  IF amt = 0 THEN RETURN 0; END IF;
  UPDATE cairn.run_holds SET held = held - amt WHERE run_id = p_run;
  UPDATE cairn.wallets SET debits_pending = debits_pending - amt, updated_at = clock_timestamp()
  WHERE circle_id = h.circle_id;
  INSERT INTO cairn.ledger_transfers (id, circle_id, kind, amount, run_id, actor, data)
  VALUES (p_id, h.circle_id, 'release', amt, p_run, p_actor, why);
  IF EXISTS (SELECT 1 FROM cairn.runs WHERE id = p_run) THEN
    INSERT INTO cairn.run_events (run_id, circle_id, type, actor, data)
    VALUES (p_run, h.circle_id, 'ledger', p_actor,
      jsonb_build_object('movement', 'release', 'amount', amt, 'transfer_id', p_id) || why);
  END IF;
  RETURN amt;
END $$;

-- The older forms stay PL/pgSQL (a SQL-language wrapper would be planned again on every call).
CREATE OR REPLACE FUNCTION cairn.ledger_release(p_id text, p_run uuid, p_amount bigint, p_actor text)
RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
  RETURN cairn.ledger_release(p_id, p_run, p_amount, p_actor, '{"reason": "requested"}'::jsonb);
END $$;

-- What a release at the end of a run is for, from the run's status and error.
CREATE FUNCTION cairn.release_reason(p_status text, p_error_code text) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE
    WHEN p_status IN ('succeeded', 'completed') THEN jsonb_build_object('reason', 'unused_reservation')
    WHEN p_status = 'cancelled' THEN jsonb_build_object('reason', 'cancelled')
    WHEN p_error_code = 'WORKER_LOST' THEN jsonb_build_object('reason', 'worker_lost', 'error_code', p_error_code)
    WHEN p_status = 'failed' THEN jsonb_strip_nulls(jsonb_build_object('reason', 'run_failed', 'error_code', p_error_code))
    ELSE jsonb_build_object('reason', coalesce(p_status, 'unknown'))
  END
$$;

CREATE FUNCTION cairn.ledger_settle_run(p_run uuid, p_capture bigint, p_release_rest boolean, p_actor text,
  p_reason jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE s int;
BEGIN
  UPDATE cairn.run_holds SET seq = seq + 1 WHERE run_id = p_run RETURNING seq INTO s;
  IF s IS NULL THEN
    IF p_capture > 0 THEN
      RETURN cairn.ledger_capture(p_run || ':capture:0', p_run, p_capture, p_actor);
    END IF;
    RETURN 0;
  END IF;
  PERFORM cairn.ledger_capture(p_run || ':capture:' || s, p_run, p_capture, p_actor);
  IF p_release_rest THEN
    PERFORM cairn.ledger_release(p_run || ':release:' || s, p_run, NULL, p_actor, p_reason);
  END IF;
  RETURN p_capture;
END $$;

-- The four-argument form (finish_batch) reads the run it ends: by then its status is final.
CREATE OR REPLACE FUNCTION cairn.ledger_settle_run(p_run uuid, p_capture bigint, p_release_rest boolean,
  p_actor text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE why jsonb;
BEGIN
  SELECT cairn.release_reason(r.status, r.error ->> 'code') INTO why FROM cairn.runs r WHERE r.id = p_run;
  RETURN cairn.ledger_settle_run(p_run, p_capture, p_release_rest, p_actor, why);
END $$;

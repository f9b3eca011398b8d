-- The credit ledger (R-LEDGER) and batch runs (R-BATCH, R-CONTROL).
--
-- Credits are integer micro-credits. A wallet keeps TigerBeetle-style
-- counters: credits_posted (grants, top-ups), debits_posted (captured,
-- expired) and debits_pending (reserved by runs). The database itself
-- refuses any change that would take the available balance below the floor,
-- whatever the concurrency: every movement is one UPDATE of the wallet row
-- guarded by that CHECK. Every movement is a transfer whose id is its
-- idempotency key: replaying one has no further effect.

CREATE TABLE cairn.wallets (
  circle_id uuid PRIMARY KEY REFERENCES cairn.circles (id),
  credits_posted bigint NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
  debits_posted bigint NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
  debits_pending bigint NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
  floor bigint NOT NULL DEFAULT 0,
  alerted_80 boolean NOT NULL DEFAULT false,
  alerted_100 boolean NOT NULL DEFAULT false,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  CONSTRAINT wallet_floor CHECK (credits_posted - debits_posted - debits_pending >= floor)
);
INSERT INTO cairn.wallets (circle_id) SELECT id FROM cairn.circles ON CONFLICT DO NOTHING;

-- Grants and top-ups. Captures consume them soonest-expiring first, so an
-- expiring promotional grant is used before paid credit; what is left of a
-- grant when it expires is removed from the wallet.
CREATE TABLE cairn.grants (
  id uuid PRIMARY KEY,
  circle_id uuid NOT NULL REFERENCES cairn.circles (id),
  category text NOT NULL CHECK (category IN ('paid', 'promotional', 'topup')),
  amount bigint NOT NULL CHECK (amount > 0),
  remaining bigint NOT NULL CHECK (remaining >= 0),
  expires_at timestamptz,
  transfer_id text NOT NULL UNIQUE,
  actor text NOT NULL,
  note text,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX grants_circle ON cairn.grants (circle_id, expires_at NULLS LAST, created_at);

-- What each run holds reserved now. `seq` numbers the engine's transfers of the run.
CREATE TABLE cairn.run_holds (
  run_id uuid PRIMARY KEY,
  circle_id uuid NOT NULL,
  held bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
  seq int NOT NULL DEFAULT 0
);

CREATE TABLE cairn.ledger_transfers (
  id text PRIMARY KEY,
  circle_id uuid NOT NULL,
  kind text NOT NULL CHECK (kind IN ('reserve', 'capture', 'release', 'grant', 'expire')),
  amount bigint NOT NULL CHECK (amount >= 0),
  run_id uuid,
  grant_id uuid,
  actor text NOT NULL,
  data jsonb NOT NULL DEFAULT '{}',
  at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ledger_circle ON cairn.ledger_transfers (circle_id, at, id);
CREATE INDEX ledger_run ON cairn.ledger_transfers (run_id, at) WHERE run_id IS NOT NULL;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON cairn.ledger_transfers
  FOR EACH ROW EXECUTE FUNCTION cairn.forbid_mutation();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON cairn.ledger_transfers
  FOR EACH STATEMENT EXECUTE FUNCTION cairn.forbid_mutation();

-- Emits wallet.threshold_80 / wallet.threshold_100 once per crossing; a grant re-arms them.
CREATE FUNCTION cairn.wallet_thresholds(p_circle uuid) RETURNS void LANGUAGE plpgsql AS $$
DECLARE w cairn.wallets;
BEGIN
  SELECT * INTO w FROM cairn.wallets WHERE circle_id = p_circle;
  IF w.credits_posted <= 0 THEN RETURN; END IF;
  IF NOT w.alerted_80 AND (w.debits_posted + w.debits_pending) * 10 >= w.credits_posted * 8 THEN
    UPDATE cairn.wallets SET alerted_80 = true WHERE circle_id = p_circle;
    INSERT INTO cairn.events (circle_id, name, data) VALUES (p_circle, 'wallet.threshold_80',
      jsonb_build_object('credits_posted', w.credits_posted, 'debits_posted', w.debits_posted,
        'debits_pending', w.debits_pending));
  END IF;
  IF NOT w.alerted_100 AND w.credits_posted - w.debits_posted - w.debits_pending <= w.floor THEN
    UPDATE cairn.wallets SET alerted_100 = true WHERE circle_id = p_circle;
    INSERT INTO cairn.events (circle_id, name, data) VALUES (p_circle, 'wallet.threshold_100',
      jsonb_build_object('credits_posted', w.credits_posted, 'debits_posted', w.debits_posted,
        'debits_pending', w.debits_pending));
  END IF;
END $$;

-- The run's audit trail gets every movement. A reservation made by the statement
-- that creates the run (the run is not visible yet) is audited by that statement.
CREATE FUNCTION cairn.ledger_audit(p_run uuid, p_circle uuid, p_kind text, p_amount bigint, p_id text, p_actor text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF p_run IS NOT NULL AND EXISTS (SELECT 1 FROM cairn.runs WHERE id = p_run) THEN
    INSERT INTO cairn.run_events (run_id, circle_id, type, actor, data)
    VALUES (p_run, p_circle, 'ledger', p_actor,
      jsonb_build_object('movement', p_kind, 'amount', p_amount, 'transfer_id', p_id));
  END IF;
END $$;

-- Reserve: hold `p_amount` for a run. Returns false (and changes nothing) when
-- the available balance cannot cover it. A replayed id returns true, no effect.
CREATE FUNCTION cairn.ledger_reserve(p_id text, p_circle uuid, p_run uuid, p_amount bigint, p_actor text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF p_amount < 0 THEN RAISE EXCEPTION 'ledger: negative amount %', p_amount USING ERRCODE = '22023'; END IF;
  IF EXISTS (SELECT 1 FROM cairn.ledger_transfers WHERE id = p_id) THEN RETURN true; END IF;
  IF p_amount = 0 THEN RETURN true; END IF;
  UPDATE cairn.wallets SET debits_pending = debits_pending + p_amount, updated_at = clock_timestamp()
  WHERE circle_id = p_circle AND credits_posted - debits_posted - debits_pending - p_amount >= floor;
  IF NOT FOUND THEN RETURN false; END IF;
  INSERT INTO cairn.ledger_transfers (id, circle_id, kind, amount, run_id, actor)
  VALUES (p_id, p_circle, 'reserve', p_amount, p_run, p_actor);
  INSERT INTO cairn.run_holds (run_id, circle_id, held) VALUES (p_run, p_circle, p_amount)
  ON CONFLICT (run_id) DO UPDATE SET held = cairn.run_holds.held + p_amount;
  PERFORM cairn.ledger_audit(p_run, p_circle, 'reserve', p_amount, p_id, p_actor);
  PERFORM cairn.wallet_thresholds(p_circle);
  RETURN true;
END $$;

-- Consumes `p_amount` from the circle's grants, soonest-expiring first.
CREATE FUNCTION cairn.consume_grants(p_circle uuid, p_amount bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE g record; left_ bigint := p_amount; take bigint;
BEGIN
  FOR g IN SELECT id, remaining FROM cairn.grants WHERE circle_id = p_circle AND remaining > 0
    ORDER BY expires_at NULLS LAST, created_at, id FOR UPDATE
  LOOP
    EXIT WHEN left_ <= 0;
    take := least(g.remaining, left_);
    UPDATE cairn.grants SET remaining = remaining - take WHERE id = g.id;
    left_ := left_ - take;
  END LOOP;
END $$;

-- Capture: turn `p_amount` of a run's hold into a posted debit. Beyond what is
-- held, the rest must be covered by the available balance (or it raises 23514).
CREATE FUNCTION cairn.ledger_capture(p_id text, p_run uuid, p_amount bigint, p_actor text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE h cairn.run_holds; from_hold bigint; circle uuid;
BEGIN
  IF p_amount < 0 THEN RAISE EXCEPTION 'ledger: negative amount %', p_amount USING ERRCODE = '22023'; END IF;
  IF EXISTS (SELECT 1 FROM cairn.ledger_transfers WHERE id = p_id) THEN RETURN 0; END IF;
  IF p_amount = 0 THEN RETURN 0; END IF;
  SELECT * INTO h FROM cairn.run_holds WHERE run_id = p_run FOR UPDATE;
  IF NOT FOUND THEN
    SELECT circle_id INTO circle FROM cairn.runs WHERE id = p_run;
    from_hold := 0;
  ELSE
    circle := h.circle_id;
    from_hold := least(h.held, p_amount);
    UPDATE cairn.run_holds SET held = held - from_hold WHERE run_id = p_run;
  END IF;
  UPDATE cairn.wallets SET debits_pending = debits_pending - from_hold,
    debits_posted = debits_posted + p_amount, updated_at = clock_timestamp()
  WHERE circle_id = circle;
  PERFORM cairn.consume_grants(circle, p_amount);
  INSERT INTO cairn.ledger_transfers (id, circle_id, kind, amount, run_id, actor, data)
  VALUES (p_id, circle, 'capture', p_amount, p_run, p_actor, jsonb_build_object('from_hold', from_hold));
  PERFORM cairn.ledger_audit(p_run, circle, 'capture', p_amount, p_id, p_actor);
  PERFORM cairn.wallet_thresholds(circle);
  RETURN p_amount;
END $$;

-- Release: return `p_amount` of a run's hold (NULL: all of it). Returns what was released.
CREATE FUNCTION cairn.ledger_release(p_id text, p_run uuid, p_amount bigint, p_actor text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE h cairn.run_holds; amt bigint;
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
  INSERT INTO cairn.ledger_transfers (id, circle_id, kind, amount, run_id, actor)
  VALUES (p_id, h.circle_id, 'release', amt, p_run, p_actor);
  PERFORM cairn.ledger_audit(p_run, h.circle_id, 'release', amt, p_id, p_actor);
  RETURN amt;
END $$;

-- Ends a run's money: capture what its settled work cost, release the rest of its hold.
-- Transfer ids come from the hold's sequence, so each settlement is its own pair.
CREATE FUNCTION cairn.ledger_settle_run(p_run uuid, p_capture bigint, p_release_rest boolean, p_actor text)
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
    PERFORM cairn.ledger_release(p_run || ':release:' || s, p_run, NULL, p_actor);
  END IF;
  RETURN p_capture;
END $$;

-- Grant or top-up. A replayed id changes nothing. Re-arms the thresholds it moves below.
CREATE FUNCTION cairn.ledger_grant(p_id text, p_grant uuid, p_circle uuid, p_amount bigint, p_category text,
  p_expires timestamptz, p_actor text, p_note text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF p_amount <= 0 THEN RAISE EXCEPTION 'ledger: a grant must be positive, got %', p_amount USING ERRCODE = '22023'; END IF;
  IF EXISTS (SELECT 1 FROM cairn.ledger_transfers WHERE id = p_id) THEN RETURN false; END IF;
  INSERT INTO cairn.grants (id, circle_id, category, amount, remaining, expires_at, transfer_id, actor, note)
  VALUES (p_grant, p_circle, p_category, p_amount, p_amount, p_expires, p_id, p_actor, p_note);
  UPDATE cairn.wallets SET credits_posted = credits_posted + p_amount, updated_at = clock_timestamp()
  WHERE circle_id = p_circle;
  UPDATE cairn.wallets SET
    alerted_80 = alerted_80 AND (debits_posted + debits_pending) * 10 >= credits_posted * 8,
    alerted_100 = alerted_100 AND credits_posted - debits_posted - debits_pending <= floor
  WHERE circle_id = p_circle;
  INSERT INTO cairn.ledger_transfers (id, circle_id, kind, amount, grant_id, actor, data)
  VALUES (p_id, p_circle, 'grant', p_amount, p_grant, p_actor,
    jsonb_build_object('category', p_category, 'expires_at', p_expires));
  RETURN true;
END $$;

-- Expires what is left of grants past their expiry, never taking the balance
-- below what runs hold reserved (the rest expires once those holds end).
CREATE FUNCTION cairn.ledger_expire(p_now timestamptz, p_actor text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE g record; w cairn.wallets; amt bigint; total bigint := 0;
BEGIN
  FOR g IN SELECT id, circle_id, remaining FROM cairn.grants
    WHERE expires_at <= p_now AND remaining > 0 ORDER BY circle_id, expires_at, id FOR UPDATE
  LOOP
    SELECT * INTO w FROM cairn.wallets WHERE circle_id = g.circle_id FOR UPDATE;
    amt := least(g.remaining, greatest(0, w.credits_posted - w.debits_posted - w.debits_pending - w.floor));
    CONTINUE WHEN amt = 0;
    UPDATE cairn.grants SET remaining = remaining - amt WHERE id = g.id;
    UPDATE cairn.wallets SET debits_posted = debits_posted + amt, updated_at = clock_timestamp()
    WHERE circle_id = g.circle_id;
    INSERT INTO cairn.ledger_transfers (id, circle_id, kind, amount, grant_id, actor)
    VALUES ('expire:' || g.id || ':' || g.remaining, g.circle_id, 'expire', amt, g.id, p_actor);
    total := total + amt;
  END LOOP;
  RETURN total;
END $$;

-- Batch runs: per-run concurrency, budget policy, per-item retries.
ALTER TABLE cairn.runs ADD COLUMN concurrency int NOT NULL DEFAULT 1;
ALTER TABLE cairn.runs ADD COLUMN budget_policy text NOT NULL DEFAULT 'flag' CHECK (budget_policy IN ('flag', 'stop'));
ALTER TABLE cairn.runs ADD COLUMN item_max_attempts int NOT NULL DEFAULT 1;
ALTER TABLE cairn.items ADD COLUMN worker_id text;
ALTER TABLE cairn.items ADD COLUMN retry_at timestamptz;
ALTER TABLE cairn.items ADD COLUMN ord int NOT NULL DEFAULT 0;
CREATE INDEX items_run_status ON cairn.items (run_id, status, ord);

-- Idempotency keys of control requests (pause, resume, retry-failed, rerun, grants…).
CREATE TABLE cairn.idempotency (
  circle_id uuid NOT NULL,
  key text NOT NULL,
  action text NOT NULL,
  answer jsonb NOT NULL,
  status int NOT NULL,
  at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (circle_id, key)
);

-- Settles finished items of a batch run in one call: items, their row cells
-- (when the run writes to a table), the run's counters and the capture of what
-- the succeeded items cost. Only items still running under this worker change,
-- so a replay, a cancel or a recovery in between can never count twice.
CREATE FUNCTION cairn.settle_items(p_run uuid, p_worker text, p_items jsonb, p_schema text, p_table text,
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
      credits_used = i.credits_used + CASE WHEN x.status = 'succeeded' THEN x.credits ELSE 0 END,
      finished_at = CASE WHEN x.status = 'retrying' THEN NULL ELSE clock_timestamp() END,
      duration_ms = round((extract(epoch FROM clock_timestamp() - i.started_at) * 1000)::numeric, 3),
      evidence = x.evidence, worker_id = NULL,
      retry_at = CASE WHEN x.status = 'retrying'
        THEN clock_timestamp() + make_interval(secs => x.retry_in_ms / 1000.0) END
    FROM x WHERE i.id = x.id AND i.run_id = p_run AND i.status = 'running' AND i.worker_id = p_worker
    RETURNING i.id, i.key, i.status, i.attempt_count, i.outputs, i.error, x.credits)
  SELECT count(*) FILTER (WHERE u.status = 'succeeded'), count(*) FILTER (WHERE u.status = 'failed'),
    count(*) FILTER (WHERE u.status = 'retrying'),
    coalesce(sum(u.credits) FILTER (WHERE u.status = 'succeeded'), 0),
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

  -- Capture what succeeded: from the run's hold, beyond it only what the wallet can cover.
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

-- Ends a batch run once no item is pending, running or retrying: succeeded
-- (every item), completed (some failed), failed (none succeeded, or stopped
-- with p_error); releases what the run still holds. Returns the final status, or
-- NULL when work remains or the run is no longer this worker's.
CREATE FUNCTION cairn.finish_batch(p_run uuid, p_worker text, p_error jsonb) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r cairn.runs; st text;
BEGIN
  SELECT * INTO r FROM cairn.runs WHERE id = p_run FOR UPDATE;
  IF r.status <> 'running' OR r.worker_id IS DISTINCT FROM p_worker THEN RETURN NULL; END IF;
  IF EXISTS (SELECT 1 FROM cairn.items WHERE run_id = p_run AND status IN ('pending', 'running', 'retrying')) THEN
    RETURN NULL;
  END IF;
  st := CASE WHEN p_error IS NOT NULL THEN 'failed'
    WHEN r.items_failed = 0 THEN 'succeeded'
    WHEN r.items_succeeded = 0 THEN 'failed'
    ELSE 'completed' END;
  UPDATE cairn.runs SET status = st, finished_at = clock_timestamp(), lease_expires_at = NULL,
    error = CASE WHEN p_error IS NOT NULL THEN p_error
      WHEN st = 'failed' THEN jsonb_build_object('code', 'ALL_ITEMS_FAILED', 'class', 'validation',
        'message', 'Every item of the batch failed; see the items for their errors.', 'retryable', false,
        '_suggestion', 'GET /api/runs/' || p_run || '/items?status=failed shows why; fix the rows, then retry-failed.')
      END,
    output = jsonb_build_object('items_total', r.items_total, 'items_succeeded', r.items_succeeded,
      'items_failed', r.items_failed,
      'items_skipped', (SELECT count(*) FROM cairn.items WHERE run_id = p_run AND status = 'skipped')),
    duration_ms = round((extract(epoch FROM clock_timestamp() - r.started_at) * 1000)::numeric, 3)
  WHERE id = p_run;
  INSERT INTO cairn.run_events (run_id, circle_id, type, from_status, to_status, actor, data)
  VALUES (p_run, r.circle_id, 'status', 'running', st, 'worker:' || p_worker,
    jsonb_strip_nulls(jsonb_build_object('items_succeeded', r.items_succeeded, 'items_failed', r.items_failed,
      'credits_used', r.credits_used, 'error_code', p_error ->> 'code')));
  PERFORM cairn.ledger_settle_run(p_run, 0, true, 'worker:' || p_worker);
  PERFORM pg_notify('cairn_run_done', p_run::text);
  RETURN st;
END $$;

-- Element statistics from incremental rollups (issue 11): the `stats` op no longer scans
-- an element's runs. Per element and minute of queued_at: run counts by outcome, the sum
-- and count of durations, credits, the last run, and a duration histogram for p95.
--
-- Writers never contend on a rollup row: statement-level triggers append one delta row
-- per (element, minute) a statement touched; a periodic fold (any worker, every few
-- seconds) moves deltas into the rollup in one DELETE … RETURNING, so each delta is
-- counted exactly once even with several processes folding. Reads add the deltas not
-- folded yet (seconds' worth).
CREATE TABLE cairn.element_minutes (
  element_id uuid NOT NULL,
  minute timestamptz NOT NULL,
  runs int NOT NULL DEFAULT 0,
  succeeded int NOT NULL DEFAULT 0,
  failed int NOT NULL DEFAULT 0,
  cancelled int NOT NULL DEFAULT 0,
  duration_n int NOT NULL DEFAULT 0,
  duration_sum double precision NOT NULL DEFAULT 0,
  credits_used bigint NOT NULL DEFAULT 0,
  last_run_at timestamptz,
  PRIMARY KEY (element_id, minute)
);

CREATE TABLE cairn.element_minute_durations (
  element_id uuid NOT NULL,
  minute timestamptz NOT NULL,
  bin smallint NOT NULL,
  n int NOT NULL DEFAULT 0,
  PRIMARY KEY (element_id, minute, bin)
);

-- Deltas not folded yet: `bin` NULL carries the counts, a bin carries that bin's count in `runs`.
CREATE TABLE cairn.element_stat_deltas (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  element_id uuid NOT NULL,
  minute timestamptz NOT NULL,
  bin smallint,
  runs int NOT NULL DEFAULT 0,
  succeeded int NOT NULL DEFAULT 0,
  failed int NOT NULL DEFAULT 0,
  cancelled int NOT NULL DEFAULT 0,
  duration_n int NOT NULL DEFAULT 0,
  duration_sum double precision NOT NULL DEFAULT 0,
  credits_used bigint NOT NULL DEFAULT 0,
  last_run_at timestamptz
);
CREATE INDEX element_stat_deltas_element ON cairn.element_stat_deltas (element_id, minute);

-- Duration histogram bins: 4 per doubling of (1 + ms), so a percentile read from them is
-- within 19% of the exact one.
CREATE FUNCTION cairn.duration_bin(ms double precision) RETURNS smallint IMMUTABLE LANGUAGE sql AS $$
  SELECT least(127, greatest(0, floor(4 * ln(1 + greatest(ms, 0)) / ln(2))))::smallint
$$;

CREATE FUNCTION cairn.runs_stats_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO cairn.element_stat_deltas (element_id, minute, bin, runs, succeeded, failed, cancelled,
    duration_n, duration_sum, credits_used, last_run_at)
  SELECT element_id, date_trunc('minute', queued_at), NULL, count(*),
    count(*) FILTER (WHERE status = 'succeeded'),
    count(*) FILTER (WHERE status IN ('failed', 'completed')),
    count(*) FILTER (WHERE status = 'cancelled'),
    count(duration_ms) FILTER (WHERE status IN ('succeeded', 'completed', 'failed', 'cancelled')),
    COALESCE(sum(duration_ms) FILTER (WHERE status IN ('succeeded', 'completed', 'failed', 'cancelled')), 0),
    COALESCE(sum(credits_used), 0), max(queued_at)
  FROM new_rows WHERE element_id IS NOT NULL
  GROUP BY 1, 2;
  INSERT INTO cairn.element_stat_deltas (element_id, minute, bin, runs)
  SELECT element_id, date_trunc('minute', queued_at), cairn.duration_bin(duration_ms), count(*)
  FROM new_rows
  WHERE element_id IS NOT NULL AND duration_ms IS NOT NULL
    AND status IN ('succeeded', 'completed', 'failed', 'cancelled')
  GROUP BY 1, 2, 3;
  RETURN NULL;
END $$;

-- An update's net change: the new rows' contribution minus the old rows'. Heartbeats and
-- claims change nothing counted, so they append nothing.
CREATE FUNCTION cairn.runs_stats_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  WITH c AS (
    SELECT element_id, queued_at, status, duration_ms, credits_used, 1 AS s FROM new_rows
    UNION ALL
    SELECT element_id, queued_at, status, duration_ms, credits_used, -1 FROM old_rows
  ), g AS (
    SELECT element_id, date_trunc('minute', queued_at) AS minute,
      sum(s) FILTER (WHERE status = 'succeeded')::int AS succeeded,
      sum(s) FILTER (WHERE status IN ('failed', 'completed'))::int AS failed,
      sum(s) FILTER (WHERE status = 'cancelled')::int AS cancelled,
      sum(s) FILTER (WHERE duration_ms IS NOT NULL
        AND status IN ('succeeded', 'completed', 'failed', 'cancelled'))::int AS duration_n,
      sum(s * duration_ms) FILTER (WHERE status IN ('succeeded', 'completed', 'failed', 'cancelled')) AS duration_sum,
      sum(s * credits_used)::bigint AS credits_used
    FROM c WHERE element_id IS NOT NULL GROUP BY 1, 2
  )
  INSERT INTO cairn.element_stat_deltas (element_id, minute, bin, succeeded, failed, cancelled,
    duration_n, duration_sum, credits_used)
  SELECT element_id, minute, NULL, COALESCE(succeeded, 0), COALESCE(failed, 0), COALESCE(cancelled, 0),
    COALESCE(duration_n, 0), COALESCE(duration_sum, 0), COALESCE(credits_used, 0)
  FROM g
  WHERE COALESCE(succeeded, 0) <> 0 OR COALESCE(failed, 0) <> 0 OR COALESCE(cancelled, 0) <> 0
    OR COALESCE(duration_n, 0) <> 0 OR COALESCE(duration_sum, 0) <> 0 OR COALESCE(credits_used, 0) <> 0;

  WITH c AS (
    SELECT element_id, queued_at, duration_ms, 1 AS s FROM new_rows
    WHERE duration_ms IS NOT NULL AND status IN ('succeeded', 'completed', 'failed', 'cancelled')
    UNION ALL
    SELECT element_id, queued_at, duration_ms, -1 FROM old_rows
    WHERE duration_ms IS NOT NULL AND status IN ('succeeded', 'completed', 'failed', 'cancelled')
  )
  INSERT INTO cairn.element_stat_deltas (element_id, minute, bin, runs)
  SELECT element_id, date_trunc('minute', queued_at), cairn.duration_bin(duration_ms), sum(s)
  FROM c WHERE element_id IS NOT NULL
  GROUP BY 1, 2, 3 HAVING sum(s) <> 0;
  RETURN NULL;
END $$;

CREATE TRIGGER runs_stats_insert AFTER INSERT ON cairn.runs
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION cairn.runs_stats_insert();
CREATE TRIGGER runs_stats_update AFTER UPDATE ON cairn.runs
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
  EXECUTE FUNCTION cairn.runs_stats_update();

-- Moves every committed delta into the rollups, exactly once (concurrent folds skip what
-- another took). Returns the number of deltas folded.
CREATE FUNCTION cairn.fold_element_stats() RETURNS int LANGUAGE plpgsql AS $$
DECLARE n int;
BEGIN
  WITH d AS (DELETE FROM cairn.element_stat_deltas RETURNING *),
  counts AS (
    INSERT INTO cairn.element_minutes AS m (element_id, minute, runs, succeeded, failed, cancelled,
      duration_n, duration_sum, credits_used, last_run_at)
    SELECT element_id, minute, sum(runs), sum(succeeded), sum(failed), sum(cancelled), sum(duration_n),
      sum(duration_sum), sum(credits_used), max(last_run_at)
    FROM d WHERE bin IS NULL GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (element_id, minute) DO UPDATE SET runs = m.runs + EXCLUDED.runs,
      succeeded = m.succeeded + EXCLUDED.succeeded, failed = m.failed + EXCLUDED.failed,
      cancelled = m.cancelled + EXCLUDED.cancelled, duration_n = m.duration_n + EXCLUDED.duration_n,
      duration_sum = m.duration_sum + EXCLUDED.duration_sum,
      credits_used = m.credits_used + EXCLUDED.credits_used,
      last_run_at = GREATEST(m.last_run_at, EXCLUDED.last_run_at)
    RETURNING 1),
  bins AS (
    INSERT INTO cairn.element_minute_durations AS h (element_id, minute, bin, n)
    SELECT element_id, minute, bin, sum(runs) FROM d WHERE bin IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (element_id, minute, bin) DO UPDATE SET n = h.n + EXCLUDED.n
    RETURNING 1)
  SELECT count(*) INTO n FROM d, (SELECT count(*) FROM counts) c, (SELECT count(*) FROM bins) b;
  RETURN n;
END $$;

-- Runs that existed before this migration are counted once, as a starting rollup.
INSERT INTO cairn.element_stat_deltas (element_id, minute, bin, runs, succeeded, failed, cancelled,
  duration_n, duration_sum, credits_used, last_run_at)
SELECT element_id, date_trunc('minute', queued_at), NULL, count(*),
  count(*) FILTER (WHERE status = 'succeeded'),
  count(*) FILTER (WHERE status IN ('failed', 'completed')),
  count(*) FILTER (WHERE status = 'cancelled'),
  count(duration_ms) FILTER (WHERE status IN ('succeeded', 'completed', 'failed', 'cancelled')),
  COALESCE(sum(duration_ms) FILTER (WHERE status IN ('succeeded', 'completed', 'failed', 'cancelled')), 0),
  COALESCE(sum(credits_used), 0), max(queued_at)
FROM cairn.runs WHERE element_id IS NOT NULL GROUP BY 1, 2;
INSERT INTO cairn.element_stat_deltas (element_id, minute, bin, runs)
SELECT element_id, date_trunc('minute', queued_at), cairn.duration_bin(duration_ms), count(*)
FROM cairn.runs
WHERE element_id IS NOT NULL AND duration_ms IS NOT NULL AND status IN ('succeeded', 'completed', 'failed', 'cancelled')
GROUP BY 1, 2, 3;
SELECT cairn.fold_element_stats();

-- Hot reads as index range scans that stop at their limit (issue 11): the runs list by
-- status or by element slug, an element's events, the active runs of an element.
CREATE INDEX runs_circle_status ON cairn.runs (circle_id, status, id DESC);
CREATE INDEX runs_circle_slug ON cairn.runs (circle_id, element_slug, id DESC);
CREATE INDEX events_element ON cairn.events (element_id, id DESC);
-- A run's items in row order, a page at a time (a batch has thousands).
CREATE INDEX items_run_ord ON cairn.items (run_id, ord, key);
-- By status in the same order (key breaks ties of ord), so a status page is a range scan too.
DROP INDEX cairn.items_run_status;
CREATE INDEX items_run_status ON cairn.items (run_id, status, ord, key);
-- The reaper looks for expired leases of running and paused runs: a partial index that
-- covers both (the old one covered only running, so the sweep read the whole table).
DROP INDEX cairn.runs_leases;
CREATE INDEX runs_leases ON cairn.runs (lease_expires_at) WHERE status IN ('running', 'paused');

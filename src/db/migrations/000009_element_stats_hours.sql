-- Hourly rollups beside the per-minute ones (issue 11): a day of stats then reads at most
-- 60 minute rows (the partial first hour) and 25 hour rows, a week 60 and 169, however
-- busy the element was, instead of up to one row per active minute of the window.
CREATE TABLE cairn.element_hours (
  element_id uuid NOT NULL,
  hour timestamptz NOT NULL,
  runs int NOT NULL DEFAULT 0,
  succeeded int NOT NULL DEFAULT 0,
  failed int NOT NULL DEFAULT 0,
  cancelled int NOT NULL DEFAULT 0,
  duration_n int NOT NULL DEFAULT 0,
  duration_sum double precision NOT NULL DEFAULT 0,
  credits_used bigint NOT NULL DEFAULT 0,
  last_run_at timestamptz,
  PRIMARY KEY (element_id, hour)
);

CREATE TABLE cairn.element_hour_durations (
  element_id uuid NOT NULL,
  hour timestamptz NOT NULL,
  bin smallint NOT NULL,
  n int NOT NULL DEFAULT 0,
  PRIMARY KEY (element_id, hour, bin)
);

INSERT INTO cairn.element_hours (element_id, hour, runs, succeeded, failed, cancelled, duration_n, duration_sum,
  credits_used, last_run_at)
SELECT element_id, date_trunc('hour', minute), sum(runs), sum(succeeded), sum(failed), sum(cancelled),
  sum(duration_n), sum(duration_sum), sum(credits_used), max(last_run_at)
FROM cairn.element_minutes GROUP BY 1, 2;
INSERT INTO cairn.element_hour_durations (element_id, hour, bin, n)
SELECT element_id, date_trunc('hour', minute), bin, sum(n) FROM cairn.element_minute_durations GROUP BY 1, 2, 3;

-- The fold now writes both grains from the same deltas, exactly once.
CREATE OR REPLACE FUNCTION cairn.fold_element_stats() RETURNS int LANGUAGE plpgsql AS $$
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
  hours AS (
    INSERT INTO cairn.element_hours AS m (element_id, hour, runs, succeeded, failed, cancelled,
      duration_n, duration_sum, credits_used, last_run_at)
    SELECT element_id, date_trunc('hour', minute), sum(runs), sum(succeeded), sum(failed), sum(cancelled),
      sum(duration_n), sum(duration_sum), sum(credits_used), max(last_run_at)
    FROM d WHERE bin IS NULL GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (element_id, hour) DO UPDATE SET runs = m.runs + EXCLUDED.runs,
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
    RETURNING 1),
  hour_bins AS (
    INSERT INTO cairn.element_hour_durations AS h (element_id, hour, bin, n)
    SELECT element_id, date_trunc('hour', minute), bin, sum(runs) FROM d WHERE bin IS NOT NULL
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (element_id, hour, bin) DO UPDATE SET n = h.n + EXCLUDED.n
    RETURNING 1)
  SELECT count(*) INTO n FROM d, (SELECT count(*) FROM counts) c, (SELECT count(*) FROM hours) hc,
    (SELECT count(*) FROM bins) b, (SELECT count(*) FROM hour_bins) hb;
  RETURN n;
END $$;

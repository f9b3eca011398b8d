-- The statistics deltas are a queue (appended by every statement that writes runs, deleted by
-- every fold): autovacuum takes it after a fixed number of dead rows, not a share of its size,
-- so the reads that add the deltas not folded yet never wade through dead index entries.
ALTER TABLE cairn.element_stat_deltas SET (autovacuum_vacuum_threshold = 5000, autovacuum_vacuum_scale_factor = 0,
  autovacuum_analyze_threshold = 5000, autovacuum_analyze_scale_factor = 0);

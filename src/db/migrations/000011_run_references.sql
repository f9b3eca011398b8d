-- A run's references to other runs are foreign keys (issue 11, retention): a rerun, a
-- replay or a child created while retention deletes its source either holds the source
-- (the key check takes FOR KEY SHARE on it, which the collector's FOR UPDATE SKIP LOCKED
-- skips) or fails typed because the source is gone; it never points at a deleted run.
ALTER TABLE cairn.runs ADD CONSTRAINT runs_rerun_of_fk FOREIGN KEY (rerun_of) REFERENCES cairn.runs (id) NOT VALID;
ALTER TABLE cairn.runs ADD CONSTRAINT runs_replay_of_fk FOREIGN KEY (replay_of) REFERENCES cairn.runs (id) NOT VALID;
ALTER TABLE cairn.runs ADD CONSTRAINT runs_parent_fk FOREIGN KEY (parent_run_id) REFERENCES cairn.runs (id) NOT VALID;
ALTER TABLE cairn.runs ADD CONSTRAINT runs_root_fk FOREIGN KEY (root_run_id) REFERENCES cairn.runs (id) NOT VALID;
ALTER TABLE cairn.runs VALIDATE CONSTRAINT runs_rerun_of_fk;
ALTER TABLE cairn.runs VALIDATE CONSTRAINT runs_replay_of_fk;
ALTER TABLE cairn.runs VALIDATE CONSTRAINT runs_parent_fk;
ALTER TABLE cairn.runs VALIDATE CONSTRAINT runs_root_fk;

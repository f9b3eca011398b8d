-- Files (R-FILES): content-addressed blobs (sha256), stored in PostgreSQL so every host of a
-- deployment reaches them. A blob's bytes are kept once, in chunks, whoever wrote them; a circle
-- reaches a blob only through a reference of its own (circle_files), so no circle can read what
-- another wrote, even when both wrote the same bytes.
CREATE TABLE cairn.blobs (
  sha256 text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
  size bigint NOT NULL CHECK (size >= 0),
  created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE cairn.blob_chunks (
  sha256 text NOT NULL REFERENCES cairn.blobs (sha256) ON DELETE CASCADE,
  seq int NOT NULL,
  data bytea NOT NULL,
  PRIMARY KEY (sha256, seq)
);
-- Chunks are written once and read whole: no need to compress what is usually compressed already.
ALTER TABLE cairn.blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE cairn.circle_files (
  circle_id uuid NOT NULL REFERENCES cairn.circles (id),
  sha256 text NOT NULL REFERENCES cairn.blobs (sha256),
  media_type text NOT NULL DEFAULT 'application/octet-stream',
  name text,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (circle_id, sha256)
);
CREATE INDEX circle_files_blob ON cairn.circle_files (sha256);

-- One idempotency mechanism for every state-changing request (issue 10): each key
-- remembers what it was first used for (method, path, query and canonical body),
-- so the same key with another request is refused instead of answering the first.
ALTER TABLE cairn.idempotency ADD COLUMN fingerprint text NOT NULL DEFAULT '';

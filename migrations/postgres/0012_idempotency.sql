-- Idempotency-Key on POST /prompt: one row per (user, key) the first request claimed.
-- Mirrored in migrations/sqlite/0012_idempotency.sql: keep both in step.
--
-- body_sha256 is the hex SHA-256 of the request body (a retry must send the same bytes);
-- status is NULL while the first request is still being answered, then the answer's status
-- with its JSON body and Retry-After. Rows older than 24 h are purged hourly.
CREATE TABLE idempotency_keys (
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    idem_key    TEXT   NOT NULL,
    body_sha256 TEXT   NOT NULL,
    status      INTEGER,
    answer      TEXT,
    retry_after BIGINT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, idem_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- The webhook outbox: one row per event to deliver (src/webhooks/worker.rs sends them).
-- Mirrored in migrations/postgres/0010_webhooks.sql: keep both in step.
--
-- message_id is the Standard Webhooks `webhook-id`, the same on every attempt. A worker claims
-- a pending row by moving locked_until past now with a conditional UPDATE, so two workers (or
-- replicas) never send one row at once. body is the exact JSON that is signed and sent.
CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      TEXT   NOT NULL UNIQUE,
    user_id         BIGINT NOT NULL,
    job_id          TEXT   NOT NULL,
    event           TEXT   NOT NULL,
    url             TEXT   NOT NULL,
    body            TEXT   NOT NULL,
    state           TEXT   NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    locked_until    BIGINT NOT NULL DEFAULT 0,
    delivered_at    BIGINT,
    last_error      TEXT
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (state, next_attempt_at);
CREATE INDEX webhook_outbox_user ON webhook_outbox (user_id, created_at);

-- A token's default webhook: the JSON spec {"url": ..., "events": [...]} used by jobs it submits
-- without extra_data.webhook (NULL: none).
ALTER TABLE api_tokens ADD COLUMN webhook TEXT;

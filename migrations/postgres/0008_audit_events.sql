-- The audit log's copy in the store (the other is <data_dir>/audit.jsonl): one row per event.
-- Mirrored in migrations/sqlite/0008_audit_events.sql: keep both in step.
--
-- line is the event's JSON line exactly as written to the file; the columns beside it are what
-- `comfygate audit` filters on. Rows older than [audit] retention are purged hourly.
CREATE TABLE audit_events (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       BIGINT NOT NULL,
    event    TEXT   NOT NULL,
    username TEXT,
    token_id BIGINT,
    address  TEXT,
    line     TEXT   NOT NULL
);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_user ON audit_events (username, at);
CREATE INDEX audit_events_event ON audit_events (event, at);
CREATE INDEX audit_events_token ON audit_events (token_id, event);

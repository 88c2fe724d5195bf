-- Per-user limits set by admins (NULL: the configured default), and the indexes that keep
-- quota checks and the purge of ended jobs cheap at scale.
-- Mirrored in migrations/sqlite/0006_limits.sql: keep both in step.
CREATE TABLE user_limits (
    user_id            BIGINT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    max_waiting        BIGINT,
    max_running        BIGINT,
    jobs_per_hour      BIGINT,
    max_upload_bytes   BIGINT,
    max_workflow_bytes BIGINT,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX jobs_user_created ON jobs (user_id, created_at);
CREATE INDEX jobs_ended ON jobs (state, updated_at);

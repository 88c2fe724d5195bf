-- Per-user limits set by admins (NULL: the configured default), finished jobs' history entries,
-- and the indexes that keep quota checks, history pages and the purge of ended jobs cheap at
-- scale.
-- Mirrored in migrations/postgres/0006_limits_and_history.sql: keep both in step.
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

-- A finished job's history entry (outputs, status, meta, as ComfyUI's /history shows them),
-- kept by the gateway so history survives the backend that ran it; in_history is cleared
-- when the owner deletes the entry (the job stays counted for jobs_per_hour).
ALTER TABLE jobs ADD COLUMN outcome TEXT;
ALTER TABLE jobs ADD COLUMN ended_at BIGINT;
ALTER TABLE jobs ADD COLUMN in_history BOOLEAN NOT NULL DEFAULT TRUE;
CREATE INDEX jobs_history ON jobs (user_id, ended_at);
CREATE INDEX jobs_history_all ON jobs (ended_at);

-- The gateway-held job queue and where each job's files live (SQLite).
-- Mirrored in migrations/postgres/0002_jobs.sql: keep both in step.
CREATE TABLE jobs (
    prompt_id  TEXT   PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    username   TEXT   NOT NULL,
    client_id  TEXT   NOT NULL,
    number     BIGINT NOT NULL,
    request    TEXT   NOT NULL,
    state      TEXT   NOT NULL CHECK (state IN ('queued', 'dispatched', 'running', 'done', 'failed', 'cancelled')),
    backend    TEXT,
    error      TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX jobs_state ON jobs (state, number);
CREATE INDEX jobs_user ON jobs (user_id, number);

-- Output and uploaded files: which backend holds them, for sticky /view.
CREATE TABLE job_files (
    backend    TEXT   NOT NULL,
    kind       TEXT   NOT NULL,
    subfolder  TEXT   NOT NULL,
    filename   TEXT   NOT NULL,
    prompt_id  TEXT,
    user_id    BIGINT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (kind, subfolder, filename, backend)
);
CREATE INDEX job_files_prompt ON job_files (prompt_id);

-- The usage ledger: one row per finished job (done, failed or cancelled), written when it ends.
-- Mirrored in migrations/sqlite/0011_usage.sql: keep both in step.
--
-- No foreign key to users or api_tokens on purpose: accounting outlives accounts, so a deleted
-- user's GPU time still shows in the totals, under the name they had (username is copied).
-- prompt_id is the primary key so a job is never counted twice (a replayed end is ignored).
CREATE TABLE job_usage (
    prompt_id  TEXT    NOT NULL PRIMARY KEY,
    user_id    BIGINT  NOT NULL,
    username   TEXT    NOT NULL,
    token_id   BIGINT,
    backend    TEXT,
    priority   TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    started_at BIGINT,
    ended_at   BIGINT  NOT NULL,
    wait_ms    BIGINT,
    run_ms     BIGINT,
    outcome    TEXT    NOT NULL,
    outputs    BIGINT  NOT NULL
);
CREATE INDEX job_usage_ended ON job_usage (ended_at);
CREATE INDEX job_usage_user ON job_usage (user_id, ended_at);

-- The model files of each ledger row, so that usage can be split by model.
CREATE TABLE job_usage_models (
    prompt_id TEXT NOT NULL REFERENCES job_usage (prompt_id) ON DELETE CASCADE,
    model     TEXT NOT NULL,
    PRIMARY KEY (prompt_id, model)
);

-- A user's own daily GPU-seconds quota (NULL: [limits] gpu_seconds_per_day; 0: no limit).
ALTER TABLE user_limits ADD COLUMN gpu_seconds_per_day BIGINT;

-- Drained backends (by configured name): no new job goes to them, their jobs finish. Written by
-- `comfygate backend drain`, the console and the admin API; every gateway applies it within a
-- second and at start, so a drain survives restarts and holds for every replica.
CREATE TABLE backend_drains (
    name       TEXT   NOT NULL PRIMARY KEY,
    drained_at BIGINT NOT NULL,
    drained_by TEXT   NOT NULL
);

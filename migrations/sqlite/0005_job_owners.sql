-- Jobs carry the id their owner knows them by and the token that submitted them.
-- Mirrored in migrations/postgres/0005_job_owners.sql: keep both in step.
--
-- public_id: the prompt id the owner chose (or was given); unique within the owner only.
-- prompt_id stays the gateway-wide id the backends see.
-- token_id: the API token that submitted the job (NULL for a browser session): revoking it
-- cancels the job.
ALTER TABLE jobs ADD COLUMN public_id TEXT;
ALTER TABLE jobs ADD COLUMN token_id BIGINT;
UPDATE jobs SET public_id = prompt_id;
CREATE UNIQUE INDEX jobs_public ON jobs (user_id, public_id);

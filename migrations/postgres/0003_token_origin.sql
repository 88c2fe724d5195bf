-- Which login session minted a token, and whether its owner asked to keep it after that
-- session ends. Logout revokes the unkept tokens of that session; a password change revokes
-- every unkept session-minted token of the user. NULL: made by the CLI or with a token.
-- Mirrored in migrations/sqlite/0003_token_origin.sql: keep both in step.
ALTER TABLE api_tokens ADD COLUMN minted_by_session BIGINT;
ALTER TABLE api_tokens ADD COLUMN keep BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX api_tokens_minted_by_session ON api_tokens (minted_by_session) WHERE minted_by_session IS NOT NULL;

-- Priority classes and fair-share weights set per user by admins (NULL: the configured
-- default). Classes are stored as 0 (low), 1 (normal), 2 (high); the weight in percent of
-- the default share (100 = 1x).
-- Mirrored in migrations/{sqlite,postgres}/0009_priorities.sql: keep both in step.
ALTER TABLE user_limits ADD COLUMN max_priority BIGINT;
ALTER TABLE user_limits ADD COLUMN default_priority BIGINT;
ALTER TABLE user_limits ADD COLUMN share_weight BIGINT;

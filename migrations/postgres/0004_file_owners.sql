-- A user's own files by kind, for the file lists shown to them (/object_info). Mirrored in
-- migrations/sqlite/0004_file_owners.sql: keep both in step.
CREATE INDEX job_files_owner ON job_files (user_id, kind, created_at);

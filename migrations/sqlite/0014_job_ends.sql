-- Mirrors migrations/postgres/0014_job_ends.sql: there, the store announces the end of a
-- dispatched job to the other replicas. One SQLite store has one gateway: nothing to announce.
SELECT 1;

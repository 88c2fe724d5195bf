-- Replicas sharing one store (docs/architecture.md, "Replicas").
-- Mirrored in migrations/sqlite/0013_replicas.sql: the table is the same; the sequence and the
-- notifications exist only here (one SQLite store has one gateway).
--
-- The scheduling term: bumped by each gateway that takes the scheduler's advisory lock, before
-- it reads the queue. A dispatch is claimed in the store only under the term its gateway took
-- (the claim reads this row FOR SHARE), so a gateway that lost the lock without knowing it yet
-- can claim nothing the new one has read.
CREATE TABLE scheduler_term (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    term     BIGINT  NOT NULL,
    instance TEXT,
    since    BIGINT
);
INSERT INTO scheduler_term (id, term) VALUES (1, 0);

-- Queue numbers for every replica's submissions, in submission order.
CREATE SEQUENCE job_numbers;
SELECT setval('job_numbers', COALESCE((SELECT MAX(number) FROM jobs), 0) + 1, false);

-- Every revocation (from any replica or the CLI) is pushed to every gateway at once; polling
-- the epoch remains the fallback while a gateway's notification connection is down.
CREATE FUNCTION comfygate_revocation_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('comfygate_revocations', NEW.epoch::text);
    RETURN NEW;
END $$;
CREATE TRIGGER revocation_epoch_notify AFTER UPDATE ON revocation_epoch
    FOR EACH ROW EXECUTE FUNCTION comfygate_revocation_notify();

-- Replicas: the end of a dispatched job is announced by the store itself, in the transaction
-- that records it (docs/architecture.md, "Replicas"). The scheduling gateway relays a job's
-- final `executing` event right after recording its end; if it dies in between, the other
-- gateways learn of the end from this note and send that event to the owner's socket
-- themselves. Mirrored in migrations/sqlite/0014_job_ends.sql (one SQLite store has one gateway:
-- nothing to announce).
CREATE FUNCTION comfygate_job_end_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    note TEXT := json_build_object('u', NEW.user_id, 'c', NEW.client_id,
                                   'p', COALESCE(NEW.public_id, NEW.prompt_id))::text;
BEGIN
    -- A note over PostgreSQL's limit would fail the update: such an end is not announced.
    IF octet_length(note) < 7900 THEN
        PERFORM pg_notify('comfygate_ends', note);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER job_end_notify AFTER UPDATE OF state ON jobs
    FOR EACH ROW
    WHEN (OLD.state IN ('dispatched', 'running') AND NEW.state IN ('done', 'failed', 'cancelled'))
    EXECUTE FUNCTION comfygate_job_end_notify();

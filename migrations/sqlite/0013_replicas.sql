-- Replicas sharing one store (docs/architecture.md, "Replicas").
-- Mirrored in migrations/postgres/0013_replicas.sql, which also has the job number sequence and
-- the revocation notifications (one SQLite store has one gateway: it always holds the term).
CREATE TABLE scheduler_term (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    term     BIGINT  NOT NULL,
    instance TEXT,
    since    BIGINT
);
INSERT INTO scheduler_term (id, term) VALUES (1, 0);

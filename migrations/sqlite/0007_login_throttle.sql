-- Login throttling shared by every gateway on the store, and where each account logged in from.
-- Mirrored in migrations/postgres/0007_login_throttle.sql: keep both in step.
--
-- login_throttle: one row per throttled key (an account at an address, an address, an account).
-- attempts counts the current round's attempts, failed or still being checked: it is taken
-- before the password hash is checked, so concurrent attempts cannot all pass. The attempt that
-- fills a round blocks the key until blocked_until; lock_ms doubles with each block. Rows quiet
-- for the forget window start afresh and are purged.
CREATE TABLE login_throttle (
    throttle_key  TEXT   PRIMARY KEY,
    attempts      BIGINT NOT NULL,
    lock_ms       BIGINT NOT NULL,
    blocked_until BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX login_throttle_updated ON login_throttle (updated_at);

-- The addresses an account has logged in from: the account-wide throttle spares them.
CREATE TABLE login_addresses (
    user_id       BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    address       TEXT   NOT NULL,
    last_login_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, address)
);

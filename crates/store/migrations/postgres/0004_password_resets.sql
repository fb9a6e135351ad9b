-- One-time password-reset links; the same table and rules as SQLite's 0005_password_resets.sql.
CREATE TABLE password_resets (
    link_hash   BYTEA PRIMARY KEY,
    user_id     TEXT COLLATE "C" NOT NULL UNIQUE REFERENCES users(id) ON DELETE CASCADE,
    expires_at  BIGINT NOT NULL
);

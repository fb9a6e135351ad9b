-- One-time password-reset links, made by an operator on the machine (`keygate admin
-- reset-password`). Stored as SHA-256 only, one per user, spent in the transaction that uses it.
CREATE TABLE password_resets (
    link_hash   BLOB PRIMARY KEY,
    user_id     TEXT NOT NULL UNIQUE REFERENCES users(id) ON DELETE CASCADE,
    expires_at  INTEGER NOT NULL
) STRICT;

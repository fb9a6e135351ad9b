-- People: users, invitations, the first-run setup link and web sessions; individual keys.
-- Secrets are stored only as SHA-256 (links, session IDs) or argon2id (passwords).

CREATE TABLE users (
    id              TEXT PRIMARY KEY,
    issuer_id       TEXT NOT NULL REFERENCES issuers(id),
    email           TEXT NOT NULL,
    -- The email lowercased: unique per issuer, and what sign-in looks up.
    email_key       TEXT NOT NULL,
    first_name      TEXT NOT NULL,
    last_name       TEXT NOT NULL,
    roles           TEXT NOT NULL,
    account_holder  INTEGER NOT NULL CHECK (account_holder IN (0, 1)),
    password_hash   TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    UNIQUE (issuer_id, email_key)
) STRICT;

CREATE INDEX users_by_email ON users (email_key);
-- Exactly one Account Holder per issuer, who is never removed or demoted.
CREATE UNIQUE INDEX users_one_account_holder ON users (issuer_id) WHERE account_holder = 1;

CREATE TRIGGER users_account_holder_is_never_removed
BEFORE DELETE ON users WHEN OLD.account_holder = 1
BEGIN
    SELECT RAISE(ABORT, 'the Account Holder is never removed: irreversible');
END;

CREATE TRIGGER users_account_holder_is_fixed
BEFORE UPDATE OF account_holder, roles ON users
WHEN OLD.account_holder = 1 OR NEW.account_holder != OLD.account_holder
BEGIN
    SELECT RAISE(ABORT, 'the Account Holder role is irreversible');
END;

CREATE TABLE setup_links (
    issuer_id   TEXT PRIMARY KEY REFERENCES issuers(id),
    link_hash   BLOB NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE invitations (
    id          TEXT PRIMARY KEY,
    issuer_id   TEXT NOT NULL REFERENCES issuers(id),
    email       TEXT NOT NULL,
    email_key   TEXT NOT NULL,
    first_name  TEXT NOT NULL,
    last_name   TEXT NOT NULL,
    roles       TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    link_hash   BLOB NOT NULL UNIQUE,
    UNIQUE (issuer_id, email_key)
) STRICT;

CREATE TABLE sessions (
    id_hash       BLOB PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX sessions_by_user ON sessions (user_id);

-- An individual key's owner. Not a foreign key: a removed user's revoked key stays listed.
ALTER TABLE api_keys ADD COLUMN user_id TEXT;
CREATE UNIQUE INDEX api_keys_one_individual_key_per_user ON api_keys (user_id)
    WHERE user_id IS NOT NULL AND revoked_at IS NULL AND private_key_state != 'ERASED';

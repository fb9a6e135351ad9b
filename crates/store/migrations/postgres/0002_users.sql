-- People: users, invitations, the first-run setup link and web sessions; individual keys.
-- The same tables and rules as SQLite's 0003_users.sql. Secrets are stored only as SHA-256
-- (links, session IDs) or argon2id (passwords).

CREATE TABLE users (
    id              TEXT COLLATE "C" PRIMARY KEY,
    issuer_id       TEXT COLLATE "C" NOT NULL REFERENCES issuers(id),
    email           TEXT NOT NULL,
    -- The email lowercased: unique per issuer, and what sign-in looks up.
    email_key       TEXT COLLATE "C" NOT NULL,
    first_name      TEXT NOT NULL,
    last_name       TEXT NOT NULL,
    roles           TEXT NOT NULL,
    account_holder  BIGINT NOT NULL CHECK (account_holder IN (0, 1)),
    password_hash   TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    UNIQUE (issuer_id, email_key)
);

CREATE INDEX users_by_email ON users (email_key);
-- Exactly one Account Holder per issuer, who is never removed or demoted.
CREATE UNIQUE INDEX users_one_account_holder ON users (issuer_id) WHERE account_holder = 1;

CREATE FUNCTION keygate_account_holder_is_fixed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the Account Holder role is irreversible';
END;
$$;

CREATE TRIGGER users_account_holder_is_never_removed
BEFORE DELETE ON users
FOR EACH ROW
WHEN (OLD.account_holder = 1)
EXECUTE FUNCTION keygate_account_holder_is_fixed();

CREATE TRIGGER users_account_holder_is_fixed
BEFORE UPDATE OF account_holder, roles ON users
FOR EACH ROW
WHEN (OLD.account_holder = 1 OR NEW.account_holder <> OLD.account_holder)
EXECUTE FUNCTION keygate_account_holder_is_fixed();

CREATE TABLE setup_links (
    issuer_id   TEXT COLLATE "C" PRIMARY KEY REFERENCES issuers(id),
    link_hash   BYTEA NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE invitations (
    id          TEXT COLLATE "C" PRIMARY KEY,
    issuer_id   TEXT COLLATE "C" NOT NULL REFERENCES issuers(id),
    email       TEXT NOT NULL,
    email_key   TEXT COLLATE "C" NOT NULL,
    first_name  TEXT NOT NULL,
    last_name   TEXT NOT NULL,
    roles       TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    link_hash   BYTEA NOT NULL UNIQUE,
    UNIQUE (issuer_id, email_key)
);

CREATE TABLE sessions (
    id_hash       BYTEA PRIMARY KEY,
    user_id       TEXT COLLATE "C" NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at    BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL
);

CREATE INDEX sessions_by_user ON sessions (user_id);

-- An individual key's owner. Not a foreign key: a removed user's revoked key stays listed.
ALTER TABLE api_keys ADD COLUMN user_id TEXT COLLATE "C";
CREATE UNIQUE INDEX api_keys_one_individual_key_per_user ON api_keys (user_id)
    WHERE user_id IS NOT NULL AND revoked_at IS NULL AND private_key_state <> 'ERASED';

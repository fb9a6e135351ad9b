-- Secret keys (kgsk_...): the same tables and rules as SQLite's 0004_secret_keys.sql. Only the
-- SHA-256 of each secret is stored, with a short hint.
CREATE TABLE secret_keys (
    id             TEXT COLLATE "C" PRIMARY KEY,
    issuer_id      TEXT COLLATE "C" NOT NULL REFERENCES issuers(id),
    name           TEXT NOT NULL,
    roles          TEXT NOT NULL,
    restrictions   TEXT NOT NULL,
    created_by     TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT,
    revoked_at     BIGINT,
    revoke_reason  TEXT,
    last_used_at   BIGINT,
    request_count  BIGINT NOT NULL DEFAULT 0 CHECK (request_count >= 0)
);

CREATE INDEX secret_keys_by_issuer ON secret_keys (issuer_id, created_at DESC, id DESC);

CREATE TRIGGER secret_keys_revocation_is_final
BEFORE UPDATE OF revoked_at ON secret_keys
FOR EACH ROW
WHEN (OLD.revoked_at IS NOT NULL AND (NEW.revoked_at IS NULL OR NEW.revoked_at <> OLD.revoked_at))
EXECUTE FUNCTION keygate_revocation_is_final();

CREATE TABLE secret_key_versions (
    hash        BYTEA PRIMARY KEY,
    key_id      TEXT COLLATE "C" NOT NULL REFERENCES secret_keys(id),
    hint        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT
);

CREATE INDEX secret_key_versions_by_key ON secret_key_versions (key_id);

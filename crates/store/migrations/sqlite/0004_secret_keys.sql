-- Secret keys (kgsk_...): only the SHA-256 of each secret is stored, with a short hint.
CREATE TABLE secret_keys (
    id             TEXT PRIMARY KEY,
    issuer_id      TEXT NOT NULL REFERENCES issuers(id),
    name           TEXT NOT NULL,
    roles          TEXT NOT NULL,
    -- {"referrers": [...], "ipRanges": [...], "apis": [...]}
    restrictions   TEXT NOT NULL,
    created_by     TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER,
    revoked_at     INTEGER,
    revoke_reason  TEXT,
    last_used_at   INTEGER,
    request_count  INTEGER NOT NULL DEFAULT 0 CHECK (request_count >= 0)
) STRICT;

CREATE INDEX secret_keys_by_issuer ON secret_keys (issuer_id, created_at DESC, id DESC);

CREATE TRIGGER secret_keys_revocation_is_final
BEFORE UPDATE OF revoked_at ON secret_keys
WHEN OLD.revoked_at IS NOT NULL AND (NEW.revoked_at IS NULL OR NEW.revoked_at != OLD.revoked_at)
BEGIN
    SELECT RAISE(ABORT, 'revocation is irreversible');
END;

-- The secrets that open a key: one, or two while a roll overlaps.
CREATE TABLE secret_key_versions (
    hash        BLOB PRIMARY KEY,
    key_id      TEXT NOT NULL REFERENCES secret_keys(id),
    hint        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER
) STRICT;

CREATE INDEX secret_key_versions_by_key ON secret_key_versions (key_id);

-- keygate schema v1 (SQLite). Times are seconds since the Unix epoch.

-- One row: deployment-wide values. master_key_check is a value sealed under the master key by
-- the first node; a node whose master key cannot open it refuses to start.
CREATE TABLE deployment (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    master_key_check  BLOB NOT NULL
) STRICT;

CREATE TABLE issuers (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE api_keys (
    id                 TEXT PRIMARY KEY,
    issuer_id          TEXT NOT NULL REFERENCES issuers(id),
    name               TEXT NOT NULL,
    roles              TEXT NOT NULL,
    key_type           TEXT NOT NULL CHECK (key_type IN ('TEAM', 'INDIVIDUAL')),
    algorithm          TEXT NOT NULL CHECK (algorithm IN ('ES256', 'EdDSA')),
    public_key         BLOB NOT NULL,
    private_key_state  TEXT NOT NULL CHECK (private_key_state IN ('PENDING', 'DOWNLOADED', 'ERASED', 'NEVER_HELD')),
    private_key_at     INTEGER,
    created_by         TEXT NOT NULL,
    created_at         INTEGER NOT NULL,
    last_used_at       INTEGER,
    revoked_at         INTEGER,
    revoke_reason      TEXT,
    expires_at         INTEGER
) STRICT;

CREATE INDEX api_keys_by_issuer ON api_keys (issuer_id, created_at DESC, id DESC);

-- Revocation is irreversible, whatever code runs against this file.
CREATE TRIGGER api_keys_revocation_is_final
BEFORE UPDATE OF revoked_at ON api_keys
WHEN OLD.revoked_at IS NOT NULL AND (NEW.revoked_at IS NULL OR NEW.revoked_at != OLD.revoked_at)
BEGIN
    SELECT RAISE(ABORT, 'revocation is irreversible');
END;

-- A downloaded or erased private key never becomes pending again.
CREATE TRIGGER api_keys_private_key_is_once
BEFORE UPDATE OF private_key_state ON api_keys
WHEN OLD.private_key_state != 'PENDING' AND NEW.private_key_state != OLD.private_key_state
BEGIN
    SELECT RAISE(ABORT, 'a private key leaves storage only once');
END;

-- Sealed (AES-256-GCM) private keys waiting for their one download. A row is deleted in the
-- transaction that hands it out; secure_delete overwrites the freed bytes.
CREATE TABLE pending_private_keys (
    key_id      TEXT PRIMARY KEY REFERENCES api_keys(id),
    sealed      BLOB NOT NULL
) STRICT;

-- The change feed: one row per change that affects verification.
CREATE TABLE key_changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id      TEXT NOT NULL,
    changed_at  INTEGER NOT NULL
) STRICT;

-- Append-only, hash-chained audit log (one chain for the whole deployment).
CREATE TABLE audit_events (
    seq         INTEGER PRIMARY KEY,
    issuer_id   TEXT NOT NULL,
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    source_ip   TEXT,
    detail      TEXT NOT NULL,
    prev_hash   BLOB NOT NULL,
    hash        BLOB NOT NULL
) STRICT;

CREATE INDEX audit_events_by_issuer ON audit_events (issuer_id, seq DESC);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;

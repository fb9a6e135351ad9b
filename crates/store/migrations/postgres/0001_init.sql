-- keygate schema v1 (PostgreSQL): the SQLite schema's 0001 and 0002 in one, since PostgreSQL
-- support starts here. Times are seconds since the Unix epoch (BIGINT). The schema_migrations
-- table is created by the migration runner itself, before this file runs.
--
-- ID columns use the "C" collation: keys are paged by (created_at, id) and issuers listed by
-- (created_at, id), and the order must be byte order, as in SQLite and in KeyId's Ord, whatever
-- the database's default collation.

-- One row: deployment-wide values. master_key_check is a value sealed under the master key by
-- the first node; a node whose master key cannot open it refuses to start.
CREATE TABLE deployment (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    master_key_check  BYTEA NOT NULL
);

CREATE TABLE issuers (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id                 TEXT COLLATE "C" PRIMARY KEY,
    issuer_id          TEXT COLLATE "C" NOT NULL REFERENCES issuers(id),
    name               TEXT NOT NULL,
    roles              TEXT NOT NULL,
    key_type           TEXT NOT NULL CHECK (key_type IN ('TEAM', 'INDIVIDUAL')),
    algorithm          TEXT NOT NULL CHECK (algorithm IN ('ES256', 'EdDSA')),
    public_key         BYTEA NOT NULL,
    private_key_state  TEXT NOT NULL CHECK (private_key_state IN ('PENDING', 'DOWNLOADED', 'ERASED', 'NEVER_HELD')),
    private_key_at     BIGINT,
    created_by         TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    last_used_at       BIGINT,
    request_count      BIGINT NOT NULL DEFAULT 0 CHECK (request_count >= 0),
    revoked_at         BIGINT,
    revoke_reason      TEXT,
    expires_at         BIGINT
);

CREATE INDEX api_keys_by_issuer ON api_keys (issuer_id, created_at DESC, id DESC);

-- What the download-window sweep scans.
CREATE INDEX api_keys_pending ON api_keys (created_at) WHERE private_key_state = 'PENDING';

-- Revocation is irreversible, whatever code runs against this database.
CREATE FUNCTION keygate_revocation_is_final() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'revocation is irreversible';
END;
$$;

CREATE TRIGGER api_keys_revocation_is_final
BEFORE UPDATE OF revoked_at ON api_keys
FOR EACH ROW
WHEN (OLD.revoked_at IS NOT NULL AND (NEW.revoked_at IS NULL OR NEW.revoked_at <> OLD.revoked_at))
EXECUTE FUNCTION keygate_revocation_is_final();

-- A downloaded or erased private key never becomes pending again.
CREATE FUNCTION keygate_private_key_is_once() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a private key leaves storage only once';
END;
$$;

CREATE TRIGGER api_keys_private_key_is_once
BEFORE UPDATE OF private_key_state ON api_keys
FOR EACH ROW
WHEN (OLD.private_key_state <> 'PENDING' AND NEW.private_key_state <> OLD.private_key_state)
EXECUTE FUNCTION keygate_private_key_is_once();

-- Sealed (AES-256-GCM) private keys waiting for their one download. A row is deleted in the
-- transaction that hands it out. (Unlike SQLite's secure_delete, PostgreSQL leaves dead tuples
-- until VACUUM; the bytes are sealed, so what lingers is ciphertext only.)
CREATE TABLE pending_private_keys (
    key_id      TEXT COLLATE "C" PRIMARY KEY REFERENCES api_keys(id),
    sealed      BYTEA NOT NULL
);

-- The change feed: one row per change that affects verification. Rows are inserted only under
-- the store's feed lock, so positions become visible in order (see postgres/mod.rs).
CREATE TABLE key_changes (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id      TEXT COLLATE "C" NOT NULL,
    changed_at  BIGINT NOT NULL
);

-- Every change is announced to listening nodes; the notification is delivered when (and only
-- if) the inserting transaction commits. The payload is the position, as text.
CREATE FUNCTION keygate_announce_key_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keygate_key_changes', NEW.seq::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER key_changes_announce
AFTER INSERT ON key_changes
FOR EACH ROW
EXECUTE FUNCTION keygate_announce_key_change();

-- Append-only, hash-chained audit log (one chain for the whole deployment). seq is assigned by
-- the store (previous + 1, under the feed lock), so the chain has no gaps.
CREATE TABLE audit_events (
    seq         BIGINT PRIMARY KEY,
    issuer_id   TEXT COLLATE "C" NOT NULL,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    source_ip   TEXT,
    detail      TEXT NOT NULL,
    prev_hash   BYTEA NOT NULL,
    hash        BYTEA NOT NULL
);

CREATE INDEX audit_events_by_issuer ON audit_events (issuer_id, seq DESC);

CREATE FUNCTION keygate_audit_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only';
END;
$$;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
FOR EACH ROW EXECUTE FUNCTION keygate_audit_is_append_only();

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
FOR EACH ROW EXECUTE FUNCTION keygate_audit_is_append_only();

-- TRUNCATE skips row triggers; it is a delete too.
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
FOR EACH STATEMENT EXECUTE FUNCTION keygate_audit_is_append_only();

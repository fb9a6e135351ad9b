//! The storage contract. One implementation per database lives in `keygate-store`, chosen by the
//! URL scheme at start-up; domain code only ever sees these traits (as `Arc<dyn Store>`).
//!
//! Every mutation takes the audit event that records it and writes both, plus the change-feed
//! entry for anything that affects verification, in one transaction.

use async_trait::async_trait;

use crate::audit::{AuditEvent, NewAuditEvent};
use crate::clock::UnixTime;
use crate::crypto::{PrivateKeyPem, SealedPrivateKey};
use crate::error::{PrivateKeyUnavailable, Result};
use crate::ids::{Actor, InvitationId, IssuerId, KeyId, UserId};
use crate::key::{ApiKey, KeyQuery, Page};
use crate::meter::KeyUsage;
use crate::role::RoleSet;
use crate::secret::{PasswordHashText, SecretHash};
use crate::secret_key::{SecretKey, SecretVersion};
use crate::user::{Invitation, Session, User};

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    pub id: IssuerId,
    pub name: String,
    pub created_at: UnixTime,
}

/// The result of trying to take a pending private key out of storage.
#[derive(Debug)]
pub enum TakePrivateKey {
    /// This caller got it; the stored copy was erased in the same transaction.
    Taken(PrivateKeyPem),
    Unavailable(PrivateKeyUnavailable),
    NotFound,
}

/// Opens a sealed private key; given to [`KeyStore::take_private_key`] so that a key which
/// cannot be opened (wrong master key) is never marked downloaded.
pub type OpenSealed<'a> = &'a (dyn Fn(&SealedPrivateKey) -> Result<PrivateKeyPem> + Send + Sync);

#[async_trait]
pub trait IssuerStore: Send + Sync {
    /// Creates `candidate` only if the database holds no issuer at all, atomically; returns the
    /// first issuer and whether it was created now.
    async fn ensure_issuer(
        &self,
        candidate: &Issuer,
        audit: &NewAuditEvent,
    ) -> Result<(Issuer, bool)>;
    /// Creates an issuer; `Conflict` if its ID exists.
    async fn create_issuer(&self, issuer: &Issuer, audit: &NewAuditEvent) -> Result<()>;
    async fn get_issuer(&self, id: IssuerId) -> Result<Option<Issuer>>;
    async fn list_issuers(&self) -> Result<Vec<Issuer>>;
}

#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Inserts a new key and, when keygate generated it, its sealed private half. For team keys,
    /// fails with `Conflict` if the issuer already has `max_active_team_keys` active team keys
    /// (checked in the same transaction, so concurrent creations cannot overshoot).
    async fn insert_key(
        &self,
        key: &ApiKey,
        sealed: Option<&SealedPrivateKey>,
        max_active_team_keys: u32,
        audit: &NewAuditEvent,
    ) -> Result<()>;

    async fn get_key(&self, issuer: IssuerId, id: KeyId) -> Result<Option<ApiKey>>;

    async fn list_keys(&self, issuer: IssuerId, query: &KeyQuery) -> Result<Page<ApiKey>>;

    /// Atomically takes the pending private key: exactly one caller ever gets `Taken`, however
    /// many ask at once. `open` runs inside the transaction; if it fails, nothing changes. Keys
    /// created at or before `created_after` are past their download window: their sealed copy is
    /// erased instead and the answer is `Unavailable(Erased)`.
    async fn take_private_key(
        &self,
        issuer: IssuerId,
        id: KeyId,
        created_after: UnixTime,
        now: UnixTime,
        audit: &NewAuditEvent,
        open: OpenSealed<'_>,
    ) -> Result<TakePrivateKey>;

    /// Revokes a key (and erases its private half if still pending). Revoking a revoked key
    /// changes nothing and records nothing. `None` if the issuer has no such key.
    async fn revoke_key(
        &self,
        issuer: IssuerId,
        id: KeyId,
        reason: Option<&str>,
        now: UnixTime,
        audit: &NewAuditEvent,
    ) -> Result<Option<ApiKey>>;

    /// Erases every pending private key of a key created before `created_before`, recording an
    /// audit event by `actor` for each. Returns the keys that were erased.
    async fn erase_stale_private_keys(
        &self,
        created_before: UnixTime,
        now: UnixTime,
        actor: &Actor,
    ) -> Result<Vec<ApiKey>>;

    /// Adds a batch of usage from the data plane: `requests` to each key's request count, and
    /// its last-used time if newer. Unknown keys are skipped. Not a change that affects
    /// verification, so it writes no change-feed entry and no audit event.
    async fn record_usage(&self, usage: &[KeyUsage]) -> Result<()>;
}

/// Keys per batch of [`ChangeFeed::load_all_keys`].
pub const LOAD_BATCH: usize = 100_000;

/// What a node needs to keep its in-memory verification state current.
#[async_trait]
pub trait ChangeFeed: Send + Sync {
    /// Every key, read in one consistent snapshot and handed to `each_batch` in batches of at
    /// most [`LOAD_BATCH`] (so a million keys never sit in memory twice); returns the
    /// change-feed position the snapshot is consistent with.
    async fn load_all_keys(&self, each_batch: &mut (dyn FnMut(Vec<ApiKey>) + Send)) -> Result<i64>;
    /// Keys changed after position `seq`, in order, at most `limit`: `(position, key)`.
    async fn changes_since(&self, seq: i64, limit: u32) -> Result<Vec<(i64, KeyId)>>;
    /// The current state of the given keys (any issuer).
    async fn keys_by_id(&self, ids: &[KeyId]) -> Result<Vec<ApiKey>>;
    /// Every secret key, with its versions.
    async fn load_all_secret_keys(&self) -> Result<Vec<SecretKey>>;
    /// The current state of the given secret keys (IDs of API keys are skipped).
    async fn secret_keys_by_id(&self, ids: &[KeyId]) -> Result<Vec<SecretKey>>;
}

/// Secret keys. Only hashes of secrets arrive here.
#[async_trait]
pub trait SecretKeyStore: Send + Sync {
    /// Inserts a key and its first version, with the change-feed entry and the audit event.
    async fn insert_secret_key(&self, key: &SecretKey, audit: &NewAuditEvent) -> Result<()>;
    async fn get_secret_key(&self, issuer: IssuerId, id: KeyId) -> Result<Option<SecretKey>>;
    /// An issuer's secret keys, newest first.
    async fn list_secret_keys(&self, issuer: IssuerId) -> Result<Vec<SecretKey>>;
    /// Revokes a key for good; revoking a revoked key changes nothing. `None` if no such key.
    async fn revoke_secret_key(
        &self,
        issuer: IssuerId,
        id: KeyId,
        reason: Option<&str>,
        now: UnixTime,
        audit: &NewAuditEvent,
    ) -> Result<Option<SecretKey>>;
    /// Adds `version` and ends every older version at `old_expires_at` (or earlier, if it
    /// already ended sooner). `Conflict` for a revoked key; `None` if no such key.
    async fn roll_secret_key(
        &self,
        issuer: IssuerId,
        id: KeyId,
        version: &SecretVersion,
        old_expires_at: UnixTime,
        audit: &NewAuditEvent,
    ) -> Result<Option<SecretKey>>;
    /// The key a secret's hash belongs to (any issuer), for leak reports.
    async fn secret_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<SecretKey>>;
}

#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Events of one issuer, newest first, starting below `before_seq`.
    async fn list_audit_events(
        &self,
        issuer: IssuerId,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Page<AuditEvent>>;

    /// The whole deployment's chain in order: events after position `after_seq`, at most
    /// `limit` (for `keygate audit verify`).
    async fn audit_chain(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditEvent>>;
}

/// People: users, invitations, the first-run setup link and web sessions. Every secret arrives
/// here already hashed ([`SecretHash`]); lookups are by hash.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Stores a new setup link for an issuer that has no user yet, replacing any earlier one.
    /// `false` (and nothing stored) if the issuer already has users.
    async fn set_setup_link(
        &self,
        issuer: IssuerId,
        link: &SecretHash,
        now: UnixTime,
    ) -> Result<bool>;
    /// The issuer a live setup link belongs to.
    async fn setup_link_issuer(&self, link: &SecretHash) -> Result<Option<IssuerId>>;
    /// Creates the issuer's Account Holder and spends the setup link, atomically: `NotFound` if
    /// the link is not the issuer's live one, `Conflict` if the issuer already has a user.
    async fn create_account_holder(
        &self,
        link: &SecretHash,
        user: &User,
        audit: &NewAuditEvent,
    ) -> Result<()>;

    async fn insert_invitation(
        &self,
        invitation: &Invitation,
        link: &SecretHash,
        audit: &NewAuditEvent,
    ) -> Result<()>;
    /// The unexpired invitation behind a link.
    async fn invitation_by_link(
        &self,
        link: &SecretHash,
        now: UnixTime,
    ) -> Result<Option<Invitation>>;
    /// Unexpired invitations of an issuer, newest first.
    async fn list_invitations(&self, issuer: IssuerId, now: UnixTime) -> Result<Vec<Invitation>>;
    /// `false` if the issuer has no such invitation.
    async fn delete_invitation(
        &self,
        issuer: IssuerId,
        id: InvitationId,
        audit: &NewAuditEvent,
    ) -> Result<bool>;
    /// Spends an invitation link and creates its user, atomically: `NotFound` if the link is
    /// unknown, spent or expired; `Conflict` if the email is already a user of the issuer.
    async fn accept_invitation(
        &self,
        link: &SecretHash,
        now: UnixTime,
        user: &User,
        audit: &NewAuditEvent,
    ) -> Result<()>;

    async fn get_user(&self, issuer: IssuerId, id: UserId) -> Result<Option<User>>;
    /// Users with this email (case-insensitive) in any issuer, for sign-in.
    async fn users_by_email(&self, email: &str) -> Result<Vec<User>>;
    /// Users of an issuer, by name.
    async fn list_users(&self, issuer: IssuerId) -> Result<Vec<User>>;
    /// Sets a user's roles, and those of the user's active individual keys (with change-feed
    /// entries), in one transaction. The Account Holder's roles are never changed here: it is
    /// `Conflict`. Returns the user and the keys changed; `None` if there is no such user.
    async fn set_user_roles(
        &self,
        issuer: IssuerId,
        id: UserId,
        roles: &RoleSet,
        now: UnixTime,
        audit: &NewAuditEvent,
    ) -> Result<Option<(User, Vec<ApiKey>)>>;
    /// Removes a user: revokes their individual keys, ends their sessions, deletes the user, in
    /// one transaction. The Account Holder is never removed (`Conflict`). Returns the revoked
    /// keys; `None` if there is no such user.
    async fn remove_user(
        &self,
        issuer: IssuerId,
        id: UserId,
        now: UnixTime,
        audit: &NewAuditEvent,
    ) -> Result<Option<Vec<ApiKey>>>;

    async fn insert_session(
        &self,
        session: &SecretHash,
        user: &User,
        now: UnixTime,
        audit: &NewAuditEvent,
    ) -> Result<()>;
    /// The session with this ID hash if it was used after `idle_since`; marks it used at `now`
    /// (at most once a minute, so browsing is not a write per page).
    async fn touch_session(
        &self,
        session: &SecretHash,
        idle_since: UnixTime,
        now: UnixTime,
    ) -> Result<Option<Session>>;
    /// Ends a session; `audit` is written if it existed.
    async fn delete_session(&self, session: &SecretHash, audit: &NewAuditEvent) -> Result<()>;
    /// Deletes sessions idle since before `idle_since` and spent or expired links.
    async fn sweep_sessions(&self, idle_since: UnixTime, now: UnixTime) -> Result<u64>;
    /// Sets a user's password hash and ends every session of theirs but `keep`, in one
    /// transaction with `audit`; `false` if there is no such user.
    async fn set_password(
        &self,
        issuer: IssuerId,
        id: UserId,
        hash: &PasswordHashText,
        keep: Option<&SecretHash>,
        audit: &NewAuditEvent,
    ) -> Result<bool>;
    /// Ends every session of a user but `keep`; returns how many ended (`audit` is written
    /// either way).
    async fn end_sessions(
        &self,
        issuer: IssuerId,
        id: UserId,
        keep: Option<&SecretHash>,
        audit: &NewAuditEvent,
    ) -> Result<u64>;
    /// Stores a password-reset link for a user, replacing any earlier one of theirs; `false`
    /// if there is no such user.
    async fn insert_password_reset(
        &self,
        issuer: IssuerId,
        id: UserId,
        link: &SecretHash,
        expires_at: UnixTime,
        audit: &NewAuditEvent,
    ) -> Result<bool>;
    /// The user a live (unspent, unexpired) reset link belongs to.
    async fn password_reset_user(&self, link: &SecretHash, now: UnixTime) -> Result<Option<User>>;
    /// Spends `user`'s reset link: sets the password and ends every session of the user,
    /// atomically. `NotFound` if the link is unknown, spent, expired or another user's.
    async fn reset_password(
        &self,
        link: &SecretHash,
        user: UserId,
        now: UnixTime,
        hash: &PasswordHashText,
        audit: &NewAuditEvent,
    ) -> Result<()>;

    /// Appends an event that goes with no other change (a failed sign-in).
    async fn append_audit_event(&self, audit: &NewAuditEvent) -> Result<()>;
}

/// Deployment-wide settings.
#[async_trait]
pub trait DeploymentStore: Send + Sync {
    /// Stores `candidate` as the master-key check value unless one exists; returns the stored
    /// value. A node whose master key cannot open it has the wrong key for this database.
    async fn master_key_check(&self, candidate: &[u8]) -> Result<Vec<u8>>;
    /// The database's own clock, in Unix seconds: what sweeps of shared state decide with, so
    /// one node's wrong clock cannot expire what other nodes made.
    async fn db_now(&self) -> Result<UnixTime>;
}

/// Everything keygate stores, behind one handle.
#[async_trait]
pub trait Store:
    IssuerStore
    + KeyStore
    + UserStore
    + SecretKeyStore
    + ChangeFeed
    + AuditStore
    + DeploymentStore
    + std::fmt::Debug
{
    /// Whether the database answers (for `/readyz`).
    async fn ping(&self) -> Result<()>;
}

//! The domain operations: what the management API, the CLI and the data plane call. Each
//! operation validates, decides, and makes one store call that writes the change, its audit
//! event and its change-feed entry together.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::json;
use tracing::instrument;

use crate::audit::{AuditAction, AuditEvent, NewAuditEvent};
use crate::authz::{IssuerAdmin, KeyScope, Member, Principal};
use crate::clock::{Clock, UnixTime};
use crate::crypto::{
    MasterKey, PrivateKeyPem, SealedPrivateKey, generate_key_pair, parse_public_key_pem,
};
use crate::error::{AuthFailure, AuthReason, Error, ForbiddenReason, Result};
use crate::ids::{Actor, IssuerId, KeyId};
use crate::key::{Algorithm, ApiKey, KeyQuery, KeyType, Page, PrivateKeyState};
use crate::keyset::KeyRing;
use crate::meter::Meter;
use crate::policy::Policy;
use crate::role::{Role, RoleCatalog};
use crate::scope::RequestTarget;
use crate::secret_key::{SecretKey, SecretKeyText};
use crate::store::{Issuer, Store, TakePrivateKey};
use crate::time_fmt::rfc3339;
use crate::token::{self, TokenRules, VerifiedToken};
use crate::token_cache::TokenCache;

/// Limits on keys, from configuration.
#[derive(Debug, Clone, Copy)]
pub struct KeyLimits {
    /// Active team keys one issuer may hold (default 50).
    pub max_active_team_keys: u32,
    /// Seconds a new private key waits for its one download before it is erased (default 24 h).
    pub download_window: i64,
}

impl Default for KeyLimits {
    fn default() -> Self {
        Self {
            max_active_team_keys: 50,
            download_window: 24 * 3600,
        }
    }
}

/// A request to create a key, as validated input.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub roles: Vec<String>,
    pub key_type: KeyType,
    pub algorithm: Algorithm,
    /// A caller-supplied SPKI PEM public key: then keygate never holds a private key.
    pub public_key: Option<String>,
    pub expires_at: Option<UnixTime>,
}

/// Verified tokens remembered by default (about 0.5 KiB each).
pub const DEFAULT_TOKEN_CACHE_ENTRIES: usize = 65_536;

/// The hot path: token verification against the node's in-memory key set, with the
/// verified-token cache in front of it.
#[derive(Debug)]
pub struct Verifier {
    ring: Arc<KeyRing>,
    policy: Arc<Policy>,
    rules: TokenRules,
    clock: Arc<dyn Clock>,
    cache: TokenCache,
}

impl Verifier {
    pub fn new(
        ring: Arc<KeyRing>,
        policy: Arc<Policy>,
        rules: TokenRules,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            ring,
            policy,
            rules,
            clock,
            cache: TokenCache::new(DEFAULT_TOKEN_CACHE_ENTRIES),
        }
    }

    /// Sizes the verified-token cache (0 turns it off).
    #[must_use]
    pub fn with_token_cache(mut self, entries: usize) -> Self {
        self.cache = TokenCache::new(entries);
        self
    }

    pub fn token_cache(&self) -> &TokenCache {
        &self.cache
    }

    pub fn rules(&self) -> &TokenRules {
        &self.rules
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Verifies a token completely (signature, key status, claims, the long-lived rule). Never
    /// logs the token.
    #[instrument(level = "trace", skip_all)]
    pub fn verify(&self, token: &str) -> Result<Arc<VerifiedToken>, AuthFailure> {
        let verified = self.verify_credential(token)?;
        verified.check_lifetime(&self.policy, &self.rules)?;
        Ok(verified)
    }

    /// The data-plane decision for a request on the protected API, in the contract's order:
    /// credential (signature, key status, claims), then role policy, then token scope, then the
    /// long-lived rule. Rate limits come last, in [`crate::gate::Gate`].
    #[instrument(level = "trace", skip_all)]
    pub fn authorize(&self, token: &str, target: &RequestTarget<'_>) -> Result<Arc<VerifiedToken>> {
        let verified = self.verify_credential(token)?;
        self.permit(&verified, target)?;
        Ok(verified)
    }

    /// The credential alone: everything but the long-lived rule, which [`Self::permit`] applies
    /// after role and scope.
    pub(crate) fn verify_credential(&self, token: &str) -> Result<Arc<VerifiedToken>, AuthFailure> {
        let now = self.clock.now();
        if let Some(hit) = self.cache.get(token, &self.ring, now) {
            return Ok(hit);
        }
        let verified = Arc::new(token::verify_credential(
            token,
            &self.ring,
            &self.rules,
            now,
        )?);
        // Valid while `exp` is within the leeway and the key has not expired.
        let mut valid_until = verified.expires_at.saturating_add(self.rules.leeway);
        if let Some(key_expiry) = verified.key.expires_at {
            valid_until = valid_until.min(key_expiry);
        }
        self.cache
            .insert(token, Arc::clone(&verified), valid_until, now);
        Ok(verified)
    }

    /// The secret key a presented secret opens: format and checksum first (a mistyped key is
    /// refused before any lookup), then the lookup by hash, then the key's state and, after a
    /// roll, whether this secret still works.
    pub fn verify_secret(&self, text: &str) -> Result<Arc<SecretKey>, AuthFailure> {
        let secret = SecretKeyText::parse(text)
            .map_err(|e| AuthFailure::new(AuthReason::UnknownSecretKey, e.detail()))?;
        let now = self.clock.now();
        let found = self.ring.secrets().get(&secret.hash()).ok_or_else(|| {
            AuthFailure::new(
                AuthReason::UnknownSecretKey,
                "No secret key matches this secret.",
            )
        })?;
        let key = found.key;
        if let Some(at) = key.revoked_at {
            return Err(AuthFailure::new(
                AuthReason::KeyRevoked,
                format!("Secret key {} was revoked at {}.", key.id, rfc3339(at)),
            ));
        }
        if let Some(at) = key.expires_at.filter(|e| *e <= now) {
            return Err(AuthFailure::new(
                AuthReason::KeyExpired,
                format!("Secret key {} expired at {}.", key.id, rfc3339(at)),
            ));
        }
        if let Some(at) = found.version_expires_at.filter(|e| *e <= now) {
            return Err(AuthFailure::new(
                AuthReason::KeyExpired,
                format!(
                    "This secret of key {} was replaced by a roll and stopped working at {}; use the new secret.",
                    key.id,
                    rfc3339(at)
                ),
            ));
        }
        Ok(key)
    }

    /// Role, then scope, then the long-lived rule, for a credential from
    /// [`Self::verify_credential`].
    pub(crate) fn permit(
        &self,
        verified: &VerifiedToken,
        target: &RequestTarget<'_>,
    ) -> Result<()> {
        if !self.policy.allows(&verified.key.roles, target) {
            return Err(Error::forbidden(
                ForbiddenReason::RoleNotAllowed,
                format!(
                    "The policy lets no role of key {} ({}) call {} {}.",
                    verified.key.id,
                    verified.key.roles.joined(),
                    target.method,
                    target.path.chars().take(200).collect::<String>()
                ),
            ));
        }
        verified.check_scope(target)?;
        verified.check_lifetime(&self.policy, &self.rules)?;
        Ok(())
    }

    /// Authenticates a caller of keygate's own management API. The token's scope, if any, must
    /// cover this request too.
    #[instrument(level = "trace", skip_all)]
    pub fn authenticate_management(
        &self,
        token: &str,
        target: &RequestTarget<'_>,
        source_ip: Option<IpAddr>,
    ) -> Result<Principal> {
        let verified = self.verify_credential(token)?;
        verified.check_short_lived(&self.rules)?;
        verified.check_scope(target)?;
        Ok(Principal {
            issuer_id: verified.key.issuer_id,
            actor: Actor::Key(verified.key.id),
            roles: verified.key.roles.clone(),
            user_id: verified.key.user_id,
            source_ip,
        })
    }
}

/// Key management over a [`Store`].
#[derive(Debug)]
pub struct KeyService {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    master: MasterKey,
    limits: KeyLimits,
    roles: RoleCatalog,
    ring: Arc<KeyRing>,
    /// When the change feed was last read (or every key loaded) successfully, for `/readyz`.
    last_feed_read: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Longest wait for one read of the change feed: a connection that died without closing (a
/// frozen host, a failover, lost NAT state) must not stop a node following it.
pub const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest wait for loading every key (a million keys load in a few seconds).
pub const RELOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

const MAX_NAME_CHARS: usize = 100;
const MAX_REASON_CHARS: usize = 500;

impl KeyService {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        master: MasterKey,
        limits: KeyLimits,
        roles: RoleCatalog,
        ring: Arc<KeyRing>,
    ) -> Self {
        Self {
            store,
            clock,
            master,
            limits,
            roles,
            ring,
            last_feed_read: std::sync::Mutex::new(None),
        }
    }

    pub fn limits(&self) -> KeyLimits {
        self.limits
    }

    /// The roles this deployment knows.
    pub fn roles(&self) -> &RoleCatalog {
        &self.roles
    }

    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Checks that this node's master key is the database's: the first node stores a check value
    /// sealed under its key, every later start must be able to open it. Without this, a lost
    /// `master.key` would silently be replaced and every pending private key become unreadable.
    pub async fn check_master_key(&self) -> Result<()> {
        const CONTEXT: &[u8] = b"keygate/master-key-check";
        let candidate = self.master.seal_bytes(CONTEXT, b"keygate")?;
        let stored = self.store.master_key_check(&candidate).await?;
        self.master.open_bytes(CONTEXT, &stored).map(drop).map_err(|_| {
            Error::Unavailable(
                "the master key does not match this database: restore the original master.key or KEYGATE_MASTER_KEY".into(),
            )
        })
    }

    /// Returns the deployment's issuer, creating one if the database holds none.
    /// The flag says whether it was created now.
    pub async fn ensure_issuer(&self) -> Result<(Issuer, bool)> {
        let issuer = Issuer {
            id: IssuerId::generate(),
            name: "keygate".to_owned(),
            created_at: self.clock.now(),
        };
        let audit = NewAuditEvent::new(
            issuer.id,
            issuer.created_at,
            &Actor::System("serve"),
            AuditAction::IssuerCreated,
            issuer.id.to_string(),
        );
        self.store.ensure_issuer(&issuer, &audit).await
    }

    /// The caller's own issuer.
    pub async fn issuer(&self, member: Member<'_>) -> Result<Issuer> {
        self.store
            .get_issuer(member.issuer_id())
            .await?
            .ok_or_else(|| Error::NotFound("the caller's issuer no longer exists".into()))
    }

    /// `admin bootstrap`: makes sure an issuer exists (`issuer_id` if given) and creates a new
    /// `ADMIN` team key whose private half goes straight to the caller, never into storage.
    #[instrument(level = "debug", skip_all)]
    pub async fn bootstrap_admin_key(
        &self,
        issuer_id: Option<IssuerId>,
    ) -> Result<(ApiKey, PrivateKeyPem)> {
        let now = self.clock.now();
        let actor = Actor::System("bootstrap");
        let issuer_id = match issuer_id {
            Some(id) => {
                if self.store.get_issuer(id).await?.is_none() {
                    let issuer = Issuer {
                        id,
                        name: "keygate".into(),
                        created_at: now,
                    };
                    let audit = NewAuditEvent::new(
                        id,
                        now,
                        &actor,
                        AuditAction::IssuerCreated,
                        id.to_string(),
                    );
                    match self.store.create_issuer(&issuer, &audit).await {
                        // Another bootstrap created the same issuer a moment ago: fine.
                        Ok(()) | Err(Error::Conflict(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                id
            }
            None => self.ensure_issuer().await?.0.id,
        };
        let pair = generate_key_pair(Algorithm::Es256)?;
        let key = ApiKey {
            id: KeyId::generate()?,
            issuer_id,
            name: "bootstrap admin key".into(),
            roles: self.roles.key_roles(&[Role::ADMIN])?,
            key_type: KeyType::Team,
            algorithm: Algorithm::Es256,
            public_key: pair.public,
            private_key: PrivateKeyState::Downloaded(now),
            created_by: actor.to_string(),
            created_at: now,
            last_used_at: None,
            request_count: 0,
            revoked_at: None,
            revoke_reason: None,
            expires_at: None,
            user_id: None,
        };
        let audit = NewAuditEvent::new(
            issuer_id,
            now,
            &actor,
            AuditAction::KeyCreated,
            key.id.to_string(),
        )
        .with_detail(json!({"roles": key.roles.joined(), "keyType": "TEAM", "bootstrap": true}));
        // Recovery must work even at the cap.
        self.insert(&key, None, u32::MAX, &audit).await?;
        Ok((key, pair.private))
    }

    /// Creates a key. A team key needs an admin and takes the requested roles; an individual
    /// key is the caller's own (a person, not a team key) and acts with that person's current
    /// roles. Unless a public key is supplied, a key pair is generated and the private half
    /// sealed until its one download.
    #[instrument(level = "debug", skip_all)]
    pub async fn create_key(&self, caller: &Principal, req: NewKey) -> Result<ApiKey> {
        let now = self.clock.now();
        let name = validate_name(&req.name)?;
        let (roles, user_id, cap) = match req.key_type {
            KeyType::Team => {
                caller.admin()?;
                (
                    self.roles.key_roles(&req.roles)?,
                    None,
                    self.limits.max_active_team_keys,
                )
            }
            KeyType::Individual => {
                let user_id = caller.person()?;
                if !req.roles.is_empty() {
                    return Err(Error::attribute(
                        "roles",
                        "An individual key acts with its user's current roles; leave roles out.",
                    ));
                }
                let user = self
                    .store
                    .get_user(caller.issuer_id, user_id)
                    .await?
                    .ok_or_else(|| Error::NotFound("The caller's user no longer exists.".into()))?;
                (user.roles, Some(user_id), u32::MAX)
            }
        };
        if let Some(exp) = req.expires_at
            && exp <= now
        {
            return Err(Error::attribute(
                "expiresAt",
                "expiresAt must be in the future.",
            ));
        }
        let id = KeyId::generate()?;
        let (public_key, sealed, state) = if let Some(pem) = &req.public_key {
            (
                parse_public_key_pem(pem, req.algorithm)?,
                None,
                PrivateKeyState::NeverHeld,
            )
        } else {
            let pair = generate_key_pair(req.algorithm)?;
            let sealed = self.master.seal(id.as_str().as_bytes(), &pair.private)?;
            (pair.public, Some(sealed), PrivateKeyState::Pending)
        };
        let actor = &caller.actor;
        let key = ApiKey {
            id,
            issuer_id: caller.issuer_id,
            name,
            roles,
            key_type: req.key_type,
            algorithm: req.algorithm,
            public_key,
            private_key: state,
            created_by: actor.to_string(),
            created_at: now,
            last_used_at: None,
            request_count: 0,
            revoked_at: None,
            revoke_reason: None,
            expires_at: req.expires_at,
            user_id,
        };
        let audit = NewAuditEvent::new(
            key.issuer_id,
            now,
            actor,
            AuditAction::KeyCreated,
            id.to_string(),
        )
        .from_ip(caller.source_ip)
        .with_detail(json!({
            "name": key.name,
            "roles": key.roles.joined(),
            "keyType": key.key_type.as_str(),
            "algorithm": key.algorithm.as_str(),
            "suppliedPublicKey": req.public_key.is_some(),
        }));
        self.insert(&key, sealed.as_ref(), cap, &audit).await?;
        Ok(key)
    }

    async fn insert(
        &self,
        key: &ApiKey,
        sealed: Option<&SealedPrivateKey>,
        cap: u32,
        audit: &NewAuditEvent,
    ) -> Result<()> {
        // A freshly drawn ID colliding with an existing one is astronomically rare, but the
        // store reports it as a conflict on the ID rather than silently overwriting.
        self.store.insert_key(key, sealed, cap, audit).await?;
        self.ring.apply(std::slice::from_ref(key), i64::MIN);
        Ok(())
    }

    /// One key in the caller's scope; a key outside it is "not found", as in another issuer.
    pub async fn get_key(&self, scope: &KeyScope<'_>, id: &str) -> Result<ApiKey> {
        let id = parse_key_id(id)?;
        self.store
            .get_key(scope.issuer_id(), id)
            .await?
            .filter(|k| scope.owner().is_none() || k.user_id == scope.owner())
            .ok_or_else(|| not_found(id))
    }

    pub async fn list_keys(&self, scope: &KeyScope<'_>, query: &KeyQuery) -> Result<Page<ApiKey>> {
        match scope.owner() {
            None => self.store.list_keys(scope.issuer_id(), query).await,
            Some(owner) => {
                let own = KeyQuery {
                    owner: Some(owner),
                    ..query.clone()
                };
                self.store.list_keys(scope.issuer_id(), &own).await
            }
        }
    }

    /// The one-time download. Exactly one caller ever gets the key; it is erased from storage
    /// in the same transaction that hands it out.
    #[instrument(level = "debug", skip_all)]
    pub async fn download_private_key(
        &self,
        scope: &KeyScope<'_>,
        id: &str,
    ) -> Result<(KeyId, PrivateKeyPem)> {
        let key = self.get_key(scope, id).await?;
        if !key.downloadable_by(scope.principal().user_id) {
            return Err(Error::forbidden(
                ForbiddenReason::RoleNotAllowed,
                "Only its owner can download an individual key's private key; an admin may revoke it.",
            ));
        }
        let id = key.id;
        let admin = scope;
        let now = self.clock.now();
        let audit = NewAuditEvent::new(
            admin.issuer_id(),
            now,
            &admin.principal().actor,
            AuditAction::PrivateKeyDownloaded,
            id.to_string(),
        )
        .from_ip(admin.principal().source_ip);
        let cutoff = now.saturating_sub(self.limits.download_window);
        let open = |sealed: &SealedPrivateKey| self.master.open(id.as_str().as_bytes(), sealed);
        match self
            .store
            .take_private_key(admin.issuer_id(), id, cutoff, now, &audit, &open)
            .await?
        {
            TakePrivateKey::Taken(pem) => Ok((id, pem)),
            TakePrivateKey::Unavailable(why) => Err(Error::PrivateKey(why)),
            TakePrivateKey::NotFound => Err(not_found(id)),
        }
    }

    /// Revokes a key, at once and for good. Revoking a revoked key is not an error.
    #[instrument(level = "debug", skip_all)]
    pub async fn revoke_key(
        &self,
        scope: &KeyScope<'_>,
        id: &str,
        reason: Option<&str>,
    ) -> Result<ApiKey> {
        // The scope decides: an admin may revoke any key of the issuer (another person's
        // individual key included: the remedy for a compromised one); anyone else only their own.
        // Only the download is owner-only.
        let key = self.get_key(scope, id).await?;
        let id = key.id;
        let admin = scope;
        validate_reason(reason)?;
        let now = self.clock.now();
        let audit = NewAuditEvent::new(
            admin.issuer_id(),
            now,
            &admin.principal().actor,
            AuditAction::KeyRevoked,
            id.to_string(),
        )
        .from_ip(admin.principal().source_ip)
        .with_detail(json!({"reason": reason}));
        let key = self
            .store
            .revoke_key(admin.issuer_id(), id, reason, now, &audit)
            .await?
            .ok_or_else(|| not_found(id))?;
        // This node rejects the key before the call returns; others follow via the change feed.
        self.ring.apply(std::slice::from_ref(&key), i64::MIN);
        Ok(key)
    }

    /// Erases private keys whose download window has passed. Run periodically.
    /// Decided with the database's clock, not this node's: a node started with its clock a day
    /// ahead must not erase keys other nodes created minutes ago.
    pub async fn erase_stale_private_keys(&self) -> Result<usize> {
        let now = self.store.db_now().await?;
        let erased = self
            .store
            .erase_stale_private_keys(
                now.saturating_sub(self.limits.download_window),
                now,
                &Actor::System("download-window"),
            )
            .await?;
        self.ring.apply(&erased, i64::MIN);
        Ok(erased.len())
    }

    pub async fn audit_events(
        &self,
        admin: &IssuerAdmin<'_>,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Page<AuditEvent>> {
        self.store
            .list_audit_events(admin.issuer_id(), before_seq, limit)
            .await
    }

    /// Loads every key into the key ring (start-up, or after losing track of the feed).
    /// Writes the usage the data plane metered since the last flush. On failure the batch goes
    /// back into the meter, so nothing is lost while the database is away.
    pub async fn flush_usage(&self, meter: &Meter) -> Result<usize> {
        let batch = meter.drain_usage();
        if batch.is_empty() {
            return Ok(0);
        }
        match self.store.record_usage(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                meter.restore_usage(&batch);
                Err(e)
            }
        }
    }

    /// Reloads every key; bounded by [`RELOAD_TIMEOUT`] so a connection that died silently
    /// cannot hold the feed's reader forever.
    pub async fn reload_keys(&self) -> Result<usize> {
        let loaded =
            tokio::time::timeout(RELOAD_TIMEOUT, self.ring.reload_from(self.store.as_ref()))
                .await
                .map_err(|_| Error::Unavailable("reloading the keys timed out".into()))??;
        self.feed_read_ok();
        Ok(loaded)
    }

    /// Applies what other processes changed since the last sync. Returns how many keys changed.
    /// Bounded by [`SYNC_TIMEOUT`].
    pub async fn sync_keys(&self) -> Result<usize> {
        let changed = tokio::time::timeout(SYNC_TIMEOUT, self.ring.sync_from(self.store.as_ref()))
            .await
            .map_err(|_| Error::Unavailable("reading the change feed timed out".into()))??;
        self.feed_read_ok();
        Ok(changed)
    }

    /// The change listener proved alive with nothing to announce: this node is following the
    /// feed as surely as if it had read it.
    pub fn note_feed_followed(&self) {
        self.feed_read_ok();
    }

    fn feed_read_ok(&self) {
        if let Ok(mut at) = self.last_feed_read.lock() {
            *at = Some(std::time::Instant::now());
        }
    }

    /// How long ago this node last read the change feed (or loaded every key) successfully;
    /// `None` before the first time.
    pub fn feed_read_age(&self) -> Option<std::time::Duration> {
        self.last_feed_read
            .lock()
            .ok()
            .and_then(|at| at.map(|t| t.elapsed()))
    }

    /// The database's clock minus this node's, in seconds (positive: this node is behind).
    pub async fn clock_skew(&self) -> Result<i64> {
        let db = self.store.db_now().await?;
        Ok(db - self.clock.now())
    }
}

/// A revoke reason: at most 500 characters, and no control character but a line break or a
/// tab (a NUL, among others, could not be stored on PostgreSQL).
pub(crate) fn validate_reason(reason: Option<&str>) -> Result<()> {
    let Some(r) = reason else {
        return Ok(());
    };
    if r.chars().count() > MAX_REASON_CHARS {
        return Err(Error::attribute(
            "revokeReason",
            format!("revokeReason is at most {MAX_REASON_CHARS} characters."),
        ));
    }
    if crate::user::has_hidden_characters(r, &['\n', '\t']) {
        return Err(Error::attribute(
            "revokeReason",
            "revokeReason must not contain control characters or direction overrides.",
        ));
    }
    Ok(())
}

/// Text from outside that is only recorded (a leak report's source and URL): control
/// characters dropped, at most `max` characters kept.
pub(crate) fn recordable(text: &str, max: usize) -> String {
    text.chars()
        .filter(|c| !crate::user::is_hidden_character(*c))
        .take(max)
        .collect()
}

pub(crate) fn validate_name(name: &str) -> Result<String> {
    let count = name.chars().count();
    if count == 0 || name.trim().is_empty() {
        return Err(Error::attribute("name", "name must not be empty."));
    }
    if count > MAX_NAME_CHARS {
        return Err(Error::attribute(
            "name",
            format!("name is at most {MAX_NAME_CHARS} characters; this one has {count}."),
        ));
    }
    if crate::user::has_hidden_characters(name, &[]) {
        return Err(Error::attribute(
            "name",
            "name must not contain control characters or direction overrides.",
        ));
    }
    Ok(name.to_owned())
}

fn parse_key_id(id: &str) -> Result<KeyId> {
    KeyId::parse(id).ok_or_else(|| Error::NotFound("There is no API key with this ID.".into()))
}

fn not_found(id: KeyId) -> Error {
    Error::NotFound(format!("There is no API key with ID {id} in this issuer."))
}

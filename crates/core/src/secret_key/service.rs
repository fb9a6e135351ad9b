//! Secret-key operations: create, list, revoke, roll, and the response to a leak report.

use std::sync::Arc;

use serde_json::json;

use super::{Restrictions, SecretKey, SecretKeyText, SecretVersion};
use crate::audit::{AuditAction, NewAuditEvent};
use crate::authz::IssuerAdmin;
use crate::clock::{Clock, UnixTime};
use crate::error::{Error, Result};
use crate::ids::{Actor, KeyId};
use crate::keyset::KeyRing;
use crate::role::RoleCatalog;
use crate::store::Store;

/// A request to create a secret key, as validated input.
#[derive(Debug, Clone)]
pub struct NewSecretKey {
    pub name: String,
    pub roles: Vec<String>,
    pub restrictions: Restrictions,
    pub expires_at: Option<UnixTime>,
}

/// The longest overlap a roll may give the old secret (Stripe allows a week; a month here).
pub const MAX_ROLL_OVERLAP: i64 = 30 * 24 * 3600;

/// One entry of a leak report, and whether it was a keygate secret key.
#[derive(Debug, Clone)]
pub struct LeakOutcome {
    /// SHA-256 of the reported token, hex: how the answer names it without repeating it.
    pub token_hash: String,
    pub token_type: String,
    /// The token opened a keygate key (now revoked, or revoked before).
    pub matched: bool,
}

#[derive(Debug)]
pub struct SecretKeyService {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    roles: RoleCatalog,
    ring: Arc<KeyRing>,
}

impl SecretKeyService {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        roles: RoleCatalog,
        ring: Arc<KeyRing>,
    ) -> Self {
        Self {
            store,
            clock,
            roles,
            ring,
        }
    }

    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// Creates a key; the secret is returned once and only its hash is stored.
    pub async fn create(
        &self,
        admin: &IssuerAdmin<'_>,
        req: NewSecretKey,
    ) -> Result<(SecretKey, SecretKeyText)> {
        let now = self.clock.now();
        let name = crate::service::validate_name(&req.name)?;
        let roles = self.roles.key_roles(&req.roles)?;
        if let Some(exp) = req.expires_at
            && exp <= now
        {
            return Err(Error::attribute(
                "expiresAt",
                "expiresAt must be in the future.",
            ));
        }
        let secret = SecretKeyText::generate()?;
        let key = SecretKey {
            id: KeyId::generate()?,
            issuer_id: admin.issuer_id(),
            name,
            roles,
            restrictions: req.restrictions,
            created_by: admin.principal().actor.to_string(),
            created_at: now,
            expires_at: req.expires_at,
            revoked_at: None,
            revoke_reason: None,
            last_used_at: None,
            request_count: 0,
            versions: vec![SecretVersion {
                hash: secret.hash(),
                hint: secret.hint(),
                created_at: now,
                expires_at: None,
            }],
        };
        let audit = NewAuditEvent::new(
            key.issuer_id,
            now,
            &admin.principal().actor,
            AuditAction::SecretKeyCreated,
            key.id.to_string(),
        )
        .from_ip(admin.principal().source_ip)
        .with_detail(json!({
            "name": key.name,
            "roles": key.roles.joined(),
            "restrictions": key.restrictions.to_json(),
        }));
        self.store.insert_secret_key(&key, &audit).await?;
        self.ring.secrets().apply(std::slice::from_ref(&key));
        Ok((key, secret))
    }

    pub async fn list(&self, admin: &IssuerAdmin<'_>) -> Result<Vec<SecretKey>> {
        self.store.list_secret_keys(admin.issuer_id()).await
    }

    pub async fn get(&self, admin: &IssuerAdmin<'_>, id: &str) -> Result<SecretKey> {
        let id = parse_id(id)?;
        self.store
            .get_secret_key(admin.issuer_id(), id)
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// Revokes at once and for good; revoking again is not an error.
    pub async fn revoke(
        &self,
        admin: &IssuerAdmin<'_>,
        id: &str,
        reason: Option<&str>,
    ) -> Result<SecretKey> {
        let id = parse_id(id)?;
        crate::service::validate_reason(reason)?;
        let now = self.clock.now();
        let audit = NewAuditEvent::new(
            admin.issuer_id(),
            now,
            &admin.principal().actor,
            AuditAction::SecretKeyRevoked,
            id.to_string(),
        )
        .from_ip(admin.principal().source_ip)
        .with_detail(json!({"reason": reason}));
        let key = self
            .store
            .revoke_secret_key(admin.issuer_id(), id, reason, now, &audit)
            .await?
            .ok_or_else(|| not_found(id))?;
        self.ring.secrets().apply(std::slice::from_ref(&key));
        Ok(key)
    }

    /// Rolls a key: a new secret, returned once; the old one keeps working until
    /// `old_expires_at` (now, if not given), never longer than [`MAX_ROLL_OVERLAP`].
    pub async fn roll(
        &self,
        admin: &IssuerAdmin<'_>,
        id: &str,
        old_expires_at: Option<UnixTime>,
    ) -> Result<(SecretKey, SecretKeyText)> {
        let id = parse_id(id)?;
        let now = self.clock.now();
        let old_expires_at = old_expires_at.unwrap_or(now);
        if old_expires_at < now || old_expires_at > now.saturating_add(MAX_ROLL_OVERLAP) {
            return Err(Error::attribute(
                "oldKeyExpiresAt",
                "oldKeyExpiresAt is from now to 30 days ahead.",
            ));
        }
        // An expired key stays expired: a new secret for it would be refused at once.
        let current = self
            .store
            .get_secret_key(admin.issuer_id(), id)
            .await?
            .ok_or_else(|| not_found(id))?;
        if !current.is_revoked() && current.is_expired(now) {
            return Err(Error::Conflict(
                "This secret key has expired; a roll would not bring it back. Create a new key."
                    .into(),
            ));
        }
        let secret = SecretKeyText::generate()?;
        let version = SecretVersion {
            hash: secret.hash(),
            hint: secret.hint(),
            created_at: now,
            expires_at: None,
        };
        let audit = NewAuditEvent::new(
            admin.issuer_id(),
            now,
            &admin.principal().actor,
            AuditAction::SecretKeyRolled,
            id.to_string(),
        )
        .from_ip(admin.principal().source_ip)
        .with_detail(json!({"oldKeyExpiresAt": crate::time_fmt::rfc3339(old_expires_at)}));
        let key = self
            .store
            .roll_secret_key(admin.issuer_id(), id, &version, old_expires_at, &audit)
            .await?
            .ok_or_else(|| not_found(id))?;
        self.ring.secrets().apply(std::slice::from_ref(&key));
        Ok((key, secret))
    }

    /// Revokes every reported token that is a keygate secret key, at once, and says which
    /// were. Each report of a live secret is audited, with the reporter's address, even when the
    /// key was already revoked. The caller has verified the report's signature.
    pub async fn report_leaks(
        &self,
        reports: &[(String, String, String, String)],
        source_ip: Option<std::net::IpAddr>,
    ) -> Result<Vec<LeakOutcome>> {
        let now = self.clock.now();
        let mut out = Vec::with_capacity(reports.len());
        for (token, token_type, url, source) in reports {
            let hash = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
            let token_hash = hash.as_ref().iter().fold(String::new(), |mut out, b| {
                use std::fmt::Write as _;
                let _ = write!(out, "{b:02x}");
                out
            });
            let (key, live) = match SecretKeyText::parse(token) {
                Ok(secret) => {
                    let hash = secret.hash();
                    let key = self.store.secret_key_by_hash(&hash).await?;
                    // A secret already ended by a roll opens nothing: revoking the key for it
                    // would break the new secret for no gain.
                    let live = key
                        .as_ref()
                        .is_some_and(|k| k.live_versions(now).any(|v| v.hash == hash));
                    (key, live)
                }
                Err(_) => (None, false),
            };
            if let Some(key) = key.as_ref().filter(|_| live) {
                let audit = NewAuditEvent::new(
                    key.issuer_id,
                    now,
                    &Actor::System("leak-report"),
                    AuditAction::SecretKeyLeakReported,
                    key.id.to_string(),
                )
                .from_ip(source_ip)
                .with_detail(json!({
                    "url": crate::service::recordable(url, 500),
                    "source": crate::service::recordable(source, 100),
                    "alreadyRevoked": key.is_revoked(),
                }));
                let reason = format!(
                    "leaked: reported by secret scanning ({})",
                    crate::service::recordable(source, 100)
                );
                if key.is_revoked() {
                    // Nothing to change, but the report itself is on record.
                    self.store.append_audit_event(&audit).await?;
                } else if let Some(revoked) = self
                    .store
                    .revoke_secret_key(key.issuer_id, key.id, Some(&reason), now, &audit)
                    .await?
                {
                    self.ring.secrets().apply(std::slice::from_ref(&revoked));
                }
            }
            out.push(LeakOutcome {
                token_hash,
                token_type: token_type.chars().take(100).collect(),
                matched: key.is_some(),
            });
        }
        Ok(out)
    }
}

fn parse_id(id: &str) -> Result<KeyId> {
    KeyId::parse(id).ok_or_else(|| Error::NotFound("There is no secret key with this ID.".into()))
}

fn not_found(id: KeyId) -> Error {
    Error::NotFound(format!(
        "There is no secret key with ID {id} in this issuer."
    ))
}

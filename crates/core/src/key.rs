//! API keys as keygate stores them: the public half, roles, status and times. Never the private
//! half, which only exists sealed until its one download (see [`crate::crypto`]).

use std::fmt;

use crate::clock::UnixTime;
use crate::error::{Error, Result};
use crate::ids::{IssuerId, KeyId, UserId};
use crate::role::RoleSet;

/// The signature algorithm a key is pinned to; tokens must name exactly this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// ECDSA on P-256 with SHA-256, App Store Connect's algorithm.
    #[default]
    Es256,
    /// Ed25519.
    EdDsa,
}

impl Algorithm {
    /// The JOSE `alg` name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Team keys act for the whole issuer; individual keys act for one user, with that user's roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Team,
    Individual,
}

impl KeyType {
    /// The API spelling (`TEAM`, `INDIVIDUAL`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Team => "TEAM",
            Self::Individual => "INDIVIDUAL",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TEAM" => Some(Self::Team),
            "INDIVIDUAL" => Some(Self::Individual),
            _ => None,
        }
    }
    /// The `X-Keygate-Key-Type` spelling.
    pub const fn header_value(self) -> &'static str {
        match self {
            Self::Team => "team",
            Self::Individual => "individual",
        }
    }
}

/// Where the private half of a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateKeyState {
    /// Sealed in storage, waiting for its one download.
    Pending,
    /// Handed out once, at this time, and erased in the same transaction.
    Downloaded(UnixTime),
    /// Never downloaded within the window and erased at this time: the key can never be used.
    Erased(UnixTime),
    /// The caller supplied the public key; keygate never held a private key.
    NeverHeld,
}

impl PrivateKeyState {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Downloaded(_) => "DOWNLOADED",
            Self::Erased(_) => "ERASED",
            Self::NeverHeld => "NEVER_HELD",
        }
    }
}

/// One API key, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: KeyId,
    pub issuer_id: IssuerId,
    pub name: String,
    pub roles: RoleSet,
    pub key_type: KeyType,
    pub algorithm: Algorithm,
    /// The raw public key: a 65-byte uncompressed P-256 point or a 32-byte Ed25519 key.
    pub public_key: Vec<u8>,
    pub private_key: PrivateKeyState,
    pub created_by: String,
    pub created_at: UnixTime,
    pub last_used_at: Option<UnixTime>,
    /// Requests the data plane admitted for this key (flushed in batches, so a few seconds
    /// behind).
    pub request_count: u64,
    pub revoked_at: Option<UnixTime>,
    pub revoke_reason: Option<String>,
    pub expires_at: Option<UnixTime>,
    /// The owner of an individual key; `None` for team keys.
    pub user_id: Option<UserId>,
}

impl ApiKey {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
    pub fn is_expired(&self, now: UnixTime) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }
    /// Active: usable for tokens right now.
    pub fn is_active(&self, now: UnixTime) -> bool {
        !self.is_revoked()
            && !self.is_expired(now)
            && !matches!(self.private_key, PrivateKeyState::Erased(_))
    }
    /// Whether the one download is still possible.
    pub fn can_download(&self, now: UnixTime, window_secs: i64) -> bool {
        self.private_key == PrivateKeyState::Pending
            && !self.is_revoked()
            && now < self.created_at.saturating_add(window_secs)
    }
    /// Who may take the one download: anyone who manages the key, except that an individual
    /// key's private half goes to its owner alone. An admin who took it could sign as that
    /// person, and the audit log would name them.
    pub fn downloadable_by(&self, user: Option<UserId>) -> bool {
        match self.key_type {
            KeyType::Team => true,
            KeyType::Individual => self.user_id.is_some() && self.user_id == user,
        }
    }
}

/// Which keys a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Active,
    Revoked,
}

/// A position in a list ordered by (creation time, key ID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCursor {
    pub created_at: UnixTime,
    pub id: KeyId,
}

impl KeyCursor {
    /// The opaque form used in `cursor=` and `links.next`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at, self.id)
    }
    pub fn decode(s: &str) -> Result<Self> {
        let bad = || Error::parameter("cursor", "the cursor is not one keygate issued");
        let (t, id) = s.split_once('.').ok_or_else(bad)?;
        Ok(Self {
            created_at: t.parse().map_err(|_| bad())?,
            id: KeyId::parse(id).ok_or_else(bad)?,
        })
    }
}

/// A key-list request: filters and cursor paging (newest first).
#[derive(Debug, Clone)]
pub struct KeyQuery {
    pub status: Option<StatusFilter>,
    pub key_type: Option<KeyType>,
    /// Only the individual keys of this user.
    pub owner: Option<UserId>,
    pub after: Option<KeyCursor>,
    pub limit: u32,
    /// The "now" that decides whether a key with an expiry still counts as active.
    pub now: UnixTime,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// How many items match the filters, across all pages.
    pub total: u64,
    pub next: Option<String>,
}

//! Audit events: an append-only record of every management action, download and revoke, with the
//! actor, source address and time. Each event carries the hash of the one before it (a chain that
//! `keygate audit verify` will walk).

use std::net::IpAddr;

use ring::digest::{SHA256, digest};

use crate::clock::UnixTime;
use crate::ids::{Actor, IssuerId};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    IssuerCreated,
    KeyCreated,
    PrivateKeyDownloaded,
    PrivateKeyErased,
    KeyRevoked,
    AccountHolderCreated,
    UserInvited,
    InvitationCancelled,
    InvitationAccepted,
    UserRolesChanged,
    UserRemoved,
    SignedIn,
    SignInFailed,
    SignedOut,
    SecretKeyCreated,
    SecretKeyRolled,
    SecretKeyRevoked,
    SecretKeyLeakReported,
    PasswordChanged,
    SessionsEnded,
    PasswordResetLinkCreated,
    PasswordReset,
}

impl AuditAction {
    const ALL: [Self; 22] = [
        Self::IssuerCreated,
        Self::KeyCreated,
        Self::PrivateKeyDownloaded,
        Self::PrivateKeyErased,
        Self::KeyRevoked,
        Self::AccountHolderCreated,
        Self::UserInvited,
        Self::InvitationCancelled,
        Self::InvitationAccepted,
        Self::UserRolesChanged,
        Self::UserRemoved,
        Self::SignedIn,
        Self::SignInFailed,
        Self::SignedOut,
        Self::SecretKeyCreated,
        Self::SecretKeyRolled,
        Self::SecretKeyRevoked,
        Self::SecretKeyLeakReported,
        Self::PasswordChanged,
        Self::SessionsEnded,
        Self::PasswordResetLinkCreated,
        Self::PasswordReset,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::IssuerCreated => "issuer.created",
            Self::KeyCreated => "apiKey.created",
            Self::PrivateKeyDownloaded => "apiKey.privateKey.downloaded",
            Self::PrivateKeyErased => "apiKey.privateKey.erased",
            Self::KeyRevoked => "apiKey.revoked",
            Self::AccountHolderCreated => "user.accountHolder.created",
            Self::UserInvited => "userInvitation.created",
            Self::InvitationCancelled => "userInvitation.deleted",
            Self::InvitationAccepted => "userInvitation.accepted",
            Self::UserRolesChanged => "user.roles.changed",
            Self::UserRemoved => "user.removed",
            Self::SignedIn => "session.signedIn",
            Self::SignInFailed => "session.signInFailed",
            Self::SignedOut => "session.signedOut",
            Self::SecretKeyCreated => "secretKey.created",
            Self::SecretKeyRolled => "secretKey.rolled",
            Self::SecretKeyRevoked => "secretKey.revoked",
            Self::SecretKeyLeakReported => "secretKey.leakReported",
            Self::PasswordChanged => "user.password.changed",
            Self::SessionsEnded => "session.endedEverywhere",
            Self::PasswordResetLinkCreated => "user.passwordReset.created",
            Self::PasswordReset => "user.password.reset",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// An event to append. The store assigns the sequence number and chains the hash.
#[derive(Debug, Clone)]
pub struct NewAuditEvent {
    pub issuer_id: IssuerId,
    pub at: UnixTime,
    pub actor: String,
    pub action: AuditAction,
    /// The object acted on, such as a key ID.
    pub target: String,
    pub source_ip: Option<IpAddr>,
    /// Extra facts as a JSON object; never secrets.
    pub detail: serde_json::Value,
}

impl NewAuditEvent {
    pub fn new(
        issuer_id: IssuerId,
        at: UnixTime,
        actor: &Actor,
        action: AuditAction,
        target: impl Into<String>,
    ) -> Self {
        Self {
            issuer_id,
            at,
            actor: actor.to_string(),
            action,
            target: target.into(),
            source_ip: None,
            detail: serde_json::Value::Object(serde_json::Map::new()),
        }
    }
    #[must_use]
    pub fn from_ip(mut self, ip: Option<IpAddr>) -> Self {
        self.source_ip = ip;
        self
    }
    #[must_use]
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// The chained hash: SHA-256 over the previous hash and this event's fields, each
    /// length-prefixed so no two different events serialize the same way.
    pub fn chain_hash(&self, seq: i64, prev_hash: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(256);
        let mut field = |bytes: &[u8]| {
            buf.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            buf.extend_from_slice(bytes);
        };
        field(prev_hash);
        field(&seq.to_be_bytes());
        field(self.issuer_id.to_string().as_bytes());
        field(&self.at.to_be_bytes());
        field(self.actor.as_bytes());
        field(self.action.as_str().as_bytes());
        field(self.target.as_bytes());
        field(
            self.source_ip
                .map(|ip| ip.to_string())
                .unwrap_or_default()
                .as_bytes(),
        );
        field(self.detail.to_string().as_bytes());
        digest(&SHA256, &buf).as_ref().to_vec()
    }
}

/// A stored event.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub seq: i64,
    pub event: NewAuditEvent,
    pub hash: Vec<u8>,
}

/// Where an audit chain stops holding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokenLink {
    /// Positions are missing: events were deleted, or a write was lost.
    #[error("events are missing between #{after} and #{next}")]
    Gap { after: i64, next: i64 },
    /// The stored hash is not the hash of this event's contents and the event before it: the
    /// event, or one before it, was changed, or the first events were removed.
    #[error("event #{seq} does not match its hash (it, or the chain before it, was altered)")]
    HashMismatch { seq: i64 },
}

/// Walks the chain in order, an event at a time (so a long log need not be in memory).
#[derive(Debug, Default)]
pub struct ChainVerifier {
    prev: Option<(i64, Vec<u8>)>,
    count: u64,
}

impl ChainVerifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next event; the first broken link is an error.
    pub fn push(&mut self, e: &AuditEvent) -> Result<(), BrokenLink> {
        let prev_hash: &[u8] = match &self.prev {
            Some((seq, hash)) => {
                if e.seq != seq + 1 {
                    return Err(BrokenLink::Gap {
                        after: *seq,
                        next: e.seq,
                    });
                }
                hash
            }
            None => &[],
        };
        if e.event.chain_hash(e.seq, prev_hash) != e.hash {
            return Err(BrokenLink::HashMismatch { seq: e.seq });
        }
        self.prev = Some((e.seq, e.hash.clone()));
        self.count += 1;
        Ok(())
    }

    /// Events checked so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The position of the last event checked.
    pub fn last_seq(&self) -> Option<i64> {
        self.prev.as_ref().map(|(seq, _)| *seq)
    }

    /// The newest verified event's hash, in hex: what to record elsewhere, since removing events
    /// from the end of a chain leaves a chain that verifies.
    pub fn last_hash_hex(&self) -> Option<String> {
        self.prev.as_ref().map(|(_, hash)| {
            hash.iter().fold(String::new(), |mut out, b| {
                use std::fmt::Write as _;
                let _ = write!(out, "{b:02x}");
                out
            })
        })
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;
    use crate::ids::{Actor, IssuerId};

    fn chain(n: i64) -> Vec<AuditEvent> {
        let issuer = IssuerId::generate();
        let mut prev: Vec<u8> = Vec::new();
        (1..=n)
            .map(|seq| {
                let event = NewAuditEvent::new(
                    issuer,
                    1_800_000_000 + seq,
                    &Actor::System("test"),
                    AuditAction::KeyCreated,
                    format!("K{seq:09}"),
                );
                let hash = event.chain_hash(seq, &prev);
                prev.clone_from(&hash);
                AuditEvent { seq, event, hash }
            })
            .collect()
    }

    fn verify(events: &[AuditEvent]) -> Result<u64, BrokenLink> {
        let mut v = ChainVerifier::new();
        for e in events {
            v.push(e)?;
        }
        Ok(v.count())
    }

    #[test]
    fn the_first_broken_link_is_named() {
        let good = chain(5);
        assert_eq!(verify(&good), Ok(5));
        let mut altered = good.clone();
        altered[2].event.target = "tampered".into();
        assert_eq!(verify(&altered), Err(BrokenLink::HashMismatch { seq: 3 }));
        let mut gap = good.clone();
        gap.remove(3);
        assert_eq!(verify(&gap), Err(BrokenLink::Gap { after: 3, next: 5 }));
        // Dropping the head is caught too: the new first event chained to a hash now missing.
        assert_eq!(verify(&good[1..]), Err(BrokenLink::HashMismatch { seq: 2 }));
        // Rewriting one event's hash to match its new contents breaks the next link.
        let mut rehashed = good.clone();
        rehashed[2].event.target = "tampered".into();
        rehashed[2].hash = rehashed[2].event.chain_hash(3, &good[1].hash);
        assert_eq!(verify(&rehashed), Err(BrokenLink::HashMismatch { seq: 4 }));
    }
}

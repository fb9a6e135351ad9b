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
}

impl AuditAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::IssuerCreated => "issuer.created",
            Self::KeyCreated => "apiKey.created",
            Self::PrivateKeyDownloaded => "apiKey.privateKey.downloaded",
            Self::PrivateKeyErased => "apiKey.privateKey.erased",
            Self::KeyRevoked => "apiKey.revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::IssuerCreated,
            Self::KeyCreated,
            Self::PrivateKeyDownloaded,
            Self::PrivateKeyErased,
            Self::KeyRevoked,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
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

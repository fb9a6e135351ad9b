//! Authorization as a type. A management operation that changes or reveals keys takes a
//! [`KeyAdmin`] proof, and the only way to get one is [`Principal::key_admin`], which checks the
//! role. A handler therefore cannot reach a write path without having made the check.

use std::net::IpAddr;

use crate::error::{Error, ForbiddenReason, Result};
use crate::ids::{Actor, IssuerId};
use crate::role::RoleSet;

/// An authenticated caller of the management API, bound to exactly one issuer.
#[derive(Debug, Clone)]
pub struct Principal {
    pub issuer_id: IssuerId,
    pub actor: Actor,
    pub roles: RoleSet,
    /// The caller's address, for the audit log.
    pub source_ip: Option<IpAddr>,
}

impl Principal {
    /// Proof that this caller may manage the issuer's keys (`ADMIN` or `ACCOUNT_HOLDER`).
    pub fn key_admin(&self) -> Result<KeyAdmin<'_>> {
        if self.roles.is_admin() {
            Ok(KeyAdmin(self))
        } else {
            Err(Error::forbidden(
                ForbiddenReason::RoleNotAllowed,
                format!(
                    "Managing API keys needs the ADMIN or ACCOUNT_HOLDER role; this caller has {}.",
                    self.roles.joined()
                ),
            ))
        }
    }

    /// Proof of membership: any authenticated caller may read its own issuer.
    pub fn member(&self) -> Member<'_> {
        Member(self)
    }
}

/// Held only by callers that may manage their issuer's keys.
#[derive(Debug, Clone, Copy)]
pub struct KeyAdmin<'a>(&'a Principal);

impl KeyAdmin<'_> {
    pub fn principal(&self) -> &Principal {
        self.0
    }
    pub fn issuer_id(&self) -> IssuerId {
        self.0.issuer_id
    }
}

/// Held by any authenticated caller; scoped to its own issuer.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a>(&'a Principal);

impl Member<'_> {
    pub fn issuer_id(&self) -> IssuerId {
        self.0.issuer_id
    }
}

//! Management permissions as types (SPEC §5). An operation takes a proof: [`IssuerAdmin`] for
//! anything in the issuer, [`KeyScope`] for API keys (all of them, or only the caller's own
//! individual key), [`Member`] for reading the issuer. The only ways to get a proof are the
//! methods of [`Principal`], which check the roles, so a handler cannot reach an operation
//! without having made the check. Every proof carries the caller's issuer and nothing crosses it.

use std::net::IpAddr;

use crate::error::{Error, ForbiddenReason, Result};
use crate::ids::{Actor, IssuerId, UserId};
use crate::role::RoleSet;

/// An authenticated caller of the management API, bound to exactly one issuer.
#[derive(Debug, Clone)]
pub struct Principal {
    pub issuer_id: IssuerId,
    pub actor: Actor,
    /// For a signed-in user, that user's current roles; for an individual key, its user's roles.
    pub roles: RoleSet,
    /// The person behind the call: a session's user, or an individual key's owner.
    pub user_id: Option<UserId>,
    /// The caller's address, for the audit log.
    pub source_ip: Option<IpAddr>,
}

impl Principal {
    /// Proof that this caller may do everything within its issuer (`ADMIN` or `ACCOUNT_HOLDER`).
    pub fn admin(&self) -> Result<IssuerAdmin<'_>> {
        if self.roles.is_admin() {
            Ok(IssuerAdmin(self))
        } else {
            Err(Error::forbidden(
                ForbiddenReason::RoleNotAllowed,
                format!(
                    "This needs the ADMIN or ACCOUNT_HOLDER role; this caller has {}.",
                    self.roles.joined()
                ),
            ))
        }
    }

    /// Which API keys this caller may see and manage: an admin, all of the issuer's; a person
    /// with another role, only their own individual key; a team key without `ADMIN`, none.
    pub fn key_scope(&self) -> Result<KeyScope<'_>> {
        if let Ok(admin) = self.admin() {
            return Ok(KeyScope::All(admin));
        }
        match self.user_id {
            Some(user) => Ok(KeyScope::Own {
                principal: self,
                user,
            }),
            None => Err(Error::forbidden(
                ForbiddenReason::RoleNotAllowed,
                format!(
                    "Managing API keys needs the ADMIN or ACCOUNT_HOLDER role; this key has {}.",
                    self.roles.joined()
                ),
            )),
        }
    }

    /// Proof that this caller may read user `id`: an admin any user of the issuer, anyone else
    /// only themselves.
    pub fn user_reader(&self, id: UserId) -> Result<Member<'_>> {
        if self.roles.is_admin() || self.user_id == Some(id) {
            Ok(Member(self))
        } else {
            Err(Error::forbidden(
                ForbiddenReason::RoleNotAllowed,
                "Without the ADMIN role a caller may read only its own user.",
            ))
        }
    }

    /// The person behind this caller, for operations only a person can do (their individual
    /// key). A team key has none.
    pub fn person(&self) -> Result<UserId> {
        self.user_id.ok_or_else(|| {
            Error::forbidden(
                ForbiddenReason::RoleNotAllowed,
                "Only a signed-in user (or that user's individual key) can do this; a team key belongs to no one.",
            )
        })
    }

    /// Proof of membership: any authenticated caller may read its own issuer.
    pub fn member(&self) -> Member<'_> {
        Member(self)
    }
}

/// Held only by callers that may do everything within their issuer.
#[derive(Debug, Clone, Copy)]
pub struct IssuerAdmin<'a>(&'a Principal);

impl IssuerAdmin<'_> {
    pub fn principal(&self) -> &Principal {
        self.0
    }
    pub fn issuer_id(&self) -> IssuerId {
        self.0.issuer_id
    }
}

/// The API keys a caller may manage.
#[derive(Debug, Clone, Copy)]
pub enum KeyScope<'a> {
    /// Every key of the issuer.
    All(IssuerAdmin<'a>),
    /// Only the individual keys of `user`, the caller.
    Own {
        principal: &'a Principal,
        user: UserId,
    },
}

impl KeyScope<'_> {
    pub fn principal(&self) -> &Principal {
        match self {
            Self::All(a) => a.principal(),
            Self::Own { principal, .. } => principal,
        }
    }
    pub fn issuer_id(&self) -> IssuerId {
        self.principal().issuer_id
    }
    /// `None` for all keys; else the one user whose keys are in scope.
    pub fn owner(&self) -> Option<UserId> {
        match self {
            Self::All(_) => None,
            Self::Own { user, .. } => Some(*user),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::RoleCatalog;

    fn principal(roles: &[&str], user: Option<UserId>) -> Principal {
        let cat = RoleCatalog::default();
        Principal {
            issuer_id: IssuerId::generate(),
            actor: Actor::System("test"),
            roles: RoleSet::from_stored(&roles.join(",")).unwrap_or_else(|_| {
                cat.key_roles(&["DEVELOPER"])
                    .unwrap_or_else(|_| unreachable!())
            }),
            user_id: user,
            source_ip: None,
        }
    }

    // (roles, user?, admin, key scope covers all, reads self, reads other, is a person)
    type Row = (
        &'static [&'static str],
        Option<UserId>,
        bool,
        Option<bool>,
        bool,
        bool,
        bool,
    );

    #[test]
    fn proofs_follow_the_roles() {
        let me = UserId::generate();
        let other = UserId::generate();
        // (roles, user?, admin, key scope, read self, read other, person)
        let table: [Row; 5] = [
            (
                &["ACCOUNT_HOLDER"],
                Some(me),
                true,
                Some(true),
                true,
                true,
                true,
            ),
            (&["ADMIN"], None, true, Some(true), false, true, false),
            (
                &["DEVELOPER"],
                Some(me),
                false,
                Some(false),
                true,
                false,
                true,
            ),
            (&["DEVELOPER"], None, false, None, false, false, false),
            (
                &["FINANCE", "SALES"],
                Some(me),
                false,
                Some(false),
                true,
                false,
                true,
            ),
        ];
        for (roles, user, admin, scope, read_self, read_other, person) in table {
            let p = principal(roles, user);
            assert_eq!(p.admin().is_ok(), admin, "{roles:?}");
            assert_eq!(
                p.key_scope().ok().map(|s| s.owner().is_none()),
                scope,
                "{roles:?}"
            );
            assert_eq!(p.user_reader(me).is_ok(), read_self || admin, "{roles:?}");
            assert_eq!(p.user_reader(other).is_ok(), read_other, "{roles:?}");
            assert_eq!(p.person().is_ok(), person, "{roles:?}");
        }
    }
}

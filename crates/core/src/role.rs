//! Roles shared by keys and users: App Store Connect's built-in ones plus any a deployment's
//! policy file defines.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

/// One role name: `[A-Z][A-Z0-9_]*`, at most 64 characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Role(Arc<str>);

impl Role {
    pub const ACCOUNT_HOLDER: &'static str = "ACCOUNT_HOLDER";
    pub const ADMIN: &'static str = "ADMIN";
    /// The built-in roles, as App Store Connect names them.
    pub const BUILT_IN: [&'static str; 8] = [
        Self::ACCOUNT_HOLDER,
        Self::ADMIN,
        "APP_MANAGER",
        "DEVELOPER",
        "FINANCE",
        "SALES",
        "MARKETING",
        "CUSTOMER_SUPPORT",
    ];

    /// Checks the syntax of a role name only; whether the deployment knows it is [`RoleCatalog`]'s call.
    pub fn parse_name(s: &str) -> Option<Self> {
        let mut chars = s.chars();
        let ok = s.len() <= 64
            && chars.next().is_some_and(|c| c.is_ascii_uppercase())
            && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        ok.then(|| Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `ADMIN` and `ACCOUNT_HOLDER` may do everything within their issuer.
    pub fn is_admin(&self) -> bool {
        matches!(self.as_str(), Self::ADMIN | Self::ACCOUNT_HOLDER)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Role({})", self.0)
    }
}

/// A non-empty, sorted, duplicate-free set of roles.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoleSet(Vec<Role>);

impl RoleSet {
    pub fn iter(&self) -> impl Iterator<Item = &Role> {
        self.0.iter()
    }
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|r| r.as_str() == name)
    }
    pub fn is_admin(&self) -> bool {
        self.0.iter().any(Role::is_admin)
    }
    /// Comma-separated, as in `X-Keygate-Roles` and in storage.
    pub fn joined(&self) -> String {
        let names: Vec<&str> = self.0.iter().map(Role::as_str).collect();
        names.join(",")
    }
    /// Rebuilds a set that was validated when it was stored.
    pub fn from_stored(joined: &str) -> Result<Self> {
        let roles: Option<Vec<Role>> = joined.split(',').map(Role::parse_name).collect();
        match roles {
            Some(mut r) if !r.is_empty() => {
                r.sort();
                r.dedup();
                Ok(Self(r))
            }
            _ => Err(Error::Internal(format!(
                "stored role list is corrupt: {joined:?}"
            ))),
        }
    }
}

/// The roles a deployment knows: the built-in ones plus those of its policy file.
#[derive(Debug, Clone)]
pub struct RoleCatalog {
    known: Vec<Role>,
}

impl Default for RoleCatalog {
    fn default() -> Self {
        Self::with_custom(std::iter::empty())
    }
}

impl RoleCatalog {
    pub fn with_custom<'a>(custom: impl IntoIterator<Item = &'a Role>) -> Self {
        let mut known: Vec<Role> = Role::BUILT_IN
            .iter()
            .filter_map(|n| Role::parse_name(n))
            .chain(custom.into_iter().cloned())
            .collect();
        known.sort();
        known.dedup();
        Self { known }
    }

    /// Every known role, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &Role> {
        self.known.iter()
    }

    pub fn is_known(&self, name: &str) -> bool {
        self.known.iter().any(|r| r.as_str() == name)
    }

    /// Validates the `roles` attribute of a key: non-empty, known names, and never
    /// `ACCOUNT_HOLDER`, which belongs to exactly one person.
    pub fn key_roles<S: AsRef<str>>(&self, names: &[S]) -> Result<RoleSet> {
        if names.is_empty() {
            return Err(Error::attribute("roles", "a key needs at least one role"));
        }
        let mut roles = Vec::with_capacity(names.len());
        for name in names {
            let name = name.as_ref();
            if name == Role::ACCOUNT_HOLDER {
                return Err(Error::attribute(
                    "roles",
                    "ACCOUNT_HOLDER belongs to one person and cannot be given to a key",
                ));
            }
            if let Some(r) = self.known.iter().find(|r| r.as_str() == name) {
                roles.push(r.clone());
            } else {
                let shown: String = name.chars().take(64).collect();
                return Err(Error::attribute(
                    "roles",
                    format!("unknown role {shown:?}; known roles: {}", self.names()),
                ));
            }
        }
        roles.sort();
        roles.dedup();
        Ok(RoleSet(roles))
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self.known.iter().map(Role::as_str).collect();
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_key_roles() {
        let cat = RoleCatalog::default();
        let set = cat.key_roles(&["DEVELOPER", "ADMIN", "DEVELOPER"]).unwrap();
        assert_eq!(set.joined(), "ADMIN,DEVELOPER");
        assert!(set.is_admin());
        assert!(cat.key_roles::<&str>(&[]).is_err());
        assert!(cat.key_roles(&["ACCOUNT_HOLDER"]).is_err());
        assert!(cat.key_roles(&["developer"]).is_err());
        assert!(cat.key_roles(&["WIZARD"]).is_err());
        let custom = RoleCatalog::with_custom([&Role::parse_name("WIZARD").unwrap()]);
        assert!(custom.key_roles(&["WIZARD"]).is_ok());
        assert_eq!(RoleSet::from_stored("ADMIN,DEVELOPER").unwrap(), set);
    }
}

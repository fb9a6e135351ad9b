//! Validated identifiers. Functions take these types, never bare strings, so an unchecked ID
//! cannot reach a lookup.

use std::fmt;
use std::str::FromStr;

use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

/// An issuer (team) ID: a UUID, shown to users as "Issuer ID".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssuerId(uuid::Uuid);

impl IssuerId {
    /// A new random (v4) issuer ID.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl FromStr for IssuerId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        // Only the hyphenated form: an issuer ID is compared as a string inside tokens.
        if s.len() != 36 {
            return Err(Error::body("an issuer ID is a hyphenated UUID"));
        }
        uuid::Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| Error::body("an issuer ID is a hyphenated UUID"))
    }
}

impl fmt::Display for IssuerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for IssuerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuerId({self})")
    }
}

/// An API key ID: 10 characters of `[A-Z0-9]`, unique in the whole deployment.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KeyId::LEN]);

const KEY_ID_ALPHABET: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

impl KeyId {
    pub const LEN: usize = 10;

    /// A new random key ID from the OS CSPRNG, unbiased (rejection sampling).
    pub fn generate() -> Result<Self> {
        let rng = SystemRandom::new();
        let mut out = [0u8; Self::LEN];
        let mut filled = 0;
        let mut buf = [0u8; 32];
        while filled < Self::LEN {
            rng.fill(&mut buf)
                .map_err(|_| Error::Internal("OS random number generator failed".into()))?;
            for &b in &buf {
                // 252 = 7 * 36: values at or above it would bias the first characters.
                if b < 252 && filled < Self::LEN {
                    if let (Some(slot), Some(&c)) = (
                        out.get_mut(filled),
                        KEY_ID_ALPHABET.get(usize::from(b % 36)),
                    ) {
                        *slot = c;
                        filled += 1;
                    }
                }
            }
        }
        Ok(Self(out))
    }

    pub fn as_str(&self) -> &str {
        // Construction guarantees ASCII.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// Parses without allocating; `None` for anything but exactly 10 of `[A-Z0-9]`.
    pub fn parse(s: &str) -> Option<Self> {
        let bytes: [u8; Self::LEN] = s.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            .then_some(Self(bytes))
    }
}

impl FromStr for KeyId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s).ok_or_else(|| Error::NotFound("no API key has this ID".into()))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.as_str())
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// A new random (v4) ID.
            pub fn generate() -> Self {
                Self(uuid::Uuid::new_v4())
            }
            /// Parses the hyphenated form only; `None` otherwise.
            pub fn parse(s: &str) -> Option<Self> {
                (s.len() == 36).then(|| uuid::Uuid::parse_str(s).ok().map(Self)).flatten()
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::parse(s).ok_or_else(|| Error::NotFound(format!("There is no {} with this ID.", $what)))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
    };
}

uuid_id!(
    /// A user of an issuer.
    UserId,
    "user"
);
uuid_id!(
    /// A pending invitation to become a user.
    InvitationId,
    "invitation"
);

/// Who did something: recorded as `created_by` and in every audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An API key acting through a token.
    Key(KeyId),
    /// A person, signed in to the web UI (or acting through the API with a session).
    User(UserId),
    /// Someone not yet identified: a sign-in attempt, or an invitation or setup link being used.
    Anonymous,
    /// keygate itself, or an operator on the machine (`admin bootstrap`, the download-window sweep).
    System(&'static str),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(k) => write!(f, "apiKey:{k}"),
            Self::User(u) => write!(f, "user:{u}"),
            Self::Anonymous => f.write_str("anonymous"),
            Self::System(what) => write!(f, "system:{what}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_ten_uppercase_alphanumerics() {
        for _ in 0..200 {
            let id = KeyId::generate().unwrap();
            assert_eq!(id.as_str().len(), 10);
            assert!(KeyId::parse(id.as_str()).is_some());
        }
        for bad in [
            "",
            "ABC",
            "abcdefghij",
            "ABCDEFGHI!",
            "ABCDEFGHIJK",
            "ÄBCDEFGHI",
        ] {
            assert!(KeyId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn issuer_ids_are_hyphenated_uuids() {
        let id = IssuerId::generate();
        assert_eq!(id.to_string().parse::<IssuerId>().unwrap(), id);
        assert!(
            "57246542-96fe-1a63-e053-0824d011072a"
                .parse::<IssuerId>()
                .is_ok()
        );
        assert!(
            "5724654296fe1a63e0530824d011072a"
                .parse::<IssuerId>()
                .is_err()
        );
    }
}

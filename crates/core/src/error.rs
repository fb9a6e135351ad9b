//! The domain error: what went wrong, in terms the HTTP layer maps to a status and a stable
//! `code` in exactly one place ([`crate::error_body`]). Details meant for the caller are plain
//! text and never contain key material or tokens.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a credential was not accepted: the `meta.reason` of a `401 NOT_AUTHORIZED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthReason {
    TokenMissing,
    TokenMalformed,
    TokenTooLarge,
    AlgorithmNotAllowed,
    UnknownKey,
    BadSignature,
    KeyRevoked,
    KeyExpired,
    WrongAudience,
    WrongIssuer,
    TokenExpired,
    LifetimeTooLong,
    IssuedInFuture,
    NotYetValid,
    TokenReplayed,
    UnknownSecretKey,
    /// A web session cookie that is unknown, signed out or idle too long.
    SessionExpired,
}

impl AuthReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TokenMissing => "TOKEN_MISSING",
            Self::TokenMalformed => "TOKEN_MALFORMED",
            Self::TokenTooLarge => "TOKEN_TOO_LARGE",
            Self::AlgorithmNotAllowed => "ALGORITHM_NOT_ALLOWED",
            Self::UnknownKey => "UNKNOWN_KEY",
            Self::BadSignature => "BAD_SIGNATURE",
            Self::KeyRevoked => "KEY_REVOKED",
            Self::KeyExpired => "KEY_EXPIRED",
            Self::WrongAudience => "WRONG_AUDIENCE",
            Self::WrongIssuer => "WRONG_ISSUER",
            Self::TokenExpired => "TOKEN_EXPIRED",
            Self::LifetimeTooLong => "LIFETIME_TOO_LONG",
            Self::IssuedInFuture => "ISSUED_IN_FUTURE",
            Self::NotYetValid => "NOT_YET_VALID",
            Self::TokenReplayed => "TOKEN_REPLAYED",
            Self::UnknownSecretKey => "UNKNOWN_SECRET_KEY",
            Self::SessionExpired => "SESSION_EXPIRED",
        }
    }
}

impl fmt::Display for AuthReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected credential, with the exact reason and a human explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct AuthFailure {
    pub reason: AuthReason,
    pub detail: String,
}

impl AuthFailure {
    pub fn new(reason: AuthReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Why an authenticated caller may not do what it asked: the `meta.reason` of a `403`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForbiddenReason {
    RoleNotAllowed,
    ScopeMismatch,
    ReferrerNotAllowed,
    IpNotAllowed,
    ApiNotAllowed,
    /// A state-changing request with a session cookie but without its CSRF token.
    CsrfTokenInvalid,
}

impl ForbiddenReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RoleNotAllowed => "ROLE_NOT_ALLOWED",
            Self::ScopeMismatch => "SCOPE_MISMATCH",
            Self::ReferrerNotAllowed => "REFERRER_NOT_ALLOWED",
            Self::IpNotAllowed => "IP_NOT_ALLOWED",
            Self::ApiNotAllowed => "API_NOT_ALLOWED",
            Self::CsrfTokenInvalid => "CSRF_TOKEN_INVALID",
        }
    }
}

impl fmt::Display for ForbiddenReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where invalid input was found, so the HTTP layer can pick `PARAMETER_ERROR` or
/// `ENTITY_ERROR` and point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidSource {
    /// A query parameter, by name.
    Parameter(String),
    /// A JSON pointer into the request document, such as `/data/attributes/name`.
    Pointer(String),
    /// The request body as a whole (not JSON, wrong shape, too large).
    Body,
}

/// Why a private key cannot be handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateKeyUnavailable {
    /// The one download already happened.
    AlreadyDownloaded,
    /// Erased unread: the download window passed, or the key was revoked first.
    Erased,
    /// The key was made from a caller-supplied public key; keygate never had a private key.
    NeverHeld,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error(transparent)]
    Unauthenticated(#[from] AuthFailure),
    #[error("forbidden ({reason}): {detail}")]
    Forbidden {
        reason: ForbiddenReason,
        detail: String,
    },
    #[error("invalid input: {detail}")]
    Invalid { at: InvalidSource, detail: String },
    #[error("private key unavailable: {0:?}")]
    PrivateKey(PrivateKeyUnavailable),
    /// Over the key's rolling-hour limit; the text says which limit and when to retry.
    #[error("rate limit exceeded")]
    RateLimited(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Something that should not happen. The text goes to the log only, never to a client.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn forbidden(reason: ForbiddenReason, detail: impl Into<String>) -> Self {
        Self::Forbidden {
            reason,
            detail: detail.into(),
        }
    }
    pub fn attribute(name: &str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            at: InvalidSource::Pointer(format!("/data/attributes/{name}")),
            detail: detail.into(),
        }
    }
    pub fn parameter(name: &str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            at: InvalidSource::Parameter(name.to_owned()),
            detail: detail.into(),
        }
    }
    pub fn body(detail: impl Into<String>) -> Self {
        Self::Invalid {
            at: InvalidSource::Body,
            detail: detail.into(),
        }
    }
    pub fn auth(reason: AuthReason, detail: impl Into<String>) -> Self {
        Self::Unauthenticated(AuthFailure::new(reason, detail))
    }
}

impl PrivateKeyUnavailable {
    /// What the caller is told.
    pub fn detail(self) -> &'static str {
        match self {
            Self::AlreadyDownloaded => {
                "This private key was already downloaded. keygate keeps no copy; revoke the key and create a new one if it was lost."
            }
            Self::Erased => {
                "This private key was erased unread: it was not downloaded within the download window, or the key was revoked first."
            }
            Self::NeverHeld => {
                "This key was created from a public key you supplied; keygate never held its private key."
            }
        }
    }
}

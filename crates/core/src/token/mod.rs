//! Token verification (App Store Connect compatible JWTs), as a pure function of the token bytes,
//! the key set, the policy, the rules and the current time.
//!
//! The order of checks is part of the contract: size, structure, header, key lookup, algorithm
//! pin, signature, key status, then claims. Nothing from the token is trusted before its
//! signature has been checked against the key the `kid` names, with the algorithm that key is
//! pinned to.

pub mod json;
mod sign;

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub use sign::{SignError, Signer, sign_jwt};

use crate::clock::UnixTime;
use crate::error::{AuthFailure, AuthReason, Error, ForbiddenReason};
use crate::ids::KeyId;
use crate::key::KeyType;
use crate::keyset::{KeyRing, VerifyingKey};
use crate::policy::Policy;
use crate::scope::{RequestTarget, ScopeEntry};
use crate::time_fmt::rfc3339;
use json::{Json, member};

/// Tokens longer than this are rejected before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The deployment's token rules.
#[derive(Debug, Clone)]
pub struct TokenRules {
    /// Accepted `aud` values (default `["keygate-v1"]`).
    pub audiences: Vec<String>,
    /// Clock-skew allowance for `exp`, `nbf` and `iat`, in seconds (default 60).
    pub leeway: i64,
    /// The longest ordinary token lifetime, in seconds (default 1200, Apple's 20 minutes).
    pub max_lifetime: i64,
    /// The longest lifetime of a long-lived, read-only scoped token (default 180 days).
    pub max_long_lived_lifetime: i64,
}

impl Default for TokenRules {
    fn default() -> Self {
        Self {
            audiences: vec!["keygate-v1".to_owned()],
            leeway: 60,
            max_lifetime: 20 * 60,
            max_long_lived_lifetime: 180 * 24 * 3600,
        }
    }
}

/// A token whose signature, key status and claims all passed.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub key: Arc<VerifyingKey>,
    pub expires_at: UnixTime,
    pub scope: Option<Vec<ScopeEntry>>,
    pub jti: Option<String>,
    /// Set when the token lives longer than an ordinary token may: its lifetime in seconds.
    /// Such a token is only good if it is long-lived ([`VerifiedToken::check_lifetime`]).
    long_lifetime: Option<i64>,
}

impl VerifiedToken {
    /// The long-lived rule: a token that outlives `max_lifetime` must be scoped to `GET`s on
    /// paths the key's roles mark `long_lived`. [`verify`] applies it; the data plane applies it
    /// after role and scope, in the contract's order.
    pub fn check_lifetime(&self, policy: &Policy, rules: &TokenRules) -> Result<(), AuthFailure> {
        let Some(lifetime) = self.long_lifetime else {
            return Ok(());
        };
        let long_lived = self
            .scope
            .as_deref()
            .is_some_and(|s| policy.long_lived_scope(&self.key.roles, s));
        if long_lived {
            return Ok(());
        }
        Err(fail(
            AuthReason::LifetimeTooLong,
            format!(
                "The token lives {lifetime} s; the limit is {} s (longer lifetimes need a scope of only GET requests on long-lived paths).",
                rules.max_lifetime
            ),
        ))
    }

    /// keygate's own management API takes no long-lived token, whatever the policy's
    /// `long_lived` paths say: they are for the protected API, and a path there that overlaps
    /// `/v1/...` must not open keygate's key listing to a token that lives for months.
    pub fn check_short_lived(&self, rules: &TokenRules) -> Result<(), AuthFailure> {
        match self.long_lifetime {
            None => Ok(()),
            Some(lifetime) => Err(fail(
                AuthReason::LifetimeTooLong,
                format!(
                    "The token lives {lifetime} s; keygate's own API takes tokens of at most {} s.",
                    rules.max_lifetime
                ),
            )),
        }
    }

    /// The token's own restriction: with a `scope`, the request must match one entry.
    pub fn check_scope(&self, target: &RequestTarget<'_>) -> Result<(), Error> {
        match &self.scope {
            Some(entries) if !entries.iter().any(|e| e.matches(target)) => Err(Error::forbidden(
                ForbiddenReason::ScopeMismatch,
                format!(
                    "The token's scope does not include {} {}.",
                    target.method,
                    shorten(target.path, 200)
                ),
            )),
            _ => Ok(()),
        }
    }
}

fn fail(reason: AuthReason, detail: impl Into<String>) -> AuthFailure {
    AuthFailure::new(reason, detail)
}

fn malformed(detail: impl Into<String>) -> AuthFailure {
    fail(AuthReason::TokenMalformed, detail)
}

fn shorten(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        Some((i, _)) => Cow::Owned(format!("{}…", s.get(..i).unwrap_or(""))),
        None => Cow::Borrowed(s),
    }
}

fn decode_part(part: &str, what: &str) -> Result<Vec<u8>, AuthFailure> {
    URL_SAFE_NO_PAD.decode(part).map_err(|_| {
        malformed(format!(
            "The {what} is not canonical base64url without padding."
        ))
    })
}

fn int_claim(claims: &[(Cow<'_, str>, Json<'_>)], name: &str) -> Result<Option<i64>, AuthFailure> {
    match member(claims, name) {
        None => Ok(None),
        Some(Json::Int(v)) => Ok(Some(*v)),
        Some(other) => Err(malformed(format!(
            "The {name} claim must be an integer number of seconds since the epoch, not {}.",
            if matches!(other, Json::OtherNumber) {
                "a fraction or an out-of-range number"
            } else {
                other.type_name()
            }
        ))),
    }
}

fn str_claim<'m>(
    claims: &'m [(Cow<'_, str>, Json<'_>)],
    name: &str,
) -> Result<Option<&'m str>, AuthFailure> {
    match member(claims, name) {
        None => Ok(None),
        Some(Json::Str(s)) => Ok(Some(s)),
        Some(other) => Err(malformed(format!(
            "The {name} claim must be a string, not {}.",
            other.type_name()
        ))),
    }
}

/// Verifies `token` and returns what it proves. `now` comes from the caller's clock.
pub fn verify(
    token: &str,
    keys: &KeyRing,
    policy: &Policy,
    rules: &TokenRules,
    now: UnixTime,
) -> Result<VerifiedToken, AuthFailure> {
    let verified = verify_credential(token, keys, rules, now)?;
    verified.check_lifetime(policy, rules)?;
    Ok(verified)
}

/// [`verify`] without the long-lived rule, which needs the policy and comes after role and
/// scope on the data plane. No token outlives `max_long_lived_lifetime`, whatever its scope.
#[allow(clippy::too_many_lines)] // one linear list of rules reads better than many fragments
pub(crate) fn verify_credential(
    token: &str,
    keys: &KeyRing,
    rules: &TokenRules,
    now: UnixTime,
) -> Result<VerifiedToken, AuthFailure> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(fail(
            AuthReason::TokenTooLarge,
            format!(
                "The token is {} bytes; the limit is {MAX_TOKEN_BYTES}.",
                token.len()
            ),
        ));
    }
    if token.is_empty() {
        return Err(fail(AuthReason::TokenMissing, "The bearer token is empty."));
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "A token has exactly three dot-separated parts: header.payload.signature.",
        ));
    };
    let signing_input_len = h64.len() + 1 + p64.len();

    // Encoding of all three parts first: it is cheap and says "malformed" before any crypto.
    let header_bytes = decode_part(h64, "header")?;
    let payload_bytes = decode_part(p64, "payload")?;
    let signature = decode_part(s64, "signature")?;

    // Header.
    let header = Json::parse_object(&header_bytes)
        .ok_or_else(|| malformed("The header is not a JSON object with unique member names."))?;
    if member(&header, "crit").is_some() {
        return Err(malformed(
            "The header has a crit member; keygate supports no critical extensions.",
        ));
    }
    let alg = match member(&header, "alg") {
        Some(Json::Str(s)) => s.as_ref(),
        Some(_) => return Err(malformed("The alg header must be a string.")),
        None => return Err(malformed("The header has no alg.")),
    };
    let kid = match member(&header, "kid") {
        Some(Json::Str(s)) => s.as_ref(),
        Some(_) => return Err(malformed("The kid header must be a string.")),
        None => return Err(malformed("The header has no kid; it must name the key ID.")),
    };
    match member(&header, "typ") {
        None => {}
        Some(Json::Str(t)) if t.eq_ignore_ascii_case("JWT") => {}
        Some(_) => return Err(malformed("The typ header, when present, must be JWT.")),
    }

    // Key lookup and algorithm pin. `jku`, `x5u`, `jwk` and `x5c` are never looked at.
    let key = match KeyId::parse(kid) {
        Some(id) => keys.get(&id).ok_or_else(|| {
            fail(
                AuthReason::UnknownKey,
                format!("No API key has the ID {id}."),
            )
        })?,
        None => {
            return Err(fail(
                AuthReason::UnknownKey,
                "The kid header is not a key ID (10 characters A-Z, 0-9).",
            ));
        }
    };
    if alg != key.algorithm.as_str() {
        return Err(fail(
            AuthReason::AlgorithmNotAllowed,
            format!(
                "The token's alg {:?} is not the algorithm key {} is pinned to.",
                shorten(alg, 20),
                key.id
            ),
        ));
    }

    // Signature: raw, fixed-length, over the exact bytes received.
    if signature.len() != 64 {
        return Err(fail(
            AuthReason::BadSignature,
            format!(
                "An {} signature is 64 raw bytes (r||s for ES256); this one is {} bytes (DER-encoded signatures are not accepted).",
                key.algorithm,
                signature.len()
            ),
        ));
    }
    let signing_input = token
        .as_bytes()
        .get(..signing_input_len)
        .unwrap_or_default();
    if !key.verify_signature(signing_input, &signature) {
        return Err(fail(
            AuthReason::BadSignature,
            format!("The signature does not verify with key {}.", key.id),
        ));
    }

    // Key status.
    if key.revoked {
        return Err(fail(
            AuthReason::KeyRevoked,
            format!("Key {} has been revoked.", key.id),
        ));
    }
    if !key.usable {
        return Err(fail(
            AuthReason::KeyRevoked,
            format!(
                "Key {}'s private key was never downloaded and has been erased.",
                key.id
            ),
        ));
    }
    if let Some(exp) = key.expires_at.filter(|e| *e <= now) {
        return Err(fail(
            AuthReason::KeyExpired,
            format!("Key {} expired at {}.", key.id, rfc3339(exp)),
        ));
    }

    // Claims.
    let claims = Json::parse_object(&payload_bytes)
        .ok_or_else(|| malformed("The payload is not a JSON object with unique member names."))?;

    let iss = str_claim(&claims, "iss")?;
    let sub = str_claim(&claims, "sub")?;
    match key.key_type {
        KeyType::Team => {
            if sub == Some("user") {
                return Err(fail(
                    AuthReason::WrongIssuer,
                    "sub \"user\" is for individual keys; this is a team key.",
                ));
            }
            match iss {
                Some(i) if i == &*key.issuer_text => {}
                Some(i) => {
                    return Err(fail(
                        AuthReason::WrongIssuer,
                        format!(
                            "The iss claim {:?} is not the issuer ID of key {}.",
                            shorten(i, 40),
                            key.id
                        ),
                    ));
                }
                None => {
                    return Err(fail(
                        AuthReason::WrongIssuer,
                        "A team key's token needs iss: the issuer ID.",
                    ));
                }
            }
        }
        KeyType::Individual => {
            if iss.is_some() {
                return Err(fail(
                    AuthReason::WrongIssuer,
                    "An individual key's token must not carry iss.",
                ));
            }
            if sub != Some("user") {
                return Err(fail(
                    AuthReason::WrongIssuer,
                    "An individual key's token needs sub \"user\".",
                ));
            }
        }
    }

    let aud_ok = |a: &str| rules.audiences.iter().any(|x| x == a);
    match member(&claims, "aud") {
        Some(Json::Str(a)) if aud_ok(a) => {}
        Some(Json::Array(list)) if list.iter().any(|v| matches!(v, Json::Str(a) if aud_ok(a))) => {}
        Some(Json::Str(_) | Json::Array(_)) => {
            return Err(fail(
                AuthReason::WrongAudience,
                format!(
                    "The aud claim must be one of: {}.",
                    rules.audiences.join(", ")
                ),
            ));
        }
        Some(other) => {
            return Err(malformed(format!(
                "The aud claim must be a string or an array, not {}.",
                other.type_name()
            )));
        }
        None => {
            return Err(fail(
                AuthReason::WrongAudience,
                format!(
                    "The token has no aud claim; expected one of: {}.",
                    rules.audiences.join(", ")
                ),
            ));
        }
    }

    let exp = int_claim(&claims, "exp")?.ok_or_else(|| malformed("The token has no exp claim."))?;
    if exp <= now.saturating_sub(rules.leeway) {
        return Err(fail(
            AuthReason::TokenExpired,
            format!(
                "The token expired at {} (server time {}, leeway {} s).",
                rfc3339(exp),
                rfc3339(now),
                rules.leeway
            ),
        ));
    }
    if let Some(nbf) = int_claim(&claims, "nbf")?
        && nbf > now.saturating_add(rules.leeway)
    {
        return Err(fail(
            AuthReason::NotYetValid,
            format!(
                "The token is not valid before {} (server time {}).",
                rfc3339(nbf),
                rfc3339(now)
            ),
        ));
    }
    let iat = int_claim(&claims, "iat")?;
    if let Some(iat) = iat
        && iat > now.saturating_add(rules.leeway)
    {
        return Err(fail(
            AuthReason::IssuedInFuture,
            format!(
                "The token was issued at {}, after the server time {} plus {} s leeway; check the client's clock.",
                rfc3339(iat),
                rfc3339(now),
                rules.leeway
            ),
        ));
    }

    let scope = match member(&claims, "scope") {
        None => None,
        Some(Json::Array(items)) if !items.is_empty() => {
            let mut entries = Vec::with_capacity(items.len());
            for item in items {
                let parsed = match item {
                    Json::Str(s) => ScopeEntry::parse(s),
                    _ => None,
                };
                entries.push(parsed.ok_or_else(|| {
                    malformed("Each scope entry must be a string \"METHOD /path?query\".")
                })?);
            }
            Some(entries)
        }
        Some(_) => {
            return Err(malformed(
                "The scope claim must be a non-empty array of \"METHOD /path?query\" strings.",
            ));
        }
    };

    // Lifetime: exp - iat, or exp - now when iat is absent (then the client's clock skew is part
    // of the number, so the leeway is allowed on top).
    let (lifetime, allowance) = match iat {
        Some(iat) => (exp.saturating_sub(iat), 0),
        None => (exp.saturating_sub(now), rules.leeway),
    };
    if iat.is_some() && lifetime < 0 {
        return Err(malformed("The exp claim is before the iat claim."));
    }
    if lifetime > rules.max_long_lived_lifetime.saturating_add(allowance) {
        return Err(fail(
            AuthReason::LifetimeTooLong,
            format!(
                "The token lives {lifetime} s; even long-lived tokens live at most {} s.",
                rules.max_long_lived_lifetime
            ),
        ));
    }
    let long_lifetime =
        (lifetime > rules.max_lifetime.saturating_add(allowance)).then_some(lifetime);

    let jti = str_claim(&claims, "jti")?.map(str::to_owned);
    Ok(VerifiedToken {
        key,
        expires_at: exp,
        scope,
        jti,
        long_lifetime,
    })
}

#[cfg(test)]
mod tests;

//! The data-plane decision, shared by forward auth, the reverse proxy and the tower layer.
//!
//! For a token: credential, then role, then token scope, then the long-lived rule (as in
//! [`Verifier::authorize`]), then the key's rate limit. For a secret key: the secret (format,
//! checksum, state), then its restrictions (website, address, API), then role, then the rate
//! limit. Admitted requests are metered for the usage counters.

use std::sync::Arc;

use crate::error::{Error, ForbiddenReason};
use crate::ids::{IssuerId, KeyId, UserId};
use crate::meter::{Meter, RateState};
use crate::role::RoleSet;
use crate::scope::RequestTarget;
use crate::secret_key::{Caller, SecretKey};
use crate::service::Verifier;
use crate::token::VerifiedToken;

/// Who an admitted request acts as.
#[derive(Debug, Clone)]
pub enum Identity {
    Token(Arc<VerifiedToken>),
    Secret(Arc<SecretKey>),
}

impl Identity {
    pub fn key_id(&self) -> KeyId {
        match self {
            Self::Token(t) => t.key.id,
            Self::Secret(s) => s.id,
        }
    }
    pub fn issuer_id(&self) -> IssuerId {
        match self {
            Self::Token(t) => t.key.issuer_id,
            Self::Secret(s) => s.issuer_id,
        }
    }
    pub fn roles(&self) -> &RoleSet {
        match self {
            Self::Token(t) => &t.key.roles,
            Self::Secret(s) => &s.roles,
        }
    }
    /// The `X-Keygate-Key-Type` value: `team`, `individual` or `secret`.
    pub fn key_type_header(&self) -> &'static str {
        match self {
            Self::Token(t) => t.key.key_type.header_value(),
            Self::Secret(_) => "secret",
        }
    }
    pub fn user_id(&self) -> Option<UserId> {
        match self {
            Self::Token(t) => t.key.user_id,
            Self::Secret(_) => None,
        }
    }
}

/// A request that may proceed.
#[derive(Debug)]
pub struct Admitted {
    pub identity: Identity,
    pub rate: RateState,
}

/// A request that may not. `rate` is set once the key is known (a 403 or 429), so the response
/// still carries `X-Rate-Limit`.
#[derive(Debug)]
pub struct Refused {
    pub error: Error,
    pub rate: Option<RateState>,
}

/// The first rule of every way in, before the credential: a target that servers could read
/// differently is refused (400), whatever the key and the policy.
fn unambiguous(target: &RequestTarget<'_>) -> Result<(), Refused> {
    target.check_unambiguous().map_err(|detail| Refused {
        error: Error::parameter("path", detail),
        rate: None,
    })
}

/// Headers with which some frameworks let a client replace the request's method or path
/// (method overrides; IIS's and old Symfony's and Zend's `X-Original-URL` and `X-Rewrite-URL`).
/// What is checked must be what the API runs, so every way in refuses a request that carries
/// one, under any spelling: names are compared ignoring case and reading `_` as `-` (CGI-style
/// servers map both to one variable).
pub const OVERRIDE_HEADERS: [&str; 5] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// `Err` (400) when any of `names` is one of [`OVERRIDE_HEADERS`], or holds a `_`: servers that
/// read `_` as `-` (CGI, WSGI, PHP, Rack) would see `X_Real_IP` as `X-Real-IP` and
/// `X_Forwarded_For` as `X-Forwarded-For`, which no gateway strips under that spelling (nginx
/// drops such headers by default; Envoy's shipped config rejects them).
pub fn refuse_overrides<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), Error> {
    for name in names {
        // Header names arrive lowercase from `http`; compared without allocating either way.
        if name.contains('_') {
            return Err(Error::parameter(
                name,
                format!("{name}: header names with _ are not accepted (some servers read _ as -)."),
            ));
        }
        if OVERRIDE_HEADERS
            .iter()
            .any(|o| o.eq_ignore_ascii_case(name))
        {
            return Err(Error::parameter(
                name,
                format!(
                    "{name} is not accepted: the method and path checked must be the ones the API runs."
                ),
            ));
        }
    }
    Ok(())
}

/// Verification plus metering.
#[derive(Debug, Clone)]
pub struct Gate {
    verifier: Arc<Verifier>,
    meter: Arc<Meter>,
}

impl Gate {
    pub fn new(verifier: Arc<Verifier>, meter: Arc<Meter>) -> Self {
        Self { verifier, meter }
    }

    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    pub fn meter(&self) -> &Arc<Meter> {
        &self.meter
    }

    /// Decides one request presenting `token`. Only admitted requests count against the limit
    /// and as usage; a refused one reports the state without spending from it.
    pub fn check(&self, token: &str, target: &RequestTarget<'_>) -> Result<Admitted, Refused> {
        let (identity, limit) = self.identify_token(token, target)?;
        self.admit(identity, limit)
    }

    /// Decides one request presenting a secret key, from `caller` (its Referer, Origin and
    /// address).
    pub fn check_secret(
        &self,
        secret: &str,
        caller: &Caller<'_>,
        target: &RequestTarget<'_>,
    ) -> Result<Admitted, Refused> {
        let (identity, limit) = self.identify_secret(secret, caller, target)?;
        self.admit(identity, limit)
    }

    /// Decides again a request that was just refused, for a gateway that must ask twice to
    /// show the refusal (nginx `auth_request`): the same checks, but nothing is counted and
    /// nothing is admitted. `Ok(rate)` means the request would now pass (the state changed
    /// between the two questions); the caller should answer "retry", never "allowed".
    pub fn recheck(&self, token: &str, target: &RequestTarget<'_>) -> Result<RateState, Refused> {
        let (identity, limit) = self.identify_token(token, target)?;
        self.peek(&identity, limit)
    }

    /// [`Self::recheck`] for a secret key.
    pub fn recheck_secret(
        &self,
        secret: &str,
        caller: &Caller<'_>,
        target: &RequestTarget<'_>,
    ) -> Result<RateState, Refused> {
        let (identity, limit) = self.identify_secret(secret, caller, target)?;
        self.peek(&identity, limit)
    }

    fn identify_token(
        &self,
        token: &str,
        target: &RequestTarget<'_>,
    ) -> Result<(Identity, u32), Refused> {
        unambiguous(target)?;
        let verified = self
            .verifier
            .verify_credential(token)
            .map_err(|e| Refused {
                error: Error::Unauthenticated(e),
                rate: None,
            })?;
        let limit = self.verifier.policy().rate_limit_for(&verified.key.roles);
        if let Err(error) = self.verifier.permit(&verified, target) {
            return Err(Refused {
                error,
                rate: Some(self.meter.peek(verified.key.id, limit)),
            });
        }
        Ok((Identity::Token(verified), limit))
    }

    fn identify_secret(
        &self,
        secret: &str,
        caller: &Caller<'_>,
        target: &RequestTarget<'_>,
    ) -> Result<(Identity, u32), Refused> {
        unambiguous(target)?;
        let key = self.verifier.verify_secret(secret).map_err(|e| Refused {
            error: Error::Unauthenticated(e),
            rate: None,
        })?;
        let limit = self.verifier.policy().rate_limit_for(&key.roles);
        let refused = |error| Refused {
            error,
            rate: Some(self.meter.peek(key.id, limit)),
        };
        key.restrictions.check(caller, target).map_err(refused)?;
        if !self.verifier.policy().allows(&key.roles, target) {
            return Err(refused(Error::forbidden(
                ForbiddenReason::RoleNotAllowed,
                format!(
                    "The policy lets no role of secret key {} ({}) call {} {}.",
                    key.id,
                    key.roles.joined(),
                    target.method,
                    target.path.chars().take(200).collect::<String>()
                ),
            )));
        }
        Ok((Identity::Secret(key), limit))
    }

    fn admit(&self, identity: Identity, limit: u32) -> Result<Admitted, Refused> {
        match self.meter.admit(identity.key_id(), limit) {
            Ok(rate) => Ok(Admitted { identity, rate }),
            Err(rate) => Err(over_limit(identity.key_id(), rate)),
        }
    }

    fn peek(&self, identity: &Identity, limit: u32) -> Result<RateState, Refused> {
        let rate = self.meter.peek(identity.key_id(), limit);
        if rate.remaining == 0 {
            return Err(over_limit(identity.key_id(), rate));
        }
        Ok(rate)
    }
}

fn over_limit(key: KeyId, rate: RateState) -> Refused {
    Refused {
        error: Error::RateLimited(format!(
            "Key {key} made {} requests in the last hour, its limit; the next request is allowed in {} s.",
            rate.limit,
            rate.retry_after.unwrap_or(1)
        )),
        rate: Some(rate),
    }
}

//! The data-plane decision, shared by forward auth, the reverse proxy and the tower layer:
//! credential, then role, then token scope, then the long-lived rule (as in
//! [`Verifier::authorize`]), then the key's rate limit. Admitted requests are metered for the
//! usage counters.

use std::sync::Arc;

use crate::error::Error;
use crate::meter::{Meter, RateState};
use crate::scope::RequestTarget;
use crate::service::Verifier;
use crate::token::VerifiedToken;

/// A request that may proceed.
#[derive(Debug)]
pub struct Admitted {
    pub token: Arc<VerifiedToken>,
    pub rate: RateState,
}

/// A request that may not. `rate` is set once the key is known (a 403 or 429), so the response
/// still carries `X-Rate-Limit`.
#[derive(Debug)]
pub struct Refused {
    pub error: Error,
    pub rate: Option<RateState>,
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
        match self.meter.admit(verified.key.id, limit) {
            Ok(rate) => Ok(Admitted {
                token: verified,
                rate,
            }),
            Err(rate) => Err(over_limit(&verified, rate)),
        }
    }

    /// Decides again a request that was just refused, for a gateway that must ask twice to
    /// show the refusal (nginx `auth_request`): the same checks, but nothing is counted and
    /// nothing is admitted. `Ok(rate)` means the request would now pass (the state changed
    /// between the two questions); the caller should answer "retry", never "allowed".
    pub fn recheck(&self, token: &str, target: &RequestTarget<'_>) -> Result<RateState, Refused> {
        let verified = self
            .verifier
            .verify_credential(token)
            .map_err(|e| Refused {
                error: Error::Unauthenticated(e),
                rate: None,
            })?;
        let limit = self.verifier.policy().rate_limit_for(&verified.key.roles);
        let rate = self.meter.peek(verified.key.id, limit);
        if let Err(error) = self.verifier.permit(&verified, target) {
            return Err(Refused {
                error,
                rate: Some(rate),
            });
        }
        if rate.remaining == 0 {
            return Err(over_limit(&verified, rate));
        }
        Ok(rate)
    }
}

fn over_limit(verified: &VerifiedToken, rate: RateState) -> Refused {
    Refused {
        error: Error::RateLimited(format!(
            "Key {} made {} requests in the last hour, its limit; the next request is allowed in {} s.",
            verified.key.id,
            rate.limit,
            rate.retry_after.unwrap_or(1)
        )),
        rate: Some(rate),
    }
}

//! What forward auth and the reverse proxy share: reading the credential, asking the core's
//! [`Gate`](keygate_core::gate::Gate), and the headers every data-plane answer carries
//! (`X-Rate-Limit`, and on success the identity headers of SPEC §5).

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate_core::error::{AuthReason, Error};
use keygate_core::gate::{Admitted, Refused};
use keygate_core::meter::RateState;
use keygate_core::scope::RequestTarget;
use keygate_core::token::VerifiedToken;

use crate::AppState;
use crate::auth::{Credential, credential};
use crate::error::{ApiError, ErrorBody};

/// The prefix of the identity headers; any client-sent header with it is removed.
pub const IDENTITY_PREFIX: &str = "x-keygate-";

pub const X_RATE_LIMIT: HeaderName = HeaderName::from_static("x-rate-limit");

/// The identity headers a successful check hands to the gateway or upstream.
pub fn identity_headers(v: &VerifiedToken) -> [(HeaderName, Option<HeaderValue>); 5] {
    [
        (
            HeaderName::from_static("x-keygate-issuer-id"),
            HeaderValue::from_str(&v.key.issuer_text).ok(),
        ),
        (
            HeaderName::from_static("x-keygate-key-id"),
            HeaderValue::from_str(v.key.id.as_str()).ok(),
        ),
        (
            HeaderName::from_static("x-keygate-key-type"),
            Some(HeaderValue::from_static(v.key.key_type.header_value())),
        ),
        (
            HeaderName::from_static("x-keygate-roles"),
            HeaderValue::from_str(&v.key.roles.joined()).ok(),
        ),
        (
            HeaderName::from_static("x-keygate-user-id"),
            v.key
                .user_id
                .and_then(|u| HeaderValue::from_str(&u.to_string()).ok()),
        ),
    ]
}

/// Removes every `X-Keygate-*` header, then adds the identity of `v`.
pub fn set_identity(headers: &mut HeaderMap, v: &VerifiedToken) {
    strip_identity(headers);
    for (name, value) in identity_headers(v) {
        if let Some(value) = value {
            headers.insert(name, value);
        }
    }
}

/// Removes every client-sent `X-Keygate-*` header.
pub fn strip_identity(headers: &mut HeaderMap) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with(IDENTITY_PREFIX))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// Adds `X-Rate-Limit` (and `Retry-After` when refused for the limit).
pub fn set_rate_headers(headers: &mut HeaderMap, rate: &RateState) {
    if let Ok(v) = HeaderValue::from_str(&rate.header_value()) {
        headers.insert(X_RATE_LIMIT, v);
    }
    if let Some(secs) = rate.retry_after {
        headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
}

/// Decides a data-plane request. `Err` is the finished refusal (401/403/429, with
/// `X-Rate-Limit` once the key is known).
#[allow(clippy::result_large_err)] // the refusal is the response itself; boxing it buys nothing
pub fn check(
    state: &AppState,
    headers: &HeaderMap,
    target: &RequestTarget<'_>,
) -> Result<Admitted, Response> {
    let token = token(headers)?;
    state.gate.check(token, target).map_err(refusal)
}

/// The header the shipped nginx configuration sets when it asks a second time to show a
/// refusal (see `docs/gateways/nginx.conf`).
pub const RECHECK: &str = "x-keygate-recheck";

/// Answers a [`RECHECK`]: the refusal as it stands, spending nothing. Never a `200`: if the
/// request would now pass, the state changed between nginx's two questions and the client is
/// asked to retry (`503` with `Retry-After: 1`).
pub fn recheck(state: &AppState, headers: &HeaderMap, target: &RequestTarget<'_>) -> Response {
    let token = match token(headers) {
        Ok(t) => t,
        Err(refused) => return refused,
    };
    match state.gate.recheck(token, target) {
        Err(refused) => refusal(refused),
        Ok(rate) => {
            let mut resp = crate::error::response(&ErrorBody::new(
                StatusCode::SERVICE_UNAVAILABLE.as_u16(),
                "SERVICE_UNAVAILABLE",
                "The service is temporarily unavailable.",
                "The decision on this request changed while the gateway was asking; retry it.",
            ));
            set_rate_headers(resp.headers_mut(), &rate);
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(1u32));
            resp
        }
    }
}

#[allow(clippy::result_large_err)] // the refusal is the response itself
fn token(headers: &HeaderMap) -> Result<&str, Response> {
    match credential(headers) {
        Ok(Credential::Token(t)) => Ok(t),
        Ok(Credential::SecretKey(_)) => Err(ApiError(Error::auth(
            AuthReason::UnknownSecretKey,
            "No secret key matches; secret keys are not enabled on this deployment yet.",
        ))
        .into_response()),
        Err(e) => Err(ApiError(e).into_response()),
    }
}

fn refusal(refused: Refused) -> Response {
    let mut resp = ApiError(refused.error).into_response();
    if let Some(rate) = &refused.rate {
        set_rate_headers(resp.headers_mut(), rate);
    }
    resp
}

/// The forward-auth answer: `200` with identity and rate headers.
pub fn allowed_response(admitted: &Admitted) -> Response {
    let mut resp = StatusCode::OK.into_response();
    set_identity(resp.headers_mut(), &admitted.token);
    set_rate_headers(resp.headers_mut(), &admitted.rate);
    resp
}

//! What forward auth and the reverse proxy share: reading the credential, asking the core's
//! [`Gate`](keygate_core::gate::Gate), and the headers every data-plane answer carries
//! (`X-Rate-Limit`, and on success the identity headers of SPEC §5).

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate_core::gate::{Admitted, Identity, Refused, refuse_overrides};
use keygate_core::meter::RateState;
use keygate_core::scope::RequestTarget;
use keygate_core::secret_key::{Caller, IpRange, canonical};

use crate::AppState;
use crate::auth::{Credential, credential};
use crate::error::{ApiError, ErrorBody};

/// The prefix of the identity headers; any client-sent header with it is removed.
pub const IDENTITY_PREFIX: &str = "x-keygate-";

pub const X_RATE_LIMIT: HeaderName = HeaderName::from_static("x-rate-limit");

/// The identity headers a successful check hands to the gateway or upstream.
pub fn identity_headers(v: &Identity) -> [(HeaderName, Option<HeaderValue>); 5] {
    let issuer = match v {
        Identity::Token(t) => HeaderValue::from_str(&t.key.issuer_text).ok(),
        Identity::Secret(s) => HeaderValue::from_str(&s.issuer_id.to_string()).ok(),
    };
    [
        (HeaderName::from_static("x-keygate-issuer-id"), issuer),
        (
            HeaderName::from_static("x-keygate-key-id"),
            HeaderValue::from_str(v.key_id().as_str()).ok(),
        ),
        (
            HeaderName::from_static("x-keygate-key-type"),
            Some(HeaderValue::from_static(v.key_type_header())),
        ),
        (
            HeaderName::from_static("x-keygate-roles"),
            HeaderValue::from_str(&v.roles().joined()).ok(),
        ),
        (
            HeaderName::from_static("x-keygate-user-id"),
            v.user_id()
                .and_then(|u| HeaderValue::from_str(&u.to_string()).ok()),
        ),
    ]
}

/// Removes every `X-Keygate-*` header, then adds the identity of `v`.
pub fn set_identity(headers: &mut HeaderMap, v: &Identity) {
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
    peer: Option<IpAddr>,
    target: &RequestTarget<'_>,
) -> Result<Admitted, Response> {
    refuse_overrides(headers.keys().map(HeaderName::as_str))
        .map_err(|e| ApiError(e).into_response())?;
    match credential(headers) {
        Ok(Credential::Token(token)) => state.gate.check(token, target).map_err(refusal),
        Ok(Credential::SecretKey(secret)) => {
            let caller = caller(state, headers, peer);
            state
                .gate
                .check_secret(secret, &caller, target)
                .map_err(refusal)
        }
        Err(e) => Err(ApiError(e).into_response()),
    }
}

/// What a secret key's restrictions look at: `Referer`, `Origin`, and the client's address.
pub fn caller<'h>(state: &AppState, headers: &'h HeaderMap, peer: Option<IpAddr>) -> Caller<'h> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    Caller {
        referer: text("referer"),
        origin: text("origin"),
        ip: client_ip(&state.trusted_proxies, headers, peer),
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy; then the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy (entries to its left are the
/// client's own claims). `None` when a trusted proxy names no such client (no header, or an
/// entry that does not parse): never the proxy's own address, which IP restrictions on internal
/// ranges would wrongly let through.
pub fn client_ip(trusted: &[IpRange], headers: &HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
    let peer = peer.map(canonical)?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|r| r.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let mut entries: Vec<&str> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        entries.extend(value.to_str().ok()?.split(','));
    }
    for entry in entries.iter().rev() {
        let ip = canonical(entry.trim().parse::<IpAddr>().ok()?);
        if !is_trusted(ip) {
            return Some(ip);
        }
    }
    None
}

/// The header the shipped nginx configuration sets when it asks a second time to show a
/// refusal (see `docs/gateways/nginx.conf`).
pub const RECHECK: &str = "x-keygate-recheck";

/// Answers a [`RECHECK`]: the refusal as it stands, spending nothing. Never a `200`: if the
/// request would now pass, the state changed between nginx's two questions and the client is
/// asked to retry (`503` with `Retry-After: 1`).
pub fn recheck(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    target: &RequestTarget<'_>,
) -> Response {
    if let Err(e) = refuse_overrides(headers.keys().map(HeaderName::as_str)) {
        return ApiError(e).into_response();
    }
    let decision = match credential(headers) {
        Ok(Credential::Token(token)) => state.gate.recheck(token, target),
        Ok(Credential::SecretKey(secret)) => {
            let caller = caller(state, headers, peer);
            state.gate.recheck_secret(secret, &caller, target)
        }
        Err(e) => return ApiError(e).into_response(),
    };
    match decision {
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
    set_identity(resp.headers_mut(), &admitted.identity);
    set_rate_headers(resp.headers_mut(), &admitted.rate);
    resp
}

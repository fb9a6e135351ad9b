//! Finding the credential in a request. Only finding: verification is the core's.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, OriginalUri};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, Method, header};
use keygate_core::authz::Principal;
use keygate_core::credential::HeaderValues;
use keygate_core::error::{AuthReason, Error, ForbiddenReason};
use keygate_core::people::{UserService, csrf_token};
use keygate_core::scope::RequestTarget;
use keygate_core::secret::{BearerSecret, constant_time_eq};

use crate::AppState;
use crate::error::ApiError;

pub use keygate_core::credential::Credential;

/// Reads the one credential of a request (see [`keygate_core::credential::credential`]).
pub fn credential(headers: &HeaderMap) -> Result<Credential<'_>, Error> {
    let values = |name| {
        HeaderValues::of(
            headers
                .get_all(name)
                .iter()
                .map(axum::http::HeaderValue::as_bytes),
        )
    };
    keygate_core::credential::credential(
        values(header::AUTHORIZATION),
        values(HeaderName::from_static("x-api-key")),
    )
}

/// The peer address, when the server was started with connection info.
pub fn peer_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The client's address: the peer, or behind a trusted proxy its `X-Forwarded-For` client (see
/// [`crate::dataplane::client_ip`]). For the audit log and sign-in throttling.
pub fn client_addr(parts: &Parts, state: &AppState) -> Option<IpAddr> {
    crate::dataplane::client_ip(&state.trusted_proxies, &parts.headers, peer_ip(parts))
}

/// [`client_addr`] as an extractor (absent when the server runs without connection info).
#[derive(Debug, Clone, Copy)]
pub struct PeerIp(pub Option<IpAddr>);

impl FromRequestParts<AppState> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(client_addr(parts, state)))
    }
}

/// The session cookie's name on plain HTTP (local use).
pub const SESSION_COOKIE: &str = "keygate_session";

/// The names of keygate's cookies. Served over TLS (`public_url` is https, or
/// `secure_cookies`), they carry the `__Host-` prefix: the browser then takes them only with
/// `Secure`, `Path=/` and no `Domain`, so neither a sibling subdomain nor a network attacker on
/// plain HTTP can plant one (which is what the pre-sign-in double-submit token relies on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieNames {
    pub session: &'static str,
    /// The pre-sign-in form cookie (setup, sign-in, invitations, password reset).
    pub form: &'static str,
    /// Served over TLS: every cookie is `Secure`.
    pub tls: bool,
}

impl CookieNames {
    pub fn new(tls: bool) -> Self {
        if tls {
            Self {
                session: "__Host-keygate_session",
                form: "__Host-keygate_form",
                tls,
            }
        } else {
            Self {
                session: SESSION_COOKIE,
                form: "keygate_form",
                tls,
            }
        }
    }
}
/// The header that carries a session's CSRF token on API calls.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The value of cookie `name`, if the request has exactly that cookie.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Whether a request changes state: any method but `GET`/`HEAD`/`OPTIONS`, and the one-time
/// private-key download, which is a `GET` that spends something.
pub fn changes_state(method: &Method, path: &str) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        || path.ends_with("/privateKey")
}

/// Checks a presented CSRF token against the one derived from the session ID.
pub fn csrf_matches(session_id: &str, presented: Option<&str>) -> bool {
    match (BearerSecret::parse(session_id), presented) {
        (Some(id), Some(p)) => constant_time_eq(&csrf_token(&id), p),
        _ => false,
    }
}

/// An authenticated management-API caller.
#[derive(Debug)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // A session cookie counts only when the request carries no credential of its own.
        let has_credential = parts.headers.contains_key(header::AUTHORIZATION)
            || parts.headers.contains_key("x-api-key");
        if !has_credential && let Some(id) = cookie(&parts.headers, state.cookies.session) {
            return session_caller(parts, state, id).await.map(Self);
        }
        let token = match credential(&parts.headers)? {
            Credential::Token(t) => t,
            Credential::SecretKey(_) => {
                return Err(Error::auth(
                    AuthReason::UnknownSecretKey,
                    "Secret keys cannot call the management API; use a signed token of an API key.",
                )
                .into());
            }
        };
        // Under `nest`, `parts.uri` has lost its prefix; scopes name the full path.
        let uri = parts
            .extensions
            .get::<OriginalUri>()
            .map_or(&parts.uri, |o| &o.0);
        let target = RequestTarget {
            method: parts.method.as_str(),
            path: uri.path(),
            query: uri.query().unwrap_or(""),
        };
        let principal = state.gate.verifier().authenticate_management(
            token,
            &target,
            client_addr(parts, state),
        )?;
        Ok(Self(principal))
    }
}

async fn session_caller(parts: &Parts, state: &AppState, id: &str) -> Result<Principal, ApiError> {
    let session = state.users.session(id).await?.ok_or_else(|| {
        Error::auth(
            AuthReason::SessionExpired,
            "The session has ended (signed out, or idle too long). Sign in again.",
        )
    })?;
    let path = parts
        .extensions
        .get::<OriginalUri>()
        .map_or(parts.uri.path(), |o| o.0.path());
    if changes_state(&parts.method, path) {
        let presented = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !csrf_matches(id, presented) {
            return Err(Error::forbidden(
                ForbiddenReason::CsrfTokenInvalid,
                "A request that changes something, made with a session cookie, needs the session's CSRF token in X-CSRF-Token.",
            )
            .into());
        }
    }
    Ok(UserService::principal(&session, client_addr(parts, state)))
}

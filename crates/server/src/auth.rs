//! Finding the credential in a request. Only finding: verification is the core's.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, OriginalUri};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, header};
use keygate_core::authz::Principal;
use keygate_core::credential::HeaderValues;
use keygate_core::error::{AuthReason, Error};
use keygate_core::scope::RequestTarget;

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

/// An authenticated management-API caller.
#[derive(Debug)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
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
        let principal =
            state
                .gate
                .verifier()
                .authenticate_management(token, &target, peer_ip(parts))?;
        Ok(Self(principal))
    }
}

//! Finding the credential in a request. Only finding: verification is the core's.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, OriginalUri};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use keygate_core::authz::Principal;
use keygate_core::error::{AuthReason, Error};
use keygate_core::scope::RequestTarget;

use crate::AppState;
use crate::error::ApiError;

/// The credential a request presents.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    /// A JWT from `Authorization: Bearer`.
    Token(&'a str),
    /// A secret key (`kgsk_…`), from `X-Api-Key` or `Authorization: Bearer`.
    SecretKey(&'a str),
}

/// Reads the one credential of a request. Several `Authorization` headers, or a credential in
/// both `Authorization` and `X-Api-Key`, are refused rather than guessed between.
pub fn credential(headers: &HeaderMap) -> Result<Credential<'_>, Error> {
    let mut auth = headers.get_all(header::AUTHORIZATION).iter();
    let first = auth.next();
    if auth.next().is_some() {
        return Err(Error::auth(
            AuthReason::TokenMalformed,
            "The request has more than one Authorization header.",
        ));
    }
    let mut api_keys = headers.get_all("x-api-key").iter();
    let api_key = api_keys.next();
    if api_keys.next().is_some() {
        return Err(Error::auth(
            AuthReason::TokenMalformed,
            "The request has more than one X-Api-Key header.",
        ));
    }
    match (first, api_key) {
        (Some(_), Some(_)) => Err(Error::auth(
            AuthReason::TokenMalformed,
            "The request has both an Authorization and an X-Api-Key header; send one credential.",
        )),
        (None, None) => Err(Error::auth(
            AuthReason::TokenMissing,
            "Send Authorization: Bearer <token>.",
        )),
        (None, Some(v)) => {
            let v = v.to_str().map_err(|_| {
                Error::auth(
                    AuthReason::UnknownSecretKey,
                    "The X-Api-Key header is not a keygate secret key.",
                )
            })?;
            Ok(Credential::SecretKey(v.trim()))
        }
        (Some(v), None) => {
            let v = v.to_str().map_err(|_| {
                Error::auth(
                    AuthReason::TokenMalformed,
                    "The Authorization header holds non-ASCII bytes.",
                )
            })?;
            let (scheme, rest) = v.trim().split_once(' ').unwrap_or((v, ""));
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(Error::auth(
                    AuthReason::TokenMissing,
                    "The Authorization header must use the Bearer scheme.",
                ));
            }
            let token = rest.trim();
            if token.is_empty() {
                return Err(Error::auth(
                    AuthReason::TokenMissing,
                    "The bearer token is empty.",
                ));
            }
            if token.starts_with("kgsk_") {
                Ok(Credential::SecretKey(token))
            } else {
                Ok(Credential::Token(token))
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn reason(r: Result<Credential<'_>, Error>) -> AuthReason {
        match r {
            Err(Error::Unauthenticated(f)) => f.reason,
            other => panic!("expected an auth failure, got {other:?}"),
        }
    }

    #[test]
    fn credential_table() {
        assert_eq!(
            credential(&headers(&[("authorization", "Bearer a.b.c")])).unwrap(),
            Credential::Token("a.b.c")
        );
        assert_eq!(
            credential(&headers(&[("authorization", "bEaReR   a.b.c ")])).unwrap(),
            Credential::Token("a.b.c")
        );
        assert_eq!(
            credential(&headers(&[("x-api-key", "kgsk_x")])).unwrap(),
            Credential::SecretKey("kgsk_x")
        );
        assert_eq!(
            credential(&headers(&[("authorization", "Bearer kgsk_x")])).unwrap(),
            Credential::SecretKey("kgsk_x")
        );
        assert_eq!(reason(credential(&headers(&[]))), AuthReason::TokenMissing);
        assert_eq!(
            reason(credential(&headers(&[(
                "authorization",
                "Basic dXNlcjpwdw=="
            )]))),
            AuthReason::TokenMissing
        );
        assert_eq!(
            reason(credential(&headers(&[("authorization", "Bearer")]))),
            AuthReason::TokenMissing
        );
        assert_eq!(
            reason(credential(&headers(&[
                ("authorization", "Bearer a.b.c"),
                ("authorization", "Bearer d.e.f")
            ]))),
            AuthReason::TokenMalformed
        );
        assert_eq!(
            reason(credential(&headers(&[
                ("authorization", "Bearer a.b.c"),
                ("x-api-key", "kgsk_x")
            ]))),
            AuthReason::TokenMalformed
        );
    }
}

//! Forward auth for gateways: `ANY /authz/{path...}` (Envoy `ext_authz`, the request's own method
//! and path) and `ANY /authz` (nginx `auth_request` with `X-Original-Method`/`X-Original-URI`,
//! Traefik `ForwardAuth` with `X-Forwarded-Method`/`X-Forwarded-Uri`).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use keygate_core::error::Error;
use keygate_core::scope::RequestTarget;

use crate::config::ForwardAuthHeaders;
use crate::error::ApiError;
use crate::{AppState, dataplane};

fn decide(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
    target: &RequestTarget<'_>,
) -> Response {
    let mut resp = if headers
        .get(dataplane::RECHECK)
        .is_some_and(|v| v.as_bytes() == b"1")
    {
        dataplane::recheck(state, headers, peer, target)
    } else {
        match dataplane::check(state, headers, peer, target) {
            Ok(admitted) => dataplane::allowed_response(&admitted),
            Err(refused) => refused,
        }
    };
    crate::set_security_headers(resp.headers_mut());
    resp
}

/// Reads one gateway's pair of original-request headers: `None` if neither is present, an error
/// if only one is (a half-set pair would let the client supply the other half).
fn header_pair<'h>(
    headers: &'h HeaderMap,
    method: &str,
    uri: &str,
) -> Result<Option<(&'h str, &'h str)>, Error> {
    let get = |name: &str| -> Result<Option<&'h str>, Error> {
        let mut values = headers.get_all(name).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(Error::parameter(
                name,
                format!("{name} appears more than once."),
            ));
        }
        first
            .map(|v| {
                v.to_str()
                    .map_err(|_| Error::parameter(name, format!("{name} is not ASCII.")))
            })
            .transpose()
    };
    match (get(method)?, get(uri)?) {
        (Some(m), Some(u)) => Ok(Some((m.trim(), u.trim()))),
        (None, None) => Ok(None),
        _ => Err(Error::parameter(
            method,
            format!("{method} and {uri} must be sent together; configure the gateway to set both."),
        )),
    }
}

/// `ANY /authz`: the original request comes in headers, `X-Original-Method`/`X-Original-URI`
/// (nginx) or `X-Forwarded-Method`/`X-Forwarded-Uri` (Traefik). Public: the credential is what
/// is checked.
///
/// A gateway sets one pair and passes the client's other headers through, so a client can add
/// the other pair itself. Each pair is therefore taken whole, and when both are present they
/// must describe the same request; otherwise the request is refused rather than guessed at.
pub async fn authz_headers(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    let headers = req.headers();
    // With a configured gateway, only its pair counts and the other is ignored entirely.
    let (nginx, traefik) = match state.forward_auth_headers {
        ForwardAuthHeaders::Nginx => (
            header_pair(headers, "x-original-method", "x-original-uri")?,
            None,
        ),
        ForwardAuthHeaders::Traefik => (
            None,
            header_pair(headers, "x-forwarded-method", "x-forwarded-uri")?,
        ),
        ForwardAuthHeaders::Auto => (
            header_pair(headers, "x-original-method", "x-original-uri")?,
            header_pair(headers, "x-forwarded-method", "x-forwarded-uri")?,
        ),
    };
    let (method, uri) = match (nginx, traefik) {
        (Some(a), Some(b)) if a.0.eq_ignore_ascii_case(b.0) && a.1 == b.1 => a,
        (Some(_), Some(_)) => {
            return Err(Error::parameter(
                "X-Original-URI",
                "X-Original-Method/X-Original-URI and X-Forwarded-Method/X-Forwarded-Uri describe different requests.",
            )
            .into());
        }
        (Some(pair), None) | (None, Some(pair)) => pair,
        (None, None) => {
            return Err(Error::parameter(
                "X-Original-URI",
                "GET /authz needs the original request in X-Original-Method and X-Original-URI (nginx) or X-Forwarded-Method and X-Forwarded-Uri (Traefik); or call /authz/{path}.",
            )
            .into());
        }
    };
    // The method as the gateway forwards it: `get` is refused, not read as `GET`, since the
    // upstream gets it as written.
    let method = method.to_owned();
    // An absolute URI (some proxies send one) is reduced to its path and query.
    let origin_form = match uri.parse::<Uri>() {
        Ok(u) if u.scheme().is_some() => u
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
        _ => uri.to_owned(),
    };
    if !origin_form.starts_with('/') {
        return Err(
            Error::parameter("X-Original-URI", "The original URI must start with /.").into(),
        );
    }
    Ok(decide(
        &state,
        headers,
        peer(&req),
        &RequestTarget::from_uri(&method, &origin_form),
    ))
}

/// `ANY /authz/{path...}`: the request's own method and path, minus the `/authz` prefix.
/// Takes the request whole: separate `HeaderMap`/`Uri` extractors would copy them on every call.
pub async fn authz_path(State(state): State<AppState>, req: Request) -> Response {
    let uri = req.uri();
    let path = uri.path().strip_prefix("/authz").unwrap_or("/");
    let target = RequestTarget {
        method: req.method().as_str(),
        path,
        query: uri.query().unwrap_or(""),
    };
    decide(&state, req.headers(), peer(&req), &target)
}

fn peer(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

//! The reverse proxy (`serve --proxy-listen ADDR --upstream URL`): every request on that
//! listener is decided like forward auth; allowed ones go to the upstream with the identity
//! headers added and the credential removed.
//!
//! Bodies stream both ways through hyper without being collected, so memory stays bounded
//! whatever their size; upstream connections are pooled and kept alive. The upstream's status,
//! headers and body reach the client as sent, apart from hop-by-hop headers (which belong to one
//! connection) and the added `X-Rate-Limit`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri, Version};
use axum::response::Response;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate_core::scope::RequestTarget;

use crate::config::ProxyConfig;
use crate::error::ErrorBody;
use crate::{AppState, dataplane};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// credential headers the upstream must never see.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// The forwarding half of the proxy listener.
#[derive(Debug)]
pub struct Proxy {
    client: Client<HttpConnector, Body>,
    /// Scheme and authority of the upstream.
    base: String,
    /// The upstream's path prefix, without a trailing `/` (often empty).
    prefix: String,
    timeout: Duration,
}

impl Proxy {
    pub fn new(config: &ProxyConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        let up = &config.upstream;
        Self {
            client,
            base: format!(
                "{}://{}",
                up.scheme_str().unwrap_or("http"),
                up.authority().map_or("", |a| a.as_str())
            ),
            prefix: up.path().trim_end_matches('/').to_owned(),
            timeout: config.upstream_timeout,
        }
    }

    fn upstream_uri(&self, uri: &Uri) -> Option<Uri> {
        let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
        format!("{}{}{pq}", self.base, self.prefix).parse().ok()
    }
}

/// The proxy listener's router: one handler for every method and path.
pub fn router(state: AppState, proxy: Arc<Proxy>) -> Router {
    Router::new().fallback(forward).with_state((state, proxy))
}

async fn forward(
    State((state, proxy)): State<(AppState, Arc<Proxy>)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let (mut parts, body) = req.into_parts();
    // A target that cannot be forwarded is refused before anything is counted.
    let Some(uri) = proxy.upstream_uri(&parts.uri) else {
        return own_error(
            StatusCode::BAD_REQUEST,
            "PARAMETER_ERROR.INVALID",
            "A parameter has an invalid value.",
            "The request target cannot be forwarded.",
        );
    };
    let target = RequestTarget {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
    };
    let admitted = match dataplane::check(&state, &parts.headers, Some(peer.ip()), &target) {
        Ok(a) => a,
        Err(refused) => return refused,
    };

    let headers = &mut parts.headers;
    // A chunked body on a method whose body hyper would otherwise send as empty (GET, HEAD)
    // must stay chunked: the upstream gets the body the client sent.
    let chunked = headers
        .get(header::TRANSFER_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let original_host = headers.remove(header::HOST);
    strip_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove("x-api-key");
    dataplane::set_identity(headers, &admitted.identity);
    append_forwarded(headers, peer, original_host);
    if chunked && !headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }

    parts.uri = uri;
    // Always HTTP/1.1 upstream, so connections are kept alive and pooled whatever the client
    // spoke.
    parts.version = Version::HTTP_11;
    let upstream_req = Request::from_parts(parts, body);
    let sent = tokio::time::timeout(proxy.timeout, proxy.client.request(upstream_req)).await;
    let mut resp = match sent {
        Ok(Ok(resp)) => {
            let mut resp = resp.map(Body::new);
            strip_hop_by_hop(resp.headers_mut());
            resp
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "upstream request failed");
            own_error(
                StatusCode::BAD_GATEWAY,
                "BAD_GATEWAY",
                "The upstream API could not be reached.",
                "keygate allowed the request but the upstream did not answer; try again shortly.",
            )
        }
        Err(_) => {
            tracing::warn!(
                timeout_s = proxy.timeout.as_secs(),
                "upstream response timed out"
            );
            own_error(
                StatusCode::GATEWAY_TIMEOUT,
                "GATEWAY_TIMEOUT",
                "The upstream API did not answer in time.",
                "keygate allowed the request but the upstream did not send a response in time.",
            )
        }
    };
    // The request was admitted (and counted), so every answer says what is left.
    dataplane::set_rate_headers(resp.headers_mut(), &admitted.rate);
    resp
}

/// Removes hop-by-hop headers, including any that `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    // Framing is hyper's to set for each connection.
    headers.remove(header::TRANSFER_ENCODING);
}

/// `X-Forwarded-For` (appended), `-Host` and `-Proto`, as an upstream behind a proxy expects;
/// `Forwarded` is removed.
fn append_forwarded(headers: &mut HeaderMap, peer: SocketAddr, host: Option<HeaderValue>) {
    let ip = peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.remove("x-forwarded-host");
    if let Some(host) = host {
        headers.insert("x-forwarded-host", host);
    }
    // Behind a TLS terminator (the recommended setup) the terminator's `X-Forwarded-Proto`
    // stands; otherwise the client spoke plain HTTP to keygate.
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    // keygate does not maintain RFC 7239 `Forwarded`; a client's own would be unvouched for.
    headers.remove(header::FORWARDED);
}

fn own_error(
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: &'static str,
) -> Response {
    crate::error::response(&ErrorBody::new(status.as_u16(), code, title, detail))
}

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

/// Headers with which a client could claim an address or an original request; the upstream
/// gets keygate's own `X-Forwarded-For` and `X-Real-IP` instead.
const CLIENT_CLAIMS: [&str; 9] = [
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-original-method",
    "x-original-uri",
    "x-forwarded-method",
    "x-forwarded-uri",
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
    // Framing the upstream could read differently from hyper is refused, not rewritten: only
    // `chunked` alone is a transfer coding keygate forwards (RFC 9112 §6.1).
    if !transfer_coding_is_plain(&parts.headers) {
        return own_error(
            StatusCode::BAD_REQUEST,
            "PARAMETER_ERROR.INVALID",
            "A parameter has an invalid value.",
            "Transfer-Encoding other than chunked alone is not accepted; send the body with Content-Length or chunked.",
        );
    }
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
    // A client's claims of its address or of the original request, which an upstream behind
    // a CDN or a gateway might believe.
    for claim in CLIENT_CLAIMS {
        headers.remove(claim);
    }
    strip_keygate_cookies(headers);
    dataplane::set_identity(headers, &admitted.identity);
    let trusted_peer = state
        .trusted_proxies
        .iter()
        .any(|r| r.contains(keygate_core::secret_key::canonical(peer.ip())));
    let client = dataplane::client_ip(&state.trusted_proxies, headers, Some(peer.ip()));
    append_forwarded(headers, peer, original_host, trusted_peer, client);
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
            // An answer framed by Transfer-Encoding has no length of its own: a Content-Length
            // beside it is stale (RFC 9112 §6.3), and hyper frames the body it actually read.
            if resp.headers().contains_key(header::TRANSFER_ENCODING) {
                resp.headers_mut().remove(header::CONTENT_LENGTH);
            }
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

/// Whether the request's `Transfer-Encoding` (if any) is `chunked` alone.
fn transfer_coding_is_plain(headers: &HeaderMap) -> bool {
    let mut codings = 0;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(text) = value.to_str() else {
            return false;
        };
        for coding in text.split(',') {
            codings += 1;
            if !coding.trim().eq_ignore_ascii_case("chunked") {
                return false;
            }
        }
    }
    codings <= 1
}

/// keygate's own cookies (the web UI's session and form cookies) are for keygate alone: they
/// are removed from the `Cookie` header; other cookies pass unchanged.
fn strip_keygate_cookies(headers: &mut HeaderMap) {
    let values: Vec<HeaderValue> = headers.get_all(header::COOKIE).iter().cloned().collect();
    if values.is_empty() {
        return;
    }
    let ours = |pair: &str| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
        name.starts_with("keygate_") || name.starts_with("__Host-keygate_")
    };
    headers.remove(header::COOKIE);
    for value in values {
        let Ok(text) = value.to_str() else {
            // Not text: it cannot be inspected, so it is not passed on.
            continue;
        };
        let kept: Vec<&str> = text
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty() && !ours(p))
            .collect();
        if !kept.is_empty()
            && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
        {
            headers.append(header::COOKIE, v);
        }
    }
}

/// `X-Forwarded-For` (appended), `-Host` and `-Proto`, and `X-Real-IP`, as an upstream behind
/// a proxy expects; `Forwarded` is removed. `X-Real-IP` is the client address keygate itself
/// decided on (the one IP restrictions checked), never the client's own claim; a client's
/// `X-Forwarded-Proto` stands only when the peer is a trusted proxy.
fn append_forwarded(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    host: Option<HeaderValue>,
    trusted_peer: bool,
    client: Option<std::net::IpAddr>,
) {
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
    // Behind a trusted TLS terminator (the recommended setup) its `X-Forwarded-Proto` stands;
    // otherwise the client spoke plain HTTP to keygate, whatever it claims.
    if !trusted_peer || !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    headers.remove("x-real-ip");
    if let Some(v) = client.and_then(|ip| HeaderValue::from_str(&ip.to_string()).ok()) {
        headers.insert("x-real-ip", v);
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

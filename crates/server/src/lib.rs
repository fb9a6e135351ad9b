//! keygate's HTTP side: the management API, forward auth, health endpoints, configuration and
//! the wiring that turns a [`Config`] into a running node.
//!
//! This is the only crate that knows HTTP. [`app`] builds the router from an [`AppState`], so
//! tests can drive it without a socket; [`serve::run`] binds it to a real port.

pub mod auth;
pub mod config;
pub mod dataplane;
pub mod error;
pub mod jsonapi;
pub mod listener;
pub mod master_key;
pub mod proxy;
pub mod routes;
pub mod serve;
pub mod ui;

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{MethodRouter, any, get};
use keygate_core::gate::Gate;
use keygate_core::keyset::KeyRing;
use keygate_core::people::UserService;
use keygate_core::secret_key::{IpRange, SecretKeyService};
use keygate_core::service::KeyService;

pub use config::Config;

use crate::error::ErrorBody;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub keys: Arc<KeyService>,
    /// Users, invitations, sign-in and sessions.
    pub users: Arc<UserService>,
    /// Always mark cookies `Secure`.
    pub secure_cookies: bool,
    /// Secret keys.
    pub secrets: Arc<SecretKeyService>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<[IpRange]>,
    /// Public keys that sign leak reports.
    pub leak_report_keys: Arc<[Vec<u8>]>,
    /// The data-plane decision (verification, policy, rate limits); its verifier also
    /// authenticates management callers.
    pub gate: Gate,
    pub ring: Arc<KeyRing>,
    pub forward_auth_headers: config::ForwardAuthHeaders,
    /// Where people reach keygate, for the links it shows (`public_url`).
    pub public_url: Option<Arc<str>>,
    /// Cookie names (`__Host-` under TLS).
    pub cookies: auth::CookieNames,
}

/// One route of the management API: its path under `/v1`, the methods it answers, and its
/// handlers. The router is built from [`management_routes`], and so is the test that checks that
/// every route refuses callers without valid credentials (`tests/routes.rs`): a route cannot
/// be added without being checked, and a method answered but not listed fails that test.
pub struct ManagementRoute {
    pub path: &'static str,
    pub methods: &'static [&'static str],
    handler: MethodRouter<AppState>,
}

impl fmt::Debug for ManagementRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagementRoute")
            .field("path", &self.path)
            .field("methods", &self.methods)
            .finish_non_exhaustive()
    }
}

fn route(
    path: &'static str,
    methods: &'static [&'static str],
    handler: MethodRouter<AppState>,
) -> ManagementRoute {
    ManagementRoute {
        path,
        methods,
        handler,
    }
}

/// Every management route (`/v1/...`).
pub fn management_routes() -> Vec<ManagementRoute> {
    use axum::routing::{delete, post};
    use routes::{audit, keys, secret_keys, users};
    vec![
        route("/issuer", &["GET"], get(keys::get_issuer)),
        route(
            "/apiKeys",
            &["GET", "POST"],
            get(keys::list_keys).post(keys::create_key),
        ),
        route(
            "/apiKeys/{key_id}",
            &["GET", "PATCH"],
            get(keys::get_key).patch(keys::patch_key),
        ),
        route(
            "/apiKeys/{key_id}/privateKey",
            &["GET"],
            get(keys::download_private_key),
        ),
        route("/auditEvents", &["GET"], get(audit::list)),
        route(
            "/secretKeys",
            &["GET", "POST"],
            get(secret_keys::list).post(secret_keys::create),
        ),
        route(
            "/secretKeys/{id}",
            &["GET", "PATCH"],
            get(secret_keys::get).patch(secret_keys::patch),
        ),
        route("/secretKeys/{id}/roll", &["POST"], post(secret_keys::roll)),
        route("/leaks", &["POST"], post(secret_keys::leaks)),
        route("/users", &["GET"], get(users::list_users)),
        route(
            "/users/{id}",
            &["GET", "PATCH", "DELETE"],
            get(users::get_user)
                .patch(users::patch_user)
                .delete(users::delete_user),
        ),
        route(
            "/userInvitations",
            &["GET", "POST"],
            get(users::list_invitations).post(users::create_invitation),
        ),
        route(
            "/userInvitations/{id}",
            &["DELETE"],
            delete(users::delete_invitation),
        ),
    ]
}

/// The main listener's router.
pub fn app(state: AppState) -> Router {
    use routes::{authz, health};
    let v1 = management_routes()
        .into_iter()
        .fold(Router::new(), |r, m| r.route(m.path, m.handler))
        .layer(middleware::from_fn(no_store));
    let pages = Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(ui::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(security_headers));
    // Served over TLS: browsers are told to come back over HTTPS only.
    let pages = if state.cookies.tls {
        pages.layer(middleware::map_response(|mut resp: Response| async move {
            resp.headers_mut().insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000"),
            );
            resp
        }))
    } else {
        pages
    };
    // Forward auth is the hot path: no middleware; it sets its own static headers.
    Router::new()
        .route("/authz", any(authz::authz_headers))
        .route("/authz/{*path}", any(authz::authz_path))
        .merge(pages)
        .with_state(state)
}

async fn not_found() -> Response {
    crate::error::response(&ErrorBody::new(
        StatusCode::NOT_FOUND.as_u16(),
        "NOT_FOUND",
        "The specified resource does not exist.",
        "There is no such route.",
    ))
}

async fn method_not_allowed() -> Response {
    crate::error::response(&ErrorBody::new(
        StatusCode::METHOD_NOT_ALLOWED.as_u16(),
        "METHOD_NOT_ALLOWED",
        "The request method is not allowed for this resource.",
        "This route does not accept this method.",
    ))
}

/// Management responses describe keys and may carry secrets: never cache them.
async fn no_store(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `nosniff` and frame denial on every page and API answer.
pub fn set_security_headers(h: &mut axum::http::HeaderMap) {
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
}

async fn security_headers(req: Request, next: Next) -> Response {
    // The request log costs a copy of the path and a clock read; only when it is on.
    let logged = tracing::enabled!(tracing::Level::DEBUG).then(|| {
        let matched = req
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map(axum::extract::MatchedPath::as_str);
        (
            req.method().clone(),
            log_path(matched, req.uri().path()),
            std::time::Instant::now(),
        )
    });
    let mut resp = next.run(req).await;
    set_security_headers(resp.headers_mut());
    if let Some((method, path, started)) = logged {
        // The path only: never headers or query strings, which may carry credentials.
        tracing::debug!(%method, %path, status = resp.status().as_u16(), micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX), "request");
    }
    resp
}

/// The path the request log records: for a route with a link secret in it, the route's
/// template (`/invitations/{link}`); for any other route, the path (see [`loggable_path`]); for
/// a path no route matched, only its length: a mistyped or mis-prefixed link
/// (`/x/invitations/SECRET`, `/reset-SECRET`) may still carry a live secret.
pub fn log_path(matched_route: Option<&str>, path: &str) -> String {
    match matched_route {
        Some(route) if route.contains("{link}") => route.to_owned(),
        Some(_) => loggable_path(path),
        None => format!("<a path no route matched, {} bytes>", path.len()),
    }
}

/// Paths whose last part is a one-time secret (setup, invitation and password-reset links).
const SECRET_LINK_PREFIXES: [&str; 3] = ["/setup/", "/invitations/", "/reset/"];

/// A request path fit for the log: at most 200 characters, with the one-time secret of a setup,
/// invitation or reset link replaced. The secret is found by what the path means, not by its
/// spelling: a path that is not plain (escapes, dot segments, `//`, anything but letters, digits
/// and `-_.~/`) could be one of those links to some reader (`/%69nvitations/…`,
/// `/./invitations/…`), so it is not logged at all, only its length; the prefixes are matched
/// without regard to case.
pub fn loggable_path(path: &str) -> String {
    let plain = path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b))
        && !path.contains("//")
        && !path.split('/').any(|seg| seg == "." || seg == "..");
    if !plain {
        return format!(
            "<a path of {} bytes that is not plain, not logged>",
            path.len()
        );
    }
    let lower = path.to_ascii_lowercase();
    for prefix in SECRET_LINK_PREFIXES {
        if lower.starts_with(prefix) {
            return format!("{prefix}<link>");
        }
    }
    path.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::loggable_path;

    /// Every spelling of a secret link that some server could route is redacted; nothing of
    /// the secret reaches the log.
    #[test]
    fn the_request_log_never_shows_a_link_secret() {
        let secret = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5";
        for path in [
            format!("/setup/{secret}"),
            format!("/invitations/{secret}"),
            format!("/reset/{secret}"),
            format!("/./invitations/{secret}"),
            format!("//invitations/{secret}"),
            format!("/%69nvitations/{secret}"),
            format!("/x/../invitations/{secret}"),
            format!("/Invitations/{secret}"),
            format!("/RESET/{secret}"),
            format!("/invitations%2F{secret}"),
            format!("/invitations/{secret}%00"),
        ] {
            let logged = loggable_path(&path);
            assert!(!logged.contains(secret), "{path} -> {logged}");
        }
        assert_eq!(
            loggable_path("/v1/apiKeys/ABCDEFGHIJ"),
            "/v1/apiKeys/ABCDEFGHIJ"
        );
        // Paths no route matched are logged by length only, whatever they look like.
        for path in [
            format!("/x/invitations/{secret}"),
            format!("/v1/reset/{secret}"),
            format!("/invitations.{secret}"),
            format!("/reset-{secret}"),
        ] {
            let logged = super::log_path(None, &path);
            assert!(!logged.contains(secret), "{path} -> {logged}");
        }
        assert_eq!(
            super::log_path(
                Some("/invitations/{link}"),
                &format!("/invitations/{secret}")
            ),
            "/invitations/{link}"
        );
        assert_eq!(
            super::log_path(Some("/v1/apiKeys/{id}"), "/v1/apiKeys/ABCDEFGHIJ"),
            "/v1/apiKeys/ABCDEFGHIJ"
        );
    }
}

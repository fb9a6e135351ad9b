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
pub mod master_key;
pub mod proxy;
pub mod routes;
pub mod serve;
pub mod ui;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get};
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
}

/// The main listener's router.
pub fn app(state: AppState) -> Router {
    use routes::{audit, authz, health, keys, secret_keys, users};
    let v1 = Router::new()
        .route("/issuer", get(keys::get_issuer))
        .route("/apiKeys", get(keys::list_keys).post(keys::create_key))
        .route(
            "/apiKeys/{key_id}",
            get(keys::get_key).patch(keys::patch_key),
        )
        .route("/auditEvents", get(audit::list))
        .route(
            "/secretKeys",
            get(secret_keys::list).post(secret_keys::create),
        )
        .route(
            "/secretKeys/{id}",
            get(secret_keys::get).patch(secret_keys::patch),
        )
        .route(
            "/secretKeys/{id}/roll",
            axum::routing::post(secret_keys::roll),
        )
        .route("/leaks", axum::routing::post(secret_keys::leaks))
        .route("/users", get(users::list_users))
        .route(
            "/users/{id}",
            get(users::get_user)
                .patch(users::patch_user)
                .delete(users::delete_user),
        )
        .route(
            "/userInvitations",
            get(users::list_invitations).post(users::create_invitation),
        )
        .route(
            "/userInvitations/{id}",
            axum::routing::delete(users::delete_invitation),
        )
        .route(
            "/apiKeys/{key_id}/privateKey",
            get(keys::download_private_key),
        )
        .layer(middleware::from_fn(no_store));
    let pages = Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(ui::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(security_headers));
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
        (
            req.method().clone(),
            loggable_path(req.uri().path()),
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

/// A request path fit for the log: at most 200 characters, with the one-time secret of a setup
/// or invitation link replaced.
pub fn loggable_path(path: &str) -> String {
    for prefix in ["/setup/", "/invitations/"] {
        if path.starts_with(prefix) {
            return format!("{prefix}<link>");
        }
    }
    path.chars().take(200).collect()
}

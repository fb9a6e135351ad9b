//! The `tower` layer in front of an axum router, in-process: allowed with the verified token in
//! the request, 401, 403, 429 with the rate header counting down (manual clock), and a
//! revocation taking effect on the next request. With the `database` feature, the layer's key
//! set follows a keygate `SQLite` database.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines
)] // test code: a failed expectation should panic; scenarios read top to bottom

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Extension;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use axum::{Router, response::Response};
use keygate_client::layer::{KeygateLayer, Verification};
use keygate_client::{Identity, MintOptions, TokenMinter};
use keygate_core::clock::{Clock, ManualClock};
use keygate_core::crypto::{generate_key_pair, public_key_pem};
use keygate_core::key::Algorithm;
use keygate_core::policy::{Policy, RolePolicy, RoutePattern};
use keygate_core::role::Role;
use keygate_core::token::VerifiedToken;
use serde_json::Value;
use tower::ServiceExt as _;

const ISSUER: &str = "57246542-96fe-1a63-e053-0824d011072a";
const KEY_ID: &str = "2X9R4HXF34";

fn policy() -> Policy {
    let mut roles = BTreeMap::new();
    roles.insert(
        Role::parse_name("DEVELOPER").unwrap(),
        RolePolicy {
            allow: vec![RoutePattern::parse("GET /v1/apps/**").unwrap()],
            long_lived: vec![],
            rate_limit_per_hour: Some(2),
        },
    );
    Policy::new(roles)
}

fn app(layer: KeygateLayer) -> Router {
    Router::new()
        .route(
            "/v1/apps",
            get(|Extension(t): Extension<Arc<VerifiedToken>>| async move {
                format!("{} {}", t.key.id, t.key.roles.joined())
            }),
        )
        .route("/v1/builds", get(|| async { "never reached" }))
        .layer(layer)
}

async fn send(app: &Router, path: &str, token: Option<&str>) -> (Response, Value) {
    let mut req = Request::get(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (Response::from_parts(parts, Body::empty()), json)
}

fn rate(resp: &Response) -> &str {
    resp.headers()["x-rate-limit"].to_str().unwrap()
}

#[tokio::test]
async fn the_layer_decides_like_authz() {
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let pair = generate_key_pair(Algorithm::Es256).unwrap();
    let verification = Verification::new().policy(policy()).clock(clock.clone());
    verification
        .add_team_key(
            KEY_ID,
            ISSUER,
            &public_key_pem(&pair.public, Algorithm::Es256),
            &["DEVELOPER"],
        )
        .unwrap();
    let ring = Arc::clone(verification.ring());
    let app = app(KeygateLayer::new(verification.gate()));
    let minter = TokenMinter::new(
        &pair.private,
        KEY_ID,
        Identity::Team {
            issuer_id: ISSUER.to_owned(),
        },
        MintOptions::default(),
    )
    .unwrap()
    .with_clock(clock.clone());
    let token = minter.token().unwrap();

    let (resp, doc) = send(&app, "/v1/apps", None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(doc["errors"][0]["meta"]["reason"], "TOKEN_MISSING");

    let (resp, body) = send(&app, "/v1/apps", Some(&token)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body, format!("{KEY_ID} DEVELOPER"));
    assert_eq!(rate(&resp), "user-hour-lim:2;user-hour-rem:1;");

    let (resp, doc) = send(&app, "/v1/builds", Some(&token)).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(doc["errors"][0]["code"], "FORBIDDEN_ERROR");
    assert_eq!(doc["errors"][0]["meta"]["reason"], "ROLE_NOT_ALLOWED");
    assert_eq!(rate(&resp), "user-hour-lim:2;user-hour-rem:1;");

    let (resp, _) = send(&app, "/v1/apps", Some(&token)).await;
    assert_eq!(rate(&resp), "user-hour-lim:2;user-hour-rem:0;");
    let (resp, doc) = send(&app, "/v1/apps", Some(&token)).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(doc["errors"][0]["code"], "RATE_LIMIT_EXCEEDED");
    assert!(resp.headers().contains_key(header::RETRY_AFTER));

    // An hour later the budget is back; a revocation applied to the ring takes effect at once.
    clock.advance(3600);
    let token = minter.token().unwrap();
    let (resp, _) = send(&app, "/v1/apps", Some(&token)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut revoked = keygate_core::key::ApiKey {
        id: keygate_core::ids::KeyId::parse(KEY_ID).unwrap(),
        issuer_id: ISSUER.parse().unwrap(),
        name: "k".into(),
        roles: keygate_core::role::RoleCatalog::default()
            .key_roles(&["DEVELOPER"])
            .unwrap(),
        key_type: keygate_core::key::KeyType::Team,
        algorithm: Algorithm::Es256,
        public_key: pair.public.clone(),
        private_key: keygate_core::key::PrivateKeyState::NeverHeld,
        created_by: "test".into(),
        created_at: clock.now(),
        last_used_at: None,
        request_count: 0,
        revoked_at: None,
        revoke_reason: None,
        expires_at: None,
        user_id: None,
    };
    revoked.revoked_at = Some(clock.now());
    ring.apply(&[revoked], ring.seq());
    let (resp, doc) = send(&app, "/v1/apps", Some(&token)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(doc["errors"][0]["meta"]["reason"], "KEY_REVOKED");
}

#[cfg(feature = "database")]
#[tokio::test]
async fn the_layer_follows_a_keygate_database() {
    use keygate_core::crypto::MasterKey;
    use keygate_core::keyset::KeyRing;
    use keygate_core::service::{KeyLimits, KeyService};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/keygate.db", dir.path().display());
    let store = keygate_store::open(&url).await.unwrap();
    let keys = KeyService::new(
        store,
        Arc::new(keygate_core::clock::SystemClock),
        MasterKey::generate().unwrap(),
        KeyLimits::default(),
        keygate_core::role::RoleCatalog::default(),
        Arc::new(KeyRing::new()),
    );
    let (issuer, _) = keys.ensure_issuer().await.unwrap();
    let verification = Verification::new();
    let task = verification
        .follow_database(&url, std::time::Duration::from_millis(20))
        .await
        .unwrap();
    let app = app(KeygateLayer::new(verification.gate()));
    // A key created through keygate after the layer started is accepted once synced.
    let (key, pem) = keys.bootstrap_admin_key(Some(issuer.id)).await.unwrap();
    let token = TokenMinter::new(
        &pem,
        key.id.as_str(),
        Identity::Team {
            issuer_id: issuer.id.to_string(),
        },
        MintOptions::default(),
    )
    .unwrap()
    .token()
    .unwrap();
    // Synced within a poll or two; the deadline is loose for loaded machines.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut status = StatusCode::UNAUTHORIZED;
    while std::time::Instant::now() < deadline {
        status = send(&app, "/v1/apps", Some(&token)).await.0.status();
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, StatusCode::OK);
    task.abort();
}

/// Under `Router::nest` the layer checks the path the client sent (a token scoped to `/a/...`
/// does not open `/b/...`), and handlers never see a client's own `X-Keygate-*` headers.
#[tokio::test]
async fn the_layer_checks_the_full_path_and_strips_spoofed_identity() {
    let pair = generate_key_pair(Algorithm::Es256).unwrap();
    let verification = Verification::new();
    verification
        .add_team_key(
            KEY_ID,
            ISSUER,
            &public_key_pem(&pair.public, Algorithm::Es256),
            &["DEVELOPER"],
        )
        .unwrap();
    let inner = || {
        Router::new().route(
            "/v1/x",
            get(|headers: axum::http::HeaderMap| async move {
                headers
                    .get("x-keygate-key-id")
                    .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned())
            }),
        )
    };
    let app = Router::new()
        .nest("/a", inner())
        .nest("/b", inner())
        .layer(KeygateLayer::new(verification.gate()));
    let token = TokenMinter::new(
        &pair.private,
        KEY_ID,
        Identity::Team {
            issuer_id: ISSUER.to_owned(),
        },
        MintOptions {
            scope: vec!["GET /a/v1/x".to_owned()],
            ..MintOptions::default()
        },
    )
    .unwrap()
    .token()
    .unwrap();
    let req = |path: &str| {
        Request::get(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header("x-keygate-key-id", "SPOOFED000")
            .body(Body::empty())
            .unwrap()
    };
    let resp = app.clone().oneshot(req("/a/v1/x")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
    assert_eq!(&body[..], b"none");
    let resp = app.clone().oneshot(req("/b/v1/x")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

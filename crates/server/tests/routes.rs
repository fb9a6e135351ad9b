//! Management authentication, route by route: every route of `management_routes()` (the list
//! the router is built from, so a new route cannot be missed), every method it answers, called
//! with no credential, an expired token, a revoked key, an ended session, a wrong CSRF token and
//! another issuer's key, gets the right refusal; methods a route does not answer get 405.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines
)] // test code: a failed expectation should panic; scenarios read top to bottom

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use keygate_core::authz::Principal;
use keygate_core::clock::{Clock, ManualClock};
use keygate_core::crypto::{MasterKey, PrivateKeyPem};
use keygate_core::ids::{Actor, IssuerId};
use keygate_core::role::RoleSet;
use keygate_core::secret::Password;
use keygate_core::token::{Signer, sign_jwt};
use keygate_core::user::Person;
use keygate_server::config::{self, Overrides};
use keygate_server::serve::build;
use keygate_server::{app, management_routes};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const NOW: i64 = 1_795_687_200;

fn token(signer: &Signer, kid: &str, iss: &str, exp: i64) -> String {
    sign_jwt(
        signer,
        kid,
        &json!({"iss": iss, "aud": "keygate-v1", "exp": exp}),
    )
    .unwrap()
}

async fn send(router: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// (what, credential header, expected status, expected reason)
type Case<'a> = (&'a str, Option<(&'a str, String)>, u16, &'a str);

fn reason(doc: &Value) -> String {
    doc["errors"][0]["meta"]["reason"]
        .as_str()
        .or(doc["errors"][0]["code"].as_str())
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn every_management_route_refuses_callers_without_valid_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = Overrides {
        database: Some(format!("sqlite://{}/keygate.db", dir.path().display())),
        ..Overrides::default()
    };
    let cfg = config::load(None, &|_| None, &overrides).unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let state = build(&cfg, MasterKey::generate().unwrap(), clock.clone())
        .await
        .unwrap();
    let router = app(state.clone());
    let (issuer, _) = state.keys.ensure_issuer().await.unwrap();
    let iss = issuer.id.to_string();
    let (admin_key, admin_pem) = state.keys.bootstrap_admin_key(None).await.unwrap();
    let admin = Signer::from_pem(&admin_pem).unwrap();
    let admin_token = || token(&admin, admin_key.id.as_str(), &iss, clock.now() + 600);

    // Objects of this issuer for the {id} routes.
    let call = |method: &str, uri: &str, body: Value| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", admin_token()))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let (_, key) = send(
        &router,
        call(
            "POST",
            "/v1/apiKeys",
            json!({"data": {"type": "apiKeys", "attributes": {"name": "k", "roles": ["ADMIN"]}}}),
        ),
    )
    .await;
    let key_id = key["data"]["id"].as_str().unwrap().to_owned();
    let pem = {
        let resp = router
            .clone()
            .oneshot(
                Request::get(format!("/v1/apiKeys/{key_id}/privateKey"))
                    .header(header::AUTHORIZATION, format!("Bearer {}", admin_token()))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    };
    let revoked_signer = Signer::from_pem(&PrivateKeyPem::from_pem(pem)).unwrap();
    let (_, target) = send(
        &router,
        call("POST", "/v1/apiKeys", json!({"data": {"type": "apiKeys", "attributes": {"name": "t", "roles": ["DEVELOPER"]}}})),
    )
    .await;
    let target_key = target["data"]["id"].as_str().unwrap().to_owned();
    let (_, secret) = send(
        &router,
        call("POST", "/v1/secretKeys", json!({"data": {"type": "secretKeys", "attributes": {"name": "s", "roles": ["DEVELOPER"]}}})),
    )
    .await;
    let secret_id = secret["data"]["id"].as_str().unwrap().to_owned();
    let (_, inv) = send(
        &router,
        call("POST", "/v1/userInvitations", json!({"data": {"type": "userInvitations", "attributes": {"email": "i@example.com", "firstName": "I", "lastName": "N", "roles": ["DEVELOPER"]}}})),
    )
    .await;
    let invitation_id = inv["data"]["id"].as_str().unwrap().to_owned();
    let system = Principal {
        issuer_id: issuer.id,
        actor: Actor::System("test"),
        roles: RoleSet::from_stored("ADMIN").unwrap(),
        user_id: None,
        source_ip: None,
    };
    let (_, link) = state
        .users
        .invite(
            &system.admin().unwrap(),
            Person::validate("u@example.com", "U", "S").unwrap(),
            &["ADMIN".to_owned()],
        )
        .await
        .unwrap();
    let session = state
        .users
        .accept_invitation(
            link.expose(),
            Password::new("long enough password".into()),
            None,
        )
        .await
        .unwrap();
    let user_id = session.user.id.to_string();
    let session_cookie = format!("keygate_session={}", session.id.expose());

    // The revoked key, the other issuer's admin key.
    let (s, _) = send(
        &router,
        call(
            "PATCH",
            &format!("/v1/apiKeys/{key_id}"),
            json!({"data": {"type": "apiKeys", "attributes": {"isActive": false}}}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let other_issuer = IssuerId::generate();
    let (other_key, other_pem) = state
        .keys
        .bootstrap_admin_key(Some(other_issuer))
        .await
        .unwrap();
    let other = Signer::from_pem(&other_pem).unwrap();

    let concrete = |path: &str| {
        let id = if path.starts_with("/apiKeys") {
            target_key.as_str()
        } else if path.starts_with("/secretKeys") {
            secret_id.as_str()
        } else if path.starts_with("/userInvitations") {
            invitation_id.as_str()
        } else {
            user_id.as_str()
        };
        format!("/v1{}", path.replace("{key_id}", id).replace("{id}", id))
    };
    // A valid body for each route, so a refusal is about the caller, not the input.
    let body_for = |path: &str| -> Value {
        let kind = path.split('/').nth(1).unwrap_or("");
        let attrs = match path {
            "/apiKeys" | "/secretKeys" => json!({"name": "n", "roles": ["DEVELOPER"]}),
            "/apiKeys/{key_id}" | "/secretKeys/{id}" => json!({"isActive": false}),
            "/users/{id}" => json!({"roles": ["DEVELOPER"]}),
            "/userInvitations" => {
                json!({"email": "n@example.com", "firstName": "N", "lastName": "U", "roles": ["DEVELOPER"]})
            }
            _ => json!({}),
        };
        json!({"data": {"type": kind, "attributes": attrs}})
    };

    let listed_routes = management_routes();
    assert!(listed_routes.len() >= 13, "{listed_routes:?}");
    let mut checked = 0;
    for r in &listed_routes {
        let uri = concrete(r.path);
        let public = r.path == "/leaks";
        let has_id = r.path.contains('{');
        for method in ["GET", "POST", "PATCH", "DELETE", "PUT"] {
            let listed = r.methods.contains(&method);
            let request = |auth: Option<(&str, String)>| {
                let mut b = Request::builder().method(method).uri(&uri);
                if let Some((name, value)) = auth {
                    b = b.header(name, value);
                }
                b.header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(body_for(r.path).to_string()))
                    .unwrap()
            };
            if !listed {
                let (s, doc) = send(&router, request(None)).await;
                assert_eq!(
                    s,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {uri} is not listed: {doc}"
                );
                continue;
            }
            // (credential, expected status, expected reason)
            let expired = token(&admin, admin_key.id.as_str(), &iss, clock.now() - 3600);
            let revoked = token(&revoked_signer, &key_id, &iss, clock.now() + 600);
            let cases: Vec<Case<'_>> = vec![
                (
                    "no credential",
                    None,
                    401,
                    if public {
                        "BAD_SIGNATURE"
                    } else {
                        "TOKEN_MISSING"
                    },
                ),
                (
                    "expired token",
                    Some(("authorization", format!("Bearer {expired}"))),
                    401,
                    if public {
                        "BAD_SIGNATURE"
                    } else {
                        "TOKEN_EXPIRED"
                    },
                ),
                (
                    "revoked key",
                    Some(("authorization", format!("Bearer {revoked}"))),
                    401,
                    if public {
                        "BAD_SIGNATURE"
                    } else {
                        "KEY_REVOKED"
                    },
                ),
                (
                    "unknown session",
                    Some((
                        "cookie",
                        "keygate_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
                    )),
                    401,
                    if public {
                        "BAD_SIGNATURE"
                    } else {
                        "SESSION_EXPIRED"
                    },
                ),
                (
                    "a secret key",
                    Some(("x-api-key", "kgsk_x".into())),
                    401,
                    if public {
                        "BAD_SIGNATURE"
                    } else {
                        "UNKNOWN_SECRET_KEY"
                    },
                ),
            ];
            for (what, auth, status, why) in cases {
                let (s, doc) = send(&router, request(auth)).await;
                assert_eq!(
                    (s.as_u16(), reason(&doc).as_str()),
                    (status, why),
                    "{what}: {method} {uri}: {doc}"
                );
                checked += 1;
            }
            if public {
                continue;
            }
            // A session without its CSRF token changes nothing.
            if method != "GET" {
                let (s, doc) =
                    send(&router, request(Some(("cookie", session_cookie.clone())))).await;
                assert_eq!(
                    (s.as_u16(), reason(&doc).as_str()),
                    (403, "CSRF_TOKEN_INVALID"),
                    "{method} {uri}"
                );
                let mut wrong = request(Some(("cookie", session_cookie.clone())));
                wrong
                    .headers_mut()
                    .insert("x-csrf-token", "x".parse().unwrap());
                let (s, _) = send(&router, wrong).await;
                assert_eq!(
                    s,
                    StatusCode::FORBIDDEN,
                    "{method} {uri} with a wrong CSRF token"
                );
                checked += 2;
            }
            // Another issuer's admin reaches none of this issuer's objects.
            let stranger = token(
                &other,
                other_key.id.as_str(),
                &other_issuer.to_string(),
                clock.now() + 600,
            );
            let (s, doc) = send(
                &router,
                request(Some(("authorization", format!("Bearer {stranger}")))),
            )
            .await;
            if has_id {
                assert_eq!(
                    s,
                    StatusCode::NOT_FOUND,
                    "another issuer: {method} {uri}: {doc}"
                );
            } else {
                let text = doc.to_string();
                for ours in [&target_key, &secret_id, &invitation_id, &user_id, &iss] {
                    assert!(
                        !text.contains(ours.as_str()),
                        "another issuer sees {ours}: {method} {uri}"
                    );
                }
            }
            checked += 1;
        }
    }
    // The session is still good: only the refusals above were refused.
    let ok = Request::get("/v1/issuer")
        .header("cookie", &session_cookie)
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&router, ok).await.0, StatusCode::OK);
    assert!(checked > 100, "{checked}");
}

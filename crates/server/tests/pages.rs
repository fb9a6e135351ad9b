//! The web UI, page by page: every route of `ui::page_routes()` (the list its router is built
//! from, so a new page cannot be missed), every method it answers. A page that needs a session
//! sends callers without one, or with an ended one, to sign-in; every form post is refused
//! without its CSRF token, or with another one, and changes nothing; methods a page does not
//! answer get 405.

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
use keygate_core::clock::ManualClock;
use keygate_core::crypto::MasterKey;
use keygate_core::ids::Actor;
use keygate_core::key::{Algorithm, KeyType};
use keygate_core::people::csrf_token;
use keygate_core::role::RoleSet;
use keygate_core::secret::Password;
use keygate_core::service::NewKey;
use keygate_core::user::Person;
use keygate_server::app;
use keygate_server::config::{self, Overrides};
use keygate_server::serve::build;
use keygate_server::ui::page_routes;
use tower::ServiceExt as _;

const NOW: i64 = 1_795_687_200;

async fn send(router: &Router, req: Request<Body>) -> (StatusCode, Option<String>, String) {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let location = resp
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        location,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn every_page_checks_its_session_and_every_form_its_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = Overrides {
        database: Some(format!("sqlite://{}/keygate.db", dir.path().display())),
        ..Overrides::default()
    };
    let cfg = config::load(None, &|_| None, &overrides).unwrap();
    let state = build(
        &cfg,
        MasterKey::generate().unwrap(),
        Arc::new(ManualClock::new(NOW)),
    )
    .await
    .unwrap();
    let router = app(state.clone());
    let (issuer, _) = state.keys.ensure_issuer().await.unwrap();
    let link = state.users.setup_link(issuer.id).await.unwrap().unwrap();
    let holder = state
        .users
        .create_account_holder(
            link.expose(),
            Person::validate("holder@example.com", "Ada", "Holder").unwrap(),
            Password::new("correct horse battery staple".into()),
            None,
        )
        .await
        .unwrap();
    let cookie = holder.id.expose().to_owned();
    let csrf = csrf_token(&holder.id);
    let me = Principal {
        issuer_id: issuer.id,
        actor: Actor::User(holder.user.id),
        roles: RoleSet::from_stored("ACCOUNT_HOLDER").unwrap(),
        user_id: Some(holder.user.id),
        source_ip: None,
    };
    let admin = me.admin().unwrap();

    // Real objects behind the {id} routes, so a refusal is not just "not found".
    let key = state
        .keys
        .create_key(
            &me,
            NewKey {
                name: "k".into(),
                roles: vec!["DEVELOPER".to_owned()],
                key_type: KeyType::Team,
                algorithm: Algorithm::Es256,
                public_key: None,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    let (invitation, invite_link) = state
        .users
        .invite(
            &admin,
            Person::validate("dev@example.com", "Dev", "Eloper").unwrap(),
            &["DEVELOPER".to_owned()],
        )
        .await
        .unwrap();
    let (member, _) = state
        .users
        .invite(
            &admin,
            Person::validate("fin@example.com", "Fin", "Ance").unwrap(),
            &["FINANCE".to_owned()],
        )
        .await
        .unwrap();
    let _ = member;
    let other = state
        .users
        .accept_invitation(
            state
                .users
                .invite(
                    &admin,
                    Person::validate("ops@example.com", "Op", "S").unwrap(),
                    &["SALES".to_owned()],
                )
                .await
                .unwrap()
                .1
                .expose(),
            Password::new("another long password".into()),
            None,
        )
        .await
        .unwrap();
    let (secret, _) = state
        .secrets
        .create(
            &admin,
            keygate_core::secret_key::NewSecretKey {
                name: "s".into(),
                roles: vec!["DEVELOPER".to_owned()],
                restrictions: keygate_core::secret_key::Restrictions::default(),
                expires_at: None,
            },
        )
        .await
        .unwrap();
    let fill = |path: &str| {
        let id = if path.starts_with("/access/keys/") {
            key.id.to_string()
        } else if path.starts_with("/access/people/") {
            other.user.id.to_string()
        } else if path.starts_with("/access/invitations/") {
            invitation.id.to_string()
        } else {
            secret.id.to_string()
        };
        path.replace("{id}", &id)
            .replace("{link}", invite_link.expose())
    };

    let pages = page_routes();
    assert!(pages.len() >= 20, "{pages:?}");
    let mut checked = 0;
    let mut wrong = Vec::new();
    for route in &pages {
        let uri = fill(route.path);
        let request = |method: &str, cookie: Option<&str>, body: String| {
            let mut b = Request::builder()
                .method(method)
                .uri(&uri)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            if let Some(c) = cookie {
                b = b.header(header::COOKIE, format!("keygate_session={c}"));
            }
            b.body(Body::from(body)).unwrap()
        };
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let listed = route.methods.contains(&method);
            if !listed {
                let (status, _, _) =
                    send(&router, request(method, Some(&cookie), String::new())).await;
                if status != StatusCode::METHOD_NOT_ALLOWED {
                    wrong.push(format!(
                        "{method} {}: unlisted method answered {status}",
                        route.path
                    ));
                }
                checked += 1;
                continue;
            }
            let form = format!("csrf_token={csrf}&name=x&access=DEVELOPER&roles=ADMIN&reason=r");
            if route.session {
                for (what, c) in [
                    ("no session", None),
                    (
                        "an ended session",
                        Some("bm90LWEtc2Vzc2lvbi1hdC1hbGwtYXQtYWxsLWF0LWFsbA"),
                    ),
                ] {
                    let (status, location, _) =
                        send(&router, request(method, c, form.clone())).await;
                    let to_sign_in = location
                        .as_deref()
                        .is_some_and(|l| l.starts_with("/signin"));
                    if status != StatusCode::SEE_OTHER || !to_sign_in {
                        wrong.push(format!(
                            "{method} {} with {what}: {status} {location:?}",
                            route.path
                        ));
                    }
                    checked += 1;
                }
            }
            if method == "POST" {
                // The session's cookie (a public form's pre-session cookie is absent) without
                // the token, then with another session's token.
                let other_token = csrf_token(&other.id);
                for (what, body) in [
                    (
                        "no CSRF token",
                        "name=x&access=DEVELOPER&roles=ADMIN".to_owned(),
                    ),
                    (
                        "another session's CSRF token",
                        format!("csrf_token={other_token}&name=x&access=DEVELOPER&roles=ADMIN"),
                    ),
                ] {
                    let (status, _, page) =
                        send(&router, request(method, Some(&cookie), body)).await;
                    if status != StatusCode::FORBIDDEN || !page.contains("Form expired") {
                        wrong.push(format!("POST {} with {what}: {status}", route.path));
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(checked >= 80, "{checked}");

    // Nothing was changed by the refused posts.
    let scope = me.key_scope().unwrap();
    let now = state.keys.now();
    let still = state.keys.get_key(&scope, key.id.as_str()).await.unwrap();
    assert!(!still.is_revoked() && still.can_download(now, state.keys.limits().download_window));
    let user = state
        .users
        .get_user(&me, &other.user.id.to_string())
        .await
        .unwrap();
    assert_eq!(user.roles.joined(), "SALES");
    assert_eq!(state.users.list_invitations(&admin).await.unwrap().len(), 2);
    assert!(
        !state
            .secrets
            .get(&admin, secret.id.as_str())
            .await
            .unwrap()
            .is_revoked()
    );
    assert!(
        state.users.session(&cookie).await.unwrap().is_some(),
        "not signed out"
    );
}

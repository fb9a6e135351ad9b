//! Users, sessions and management permissions through the router (`app(state).oneshot()`), on
//! a real `SQLite` file with a manual clock: the permission matrix (every management route ×
//! every role × team key, individual key and web session), session security (CSRF, cookie
//! flags, idle timeout, sign-in throttling), individual-key tokens, and the Account Holder rules.

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
use axum::http::{HeaderMap, Request, StatusCode, header};
use keygate_core::authz::Principal;
use keygate_core::clock::ManualClock;
use keygate_core::crypto::{MasterKey, PrivateKeyPem};
use keygate_core::ids::Actor;
use keygate_core::people::{SignIn, csrf_token};
use keygate_core::role::RoleSet;
use keygate_core::secret::{BearerSecret, Password};
use keygate_core::token::{Signer, sign_jwt};
use keygate_core::user::Person;
use keygate_server::config::{self, Overrides};
use keygate_server::serve::build;
use keygate_server::{AppState, app};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const NOW: i64 = 1_795_687_200;
const PASSWORD: &str = "a long enough password";

struct Harness {
    _dir: tempfile::TempDir,
    router: Router,
    state: AppState,
    clock: Arc<ManualClock>,
    issuer: String,
    admin: (String, Arc<Signer>),
}

/// A way to call the management API.
#[derive(Clone)]
enum Cred {
    /// A team key's token.
    Team(String, Arc<Signer>),
    /// An individual key's token (`sub: "user"`, no `iss`).
    Individual(String, Arc<Signer>),
    /// A web session cookie and its CSRF token.
    Session(String, String),
}

impl Harness {
    async fn new() -> Self {
        Self::with(|_| {}).await
    }

    async fn with(edit: impl FnOnce(&mut keygate_server::Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let overrides = Overrides {
            database: Some(format!("sqlite://{}/keygate.db", dir.path().display())),
            ..Overrides::default()
        };
        let mut cfg = config::load(None, &|_| None, &overrides).unwrap();
        edit(&mut cfg);
        let clock = Arc::new(ManualClock::new(NOW));
        let state = build(&cfg, MasterKey::generate().unwrap(), clock.clone())
            .await
            .unwrap();
        let (issuer, _) = state.keys.ensure_issuer().await.unwrap();
        let (key, pem) = state.keys.bootstrap_admin_key(None).await.unwrap();
        Self {
            _dir: dir,
            router: app(state.clone()),
            state,
            clock,
            issuer: issuer.id.to_string(),
            admin: (
                key.id.to_string(),
                Arc::new(Signer::from_pem(&pem).unwrap()),
            ),
        }
    }

    fn admin_cred(&self) -> Cred {
        Cred::Team(self.admin.0.clone(), Arc::clone(&self.admin.1))
    }

    fn token(&self, cred: &Cred) -> Option<String> {
        let now = keygate_core::clock::Clock::now(self.clock.as_ref());
        match cred {
            Cred::Team(kid, s) => Some(
                sign_jwt(
                    s,
                    kid,
                    &json!({"iss": self.issuer, "aud": "keygate-v1", "exp": now + 600}),
                )
                .unwrap(),
            ),
            Cred::Individual(kid, s) => Some(
                sign_jwt(
                    s,
                    kid,
                    &json!({"sub": "user", "aud": "keygate-v1", "exp": now + 600}),
                )
                .unwrap(),
            ),
            Cred::Session(..) => None,
        }
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        (status, headers, body)
    }

    /// Calls the API as `cred`; sessions send their CSRF token unless `csrf` is false.
    async fn call_with(
        &self,
        cred: &Cred,
        method: &str,
        uri: &str,
        body: Option<Value>,
        csrf: bool,
    ) -> (StatusCode, Value) {
        let mut b = Request::builder().method(method).uri(uri);
        match cred {
            Cred::Session(cookie, token) => {
                b = b.header(header::COOKIE, format!("keygate_session={cookie}"));
                if csrf {
                    b = b.header("x-csrf-token", token);
                }
            }
            other => {
                b = b.header(
                    header::AUTHORIZATION,
                    format!("Bearer {}", self.token(other).unwrap()),
                );
            }
        }
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let (status, _, bytes) = self.send(req).await;
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, json)
    }

    async fn call(
        &self,
        cred: &Cred,
        method: &str,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_with(cred, method, uri, body, true).await
    }

    fn system_admin(&self) -> Principal {
        Principal {
            issuer_id: self.issuer.parse().unwrap(),
            actor: Actor::System("test"),
            roles: RoleSet::from_stored("ADMIN").unwrap(),
            user_id: None,
            source_ip: None,
        }
    }

    /// A new user with `role` (through an invitation), signed in: (user ID, session).
    async fn user(&self, email: &str, role: &str) -> (String, Cred) {
        let admin = self.system_admin();
        let (_, link) = self
            .state
            .users
            .invite(
                &admin.admin().unwrap(),
                Person::validate(email, "Test", "User").unwrap(),
                &[role.to_owned()],
            )
            .await
            .unwrap();
        let session = self
            .state
            .users
            .accept_invitation(link.expose(), Password::new(PASSWORD.into()), None)
            .await
            .unwrap();
        let cred = Cred::Session(session.id.expose().to_owned(), csrf_token(&session.id));
        (session.user.id.to_string(), cred)
    }

    /// The issuer's Account Holder, through the setup link: (user ID, session).
    async fn account_holder(&self) -> (String, Cred) {
        let link = self
            .state
            .users
            .setup_link(self.issuer.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        let session = self
            .state
            .users
            .create_account_holder(
                link.expose(),
                Person::validate("holder@example.com", "Ada", "Holder").unwrap(),
                Password::new(PASSWORD.into()),
                None,
            )
            .await
            .unwrap();
        (
            session.user.id.to_string(),
            Cred::Session(session.id.expose().to_owned(), csrf_token(&session.id)),
        )
    }

    /// The user of `session` makes their individual key and downloads it.
    async fn individual_key(&self, session: &Cred) -> Cred {
        let (s, doc) = self
            .call(
                session,
                "POST",
                "/v1/apiKeys",
                Some(json!({"data": {"type": "apiKeys", "attributes": {"name": "mine", "keyType": "INDIVIDUAL"}}})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{doc}");
        let id = doc["data"]["id"].as_str().unwrap().to_owned();
        assert_eq!(doc["data"]["attributes"]["keyType"], "INDIVIDUAL");
        let Cred::Session(cookie, csrf) = session else {
            unreachable!()
        };
        let (s, _, pem) = self
            .send(
                Request::get(format!("/v1/apiKeys/{id}/privateKey"))
                    .header(header::COOKIE, format!("keygate_session={cookie}"))
                    .header("x-csrf-token", csrf)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let signer =
            Signer::from_pem(&PrivateKeyPem::from_pem(String::from_utf8(pem).unwrap())).unwrap();
        Cred::Individual(id, Arc::new(signer))
    }

    /// A new team key with `role`, not yet downloaded: its ID.
    async fn pending_team_key(&self, role: &str) -> String {
        let (s, doc) = self
            .call(
                &self.admin_cred(),
                "POST",
                "/v1/apiKeys",
                Some(json!({"data": {"type": "apiKeys", "attributes": {"name": "k", "roles": [role]}}})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{doc}");
        doc["data"]["id"].as_str().unwrap().to_owned()
    }

    /// A new team key with `role`, downloaded: its credential.
    async fn team_key(&self, role: &str) -> (String, Cred) {
        let admin = self.admin_cred();
        let id = self.pending_team_key(role).await;
        let (s, _, pem) = self
            .send(
                Request::get(format!("/v1/apiKeys/{id}/privateKey"))
                    .header(
                        header::AUTHORIZATION,
                        format!("Bearer {}", self.token(&admin).unwrap()),
                    )
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let signer =
            Signer::from_pem(&PrivateKeyPem::from_pem(String::from_utf8(pem).unwrap())).unwrap();
        (id.clone(), Cred::Team(id, Arc::new(signer)))
    }
}

fn reason(doc: &Value) -> &str {
    doc["errors"][0]["meta"]["reason"]
        .as_str()
        .or(doc["errors"][0]["code"].as_str())
        .unwrap_or("")
}

/// Who is calling, for the matrix's expectations.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    TeamKey,
    IndividualKey,
    Session,
}

/// What a route answers: an admin, a person without ADMIN, a team key without ADMIN.
#[derive(Debug, Clone, Copy)]
struct Expect {
    admin: u16,
    person: u16,
    team: u16,
}

const ADMIN_ONLY_READ: Expect = Expect {
    admin: 200,
    person: 403,
    team: 403,
};

const ADMIN_ONLY_CREATE: Expect = Expect {
    admin: 201,
    person: 403,
    team: 403,
};

/// Every management route against every role, for team keys, individual keys and sessions.
#[tokio::test]
async fn permission_matrix_every_route_every_role_every_credential() {
    let h = Harness::new().await;
    let (holder_id, holder_session) = h.account_holder().await;
    let holder_key = h.individual_key(&holder_session).await;
    let (other_user, _) = h.user("other@example.com", "DEVELOPER").await;
    let roles = [
        "ACCOUNT_HOLDER",
        "ADMIN",
        "APP_MANAGER",
        "DEVELOPER",
        "FINANCE",
        "SALES",
        "MARKETING",
        "CUSTOMER_SUPPORT",
    ];
    // (role, kind, credential, own user ID)
    let mut callers: Vec<(&str, Kind, Cred, Option<String>)> = vec![
        (
            "ACCOUNT_HOLDER",
            Kind::Session,
            holder_session.clone(),
            Some(holder_id.clone()),
        ),
        (
            "ACCOUNT_HOLDER",
            Kind::IndividualKey,
            holder_key,
            Some(holder_id),
        ),
    ];
    for (i, role) in roles.iter().enumerate().skip(1) {
        let (_, team) = h.team_key(role).await;
        callers.push((role, Kind::TeamKey, team, None));
        let (sid, session) = h.user(&format!("s{i}@example.com"), role).await;
        callers.push((role, Kind::Session, session, Some(sid)));
        let (kid_user, with_key) = h.user(&format!("k{i}@example.com"), role).await;
        let key = h.individual_key(&with_key).await;
        callers.push((role, Kind::IndividualKey, key, Some(kid_user)));
    }

    let mut checked = 0;
    for (role, kind, cred, own) in &callers {
        let admin = *role == "ACCOUNT_HOLDER" || *role == "ADMIN";
        // Fresh objects for the routes that use one up or change it.
        let team_target = h.pending_team_key("DEVELOPER").await;
        let (victim, _) = h
            .user(&format!("victim-{checked}@example.com"), "SALES")
            .await;
        let (_, inv) = h
            .call(
                &h.admin_cred(),
                "POST",
                "/v1/userInvitations",
                Some(json!({"data": {"type": "userInvitations", "attributes": {"email": format!("inv-{checked}@example.com"), "firstName": "I", "lastName": "V", "roles": ["DEVELOPER"]}}})),
            )
            .await;
        let invitation = inv["data"]["id"].as_str().unwrap().to_owned();
        let (_, sk) = h
            .call(
                &h.admin_cred(),
                "POST",
                "/v1/secretKeys",
                Some(json!({"data": {"type": "secretKeys", "attributes": {"name": "s", "roles": ["DEVELOPER"]}}})),
            )
            .await;
        let secret_key = sk["data"]["id"].as_str().unwrap().to_owned();
        let new_secret_key = json!({"data": {"type": "secretKeys", "attributes": {"name": "n", "roles": ["DEVELOPER"]}}});
        let revoke_secret =
            json!({"data": {"type": "secretKeys", "attributes": {"isActive": false}}});
        let new_team_key = json!({"data": {"type": "apiKeys", "attributes": {"name": "n", "roles": ["DEVELOPER"]}}});
        let new_individual_key = json!({"data": {"type": "apiKeys", "attributes": {"name": "n", "keyType": "INDIVIDUAL"}}});
        let invite = json!({"data": {"type": "userInvitations", "attributes": {"email": format!("new-{checked}@example.com"), "firstName": "N", "lastName": "U", "roles": ["DEVELOPER"]}}});
        let roles_change = json!({"data": {"type": "users", "attributes": {"roles": ["FINANCE"]}}});
        let revoke = json!({"data": {"type": "apiKeys", "attributes": {"isActive": false}}});
        // A person without a key yet may make one; one who holds one gets 409 (the individual
        // key callers, and the Account Holder, whose session and key are one person's).
        let individual_create = match kind {
            Kind::TeamKey => 403,
            Kind::Session if *role != "ACCOUNT_HOLDER" => 201,
            Kind::Session | Kind::IndividualKey => 409,
        };
        let table: Vec<(&str, String, Option<Value>, Expect)> = vec![
            (
                "GET",
                "/v1/issuer".into(),
                None,
                Expect {
                    admin: 200,
                    person: 200,
                    team: 200,
                },
            ),
            (
                "GET",
                "/v1/apiKeys".into(),
                None,
                Expect {
                    admin: 200,
                    person: 200,
                    team: 403,
                },
            ),
            (
                "POST",
                "/v1/apiKeys".into(),
                Some(new_team_key),
                Expect {
                    admin: 201,
                    person: 403,
                    team: 403,
                },
            ),
            (
                "POST",
                "/v1/apiKeys".into(),
                Some(new_individual_key),
                Expect {
                    admin: individual_create,
                    person: individual_create,
                    team: 403,
                },
            ),
            (
                "GET",
                format!("/v1/apiKeys/{team_target}"),
                None,
                Expect {
                    admin: 200,
                    person: 404,
                    team: 403,
                },
            ),
            (
                "GET",
                format!("/v1/apiKeys/{team_target}/privateKey"),
                None,
                Expect {
                    admin: 200,
                    person: 404,
                    team: 403,
                },
            ),
            (
                "PATCH",
                format!("/v1/apiKeys/{team_target}"),
                Some(revoke),
                Expect {
                    admin: 200,
                    person: 404,
                    team: 403,
                },
            ),
            ("GET", "/v1/auditEvents".into(), None, ADMIN_ONLY_READ),
            ("GET", "/v1/users".into(), None, ADMIN_ONLY_READ),
            (
                "GET",
                format!("/v1/users/{other_user}"),
                None,
                ADMIN_ONLY_READ,
            ),
            (
                "PATCH",
                format!("/v1/users/{other_user}"),
                Some(roles_change),
                ADMIN_ONLY_READ,
            ),
            (
                "DELETE",
                format!("/v1/users/{victim}"),
                None,
                Expect {
                    admin: 204,
                    person: 403,
                    team: 403,
                },
            ),
            ("GET", "/v1/userInvitations".into(), None, ADMIN_ONLY_READ),
            (
                "POST",
                "/v1/userInvitations".into(),
                Some(invite),
                Expect {
                    admin: 201,
                    person: 403,
                    team: 403,
                },
            ),
            (
                "DELETE",
                format!("/v1/userInvitations/{invitation}"),
                None,
                Expect {
                    admin: 204,
                    person: 403,
                    team: 403,
                },
            ),
            ("GET", "/v1/secretKeys".into(), None, ADMIN_ONLY_READ),
            (
                "POST",
                "/v1/secretKeys".into(),
                Some(new_secret_key),
                ADMIN_ONLY_CREATE,
            ),
            (
                "GET",
                format!("/v1/secretKeys/{secret_key}"),
                None,
                ADMIN_ONLY_READ,
            ),
            (
                "POST",
                format!("/v1/secretKeys/{secret_key}/roll"),
                None,
                ADMIN_ONLY_CREATE,
            ),
            (
                "PATCH",
                format!("/v1/secretKeys/{secret_key}"),
                Some(revoke_secret),
                ADMIN_ONLY_READ,
            ),
        ];
        for (method, uri, body, expect) in table {
            let want = match (admin, kind) {
                (true, _) => expect.admin,
                (false, Kind::TeamKey) => expect.team,
                (false, _) => expect.person,
            };
            let (got, doc) = h.call(cred, method, &uri, body).await;
            assert_eq!(got.as_u16(), want, "{role} {kind:?}: {method} {uri}: {doc}");
            if want == 403 {
                assert_eq!(
                    reason(&doc),
                    "ROLE_NOT_ALLOWED",
                    "{role} {kind:?} {method} {uri}"
                );
            }
            checked += 1;
        }
        // Every person reads their own user.
        if let Some(own) = own {
            let (got, doc) = h.call(cred, "GET", &format!("/v1/users/{own}"), None).await;
            assert_eq!(got, StatusCode::OK, "{role} {kind:?} reads itself: {doc}");
            assert_eq!(doc["data"]["id"], json!(own));
        }
        // A person without ADMIN lists only their own individual keys.
        if *kind == Kind::Session && !admin {
            let (_, list) = h.call(cred, "GET", "/v1/apiKeys", None).await;
            for k in list["data"].as_array().unwrap() {
                assert_eq!(
                    k["attributes"]["keyType"], "INDIVIDUAL",
                    "a person sees only their own keys"
                );
                assert_eq!(k["attributes"]["userId"], json!(own.clone().unwrap()));
            }
        }
    }
    assert!(checked >= 20 * 23, "{checked} checks");
}

/// Sessions: cookie flags, CSRF on API calls and forms, idle timeout, sign-out, throttling.
#[tokio::test]
async fn sessions_are_cookie_bound_csrf_checked_idle_limited_and_throttled() {
    let h = Harness::new().await;
    let (_, holder) = h.account_holder().await;

    // Sign-in through the form: the pre-session cookie and its token, then the session cookie.
    let (status, headers, _) = h
        .send(Request::get("/signin").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    for (name, value) in [
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(headers[name], value, "{name}");
    }
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let form_cookie = set_cookie(&headers, "keygate_form").unwrap();
    let form_token = form_cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("keygate_form=")
        .to_owned();
    let sign_in = |password: &str, token: &str, forwarded_https: bool| {
        let mut b = Request::post("/signin")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, format!("keygate_form={form_token}"));
        if forwarded_https {
            b = b.header("x-forwarded-proto", "https");
        }
        b.body(Body::from(format!(
            "csrf_token={token}&email=holder%40example.com&password={}",
            password.replace(' ', "+")
        )))
        .unwrap()
    };
    let (status, headers, _) = h.send(sign_in(PASSWORD, &form_token, false)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = set_cookie(&headers, "keygate_session").unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let (_, headers, _) = h.send(sign_in(PASSWORD, &form_token, true)).await;
    assert!(
        set_cookie(&headers, "keygate_session")
            .unwrap()
            .contains("; Secure"),
        "behind TLS"
    );
    // A form without its token is refused and signs no one in.
    let (status, headers, body) = h.send(sign_in(PASSWORD, "", false)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(set_cookie(&headers, "keygate_session").is_none());
    assert!(String::from_utf8_lossy(&body).contains("Form expired"));

    // API calls with the cookie: reads need no CSRF token, writes do.
    let (status, _) = h.call_with(&holder, "GET", "/v1/users", None, false).await;
    assert_eq!(status, StatusCode::OK);
    let invite = json!({"data": {"type": "userInvitations", "attributes": {"email": "x@example.com", "firstName": "X", "lastName": "Y", "roles": ["DEVELOPER"]}}});
    let (status, doc) = h
        .call_with(
            &holder,
            "POST",
            "/v1/userInvitations",
            Some(invite.clone()),
            false,
        )
        .await;
    assert_eq!(
        (status, reason(&doc)),
        (StatusCode::FORBIDDEN, "CSRF_TOKEN_INVALID")
    );
    let Cred::Session(cookie_value, _) = &holder else {
        unreachable!()
    };
    let wrong = Cred::Session(cookie_value.clone(), "not-the-token".into());
    let (status, doc) = h
        .call(&wrong, "POST", "/v1/userInvitations", Some(invite.clone()))
        .await;
    assert_eq!(
        (status, reason(&doc)),
        (StatusCode::FORBIDDEN, "CSRF_TOKEN_INVALID")
    );
    let (status, _, _) = h
        .send(
            Request::get(format!("/v1/apiKeys/{}/privateKey", h.admin.0))
                .header(header::COOKIE, format!("keygate_session={cookie_value}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the one-time download spends something: it needs the token"
    );
    let (status, doc) = h
        .call(&holder, "POST", "/v1/userInvitations", Some(invite))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{doc}");
    // A web form without the session's CSRF token.
    let (status, _, body) = h
        .send(
            Request::post("/access/integrations/generate")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::COOKIE, format!("keygate_session={cookie_value}"))
                .body(Body::from("name=x&access=DEVELOPER"))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("Form expired"));

    // The page's Download API Key is a form post with the token in its body, never in a URL:
    // without the token nothing is spent, a GET is not a way in, and with it the file comes.
    let pending = h.pending_team_key("DEVELOPER").await;
    let Cred::Session(_, csrf) = &holder else {
        unreachable!()
    };
    let download = |method: &str, body: String| {
        Request::builder()
            .method(method)
            .uri(format!("/access/keys/{pending}/download"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, format!("keygate_session={cookie_value}"))
            .body(Body::from(body))
            .unwrap()
    };
    let (status, _, body) = h.send(download("POST", String::new())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("Form expired"));
    let (status, _, _) = h
        .send(download("GET", String::new()).map(|_| Body::empty()))
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, headers, body) = h.send(download("POST", format!("csrf_token={csrf}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .contains(&format!("AuthKey_{pending}.p8"))
    );
    assert!(String::from_utf8_lossy(&body).starts_with("-----BEGIN "));
    let (status, _, _) = h.send(download("POST", format!("csrf_token={csrf}"))).await;
    assert_eq!(status, StatusCode::GONE, "once only");
    let (_, _, page) = h
        .send(
            Request::get("/access/integrations")
                .header(header::COOKIE, format!("keygate_session={cookie_value}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let page = String::from_utf8_lossy(&page);
    assert!(
        !page.contains("csrf_token="),
        "no token in any URL of the page"
    );

    // Idle timeout: 30 minutes without use ends the session.
    h.clock.advance(29 * 60);
    assert_eq!(
        h.call(&holder, "GET", "/v1/issuer", None).await.0,
        StatusCode::OK
    );
    h.clock.advance(29 * 60);
    assert_eq!(
        h.call(&holder, "GET", "/v1/issuer", None).await.0,
        StatusCode::OK,
        "use keeps it alive"
    );
    h.clock.advance(31 * 60);
    let (status, doc) = h.call(&holder, "GET", "/v1/issuer", None).await;
    assert_eq!(
        (status, reason(&doc)),
        (StatusCode::UNAUTHORIZED, "SESSION_EXPIRED")
    );
    let (status, headers, _) = h
        .send(
            Request::get("/access/integrations")
                .header(header::COOKIE, format!("keygate_session={cookie_value}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/signin?expired=1");

    // However much it is used, a session ends 12 hours after sign-in.
    let long = match h
        .state
        .users
        .sign_in("holder@example.com", Password::new(PASSWORD.into()), None)
        .await
        .unwrap()
    {
        SignIn::Accepted(s) => s,
        other => panic!("{other:?}"),
    };
    let long = Cred::Session(long.id.expose().to_owned(), csrf_token(&long.id));
    for _ in 0..24 {
        assert_eq!(
            h.call(&long, "GET", "/v1/issuer", None).await.0,
            StatusCode::OK
        );
        h.clock.advance(29 * 60);
    }
    h.clock.advance(30 * 60);
    let (status, doc) = h.call(&long, "GET", "/v1/issuer", None).await;
    assert_eq!(
        (status, reason(&doc)),
        (StatusCode::UNAUTHORIZED, "SESSION_EXPIRED")
    );

    // Sign-out ends a session at once.
    let session = match h
        .state
        .users
        .sign_in("holder@example.com", Password::new(PASSWORD.into()), None)
        .await
        .unwrap()
    {
        SignIn::Accepted(s) => s,
        other => panic!("{other:?}"),
    };
    let cred = Cred::Session(session.id.expose().to_owned(), csrf_token(&session.id));
    assert_eq!(
        h.call(&cred, "GET", "/v1/issuer", None).await.0,
        StatusCode::OK
    );
    let (status, _, _) = h
        .send(
            Request::post("/signout")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(
                    header::COOKIE,
                    format!("keygate_session={}", session.id.expose()),
                )
                .body(Body::from(format!(
                    "csrf_token={}",
                    csrf_token(&session.id)
                )))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        h.call(&cred, "GET", "/v1/issuer", None).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Throttling: five wrong passwords, then even the right one waits; the page says so.
    for _ in 0..5 {
        let (status, _, body) = h.send(sign_in("wrong password!", &form_token, false)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(String::from_utf8_lossy(&body).contains("The email or password is incorrect."));
    }
    let (status, headers, body) = h.send(sign_in(PASSWORD, &form_token, false)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert!(String::from_utf8_lossy(&body).contains("Too many failed sign-ins"));
    h.clock.advance(15 * 60 + 1);
    let (status, _, _) = h.send(sign_in(PASSWORD, &form_token, false)).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "the window passes");

    // Failed and successful sign-ins are audited with their actor and time.
    let (_, events) = h
        .call(&h.admin_cred(), "GET", "/v1/auditEvents?limit=200", None)
        .await;
    let actions: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["attributes"]["action"].as_str().unwrap())
        .collect();
    for a in [
        "session.signInFailed",
        "session.signedIn",
        "session.signedOut",
        "user.accountHolder.created",
        "userInvitation.created",
    ] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
}

fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")) && !v.starts_with(&format!("{name}=;")))
        .map(str::to_owned)
}

/// Individual keys: `sub: "user"` and no `iss`; the user's current roles; revoked with the user.
/// People's roles are checkboxes in the web UI: several roles are kept, invited with and
/// changed to, not cut to one.
#[tokio::test]
async fn the_people_pages_keep_several_roles() {
    let h = Harness::new().await;
    let (_, holder) = h.account_holder().await;
    let (user_id, _) = h.user("dev@example.com", "DEVELOPER").await;
    let Cred::Session(cookie, csrf) = &holder else {
        unreachable!()
    };
    let page = |uri: String| {
        Request::get(uri)
            .header(header::COOKIE, format!("keygate_session={cookie}"))
            .body(Body::empty())
            .unwrap()
    };
    let post = |uri: &str, body: String| {
        Request::post(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, format!("keygate_session={cookie}"))
            .body(Body::from(body))
            .unwrap()
    };
    let (status, _, body) = h
        .send(post(
            &format!("/access/people/{user_id}/roles"),
            format!("csrf_token={csrf}&roles=DEVELOPER&roles=FINANCE"),
        ))
        .await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (_, doc) = h
        .call(&holder, "GET", &format!("/v1/users/{user_id}"), None)
        .await;
    assert_eq!(
        doc["data"]["attributes"]["roles"],
        json!(["DEVELOPER", "FINANCE"]),
        "{doc}"
    );
    let (status, _, body) = h
        .send(page(format!("/access/people/{user_id}/roles")))
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = String::from_utf8(body).unwrap();
    for role in ["DEVELOPER", "FINANCE"] {
        assert!(
            body.contains(&format!(
                r#"id="roles-{role}" name="roles" value="{role}" checked"#
            )),
            "{role} checked: {body}"
        );
    }
    // No role at all is refused with a clear message; nothing changes.
    let (status, _, body) = h
        .send(post(
            &format!("/access/people/{user_id}/roles"),
            format!("csrf_token={csrf}"),
        ))
        .await;
    assert!(status.is_client_error(), "{status}");
    assert!(String::from_utf8_lossy(&body).contains("role"), "a message");
    let (_, doc) = h
        .call(&holder, "GET", &format!("/v1/users/{user_id}"), None)
        .await;
    assert_eq!(
        doc["data"]["attributes"]["roles"],
        json!(["DEVELOPER", "FINANCE"])
    );
    // Invited with two roles.
    let (status, _, body) = h
        .send(post(
            "/access/people/invite",
            format!(
                "csrf_token={csrf}&first_name=Ann&last_name=Lee&email=ann%40example.com&roles=APP_MANAGER&roles=SALES"
            ),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (_, doc) = h.call(&holder, "GET", "/v1/userInvitations", None).await;
    assert_eq!(
        doc["data"][0]["attributes"]["roles"],
        json!(["APP_MANAGER", "SALES"]),
        "{doc}"
    );
}

/// An admin manages everyone's keys but never takes another person's private key: whoever
/// holds it signs as that person, and the audit log would name them.
#[tokio::test]
async fn an_individual_keys_private_half_goes_to_its_owner_alone() {
    let h = Harness::new().await;
    let (_, holder) = h.account_holder().await;
    let (_, session) = h.user("dev@example.com", "DEVELOPER").await;
    let (s, doc) = h
        .call(
            &session,
            "POST",
            "/v1/apiKeys",
            Some(json!({"data": {"type": "apiKeys", "attributes": {"name": "mine", "keyType": "INDIVIDUAL"}}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{doc}");
    let id = doc["data"]["id"].as_str().unwrap().to_owned();
    let download = format!("/v1/apiKeys/{id}/privateKey");
    for admin in [h.admin_cred(), holder.clone()] {
        let (status, doc) = h.call(&admin, "GET", &download, None).await;
        assert_eq!(
            (status, reason(&doc)),
            (StatusCode::FORBIDDEN, "ROLE_NOT_ALLOWED"),
            "{doc}"
        );
        assert!(
            doc["errors"][0]["detail"]
                .as_str()
                .unwrap()
                .contains("owner")
        );
        let (_, doc) = h
            .call(&admin, "GET", &format!("/v1/apiKeys/{id}"), None)
            .await;
        assert_eq!(doc["data"]["attributes"]["canDownload"], false, "{doc}");
        assert!(doc["data"]["links"].get("privateKey").is_none(), "{doc}");
    }
    // The admin's Integrations page lists the key, with Revoke but no Download.
    let Cred::Session(cookie, _) = &holder else {
        unreachable!()
    };
    let (_, _, page) = h
        .send(
            Request::get("/access/integrations")
                .header(header::COOKIE, format!("keygate_session={cookie}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let page = String::from_utf8(page).unwrap();
    let row = page
        .split("<tr")
        .find(|r| r.contains(&format!("data-key-id=\"{id}\"")))
        .expect("the admin sees the individual key");
    assert!(
        row.contains("Revoke") && !row.contains("Download API Key"),
        "{row}"
    );
    assert!(row.contains("Test User"), "the owner by name: {row}");
    // Its owner still gets it, once.
    let Cred::Session(cookie, csrf) = &session else {
        unreachable!()
    };
    let (status, _, pem) = h
        .send(
            Request::get(&download)
                .header(header::COOKIE, format!("keygate_session={cookie}"))
                .header("x-csrf-token", csrf)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&pem).starts_with("-----BEGIN "));
}

/// Permission matrix: an admin revokes another person's individual key, through the API (with
/// a team key or as a signed-in admin) and through the web UI, the remedy for a compromised
/// one; the download stays owner-only. A revoked key is refused at once.
#[tokio::test]
async fn an_admin_revokes_another_persons_individual_key() {
    let h = Harness::new().await;
    let (_, holder) = h.account_holder().await;
    let (_, dev) = h.user("dev@example.com", "DEVELOPER").await;
    let (_, other) = h.user("other@example.com", "DEVELOPER").await;
    let revoke = json!({"data": {"type": "apiKeys", "attributes": {"isActive": false, "revokeReason": "compromised"}}});
    for admin in [h.admin_cred(), holder.clone()] {
        let key = h.individual_key(&dev).await;
        let Cred::Individual(kid, _) = &key else {
            unreachable!()
        };
        // Another non-admin person cannot see it, let alone revoke it.
        let (status, _) = h
            .call(
                &other,
                "PATCH",
                &format!("/v1/apiKeys/{kid}"),
                Some(revoke.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, doc) = h
            .call(
                &admin,
                "PATCH",
                &format!("/v1/apiKeys/{kid}"),
                Some(revoke.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{doc}");
        assert_eq!(doc["data"]["attributes"]["isActive"], false, "{doc}");
        assert_eq!(doc["data"]["attributes"]["revokeReason"], "compromised");
        let (status, doc) = h.call(&key, "GET", "/v1/apiKeys", None).await;
        assert_eq!(
            (status, reason(&doc)),
            (StatusCode::UNAUTHORIZED, "KEY_REVOKED")
        );
    }
    // The web UI's Revoke, as the Account Holder, on the developer's key.
    let key = h.individual_key(&dev).await;
    let Cred::Individual(kid, _) = &key else {
        unreachable!()
    };
    let Cred::Session(cookie, csrf) = &holder else {
        unreachable!()
    };
    let (status, headers, body) = h
        .send(
            Request::post(format!("/access/keys/{kid}/revoke"))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::COOKIE, format!("keygate_session={cookie}"))
                .body(Body::from(format!("csrf_token={csrf}&reason=lost+laptop")))
                .unwrap(),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        headers[header::LOCATION],
        format!("/access/integrations?revoked={kid}").as_str()
    );
    let (status, doc) = h.call(&key, "GET", "/v1/apiKeys", None).await;
    assert_eq!(
        (status, reason(&doc)),
        (StatusCode::UNAUTHORIZED, "KEY_REVOKED")
    );
}

/// Permission matrix: an invitation is an admin's act, and ends with whatever made it. A removed
/// or demoted admin's invitations are dead whether made in person or with their individual
/// key; a revoked key's invitations are dead. Nobody comes back through one.
#[tokio::test]
async fn invitations_end_with_the_person_or_the_key_that_made_them() {
    let h = Harness::new().await;
    let (_, holder) = h.account_holder().await;
    let invite = |email: &str| {
        Some(
            json!({"data": {"type": "userInvitations", "attributes": {"email": email, "firstName": "B", "lastName": "D", "roles": ["ADMIN"]}}}),
        )
    };
    // Creates an invitation with `cred`; returns its one-time accept link.
    let make = async |cred: &Cred, email: &str| -> String {
        let (status, doc) = h
            .call(cred, "POST", "/v1/userInvitations", invite(email))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{doc}");
        doc["links"]["accept"]
            .as_str()
            .unwrap()
            .trim_start_matches("/invitations/")
            .to_owned()
    };
    let pending = async || -> String {
        let (_, doc) = h.call(&holder, "GET", "/v1/userInvitations", None).await;
        doc.to_string()
    };
    let dead = async |link: &str| {
        assert!(
            h.state
                .users
                .accept_invitation(link, Password::new(PASSWORD.into()), None)
                .await
                .is_err(),
            "the link still works"
        );
    };

    // Removed: invitations made with the person's individual key and in person both end.
    let (rogue_id, rogue) = h.user("rogue@example.com", "ADMIN").await;
    let rogue_key = h.individual_key(&rogue).await;
    let by_key = make(&rogue_key, "by-key@example.com").await;
    let in_person = make(&rogue, "in-person@example.com").await;
    let (status, _) = h
        .call(&holder, "DELETE", &format!("/v1/users/{rogue_id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let left = pending().await;
    assert!(
        !left.contains("by-key@") && !left.contains("in-person@"),
        "{left}"
    );
    dead(&by_key).await;
    dead(&in_person).await;

    // Demoted: the same, once the person no longer holds ADMIN.
    let (demoted_id, demoted) = h.user("demoted@example.com", "ADMIN").await;
    let demoted_key = h.individual_key(&demoted).await;
    let by_key = make(&demoted_key, "demoted-key@example.com").await;
    let (status, doc) = h
        .call(
            &holder,
            "PATCH",
            &format!("/v1/users/{demoted_id}"),
            Some(json!({"data": {"type": "users", "id": demoted_id, "attributes": {"roles": ["DEVELOPER"]}}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert!(!pending().await.contains("demoted-key@"));
    dead(&by_key).await;

    // A team key's invitations end when the key is revoked.
    let (team_id, team) = h.team_key("ADMIN").await;
    let by_team = make(&team, "by-team@example.com").await;
    let kept = make(&holder, "kept@example.com").await;
    // The Invitations table says who made each one.
    let Cred::Session(cookie, _) = &holder else {
        unreachable!()
    };
    let (_, _, page) = h
        .send(
            Request::get("/access/people")
                .header(header::COOKIE, format!("keygate_session={cookie}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("Invited by"), "{page}");
    let row = |email: &str| {
        page.split("<tr")
            .find(|r| r.contains(email))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        row("by-team@").contains(&format!("API key {team_id}")),
        "{page}"
    );
    assert!(row("kept@").contains("Ada Holder"), "{page}");
    let (status, _) = h
        .call(
            &holder,
            "PATCH",
            &format!("/v1/apiKeys/{team_id}"),
            Some(json!({"data": {"type": "apiKeys", "id": team_id, "attributes": {"isActive": false}}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let left = pending().await;
    assert!(!left.contains("by-team@"), "{left}");
    assert!(left.contains("kept@"), "others' invitations stay: {left}");
    dead(&by_team).await;
    assert!(
        h.state
            .users
            .accept_invitation(&kept, Password::new(PASSWORD.into()), None)
            .await
            .is_ok()
    );
}

/// A page's notice names only a key that exists: the query string is the visitor's to write, so
/// a crafted link cannot make keygate's own page print a message of the attacker's choosing.
#[tokio::test]
async fn notices_name_only_keys_that_exist() {
    let h = Harness::new().await;
    let (_, holder) = h.account_holder().await;
    let Cred::Session(cookie, _) = &holder else {
        unreachable!()
    };
    let page = async |query: &str| -> String {
        let (status, _, page) = h
            .send(
                Request::get(format!("/access/integrations?{query}"))
                    .header(header::COOKIE, format!("keygate_session={cookie}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        String::from_utf8(page).unwrap()
    };
    for query in [
        "revoked_secret=ALL%20KEYS%20were%20leaked%2C%20call%20%2B1-555-0100",
        "revoked=ALL%20KEYS%20were%20leaked",
        "created=ALL%20KEYS%20were%20leaked",
    ] {
        let shown = page(query).await;
        assert!(!shown.contains("ALL KEYS"), "{query}: {shown}");
        assert!(!shown.contains("was revoked"), "{query}");
    }
    // A real revoked secret key is named by its name and ID; an active one is not "revoked".
    let (status, doc) = h
        .call(
            &h.admin_cred(),
            "POST",
            "/v1/secretKeys",
            Some(json!({"data": {"type": "secretKeys", "attributes": {"name": "Maps web", "roles": ["DEVELOPER"]}}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{doc}");
    let id = doc["data"]["id"].as_str().unwrap().to_owned();
    assert!(
        !page(&format!("revoked_secret={id}"))
            .await
            .contains("was revoked")
    );
    let (status, _) = h
        .call(
            &h.admin_cred(),
            "PATCH",
            &format!("/v1/secretKeys/{id}"),
            Some(json!({"data": {"type": "secretKeys", "attributes": {"isActive": false}}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let shown = page(&format!("revoked_secret={id}")).await;
    assert!(
        shown.contains("Maps web") && shown.contains("was revoked"),
        "{shown}"
    );
}

/// Passwords: the Account Holder (who can never be removed) changes a compromised password and
/// every other session ends; "Sign Out Everywhere" ends them all; an operator's one-time reset
/// link sets a new password without the old one, ends every session, and works once.
#[tokio::test]
async fn passwords_change_reset_and_end_other_sessions() {
    let h = Harness::new().await;
    let (_, holder) = h.account_holder().await;
    let sign_in = async |password: &str| -> Option<Cred> {
        match h
            .state
            .users
            .sign_in("holder@example.com", Password::new(password.into()), None)
            .await
            .unwrap()
        {
            keygate_core::people::SignIn::Accepted(s) => {
                Some(Cred::Session(s.id.expose().to_owned(), csrf_token(&s.id)))
            }
            _ => None,
        }
    };
    let alive =
        async |cred: &Cred| h.call(cred, "GET", "/v1/users", None).await.0 == StatusCode::OK;
    let post = async |cred: &Cred, path: &str, form: &str| -> (StatusCode, HeaderMap, String) {
        let Cred::Session(cookie, csrf) = cred else {
            unreachable!()
        };
        let (status, headers, body) = h
            .send(
                Request::post(path)
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(header::COOKIE, format!("keygate_session={cookie}"))
                    .body(Body::from(format!("csrf_token={csrf}&{form}")))
                    .unwrap(),
            )
            .await;
        (status, headers, String::from_utf8(body).unwrap())
    };
    let other = sign_in(PASSWORD).await.expect("signs in");
    assert!(alive(&other).await);

    // A wrong current password changes nothing.
    let new = "a brand new passphrase";
    let (status, _, page) = post(
        &holder,
        "/account/password",
        &format!(
            "current_password=wrong+one+here&password={0}&password_confirm={0}",
            new.replace(' ', "+")
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{page}");
    assert!(page.contains("current password is not right"), "{page}");
    assert!(alive(&other).await);
    // The right one: this session stays, every other one ends, only the new password works.
    let (status, headers, _) = post(
        &holder,
        "/account/password",
        &format!(
            "current_password={}&password={1}&password_confirm={1}",
            PASSWORD.replace(' ', "+"),
            new.replace(' ', "+")
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/account?changed=1");
    assert!(alive(&holder).await, "the session that changed it stays");
    assert!(!alive(&other).await, "every other session ends");
    assert!(sign_in(PASSWORD).await.is_none());
    let third = sign_in(new).await.expect("the new password works");

    // Sign out everywhere: this session and every other.
    let (status, headers, _) = post(&holder, "/account/signout-everywhere", "").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        set_cookie(&headers, "keygate_session").is_none(),
        "the cookie is cleared"
    );
    assert!(!alive(&holder).await && !alive(&third).await);

    // An operator's reset link, with neither password nor session.
    let fourth = sign_in(new).await.unwrap();
    let (_, link) = h
        .state
        .users
        .password_reset_link("HOLDER@example.com")
        .await
        .unwrap();
    let path = format!("/reset/{}", link.expose());
    let (status, headers, page) = h
        .send(Request::get(&path).body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&page).contains("Reset Password"));
    let form_cookie = set_cookie(&headers, "keygate_form").unwrap();
    let token = form_cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("keygate_form=")
        .to_owned();
    let reset = "reset passphrase here";
    let submit = |token: &str| {
        Request::post(&path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, format!("keygate_form={token}"))
            .body(Body::from(format!(
                "csrf_token={token}&password={0}&password_confirm={0}",
                reset.replace(' ', "+")
            )))
            .unwrap()
    };
    let (status, headers, _) = h.send(submit(&token)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        set_cookie(&headers, "keygate_session").is_some(),
        "signed in"
    );
    assert!(!alive(&fourth).await, "a reset ends every earlier session");
    assert!(sign_in(new).await.is_none());
    assert!(sign_in(reset).await.is_some());
    // Spent.
    let (status, _, _) = h
        .send(Request::get(&path).body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = h.send(submit(&token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Served over TLS (`public_url` is https): cookies carry the `__Host-` prefix and `Secure`, so a
/// sibling subdomain or a network attacker cannot plant the pre-sign-in form cookie; pages send
/// HSTS; invitation links use `public_url`, never the request's `Host`.
#[tokio::test]
async fn over_tls_cookies_are_host_prefixed_and_links_use_public_url() {
    let h = Harness::with(|c| c.public_url = Some("https://kg.example.com".into())).await;
    let (_, _) = h.account_holder().await;
    let (status, headers, _) = h
        .send(
            Request::get("/signin")
                .header(header::HOST, "evil.example")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["strict-transport-security"], "max-age=31536000");
    assert!(set_cookie(&headers, "keygate_form").is_none());
    let form = set_cookie(&headers, "__Host-keygate_form").expect("a __Host- form cookie");
    assert!(
        form.contains("; Secure") && form.contains("Path=/") && !form.contains("Domain"),
        "{form}"
    );
    let token = form
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("__Host-keygate_form=")
        .to_owned();
    // The plain name is not accepted in its place.
    let sign_in = |cookie_name: &str| {
        Request::post("/signin")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, format!("{cookie_name}={token}"))
            .body(Body::from(format!(
                "csrf_token={token}&email=holder%40example.com&password={}",
                PASSWORD.replace(' ', "+")
            )))
            .unwrap()
    };
    let (status, _, _) = h.send(sign_in("keygate_form")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, headers, _) = h.send(sign_in("__Host-keygate_form")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let session = set_cookie(&headers, "__Host-keygate_session").expect("a __Host- session cookie");
    assert!(session.contains("; Secure"), "{session}");
    let cookie = session.split(';').next().unwrap().to_owned();
    // Invitation links: public_url, whatever Host the request names.
    let id = cookie
        .trim_start_matches("__Host-keygate_session=")
        .to_owned();
    let csrf = csrf_token(&BearerSecret::parse(&id).unwrap());
    let (status, _, page) = h
        .send(
            Request::post("/access/people/invite")
                .header(header::HOST, "evil.example")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::COOKIE, &cookie)
                .body(Body::from(format!(
                    "csrf_token={csrf}&first_name=Lin&last_name=Chen&email=lin%40example.com&roles=DEVELOPER"
                )))
                .unwrap(),
        )
        .await;
    let page = String::from_utf8(page).unwrap();
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("https://kg.example.com/invitations/"),
        "{page}"
    );
    assert!(!page.contains("evil.example"), "{page}");
}

#[tokio::test]
async fn individual_keys_act_for_their_user() {
    let h = Harness::new().await;
    let (user_id, session) = h.user("dev@example.com", "DEVELOPER").await;
    let key = h.individual_key(&session).await;
    let Cred::Individual(kid, signer) = &key else {
        unreachable!()
    };
    let authz = |token: String| {
        Request::get("/authz/v1/apps")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    let now = keygate_core::clock::Clock::now(h.clock.as_ref());
    let good = sign_jwt(
        signer,
        kid,
        &json!({"sub": "user", "aud": "keygate-v1", "exp": now + 600}),
    )
    .unwrap();
    let (status, headers, _) = h.send(authz(good.clone())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-keygate-key-type"], "individual");
    assert_eq!(headers["x-keygate-user-id"], user_id.as_str());
    assert_eq!(headers["x-keygate-roles"], "DEVELOPER");
    // The same key with iss: refused, and the reason says why.
    let with_iss = sign_jwt(
        signer,
        kid,
        &json!({"sub": "user", "iss": h.issuer, "aud": "keygate-v1", "exp": now + 600}),
    )
    .unwrap();
    let (status, _, body) = h.send(authz(with_iss)).await;
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(reason(&doc), "WRONG_ISSUER");
    assert!(
        doc["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("must not carry iss"),
        "{doc}"
    );
    // One active individual key per user.
    let (status, doc) = h
        .call(&session, "POST", "/v1/apiKeys", Some(json!({"data": {"type": "apiKeys", "attributes": {"name": "second", "keyType": "INDIVIDUAL"}}})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{doc}");
    // Roles given to an individual key are refused: it takes its user's.
    let (status, doc) = h
        .call(&session, "POST", "/v1/apiKeys", Some(json!({"data": {"type": "apiKeys", "attributes": {"name": "x", "keyType": "INDIVIDUAL", "roles": ["ADMIN"]}}})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{doc}");

    // A role change applies to the key at once (the token cache does not hide it).
    let admin = h.admin_cred();
    let (status, doc) = h
        .call(
            &admin,
            "PATCH",
            &format!("/v1/users/{user_id}"),
            Some(json!({"data": {"type": "users", "attributes": {"roles": ["FINANCE"]}}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    let (_, headers, _) = h.send(authz(good.clone())).await;
    assert_eq!(headers["x-keygate-roles"], "FINANCE");
    // The user's own session sees the new roles too.
    let (_, me) = h
        .call(&session, "GET", &format!("/v1/users/{user_id}"), None)
        .await;
    assert_eq!(me["data"]["attributes"]["roles"], json!(["FINANCE"]));

    // Removing the user revokes the key at once and ends the session.
    let (status, _) = h
        .call(&admin, "DELETE", &format!("/v1/users/{user_id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, body) = h.send(authz(good)).await;
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, reason(&doc)),
        (StatusCode::UNAUTHORIZED, "KEY_REVOKED")
    );
    assert_eq!(
        h.call(&session, "GET", "/v1/issuer", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (_, list) = h
        .call(
            &admin,
            "GET",
            "/v1/apiKeys?filter[keyType]=INDIVIDUAL",
            None,
        )
        .await;
    let listed = &list["data"][0]["attributes"];
    assert_eq!(listed["isActive"], false);
    assert_eq!(listed["revokeReason"], "user removed");
}

/// Nobody removes or demotes the Account Holder, nobody is made one, nothing crosses issuers.
#[tokio::test]
async fn the_account_holder_is_fixed_and_roles_cannot_escalate() {
    let h = Harness::new().await;
    let (holder_id, holder) = h.account_holder().await;
    let (admin_user, admin_session) = h.user("admin@example.com", "ADMIN").await;
    let (dev_id, dev) = h.user("dev@example.com", "DEVELOPER").await;
    let to_roles =
        |roles: &[&str]| Some(json!({"data": {"type": "users", "attributes": {"roles": roles}}}));
    for cred in [&admin_session, &h.admin_cred(), &holder] {
        let (status, doc) = h
            .call(cred, "DELETE", &format!("/v1/users/{holder_id}"), None)
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{doc}");
        let (status, doc) = h
            .call(
                cred,
                "PATCH",
                &format!("/v1/users/{holder_id}"),
                to_roles(&["ADMIN"]),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{doc}");
        let (status, doc) = h
            .call(
                cred,
                "PATCH",
                &format!("/v1/users/{dev_id}"),
                to_roles(&["ACCOUNT_HOLDER"]),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{doc}");
        assert!(
            doc["errors"][0]["detail"]
                .as_str()
                .unwrap()
                .contains("ACCOUNT_HOLDER"),
            "{doc}"
        );
    }
    // A developer cannot raise themselves.
    let (status, _) = h
        .call(
            &dev,
            "PATCH",
            &format!("/v1/users/{dev_id}"),
            to_roles(&["ADMIN"]),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Invitations cannot hand out ACCOUNT_HOLDER either.
    let (status, _) = h
        .call(&admin_session, "POST", "/v1/userInvitations", Some(json!({"data": {"type": "userInvitations", "attributes": {"email": "x@example.com", "firstName": "X", "lastName": "Y", "roles": ["ACCOUNT_HOLDER"]}}})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // A removed admin's pending invitations go with them.
    let (rogue_id, rogue) = h.user("rogue@example.com", "ADMIN").await;
    let (status, _) = h
        .call(&rogue, "POST", "/v1/userInvitations", Some(json!({"data": {"type": "userInvitations", "attributes": {"email": "back-door@example.com", "firstName": "B", "lastName": "D", "roles": ["ADMIN"]}}})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = h
        .call(
            &admin_session,
            "DELETE",
            &format!("/v1/users/{rogue_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, pending) = h
        .call(&admin_session, "GET", "/v1/userInvitations", None)
        .await;
    assert!(
        !pending.to_string().contains("back-door@example.com"),
        "{pending}"
    );

    // The setup link is spent.
    assert!(
        h.state
            .users
            .setup_link(h.issuer.parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );

    // Another issuer's admin sees none of this issuer's people.
    let other_issuer = keygate_core::ids::IssuerId::generate();
    let (key, pem) = h
        .state
        .keys
        .bootstrap_admin_key(Some(other_issuer))
        .await
        .unwrap();
    let stranger = Signer::from_pem(&pem).unwrap();
    let token = sign_jwt(&stranger, key.id.as_str(), &json!({"iss": other_issuer.to_string(), "aud": "keygate-v1", "exp": keygate_core::clock::Clock::now(h.clock.as_ref()) + 600})).unwrap();
    for (method, uri) in [
        ("GET", format!("/v1/users/{admin_user}")),
        ("DELETE", format!("/v1/users/{dev_id}")),
        ("PATCH", format!("/v1/users/{dev_id}")),
    ] {
        let body = (method == "PATCH").then(|| {
            json!({"data": {"type": "users", "attributes": {"roles": ["ADMIN"]}}}).to_string()
        });
        let mut b = Request::builder()
            .method(method)
            .uri(&uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        if body.is_some() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        let (status, _, _) = h
            .send(b.body(body.map_or_else(Body::empty, Body::from)).unwrap())
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}");
    }
    let list = Request::get("/v1/users")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let (_, _, body) = h.send(list).await;
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["data"], json!([]), "{doc}");
    // The developer is untouched.
    let (_, me) = h
        .call(&dev, "GET", &format!("/v1/users/{dev_id}"), None)
        .await;
    assert_eq!(me["data"]["attributes"]["roles"], json!(["DEVELOPER"]));
}

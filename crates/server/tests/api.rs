//! Router tests: the whole management API and forward auth through `app(state).oneshot()`, on a
//! real `SQLite` file, with a manual clock so expiry is tested without sleeping.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    clippy::needless_pass_by_value
)] // test code: a failed expectation should panic; scenarios read top to bottom

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use keygate_core::clock::ManualClock;
use keygate_core::crypto::{MasterKey, PrivateKeyPem, generate_key_pair, public_key_pem};
use keygate_core::key::Algorithm;
use keygate_core::token::{Signer, sign_jwt};
use keygate_server::config::ForwardAuthHeaders;
use keygate_server::config::{self, Overrides};
use keygate_server::serve::build;
use keygate_server::{AppState, app};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const NOW: i64 = 1_795_687_200;

struct Harness {
    _dir: tempfile::TempDir,
    router: Router,
    state: AppState,
    clock: Arc<ManualClock>,
    issuer: String,
    admin: (String, Signer),
}

async fn harness_with(edit: impl FnOnce(&mut keygate_server::Config)) -> Harness {
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
    Harness {
        _dir: dir,
        router: app(state.clone()),
        state,
        clock,
        issuer: issuer.id.to_string(),
        admin: (key.id.to_string(), Signer::from_pem(&pem).unwrap()),
    }
}

async fn harness() -> Harness {
    harness_with(|_| {}).await
}

impl Harness {
    fn token_for(&self, kid: &str, signer: &Signer, extra: Value) -> String {
        let mut claims = json!({"iss": self.issuer, "aud": "keygate-v1", "exp": self.clock.now_secs() + 600, "iat": self.clock.now_secs()});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        sign_jwt(signer, kid, &claims).unwrap()
    }

    fn admin_token(&self) -> String {
        self.token_for(&self.admin.0, &self.admin.1, json!({}))
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        (status, headers, body)
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let (status, headers, bytes) = self.send(req).await;
        if (!bytes.is_empty() && status != StatusCode::OK
            || uri.starts_with("/v1") && !uri.ends_with("/privateKey"))
            && !bytes.is_empty()
        {
            assert_eq!(
                headers.get(header::CONTENT_TYPE).unwrap(),
                "application/json",
                "{method} {uri}"
            );
        }
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, json)
    }

    async fn create(&self, attrs: Value) -> (StatusCode, Value) {
        self.call(
            "POST",
            "/v1/apiKeys",
            Some(&self.admin_token()),
            Some(json!({"data": {"type": "apiKeys", "attributes": attrs}})),
        )
        .await
    }

    /// Creates a key and downloads its private key; returns (id, signer).
    async fn key_with_roles(&self, roles: &[&str]) -> (String, Signer) {
        let (status, doc) = self.create(json!({"name": "k", "roles": roles})).await;
        assert_eq!(status, StatusCode::CREATED, "{doc}");
        let id = doc["data"]["id"].as_str().unwrap().to_owned();
        let (s, _, pem) = self
            .send(
                Request::get(format!("/v1/apiKeys/{id}/privateKey"))
                    .header(
                        header::AUTHORIZATION,
                        format!("Bearer {}", self.admin_token()),
                    )
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        (
            id,
            Signer::from_pem(&PrivateKeyPem::from_pem(String::from_utf8(pem).unwrap())).unwrap(),
        )
    }
}

impl Harness {
    async fn deny(&self, req: Request<Body>, status: StatusCode, reason: &str) {
        let (got, headers, body) = self.send(req).await;
        assert_eq!(got, status);
        assert_eq!(
            headers.get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error_code(&doc).1, Some(reason), "{doc}");
    }
}

trait NowSecs {
    fn now_secs(&self) -> i64;
}

impl NowSecs for ManualClock {
    fn now_secs(&self) -> i64 {
        keygate_core::clock::Clock::now(self)
    }
}

fn error_code(doc: &Value) -> (&str, Option<&str>) {
    let e = &doc["errors"][0];
    assert!(
        e["id"].is_string() && e["title"].is_string() && e["detail"].is_string(),
        "error shape: {doc}"
    );
    (e["code"].as_str().unwrap(), e["meta"]["reason"].as_str())
}

#[tokio::test]
async fn every_management_route_needs_a_credential() {
    let h = harness().await;
    let routes = [
        ("GET", "/v1/issuer"),
        ("GET", "/v1/apiKeys"),
        ("POST", "/v1/apiKeys"),
        ("GET", "/v1/apiKeys/ABCDEFGHIJ"),
        ("PATCH", "/v1/apiKeys/ABCDEFGHIJ"),
        ("GET", "/v1/apiKeys/ABCDEFGHIJ/privateKey"),
        ("GET", "/v1/auditEvents"),
    ];
    for (m, uri) in routes {
        let (status, doc) = h.call(m, uri, None, Some(json!({}))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{m} {uri}");
        assert_eq!(error_code(&doc), ("NOT_AUTHORIZED", Some("TOKEN_MISSING")));
        let (status, doc) = h.call(m, uri, Some("not.a.token"), Some(json!({}))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{m} {uri}");
        assert_eq!(error_code(&doc).1, Some("TOKEN_MALFORMED"));
    }
}

#[tokio::test]
async fn create_get_list_and_revoke() {
    let h = harness().await;
    let (status, doc) = h
        .create(json!({"name": "CI builds", "roles": ["DEVELOPER"]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{doc}");
    let id = doc["data"]["id"].as_str().unwrap();
    assert_eq!(id.len(), 10);
    let a = &doc["data"]["attributes"];
    assert_eq!(a["roles"], json!(["DEVELOPER"]));
    assert_eq!(a["keyType"], "TEAM");
    assert_eq!(a["algorithm"], "ES256");
    assert_eq!(a["issuerId"], h.issuer);
    assert_eq!(a["isActive"], true);
    assert_eq!(a["canDownload"], true);
    assert_eq!(a["createdDate"], "2026-11-26T10:00:00Z");
    assert_eq!(a["createdBy"], format!("apiKey:{}", h.admin.0));
    assert_eq!(
        doc["data"]["links"]["privateKey"],
        format!("/v1/apiKeys/{id}/privateKey")
    );

    let (status, got) = h
        .call(
            "GET",
            &format!("/v1/apiKeys/{id}"),
            Some(&h.admin_token()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["data"]["attributes"]["name"], "CI builds");

    let (status, list) = h
        .call("GET", "/v1/apiKeys", Some(&h.admin_token()), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["meta"]["paging"]["total"], 2);

    let revoke = json!({"data": {"type": "apiKeys", "id": id, "attributes": {"isActive": false, "revokeReason": "rotated"}}});
    let (status, doc) = h
        .call(
            "PATCH",
            &format!("/v1/apiKeys/{id}"),
            Some(&h.admin_token()),
            Some(revoke.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["data"]["attributes"]["isActive"], false);
    assert_eq!(
        doc["data"]["attributes"]["revokedDate"],
        "2026-11-26T10:00:00Z"
    );
    assert_eq!(
        doc["data"]["attributes"]["canDownload"], false,
        "revoking erases a pending private key"
    );
    let (status, _) = h
        .call(
            "PATCH",
            &format!("/v1/apiKeys/{id}"),
            Some(&h.admin_token()),
            Some(revoke),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "revoking again is 200");

    let (_, revoked) = h
        .call(
            "GET",
            "/v1/apiKeys?filter[status]=REVOKED",
            Some(&h.admin_token()),
            None,
        )
        .await;
    assert_eq!(revoked["meta"]["paging"]["total"], 1);
    let (_, active) = h
        .call(
            "GET",
            "/v1/apiKeys?filter%5Bstatus%5D=ACTIVE&filter[keyType]=TEAM",
            Some(&h.admin_token()),
            None,
        )
        .await;
    assert_eq!(active["data"][0]["id"], h.admin.0);

    for (attrs, why) in [
        (json!({"isActive": true}), "reactivate"),
        (json!({"name": "new"}), "rename"),
        (json!({"roles": ["ADMIN"]}), "change roles"),
        (json!({}), "nothing"),
    ] {
        let body = json!({"data": {"type": "apiKeys", "id": id, "attributes": attrs}});
        let (status, doc) = h
            .call(
                "PATCH",
                &format!("/v1/apiKeys/{id}"),
                Some(&h.admin_token()),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{why}: {doc}");
    }
}

#[tokio::test]
async fn bad_input_gets_clear_json_errors() {
    let h = harness().await;
    let t = h.admin_token();
    let raw = |body: &'static str| {
        Request::post("/v1/apiKeys")
            .header(header::AUTHORIZATION, format!("Bearer {t}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    let authed = |method: &str, uri: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {t}"))
            .body(Body::empty())
            .unwrap()
    };
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            raw("{not json"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "ENTITY_UNPROCESSABLE",
        ),
        (
            raw("[]"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "ENTITY_UNPROCESSABLE",
        ),
        (
            raw(r#"{"data": 5}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "ENTITY_UNPROCESSABLE",
        ),
        (
            raw(r#"{"data": {"type": "users", "attributes": {}}}"#),
            StatusCode::CONFLICT,
            "CONFLICT",
        ),
        (
            raw(
                r#"{"data": {"type": "apiKeys", "attributes": {"name": 7, "roles": ["DEVELOPER"]}}}"#,
            ),
            StatusCode::CONFLICT,
            "ENTITY_ERROR.ATTRIBUTE.INVALID",
        ),
        (
            raw(
                r#"{"data": {"type": "apiKeys", "attributes": {"name": "x", "roles": ["WIZARD"]}}}"#,
            ),
            StatusCode::CONFLICT,
            "ENTITY_ERROR.ATTRIBUTE.INVALID",
        ),
        (
            raw(
                r#"{"data": {"type": "apiKeys", "attributes": {"name": "x", "roles": ["ACCOUNT_HOLDER"]}}}"#,
            ),
            StatusCode::CONFLICT,
            "ENTITY_ERROR.ATTRIBUTE.INVALID",
        ),
        (
            raw(r#"{"data": {"type": "apiKeys", "attributes": {"name": "x", "roles": []}}}"#),
            StatusCode::CONFLICT,
            "ENTITY_ERROR.ATTRIBUTE.INVALID",
        ),
        (
            raw(
                r#"{"data": {"type": "apiKeys", "attributes": {"name": "", "roles": ["DEVELOPER"]}}}"#,
            ),
            StatusCode::CONFLICT,
            "ENTITY_ERROR.ATTRIBUTE.INVALID",
        ),
        (
            raw(
                r#"{"data": {"type": "apiKeys", "attributes": {"name": "x", "roles": ["DEVELOPER"], "owner": "me"}}}"#,
            ),
            StatusCode::CONFLICT,
            "ENTITY_ERROR.ATTRIBUTE.INVALID",
        ),
        (
            raw(
                r#"{"data": {"type": "apiKeys", "attributes": {"name": "x", "roles": ["DEVELOPER"], "expiresAt": "2020-01-01T00:00:00Z"}}}"#,
            ),
            StatusCode::CONFLICT,
            "ENTITY_ERROR.ATTRIBUTE.INVALID",
        ),
        (
            raw(
                r#"{"data": {"type": "apiKeys", "attributes": {"name": "x", "roles": ["DEVELOPER"], "publicKey": "nope"}}}"#,
            ),
            StatusCode::CONFLICT,
            "ENTITY_ERROR.ATTRIBUTE.INVALID",
        ),
        (
            raw(
                r#"{"data": {"type": "apiKeys", "attributes": {"name": "x", "roles": ["DEVELOPER"], "keyType": "INDIVIDUAL"}}}"#,
            ),
            // A team key belongs to no person, so it cannot have an individual key.
            StatusCode::FORBIDDEN,
            "FORBIDDEN_ERROR",
        ),
        (
            Request::post("/v1/apiKeys")
                .header(header::AUTHORIZATION, format!("Bearer {t}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(format!(
                    r#"{{"data":{{"type":"apiKeys","attributes":{{"name":"{}"}}}}}}"#,
                    "x".repeat(100_000)
                )))
                .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "ENTITY_TOO_LARGE",
        ),
        (
            Request::post("/v1/apiKeys")
                .header(header::AUTHORIZATION, format!("Bearer {t}"))
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from("{}"))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            Request::get("/v1/nothing").body(Body::empty()).unwrap(),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        ),
        (
            authed("DELETE", "/v1/apiKeys"),
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        ),
        (
            authed("GET", "/v1/apiKeys?limit=0"),
            StatusCode::BAD_REQUEST,
            "PARAMETER_ERROR.INVALID",
        ),
        (
            authed("GET", "/v1/apiKeys?filter[status]=x"),
            StatusCode::BAD_REQUEST,
            "PARAMETER_ERROR.INVALID",
        ),
        (
            authed("GET", "/v1/apiKeys/not-a-key"),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        ),
        (
            authed("GET", "/v1/apiKeys/ZZZZZZZZZZ/privateKey"),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        ),
        (
            authed("GET", "/v1/apiKeys/%FF%FE"),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        ),
    ];
    for (req, want_status, want_code) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (status, headers, body) = h.send(req).await;
        assert_eq!(
            status,
            want_status,
            "{what}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            headers.get(header::CONTENT_TYPE).unwrap(),
            "application/json",
            "{what}"
        );
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error_code(&doc).0, want_code, "{what}: {doc}");
    }
    // Nothing was created by any of that.
    let (_, list) = h.call("GET", "/v1/apiKeys", Some(&t), None).await;
    assert_eq!(list["meta"]["paging"]["total"], 1);
}

#[tokio::test]
async fn only_admins_manage_keys_and_nothing_crosses_issuers() {
    let h = harness().await;
    let (dev_id, dev) = h.key_with_roles(&["DEVELOPER"]).await;
    let dev_token = h.token_for(&dev_id, &dev, json!({}));
    let (status, doc) = h.call("GET", "/v1/apiKeys", Some(&dev_token), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        error_code(&doc),
        ("FORBIDDEN_ERROR", Some("ROLE_NOT_ALLOWED"))
    );
    let (status, _) = h.create(json!({"name": "x", "roles": ["DEVELOPER"]})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, doc) = h.call("GET", "/v1/issuer", Some(&dev_token), None).await;
    assert_eq!(status, StatusCode::OK, "any valid key reads its issuer");
    assert_eq!(doc["data"]["id"], h.issuer);

    // A second issuer in the same deployment.
    let other_issuer = keygate_core::ids::IssuerId::generate();
    let (other, pem) = h
        .state
        .keys
        .bootstrap_admin_key(Some(other_issuer))
        .await
        .unwrap();
    let signer = Signer::from_pem(&pem).unwrap();
    let claims = json!({"iss": other_issuer.to_string(), "aud": "keygate-v1", "exp": NOW + 600});
    let other_token = sign_jwt(&signer, other.id.as_str(), &claims).unwrap();
    for (m, uri) in [
        ("GET", format!("/v1/apiKeys/{dev_id}")),
        ("GET", format!("/v1/apiKeys/{dev_id}/privateKey")),
    ] {
        let (status, doc) = h.call(m, &uri, Some(&other_token), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {doc}");
    }
    let revoke =
        json!({"data": {"type": "apiKeys", "id": dev_id, "attributes": {"isActive": false}}});
    let (status, _) = h
        .call(
            "PATCH",
            &format!("/v1/apiKeys/{dev_id}"),
            Some(&other_token),
            Some(revoke),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = h.call("GET", "/v1/apiKeys", Some(&other_token), None).await;
    assert_eq!(list["meta"]["paging"]["total"], 1, "sees only its own key");
    // A token claiming the other issuer with this issuer's key is refused.
    let forged = h.token_for(
        &h.admin.0,
        &h.admin.1,
        json!({"iss": other_issuer.to_string()}),
    );
    let (status, doc) = h.call("GET", "/v1/apiKeys", Some(&forged), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&doc).1, Some("WRONG_ISSUER"));
}

#[tokio::test]
async fn download_is_once_and_window_bound() {
    let h = harness_with(|c| c.limits.download_window = 3600).await;
    let (status, doc) = h.create(json!({"name": "a", "roles": ["DEVELOPER"]})).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = doc["data"]["id"].as_str().unwrap().to_owned();
    let get = |id: &str| {
        Request::get(format!("/v1/apiKeys/{id}/privateKey"))
            .header(header::AUTHORIZATION, format!("Bearer {}", h.admin_token()))
            .body(Body::empty())
            .unwrap()
    };
    let head = Request::head(format!("/v1/apiKeys/{id}/privateKey"))
        .header(header::AUTHORIZATION, format!("Bearer {}", h.admin_token()))
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        h.send(head).await.0,
        StatusCode::METHOD_NOT_ALLOWED,
        "HEAD does not spend the download"
    );
    let (status, headers, body) = h.send(get(&id)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers.get(header::CACHE_CONTROL).unwrap(), "no-store");
    assert_eq!(
        headers
            .get(header::CONTENT_DISPOSITION)
            .unwrap()
            .to_str()
            .unwrap(),
        format!("attachment; filename=\"AuthKey_{id}.p8\"")
    );
    assert!(
        String::from_utf8(body)
            .unwrap()
            .starts_with(&format!("{}\n", keygate_core::crypto::PKCS8_PEM_BEGIN))
    );
    let (status, _, body) = h.send(get(&id)).await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(
        error_code(&serde_json::from_slice(&body).unwrap()).0,
        "PRIVATE_KEY_ALREADY_DOWNLOADED"
    );
    let (_, doc) = h
        .call(
            "GET",
            &format!("/v1/apiKeys/{id}"),
            Some(&h.admin_token()),
            None,
        )
        .await;
    assert_eq!(doc["data"]["attributes"]["canDownload"], false);
    assert!(doc["data"]["links"].get("privateKey").is_none());

    // A key left undownloaded past the window is erased, on request or by the sweep.
    let (_, doc) = h
        .create(json!({"name": "late", "roles": ["DEVELOPER"]}))
        .await;
    let late = doc["data"]["id"].as_str().unwrap().to_owned();
    let (_, doc) = h
        .create(json!({"name": "swept", "roles": ["DEVELOPER"]}))
        .await;
    let swept = doc["data"]["id"].as_str().unwrap().to_owned();
    h.clock.advance(3601);
    let (status, _, body) = h.send(get(&late)).await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(
        error_code(&serde_json::from_slice(&body).unwrap()).0,
        "PRIVATE_KEY_ERASED"
    );
    assert_eq!(h.state.keys.erase_stale_private_keys().await.unwrap(), 1);
    let (_, doc) = h
        .call(
            "GET",
            &format!("/v1/apiKeys/{swept}"),
            Some(&h.admin_token()),
            None,
        )
        .await;
    assert_eq!(
        doc["data"]["attributes"]["isActive"], false,
        "an erased key can never be used"
    );
    assert_eq!(doc["data"]["attributes"]["privateKeyState"], "ERASED");
}

#[tokio::test]
async fn active_team_keys_are_capped() {
    let h = harness_with(|c| c.limits.max_active_team_keys = 3).await;
    // The bootstrap key is one of the three.
    for i in 0..2 {
        let (status, _) = h
            .create(json!({"name": format!("k{i}"), "roles": ["DEVELOPER"]}))
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, doc) = h
        .create(json!({"name": "one too many", "roles": ["DEVELOPER"]}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{doc}");
    let (_, list) = h
        .call("GET", "/v1/apiKeys", Some(&h.admin_token()), None)
        .await;
    let victim = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .find(|id| *id != h.admin.0)
        .unwrap();
    let body =
        json!({"data": {"type": "apiKeys", "id": victim, "attributes": {"isActive": false}}});
    h.call(
        "PATCH",
        &format!("/v1/apiKeys/{victim}"),
        Some(&h.admin_token()),
        Some(body),
    )
    .await;
    let (status, _) = h
        .create(json!({"name": "after revoke", "roles": ["DEVELOPER"]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn paging_walks_every_key_once() {
    let h = harness().await;
    for i in 0..7 {
        h.clock.advance(i % 2); // some keys share a creation second
        let (status, _) = h
            .create(json!({"name": format!("k{i}"), "roles": ["DEVELOPER"]}))
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut next = Some("/v1/apiKeys?limit=3".to_owned());
    while let Some(uri) = next.take() {
        let (status, doc) = h.call("GET", &uri, Some(&h.admin_token()), None).await;
        assert_eq!(status, StatusCode::OK, "{doc}");
        assert_eq!(doc["meta"]["paging"]["total"], 8);
        assert_eq!(doc["meta"]["paging"]["limit"], 3);
        seen.extend(
            doc["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["id"].as_str().unwrap().to_owned()),
        );
        next = doc["links"]["next"].as_str().map(str::to_owned);
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (8, 8));
}

#[tokio::test]
async fn supplied_public_keys_and_eddsa_keys_work() {
    let h = harness().await;
    let pair = generate_key_pair(Algorithm::Es256).unwrap();
    let (status, doc) = h.create(json!({"name": "own key", "roles": ["DEVELOPER"], "publicKey": public_key_pem(&pair.public, Algorithm::Es256)})).await;
    assert_eq!(status, StatusCode::CREATED, "{doc}");
    let id = doc["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(doc["data"]["attributes"]["canDownload"], false);
    let (status, doc) = h
        .call(
            "GET",
            &format!("/v1/apiKeys/{id}/privateKey"),
            Some(&h.admin_token()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{doc}");
    let token = h.token_for(&id, &Signer::from_pem(&pair.private).unwrap(), json!({}));
    let (status, _) = h.call("GET", "/authz/v1/apps", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);

    let (status, doc) = h
        .create(json!({"name": "ed", "roles": ["DEVELOPER"], "algorithm": "EdDSA"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(doc["data"]["attributes"]["algorithm"], "EdDSA");
    let id = doc["data"]["id"].as_str().unwrap().to_owned();
    let (_, _, pem) = h
        .send(
            Request::get(format!("/v1/apiKeys/{id}/privateKey"))
                .header(header::AUTHORIZATION, format!("Bearer {}", h.admin_token()))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let signer =
        Signer::from_pem(&PrivateKeyPem::from_pem(String::from_utf8(pem).unwrap())).unwrap();
    let (status, _) = h
        .call(
            "GET",
            "/authz/v1/apps",
            Some(&h.token_for(&id, &signer, json!({}))),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn forward_auth_modes_and_identity_headers() {
    let h = harness().await;
    let (id, signer) = h.key_with_roles(&["DEVELOPER"]).await;
    let token = h.token_for(
        &id,
        &signer,
        json!({"scope": ["GET /v1/apps?filter[platform]=IOS"]}),
    );
    let auth = format!("Bearer {token}");
    let ok = |req: Request<Body>| async {
        let (status, headers, body) = h.send(req).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert_eq!(headers.get("x-keygate-key-id").unwrap(), id.as_str());
        assert_eq!(
            headers.get("x-keygate-issuer-id").unwrap(),
            h.issuer.as_str()
        );
        assert_eq!(headers.get("x-keygate-key-type").unwrap(), "team");
        assert_eq!(headers.get("x-keygate-roles").unwrap(), "DEVELOPER");
    };
    // Envoy: the request's own method and path.
    ok(Request::get("/authz/v1/apps?filter[platform]=IOS&limit=10")
        .header(header::AUTHORIZATION, &auth)
        .body(Body::empty())
        .unwrap())
    .await;
    // nginx auth_request.
    ok(Request::get("/authz")
        .header(header::AUTHORIZATION, &auth)
        .header("x-original-method", "GET")
        .header("x-original-uri", "/v1/apps?filter%5Bplatform%5D=IOS")
        .body(Body::empty())
        .unwrap())
    .await;
    // Traefik ForwardAuth, with a lower-case scheme.
    ok(Request::get("/authz")
        .header(header::AUTHORIZATION, format!("bearer {token}"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/v1/apps?filter[platform]=IOS")
        .body(Body::empty())
        .unwrap())
    .await;

    let expired = h.token_for(&id, &signer, json!({"exp": NOW - 120, "iat": NOW - 600}));
    let expired = format!("Bearer {expired}");
    // Refusals: (method, path, headers, status, reason).
    let refusals: [Refusal<'_>; 7] = [
        (
            "POST",
            "/authz/v1/apps?filter[platform]=IOS",
            &[("authorization", &auth)],
            StatusCode::FORBIDDEN,
            "SCOPE_MISMATCH",
        ),
        (
            "GET",
            "/authz/v1/apps",
            &[("authorization", &auth)],
            StatusCode::FORBIDDEN,
            "SCOPE_MISMATCH",
        ),
        (
            "GET",
            "/authz/v1/apps",
            &[],
            StatusCode::UNAUTHORIZED,
            "TOKEN_MISSING",
        ),
        (
            "GET",
            "/authz/v1/apps",
            &[("x-api-key", "kgsk_nope")],
            StatusCode::UNAUTHORIZED,
            "UNKNOWN_SECRET_KEY",
        ),
        (
            "GET",
            "/authz/v1/apps",
            &[("authorization", &auth), ("authorization", &auth)],
            StatusCode::UNAUTHORIZED,
            "TOKEN_MALFORMED",
        ),
        (
            "GET",
            "/authz/v1/apps",
            &[("authorization", &auth), ("x-api-key", "kgsk_x")],
            StatusCode::UNAUTHORIZED,
            "TOKEN_MALFORMED",
        ),
        (
            "GET",
            "/authz/x",
            &[("authorization", &expired)],
            StatusCode::UNAUTHORIZED,
            "TOKEN_EXPIRED",
        ),
    ];
    for (method, path, headers, status, reason) in refusals {
        let mut req = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        h.deny(req.body(Body::empty()).unwrap(), status, reason)
            .await;
    }
    let (status, doc) = h.call("GET", "/authz", Some(&token), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{doc}");
}

/// A request (method, path, headers) and the refusal expected for it (status, reason).
type Refusal<'a> = (
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    StatusCode,
    &'a str,
);

/// Extra request headers, and the status and reason expected with them.
type HeaderCase<'a> = (&'a [(&'a str, &'a str)], StatusCode, &'a str);

/// `GET /authz` with a DEVELOPER token (policy: `GET /v1/apps/**`) and these headers.
async fn authz_with_headers(mode: ForwardAuthHeaders, cases: &[HeaderCase<'_>]) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[roles.DEVELOPER]\nallow = [\"GET /v1/apps/**\"]\n",
    )
    .unwrap();
    let h = harness_with(|c| {
        c.policy = config::load(Some(&policy), &|_| None, &Overrides::default())
            .unwrap()
            .policy;
        c.forward_auth_headers = mode;
    })
    .await;
    let (id, signer) = h.key_with_roles(&["DEVELOPER"]).await;
    let auth = format!("Bearer {}", h.token_for(&id, &signer, json!({})));
    for (pairs, want, why) in cases {
        let mut b = Request::get("/authz").header(header::AUTHORIZATION, &auth);
        for (k, v) in *pairs {
            b = b.header(*k, *v);
        }
        assert_eq!(
            h.send(b.body(Body::empty()).unwrap()).await.0,
            *want,
            "{mode:?}: {why}"
        );
    }
}

#[tokio::test]
async fn a_client_cannot_choose_what_authz_checks() {
    const FWD_DELETE: [(&str, &str); 2] = [
        ("x-forwarded-method", "DELETE"),
        ("x-forwarded-uri", "/v1/admin/x"),
    ];
    const FWD_GET: [(&str, &str); 2] = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/v1/apps"),
    ];
    const ORIG_GET: [(&str, &str); 2] =
        [("x-original-method", "GET"), ("x-original-uri", "/v1/apps")];
    const ORIG_DELETE: [(&str, &str); 2] = [
        ("x-original-method", "DELETE"),
        ("x-original-uri", "/v1/admin"),
    ];
    let both = |a: [(&'static str, &'static str); 2], b: [(&'static str, &'static str); 2]| {
        [a[0], a[1], b[0], b[1]]
    };
    let spoofed = both(FWD_DELETE, ORIG_GET);
    let same = both(
        FWD_GET,
        [("x-original-method", "GET"), ("x-original-uri", "/v1/apps")],
    );
    let lowercase = [("x-original-method", "get"), ("x-original-uri", "/v1/apps")];
    let steer = both(ORIG_DELETE, FWD_GET);
    let authelia = [ORIG_GET[0], ORIG_GET[1], ("x-forwarded-method", "GET")];
    let half = [
        ("x-original-uri", "/v1/apps"),
        ("x-forwarded-method", "GET"),
    ];
    let absolute = [
        ("x-original-method", "GET"),
        ("x-original-uri", "http://api.example/v1/apps/1"),
    ];

    authz_with_headers(
        ForwardAuthHeaders::Auto,
        &[
            (&spoofed, StatusCode::BAD_REQUEST, "Traefik set X-Forwarded-*, the client added X-Original-* naming an allowed request"),
            (&half, StatusCode::BAD_REQUEST, "nginx set only X-Original-URI, the client supplied the method in the other pair"),
            (&same, StatusCode::OK, "both pairs naming the same request"),
            (&FWD_DELETE, StatusCode::FORBIDDEN, "one pair alone is checked"),
            (&absolute, StatusCode::OK, "an absolute URI is reduced to path and query"),
        ],
    )
    .await;
    // With the gateway named in the configuration, only its pair counts: an Authelia-style
    // nginx snippet that also sets X-Forwarded-* works, and client-sent X-Forwarded-* cannot
    // steer the check.
    authz_with_headers(
        ForwardAuthHeaders::Nginx,
        &[
            (&authelia, StatusCode::OK, "the other family is ignored"),
            (
                &steer,
                StatusCode::FORBIDDEN,
                "client-sent X-Forwarded-* cannot steer",
            ),
            (
                &FWD_GET,
                StatusCode::BAD_REQUEST,
                "the nginx pair is required",
            ),
        ],
    )
    .await;
    // What the gateway forwards is the raw target: a `#` in it is refused, never trimmed (nginx
    // would send `/v1/apps/x#/../../../admin` upstream whole); so are targets that servers
    // decode differently, and method overrides, whatever the key's role allows.
    let fragment = [
        ("x-original-method", "GET"),
        ("x-original-uri", "/v1/apps/x#/../../../admin"),
    ];
    let dotted = [
        ("x-original-method", "GET"),
        ("x-original-uri", "/v1/apps/%2e%2e/%2e%2e/admin"),
    ];
    let doubled = [
        ("x-original-method", "GET"),
        ("x-original-uri", "/v1/apps//x"),
    ];
    let underscored = [
        ORIG_GET[0],
        ORIG_GET[1],
        ("x_http_method_override", "DELETE"),
    ];
    let rewritten = [ORIG_GET[0], ORIG_GET[1], ("x-original-url", "/internal")];
    let overridden = [
        ORIG_GET[0],
        ORIG_GET[1],
        ("x-http-method-override", "DELETE"),
    ];
    authz_with_headers(
        ForwardAuthHeaders::Nginx,
        &[
            (
                &fragment,
                StatusCode::BAD_REQUEST,
                "a # is refused, not trimmed",
            ),
            (&dotted, StatusCode::BAD_REQUEST, "encoded dot segments"),
            (&doubled, StatusCode::BAD_REQUEST, "an empty segment"),
            (&overridden, StatusCode::BAD_REQUEST, "a method override"),
            (
                &lowercase,
                StatusCode::BAD_REQUEST,
                "a method not in capitals",
            ),
            (
                &underscored,
                StatusCode::BAD_REQUEST,
                "an override spelled with _",
            ),
            (
                &rewritten,
                StatusCode::BAD_REQUEST,
                "a path override (X-Original-URL)",
            ),
            (&ORIG_GET, StatusCode::OK, "the same request without them"),
        ],
    )
    .await;
    authz_with_headers(
        ForwardAuthHeaders::Traefik,
        &[
            (
                &spoofed,
                StatusCode::FORBIDDEN,
                "client-sent X-Original-* is ignored",
            ),
            (
                &ORIG_GET,
                StatusCode::BAD_REQUEST,
                "the Traefik pair is required",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn the_policy_decides_by_role() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[roles.DEVELOPER]\nallow = [\"GET /v1/apps/**\", \"POST /v1/builds\"]\n",
    )
    .unwrap();
    let h = harness_with(|c| {
        let loaded = config::load(Some(&policy), &|_| None, &Overrides::default()).unwrap();
        c.policy = loaded.policy;
    })
    .await;
    let (id, signer) = h.key_with_roles(&["DEVELOPER"]).await;
    let t = h.token_for(&id, &signer, json!({}));
    assert_eq!(
        h.call("GET", "/authz/v1/apps/1/builds", Some(&t), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        h.call("POST", "/authz/v1/builds", Some(&t), None).await.0,
        StatusCode::OK
    );
    let (status, doc) = h.call("DELETE", "/authz/v1/builds", Some(&t), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&doc).1, Some("ROLE_NOT_ALLOWED"));
    let (status, _) = h
        .call("DELETE", "/authz/v1/builds", Some(&h.admin_token()), None)
        .await;
    assert_eq!(status, StatusCode::OK, "ADMIN may call everything");
}

#[tokio::test]
async fn a_scoped_token_is_limited_on_the_management_api_too() {
    let h = harness().await;
    let t = h.token_for(
        &h.admin.0,
        &h.admin.1,
        json!({"scope": ["GET /v1/apiKeys"]}),
    );
    assert_eq!(
        h.call("GET", "/v1/apiKeys?limit=5", Some(&t), None).await.0,
        StatusCode::OK
    );
    let (status, doc) = h.call("GET", "/v1/issuer", Some(&t), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&doc).1, Some("SCOPE_MISMATCH"));
}

#[tokio::test]
async fn a_node_with_the_wrong_master_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = Overrides {
        database: Some(format!("sqlite://{}/keygate.db", dir.path().display())),
        ..Overrides::default()
    };
    let cfg = config::load(None, &|_| None, &overrides).unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let master = MasterKey::generate().unwrap();
    build(&cfg, master.clone(), clock.clone()).await.unwrap();
    build(&cfg, master, clock.clone())
        .await
        .expect("the same key starts again");
    let err = build(&cfg, MasterKey::generate().unwrap(), clock)
        .await
        .unwrap_err();
    assert!(err.0.contains("master key does not match"), "{err}");
}

#[tokio::test]
async fn the_audit_log_records_who_did_what() {
    let h = harness().await;
    let (id, signer) = h.key_with_roles(&["DEVELOPER"]).await;
    let revoke = json!({"data": {"type": "apiKeys", "id": id, "attributes": {"isActive": false, "revokeReason": "test"}}});
    h.call(
        "PATCH",
        &format!("/v1/apiKeys/{id}"),
        Some(&h.admin_token()),
        Some(revoke),
    )
    .await;
    let (status, doc) = h
        .call(
            "GET",
            "/v1/auditEvents?limit=3",
            Some(&h.admin_token()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    let actions: Vec<&str> = doc["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["attributes"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "apiKey.revoked",
            "apiKey.privateKey.downloaded",
            "apiKey.created"
        ]
    );
    for e in doc["data"].as_array().unwrap() {
        assert_eq!(e["attributes"]["target"], id.as_str());
        assert_eq!(e["attributes"]["actor"], format!("apiKey:{}", h.admin.0));
        assert_eq!(e["attributes"]["createdDate"], "2026-11-26T10:00:00Z");
    }
    assert_eq!(doc["data"][0]["attributes"]["detail"]["reason"], "test");
    let next = doc["links"]["next"].as_str().unwrap();
    let (_, older) = h.call("GET", next, Some(&h.admin_token()), None).await;
    let older_actions: Vec<&str> = older["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["attributes"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        older_actions,
        ["apiKey.created", "issuer.created"],
        "the bootstrap key, then the issuer"
    );
    let dev = h.token_for(&id, &signer, json!({}));
    assert_eq!(
        h.call("GET", "/v1/auditEvents", Some(&dev), None).await.0,
        StatusCode::UNAUTHORIZED,
        "revoked"
    );
    assert_eq!(
        h.call(
            "GET",
            "/v1/auditEvents?limit=0",
            Some(&h.admin_token()),
            None
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let h = harness().await;
    let (status, doc) = h.call("GET", "/healthz", None, None).await;
    assert_eq!(
        (status, doc["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    // This node's (manual) clock is far from the database's: not ready, and it says why.
    let (status, doc) = h.call("GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{doc}");
    let detail = doc["errors"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("clock differs from the database's"),
        "{detail}"
    );
    // With the clocks in step, and the feed read at start-up: ready.
    let db_now = h.state.keys.store().db_now().await.unwrap();
    h.clock.set(db_now);
    let (status, doc) = h.call("GET", "/readyz", None, None).await;
    assert_eq!(
        (status, doc["status"].as_str()),
        (StatusCode::OK, Some("ready")),
        "{doc}"
    );
    assert!(doc["clockSkewSeconds"].as_i64().unwrap().abs() <= 5);
    assert!(doc["feedReadAgeMs"].is_u64());
}

/// The rolling-hour limit on the data plane, with the manual clock: the header counts down, the
/// request after the limit is a 429 with `Retry-After`, refusals do not spend from the budget,
/// and the budget comes back as the hour rolls on. Usage is flushed in a batch.
#[tokio::test]
async fn rate_limit_counts_down_then_refuses_until_the_hour_rolls() {
    let h = harness_with(|cfg| {
        let mut roles = std::collections::BTreeMap::new();
        roles.insert(
            keygate_core::role::Role::parse_name("DEVELOPER").unwrap(),
            keygate_core::policy::RolePolicy {
                allow: vec![keygate_core::policy::RoutePattern::parse("GET /v1/apps/**").unwrap()],
                long_lived: vec![],
                rate_limit_per_hour: Some(3),
            },
        );
        cfg.policy = keygate_core::policy::Policy::new(roles).with_default_rate_limit(5);
    })
    .await;
    let (dev, signer) = h.key_with_roles(&["DEVELOPER"]).await;
    let authz = |path: &str, token: &str| {
        Request::get(format!("/authz{path}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    let token = h.token_for(&dev, &signer, json!({}));
    // A 401 names no key, so it carries no rate header.
    let (status, headers, _) = h.send(authz("/v1/apps", "x.y.z")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get("x-rate-limit").is_none());
    for remaining in [2, 1, 0] {
        let (status, headers, _) = h.send(authz("/v1/apps", &token)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers["x-rate-limit"],
            format!("user-hour-lim:3;user-hour-rem:{remaining};").as_str()
        );
        h.clock.advance(60);
    }
    // A forbidden request reports the budget without spending it.
    let (status, headers, _) = h.send(authz("/v1/builds", &token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers["x-rate-limit"], "user-hour-lim:3;user-hour-rem:0;");
    let (status, headers, body) = h.send(authz("/v1/apps", &token)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["x-rate-limit"], "user-hour-lim:3;user-hour-rem:0;");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    // The first request was at minute 0; it is now minute 3, so it frees in 57 minutes.
    assert_eq!(headers[header::RETRY_AFTER], (57 * 60).to_string().as_str());
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["errors"][0]["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(doc["errors"][0]["status"], "429");
    // The nginx form of the same check is limited the same way.
    let (status, _, _) = h
        .send(
            Request::get("/authz")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header("x-original-method", "GET")
                .header("x-original-uri", "/v1/apps")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // nginx's second question (X-Keygate-Recheck) shows the refusal and spends nothing.
    let recheck = |path: &str| {
        Request::get(format!("/authz{path}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header("x-keygate-recheck", "1")
            .body(Body::empty())
            .unwrap()
    };
    let (status, headers, _) = h.send(recheck("/v1/apps")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key(header::RETRY_AFTER));
    let (status, _, _) = h.send(recheck("/v1/builds")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Minute 0 leaves the window: one request's worth comes back.
    h.clock.advance(57 * 60);
    let token = h.token_for(&dev, &signer, json!({}));
    // A recheck of a request that would now pass never answers 200, and spends nothing.
    let (status, headers, _) = h
        .send(
            Request::get("/authz/v1/apps")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header("x-keygate-recheck", "1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert_eq!(headers["x-rate-limit"], "user-hour-lim:3;user-hour-rem:1;");
    let (status, headers, _) = h.send(authz("/v1/apps", &token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-rate-limit"], "user-hour-lim:3;user-hour-rem:0;");
    // The admin key has no role limit: the default applies.
    let (status, headers, _) = h.send(authz("/v1/anything", &h.admin_token())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-rate-limit"], "user-hour-lim:5;user-hour-rem:4;");

    // Usage is metered in memory and written in one batch.
    let (_, doc) = h
        .call(
            "GET",
            &format!("/v1/apiKeys/{dev}"),
            Some(&h.admin_token()),
            None,
        )
        .await;
    assert_eq!(doc["data"]["attributes"]["requestCount"], 0);
    assert!(doc["data"]["attributes"]["lastUsedDate"].is_null());
    let written = h
        .state
        .keys
        .flush_usage(h.state.gate.meter())
        .await
        .unwrap();
    assert_eq!(written, 2);
    let (_, doc) = h
        .call(
            "GET",
            &format!("/v1/apiKeys/{dev}"),
            Some(&h.admin_token()),
            None,
        )
        .await;
    assert_eq!(doc["data"]["attributes"]["requestCount"], 4);
    assert_eq!(
        doc["data"]["attributes"]["lastUsedDate"],
        keygate_core::time_fmt::rfc3339(h.clock.now_secs())
    );
}

/// The decision order is credential, role, scope, then the long-lived rule: each refusal names
/// the first rule the request fails.
#[tokio::test]
async fn decision_order_is_role_then_scope_then_long_lived() {
    let h = harness_with(|cfg| {
        let mut roles = std::collections::BTreeMap::new();
        roles.insert(
            keygate_core::role::Role::parse_name("DEVELOPER").unwrap(),
            keygate_core::policy::RolePolicy {
                allow: vec![keygate_core::policy::RoutePattern::parse("GET /v1/apps/**").unwrap()],
                long_lived: vec![],
                rate_limit_per_hour: None,
            },
        );
        cfg.policy = keygate_core::policy::Policy::new(roles);
    })
    .await;
    let (dev, signer) = h.key_with_roles(&["DEVELOPER"]).await;
    let scoped = h.token_for(&dev, &signer, json!({"scope": ["GET /v1/apps/1"]}));
    // 30 days, scoped to a path that is not long-lived.
    let long = h.token_for(
        &dev,
        &signer,
        json!({"scope": ["GET /v1/apps/1"], "exp": h.clock.now_secs() + 30 * 86400}),
    );
    for (token, path, status, reason) in [
        (
            &scoped,
            "/authz/v1/builds",
            StatusCode::FORBIDDEN,
            "ROLE_NOT_ALLOWED",
        ),
        (
            &scoped,
            "/authz/v1/apps/2",
            StatusCode::FORBIDDEN,
            "SCOPE_MISMATCH",
        ),
        (
            &long,
            "/authz/v1/builds",
            StatusCode::FORBIDDEN,
            "ROLE_NOT_ALLOWED",
        ),
        (
            &long,
            "/authz/v1/apps/2",
            StatusCode::FORBIDDEN,
            "SCOPE_MISMATCH",
        ),
        (
            &long,
            "/authz/v1/apps/1",
            StatusCode::UNAUTHORIZED,
            "LIFETIME_TOO_LONG",
        ),
    ] {
        h.deny(
            Request::get(path)
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap(),
            status,
            reason,
        )
        .await;
    }
    let (status, _) = h.call("GET", "/authz/v1/apps/1", Some(&scoped), None).await;
    assert_eq!(status, StatusCode::OK);
    // The management API refuses the long token too.
    let (status, doc) = h.call("GET", "/v1/issuer", Some(&long), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{doc}");
}

/// A token served from the verified-token cache is refused on the very next request after its
/// key is revoked.
#[tokio::test]
async fn a_revoked_keys_cached_token_is_refused_on_the_next_request() {
    let h = harness().await;
    let (id, signer) = h.key_with_roles(&["DEVELOPER"]).await;
    let token = h.token_for(&id, &signer, json!({}));
    for _ in 0..3 {
        let (status, _) = h.call("GET", "/authz/v1/apps", Some(&token), None).await;
        assert_eq!(status, StatusCode::OK);
    }
    let cache = h.state.gate.verifier().token_cache();
    assert!(!cache.is_empty(), "the token is cached");
    let (status, _) = h
        .call(
            "PATCH",
            &format!("/v1/apiKeys/{id}"),
            Some(&h.admin_token()),
            Some(json!({"data": {"type": "apiKeys", "id": id, "attributes": {"isActive": false}}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    h.deny(
        Request::get("/authz/v1/apps")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "KEY_REVOKED",
    )
    .await;
}

/// A policy's `long_lived` paths are for the protected API: one that overlaps keygate's own
/// `/v1` routes does not open keygate's management API to a token that lives for months.
#[tokio::test]
async fn keygates_own_api_takes_no_long_lived_token() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[roles.ADMIN]\nallow = [\"GET /v1/**\"]\nlong_lived = [\"GET /v1/**\"]\n",
    )
    .unwrap();
    let h = harness_with(|c| {
        c.policy = config::load(Some(&policy), &|_| None, &Overrides::default())
            .unwrap()
            .policy;
    })
    .await;
    let now = h.clock.now_secs();
    let long = h.token_for(
        &h.admin.0,
        &h.admin.1,
        json!({"exp": now + 30 * 86_400, "scope": ["GET /v1/apiKeys"]}),
    );
    // The protected API takes it, as the policy says.
    assert_eq!(
        h.call("GET", "/authz/v1/apiKeys", Some(&long), None)
            .await
            .0,
        StatusCode::OK
    );
    // keygate's own API does not.
    let (status, doc) = h.call("GET", "/v1/apiKeys", Some(&long), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{doc}");
    assert_eq!(error_code(&doc).1, Some("LIFETIME_TOO_LONG"));
    let (status, _) = h
        .call("GET", "/v1/apiKeys", Some(&h.admin_token()), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// Text that could not be stored (a NUL, on PostgreSQL) or that would steer a reader is refused
/// in a revoke reason with App Store Connect's 409 `ENTITY_ERROR.ATTRIBUTE.INVALID` that points
/// at the field, and nothing changes.
#[tokio::test]
async fn a_revoke_reason_with_control_characters_is_refused() {
    let h = harness().await;
    let (id, _) = h.key_with_roles(&["DEVELOPER"]).await;
    for reason in ["bad\u{0}reason", "bell\u{7}", "esc\u{1b}[31m"] {
        let (status, doc) = h
            .call(
                "PATCH",
                &format!("/v1/apiKeys/{id}"),
                Some(&h.admin_token()),
                Some(json!({"data": {"type": "apiKeys", "id": id, "attributes": {"isActive": false, "revokeReason": reason}}})),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{reason:?}: {doc}");
        assert_eq!(
            doc["errors"][0]["source"]["pointer"],
            "/data/attributes/revokeReason"
        );
    }
    let (status, doc) = h
        .call(
            "GET",
            &format!("/v1/apiKeys/{id}"),
            Some(&h.admin_token()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["data"]["attributes"]["isActive"], true, "{doc}");
}

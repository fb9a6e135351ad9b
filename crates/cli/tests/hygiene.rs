//! Secrets hygiene: one run through everything that handles a secret (setup, sign-in, failed
//! sign-in, sessions and CSRF tokens, invitations, API keys and their one download, tokens,
//! secret keys and a roll) with trace-level logging; then every log line and every file of the
//! data folder is scanned for each of those secrets. Nothing may be found.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines
)] // test code: a failed expectation should panic; the scenario reads top to bottom

mod common;

use common::*;
use serde_json::{Value, json};

/// The client that drives the web forms: no redirects followed, cookies by hand.
fn browserish() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Submits a pre-session form at `url` (setup, invitation, sign-in); returns the response.
async fn submit(c: &reqwest::Client, url: &str, action: &str, fields: &str) -> reqwest::Response {
    let page = c.get(url).send().await.unwrap();
    let form = set_cookie(&page, "keygate_form").unwrap();
    c.post(action)
        .header("cookie", format!("keygate_form={form}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf_token={form}&{fields}"))
        .send()
        .await
        .unwrap()
}

/// The CSRF token a signed-in page carries.
async fn csrf_of(c: &reqwest::Client, server: &Server, session: &str) -> String {
    let html = c
        .get(server.url("/access/integrations"))
        .header("cookie", format!("keygate_session={session}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = html.find("name=\"csrf_token\" value=\"").unwrap() + 25;
    html[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_or_the_data_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, printed) =
        Server::start_on(&format!("sqlite://{}/keygate.db", data.display()), &[], &[]);
    let setup = printed
        .iter()
        .flat_map(|l| l.split_whitespace())
        .find(|w| w.contains("/setup/"))
        .unwrap()
        .to_owned();
    let c = browserish();
    let mut secrets: Vec<(&str, String)> = Vec::new();

    // Setup, then a failed and a good sign-in.
    let holder_pw = "first holder's password";
    let resp = submit(
        &c,
        &setup,
        &setup,
        &format!(
            "first_name=Ada&last_name=L&email=ada%40example.com&password={0}&password_confirm={0}",
            holder_pw.replace(' ', "+").replace('\'', "%27")
        ),
    )
    .await;
    assert_eq!(resp.status(), 303);
    let first_session = set_cookie(&resp, "keygate_session").unwrap();
    let wrong = submit(
        &c,
        &server.url("/signin"),
        &server.url("/signin"),
        "email=ada%40example.com&password=not+the+password+at+all",
    )
    .await;
    assert_eq!(wrong.status(), 401);
    let resp = submit(
        &c,
        &server.url("/signin"),
        &server.url("/signin"),
        &format!(
            "email=ada%40example.com&password={}",
            holder_pw.replace(' ', "+").replace('\'', "%27")
        ),
    )
    .await;
    let session = set_cookie(&resp, "keygate_session").unwrap();
    let csrf = csrf_of(&c, &server, &session).await;
    let api = |method: reqwest::Method, path: &str| {
        c.request(method, server.url(path))
            .header("cookie", format!("keygate_session={session}"))
            .header("x-csrf-token", &csrf)
    };

    // An API key, its one download, a token.
    let key: Value = api(reqwest::Method::POST, "/v1/apiKeys")
        .json(
            &json!({"data": {"type": "apiKeys", "attributes": {"name": "k", "roles": ["ADMIN"]}}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key_id = key["data"]["id"].as_str().unwrap().to_owned();
    let pem = api(
        reqwest::Method::GET,
        &format!("/v1/apiKeys/{key_id}/privateKey"),
    )
    .send()
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let key_file = dir.path().join("AuthKey.p8");
    std::fs::write(&key_file, &pem).unwrap();
    let issuer: Value = api(reqwest::Method::GET, "/v1/issuer")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwt = cli_token(&key_file, &key_id, issuer["data"]["id"].as_str().unwrap());
    assert_eq!(authz_status(&server, &jwt, "/v1/apps").await, 200);

    // A secret key, used, rolled, used.
    let sk: Value = api(reqwest::Method::POST, "/v1/secretKeys")
        .json(&json!({"data": {"type": "secretKeys", "attributes": {"name": "s", "roles": ["DEVELOPER"]}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = sk["data"]["attributes"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(authz_status(&server, &secret, "/v1/apps").await, 200);
    let rolled: Value = api(
        reqwest::Method::POST,
        &format!("/v1/secretKeys/{}/roll", sk["data"]["id"].as_str().unwrap()),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let rolled = rolled["data"]["attributes"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(authz_status(&server, &rolled, "/v1/apps").await, 200);

    // An invitation, accepted with a password.
    let inv: Value = api(reqwest::Method::POST, "/v1/userInvitations")
        .json(&json!({"data": {"type": "userInvitations", "attributes": {"email": "g@example.com", "firstName": "G", "lastName": "H", "roles": ["DEVELOPER"]}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let accept = server.url(inv["links"]["accept"].as_str().unwrap());
    let grace_pw = "second person's password";
    let resp = submit(
        &c,
        &accept,
        &accept,
        &format!(
            "password={0}&password_confirm={0}",
            grace_pw.replace(' ', "+").replace('\'', "%27")
        ),
    )
    .await;
    let grace_session = set_cookie(&resp, "keygate_session").unwrap();

    secrets.push(("holder password", holder_pw.to_owned()));
    secrets.push(("second password", grace_pw.to_owned()));
    secrets.push(("wrong password", "not the password at all".to_owned()));
    secrets.push(("setup link", setup.rsplit('/').next().unwrap().to_owned()));
    secrets.push((
        "invitation link",
        accept.rsplit('/').next().unwrap().to_owned(),
    ));
    for (what, s) in [
        ("session", &first_session),
        ("session", &session),
        ("session", &grace_session),
    ] {
        secrets.push((what, s.clone()));
    }
    secrets.push(("CSRF token", csrf.clone()));
    secrets.push(("token", jwt.clone()));
    secrets.push((
        "token signature",
        jwt.rsplit('.').next().unwrap().to_owned(),
    ));
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        secrets.push(("private key", line.to_owned()));
    }
    for s in [&secret, &rolled] {
        secrets.push(("secret key", s.clone()));
        secrets.push(("secret key's random part", s[5..48].to_owned()));
    }

    // Scan: every log line, every file of the data folder (master.key holds the master key by
    // design; it is checked against the log instead).
    let log = server.log.lock().unwrap().clone();
    assert!(log.lines().count() > 50, "trace logging was on");
    let master = std::fs::read_to_string(data.join("master.key")).unwrap();
    secrets.push(("master key", master.trim().to_owned()));
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && !path.ends_with("master.key") {
            files.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    assert!(files.iter().any(|(p, _)| p.ends_with("keygate.db")));
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    for (what, secret) in &secrets {
        assert!(secret.len() >= 8, "{what} is too short to scan for");
        assert!(!log.contains(secret.as_str()), "the log holds a {what}");
        if *what != "master key" {
            for (path, bytes) in &files {
                assert!(!contains(bytes, secret.as_bytes()), "{path} holds a {what}");
            }
        }
    }
}

/// The shapes every server's log is scanned for when its test ends (`Server`'s drop).
#[test]
fn the_log_scan_finds_every_shape_of_secret() {
    let pem = format!("-----BEGIN {} KEY-----", "PRIVATE");
    let secret = format!("kgsk_{}_Abc123", "a1B2".repeat(11));
    let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJleHAiOjF9.c2lnbmF0dXJl";
    for (line, what) in [
        (pem.as_str(), "PEM"),
        (secret.as_str(), "secret key"),
        (jwt, "JWT"),
        ("cookie: keygate_session=Zm9vYmFyYmF6cXV4cXV1eA", "session"),
        ("keygate_form=Zm9vYmFyYmF6cXV4cXV1eA", "form cookie"),
        ("authorization: Bearer abcdefghijklmnopqrstuvwx", "bearer"),
    ] {
        assert!(
            !secret_shapes(&format!("INFO x {line} y")).is_empty(),
            "{what} not found"
        );
    }
    // What logs rightly hold: key IDs, secret-key hints, issuer IDs, paths.
    for line in [
        "key_id=7XU473GW0H hint=kgsk_AbCd issuer=5751d6dd-d02b-4570-8408-3733a55ee9ea",
        "GET /v1/apiKeys/7XU473GW0H/privateKey 200",
        "Bearer token missing",
    ] {
        assert!(secret_shapes(line).is_empty(), "{line}");
    }
}

//! End-to-end: the real `keygate` binary on a real port and a real `SQLite` file, driven over HTTP
//! and through its own CLI, as an operator and a client would.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    clippy::needless_pass_by_value
)] // test code: a failed expectation should panic; scenarios read top to bottom

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_key_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode(dir.path().join("data")),
            0o700,
            "the data folder is private"
        );
        assert_eq!(
            mode(dir.path().join("data/master.key")),
            0o600,
            "the master key is private"
        );
    }

    lifecycle(&server, dir.path(), &[]).await;
}

/// The same lifecycle on PostgreSQL (a fresh database on `KEYGATE_TEST_POSTGRES`), with the
/// master key from the environment as every PostgreSQL node has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_key_lifecycle_on_postgres() {
    let db = keygate_testkit::PgDatabase::create().await;
    let master = keygate_core::crypto::MasterKey::generate()
        .unwrap()
        .to_base64()
        .to_string();
    let env = [("KEYGATE_MASTER_KEY", master.as_str())];
    let (server, printed) = Server::start_on(db.url(), &[], &env);
    assert!(
        printed.iter().any(|l| l.contains("created issuer")),
        "{printed:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    lifecycle(&server, dir.path(), &env).await;
}

/// Bootstrap, create, download once (CLI, openssl), tokens from two libraries, revoke, audit,
/// and a log free of secrets.
async fn lifecycle(server: &Server, dir: &Path, env: &[(&str, &str)]) {
    // 1. Bootstrap an admin key while the server runs; the server accepts it within 2 s.
    let admin = bootstrap_env(server, &dir.join("keys"), env);
    let admin_token = cli_token(&admin.key_file, &admin.key_id, &admin.issuer);
    wait_until_accepted(server, &admin_token).await;

    // 2. Create a DEVELOPER key.
    let key_id = create_key(server, &admin_token, &["DEVELOPER"]).await;

    // 3. Download the .p8 with the CLI; openssl reads it as P-256. A target file that already
    //    exists stops the CLI before it spends the one download.
    let keys_dir = dir.join("keys");
    let blocker = keys_dir.join(format!("AuthKey_{key_id}.p8"));
    std::fs::write(&blocker, "in the way").unwrap();
    let (ok, _, stderr) = admin_cli(
        server,
        &admin,
        &["download", &key_id, "--out", keys_dir.to_str().unwrap()],
    );
    assert!(!ok && stderr.contains("cannot create"), "{stderr}");
    std::fs::remove_file(&blocker).unwrap();
    let (ok, _, stderr) = admin_cli(
        server,
        &admin,
        &["download", &key_id, "--out", keys_dir.to_str().unwrap()],
    );
    assert!(ok, "keys download failed: {stderr}");
    let p8 = keys_dir.join(format!("AuthKey_{key_id}.p8"));
    let pem = std::fs::read_to_string(&p8).unwrap();
    assert!(pem.starts_with(&format!("{}\n", keygate_core::crypto::PKCS8_PEM_BEGIN)));
    let openssl = Command::new("openssl")
        .args(["pkey", "-in", p8.to_str().unwrap(), "-noout", "-text"])
        .output()
        .expect("openssl is installed");
    assert!(
        openssl.status.success(),
        "{}",
        String::from_utf8_lossy(&openssl.stderr)
    );
    let text = String::from_utf8_lossy(&openssl.stdout);
    assert!(
        text.contains("prime256v1") || text.contains("P-256"),
        "{text}"
    );

    // 4. A second download gets 410.
    let resp = http()
        .get(server.url(&format!("/v1/apiKeys/{key_id}/privateKey")))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        reason(resp).await,
        (410, "PRIVATE_KEY_ALREADY_DOWNLOADED".to_owned())
    );

    // 5. Tokens from `keygate token` and from an independent JWT library pass /authz.
    let cli = cli_token(&p8, &key_id, &admin.issuer);
    let now = keygate_core::clock::Clock::now(&keygate_core::clock::SystemClock);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(key_id.clone());
    let enc = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    // App Store Connect's shape: no iat, a bid claim, 20 minutes.
    let independent = jsonwebtoken::encode(&header, &json!({"iss": admin.issuer, "aud": "keygate-v1", "exp": now + 1200, "bid": "com.example.app"}), &enc).unwrap();
    for (name, token) in [("keygate token", &cli), ("jsonwebtoken", &independent)] {
        let resp = http()
            .get(server.url("/authz/v1/apps?limit=5"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{name}");
        assert_eq!(resp.headers()["x-keygate-key-id"], key_id.as_str());
        assert_eq!(resp.headers()["x-keygate-roles"], "DEVELOPER");
        let resp = http()
            .get(server.url("/authz"))
            .header("authorization", format!("Bearer {token}"))
            .header("x-original-method", "POST")
            .header("x-original-uri", "/v1/builds")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{name} via X-Original-*");
    }

    // 6. Revoke; the next call gets 401 KEY_REVOKED.
    let (ok, _, stderr) = admin_cli(server, &admin, &["revoke", &key_id, "--reason", "e2e"]);
    assert!(ok, "keys revoke failed: {stderr}");
    for token in [&cli, &independent] {
        let resp = http()
            .get(server.url("/authz/v1/apps"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(reason(resp).await, (401, "KEY_REVOKED".to_owned()));
    }
    let (ok, listing, _) = admin_cli(server, &admin, &["list", "--json"]);
    assert!(ok);
    let listing: Value = serde_json::from_str(&listing).unwrap();
    let revoked = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == key_id.as_str())
        .unwrap();
    assert_eq!(
        revoked["isActive"], false,
        "revoked keys stay listed, marked revoked"
    );

    // The audit log names the actor and the source address of the download.
    let audit: Value = http()
        .get(server.url("/v1/auditEvents?limit=200"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let download = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["attributes"]["action"] == "apiKey.privateKey.downloaded"
                && e["attributes"]["target"] == key_id.as_str()
        })
        .expect("the download is audited");
    assert_eq!(download["attributes"]["sourceIp"], "127.0.0.1");
    assert_eq!(
        download["attributes"]["actor"],
        format!("apiKey:{}", admin.key_id)
    );

    // The trace-level log never holds key material or tokens.
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.contains("private key downloaded"),
        "the log is being captured"
    );
    let pem_body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    for (what, secret) in [
        ("private key", pem_body.get(..40).unwrap()),
        ("CLI token", cli.as_str()),
        ("JWT signature", independent.rsplit('.').next().unwrap()),
        ("admin token", admin_token.as_str()),
    ] {
        assert!(!log.contains(secret), "the log contains a {what}");
    }
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(
            !log.contains(line),
            "the log contains a line of the private key"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_downloads_succeed_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let admin = bootstrap(&server, &dir.path().join("keys"));
    let token = cli_token(&admin.key_file, &admin.key_id, &admin.issuer);
    wait_until_accepted(&server, &token).await;
    for round in 0..3 {
        let key_id = create_key(&server, &token, &["DEVELOPER"]).await;
        let url = server.url(&format!("/v1/apiKeys/{key_id}/privateKey"));
        let client = http();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (client, url, token) = (client.clone(), url.clone(), token.clone());
                tokio::spawn(async move {
                    let resp = client.get(url).bearer_auth(token).send().await.unwrap();
                    let status = resp.status().as_u16();
                    (status, resp.text().await.unwrap())
                })
            })
            .collect();
        let mut ok = 0;
        let mut gone = 0;
        for t in tasks {
            match t.await.unwrap() {
                (200, body) => {
                    assert!(body.starts_with(keygate_core::crypto::PKCS8_PEM_BEGIN));
                    ok += 1;
                }
                (410, body) => {
                    assert!(body.contains("PRIVATE_KEY_ALREADY_DOWNLOADED"), "{body}");
                    gone += 1;
                }
                (status, body) => panic!("round {round}: unexpected {status}: {body}"),
            }
        }
        assert_eq!((ok, gone), (1, 31), "round {round}");
    }
}

/// Every file in a folder, by name.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            out.push((
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path()).unwrap(),
            ));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The private scalar inside a P-256 PKCS#8 document (after `02 01 01 04 20` of `ECPrivateKey`).
fn p256_scalar(der: &[u8]) -> Vec<u8> {
    let marker = [0x02, 0x01, 0x01, 0x04, 0x20];
    let at = der
        .windows(5)
        .position(|w| w == marker)
        .expect("ECPrivateKey in PKCS#8")
        + 5;
    der[at..at + 32].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_bytes_are_never_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let admin = bootstrap(&server, &dir.path().join("keys"));
    let token = cli_token(&admin.key_file, &admin.key_id, &admin.issuer);
    wait_until_accepted(&server, &token).await;

    let mut keys = Vec::new();
    for _ in 0..5 {
        keys.push(create_key(&server, &token, &["DEVELOPER"]).await);
    }
    let before = snapshot(&data);
    assert!(before.iter().any(|(n, _)| n == "keygate.db"));

    let mut secrets = Vec::new();
    for key_id in &keys {
        let resp = http()
            .get(server.url(&format!("/v1/apiKeys/{key_id}/privateKey")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let pem = resp.text().await.unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(&body)
            .unwrap();
        secrets.push((key_id.clone(), pem, der));
    }
    let after = snapshot(&data);

    for (key_id, pem, der) in &secrets {
        let scalar = p256_scalar(der);
        let hex: String = scalar
            .iter()
            .fold(String::new(), |acc, b| acc + &format!("{b:02x}"));
        let needles: Vec<(&str, Vec<u8>)> = vec![
            ("private scalar", scalar.clone()),
            ("private scalar in hex", hex.into_bytes()),
            ("PKCS#8 DER", der.clone()),
            (
                "PEM line 1",
                pem.lines().nth(1).unwrap().as_bytes().to_vec(),
            ),
            (
                "PEM line 2",
                pem.lines().nth(2).unwrap().as_bytes().to_vec(),
            ),
        ];
        for (when, files) in [("before download", &before), ("after download", &after)] {
            for (file, bytes) in files {
                for (what, needle) in &needles {
                    assert!(
                        !contains(bytes, needle),
                        "{what} of key {key_id} found in {file} {when}"
                    );
                }
            }
        }
    }
    // After the download, not even the sealed copy remains: the pending row is gone and the
    // WAL that held it is checkpointed and truncated, in the background, within moments.
    let wal = data.join("keygate.db-wal");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&wal).map_or(0, |m| m.len()) != 0 {
        assert!(
            Instant::now() < deadline,
            "the WAL was not truncated after the downloads"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (key_id, _, _) in &secrets {
        let doc: Value = http()
            .get(server.url(&format!("/v1/apiKeys/{key_id}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["data"]["attributes"]["privateKeyState"], "DOWNLOADED");
        assert_eq!(doc["data"]["attributes"]["canDownload"], false);
    }
}

#[test]
fn bootstrap_offline_creates_exactly_the_issuer_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/data/keygate.db", dir.path().display());
    let out = dir.path().join("keys");
    let issuer = "57246542-96fe-1a63-e053-0824d011072a";
    let run = |extra: &[&str]| {
        let mut args = vec![
            "admin",
            "bootstrap",
            "--database",
            &db,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = keygate(&args);
        assert!(ok, "{stderr}");
        serde_json::from_str::<Value>(stdout.trim()).unwrap()
    };
    let first = run(&["--issuer-id", issuer]);
    assert_eq!(first["issuerId"], issuer);
    let second = run(&[]);
    assert_eq!(
        second["issuerId"], issuer,
        "with an issuer present, bootstrap uses it"
    );
    assert_ne!(first["keyId"], second["keyId"]);
    let (ok, _, stderr) = keygate(&[
        "admin",
        "bootstrap",
        "--database",
        &db,
        "--out",
        out.to_str().unwrap(),
        "--issuer-id",
        "not-a-uuid",
    ]);
    assert!(!ok);
    assert!(stderr.contains("--issuer-id"), "{stderr}");
}

#[test]
fn check_config_prints_what_it_understood_and_names_bad_keys() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policy.appstoreconnect.toml");
    let (ok, stdout, stderr) = keygate(&["check-config", "--config", shipped.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    for expected in [
        "audiences              appstoreconnect-v1",
        "[FINANCE]",
        "long_lived GET /v1/financeReports",
        "rate limit 1200 requests per rolling hour per key",
        "rate_limit_per_hour    3600 per key",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in:\n{stdout}");
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "audiences = [\"a\"]\n[roles.DEVELOPER]\nallow = [\"GET /v1/apps\"]\nrate_limit = 5\n",
    )
    .unwrap();
    let (ok, _, stderr) = keygate(&["check-config", "--config", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("rate_limit") && stderr.contains("line 4"),
        "{stderr}"
    );
}

/// `keygate audit verify` walks the chain from the database and names the first broken link:
/// an event altered behind keygate's back (the append-only trigger dropped first) is caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_the_first_broken_link() {
    use sqlx::Connection as _;

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let admin = bootstrap(&server, &dir.path().join("keys"));
    let admin_token = cli_token(&admin.key_file, &admin.key_id, &admin.issuer);
    wait_until_accepted(&server, &admin_token).await;
    for _ in 0..3 {
        create_key(&server, &admin_token, &["DEVELOPER"]).await;
    }
    let verify = || keygate(&["audit", "verify", "--database", &server.db_url]);
    let (ok, stdout, stderr) = verify();
    assert!(ok, "{stderr}");
    assert!(stdout.contains("audit chain intact: 5 events"), "{stdout}");
    // The head hash is printed, to be kept elsewhere.
    let head = stdout
        .split("head hash ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert_eq!(head.len(), 64, "{stdout}");

    let mut db = sqlx::SqliteConnection::connect(&server.db_url)
        .await
        .unwrap();
    let tamper = |sql: &'static str| sqlx::raw_sql(sql);
    // Events removed from the end leave a chain that verifies, but not up to the head kept.
    tamper(
        "DROP TRIGGER audit_events_no_delete; \
         CREATE TABLE kept AS SELECT * FROM audit_events WHERE seq = 5; \
         DELETE FROM audit_events WHERE seq = 5;",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let (ok, stdout, _) = verify();
    assert!(
        ok && stdout.contains("4 events up to #4") && !stdout.contains(&head),
        "{stdout}"
    );
    tamper("INSERT INTO audit_events SELECT * FROM kept; DROP TABLE kept;")
        .execute(&mut db)
        .await
        .unwrap();
    let (ok, stdout, _) = verify();
    assert!(ok && stdout.contains(&head), "restored: {stdout}");

    // An altered event breaks its link.
    tamper(
        "DROP TRIGGER audit_events_no_update; \
         UPDATE audit_events SET actor = 'system:nobody' WHERE seq = 3;",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let (ok, _, stderr) = verify();
    assert!(!ok);
    assert!(
        stderr.contains("BROKEN")
            && stderr.contains("event #3")
            && stderr.contains("2 events before it verified"),
        "{stderr}"
    );
    // So does one that no longer even reads (an action keygate does not know).
    tamper("UPDATE audit_events SET actor = 'apiKey:x', action = 'key.teleported' WHERE seq = 2;")
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    let (ok, _, stderr) = verify();
    assert!(!ok);
    assert!(
        stderr.contains("BROKEN")
            && stderr.contains("audit event #2")
            && stderr.contains("1 events before it verified"),
        "{stderr}"
    );
}

/// Opens a one-time link's page (an invitation, a password reset) as a browser would, then
/// posts its form with `password` (form-encoded) typed twice.
async fn set_password_through(
    client: &reqwest::Client,
    link: &str,
    password: &str,
) -> reqwest::Response {
    let page = client.get(link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let form_cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("keygate_form="))
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_owned();
    client
        .post(link)
        .header("cookie", format!("keygate_form={form_cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "csrf_token={form_cookie}&password={password}&password_confirm={password}"
        ))
        .send()
        .await
        .unwrap()
}

/// `keygate users invite|list|remove` as an admin key; the invited person accepts over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_cli_invites_lists_and_removes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let admin = bootstrap(&server, dir.path());
    wait_until_accepted(
        &server,
        &cli_token(&admin.key_file, &admin.key_id, &admin.issuer),
    )
    .await;
    let users = |args: &[&str]| {
        let mut all: Vec<&str> = vec!["users"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[
            "--server",
            &server.base,
            "--key",
            admin.key_file.to_str().unwrap(),
            "--key-id",
            &admin.key_id,
            "--issuer-id",
            &admin.issuer,
            "--json",
        ]);
        let (ok, out, err) = keygate(&all);
        assert!(ok, "keygate users {args:?}: {err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let invited = users(&[
        "invite",
        "--email",
        "lin@example.com",
        "--first-name",
        "Lin",
        "--last-name",
        "Chen",
        "--role",
        "DEVELOPER",
    ]);
    let accept = invited["acceptUrl"].as_str().unwrap().to_owned();
    assert!(accept.starts_with(&server.url("/invitations/")), "{accept}");

    // The person accepts in a browser-like way: the form's cookie and token, then a password.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let done = set_password_through(&client, &accept, "long+enough+secret").await;
    assert_eq!(done.status(), 303);
    assert_eq!(done.headers()["location"], "/access/integrations");

    let listed = users(&["list"]);
    let lin = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "lin@example.com")
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(lin["roles"], json!(["DEVELOPER"]));
    // Forgotten password: the operator's one-time reset link, from the database directly.
    let (ok, out, err) = keygate_env(
        &[
            "admin",
            "reset-password",
            "--database",
            &server.db_url,
            "--email",
            "LIN@example.com",
        ],
        &[("KEYGATE_PUBLIC_URL", &server.base)],
    );
    assert!(ok, "{err}");
    let reset = out
        .split_whitespace()
        .find(|w| w.starts_with(&server.url("/reset/")))
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let done = set_password_through(&client, &reset, "another+long+secret").await;
    assert_eq!(done.status(), 303);
    assert_eq!(
        client.get(&reset).send().await.unwrap().status(),
        404,
        "spent"
    );
    // Read-only and repair commands never create a database.
    let typo = dir.path().join("typo").join("kg.db");
    for args in [
        vec!["admin", "reset-password", "--email", "lin@example.com"],
        vec!["audit", "verify"],
    ] {
        let mut args = args;
        let url = format!("sqlite://{}", typo.display());
        args.extend(["--database", &url]);
        let (ok, _, err) = keygate(&args);
        assert!(!ok, "{args:?} succeeded on a missing database");
        assert!(err.contains("no keygate database"), "{err}");
        assert!(!typo.exists() && !typo.parent().unwrap().exists());
    }

    let id = lin["id"].as_str().unwrap().to_owned();
    assert_eq!(users(&["remove", &id])["removed"], json!(id));
    assert!(
        !users(&["list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["email"] == "lin@example.com")
    );
}

/// Secret keys end to end: created and rolled through the CLI, presented to the reverse proxy
/// and to `/authz`, revoked; then no secret is found in any file of the data folder or in the
/// trace-level log, while the hashes keygate looks them up by are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_keys_through_the_cli_and_the_proxy_are_never_at_rest() {
    let up = std::sync::Arc::new(Upstream::default());
    let upstream = serve_upstream(echo_routes().with_state(std::sync::Arc::clone(&up))).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with(
        &data,
        &["--proxy-listen", "127.0.0.1:0", "--upstream", &upstream],
        &[],
    );
    let proxy = server.proxy.clone().unwrap();
    let admin = bootstrap(&server, dir.path());
    wait_until_accepted(
        &server,
        &cli_token(&admin.key_file, &admin.key_id, &admin.issuer),
    )
    .await;
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = vec!["secret-keys"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[
            "--server",
            &server.base,
            "--key",
            admin.key_file.to_str().unwrap(),
            "--key-id",
            &admin.key_id,
            "--issuer-id",
            &admin.issuer,
            "--json",
        ]);
        let (ok, out, err) = keygate(&all);
        assert!(ok, "keygate secret-keys {args:?}: {err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let web = cli(&[
        "create",
        "--name",
        "web",
        "--role",
        "DEVELOPER",
        "--api",
        "GET /v1/echo/**",
        "--ip-range",
        "127.0.0.0/8",
    ]);
    let id = web["id"].as_str().unwrap().to_owned();
    let first = web["secret"].as_str().unwrap().to_owned();
    let other = cli(&["create", "--name", "other", "--role", "DEVELOPER"]);
    let other_secret = other["secret"].as_str().unwrap().to_owned();
    let until = keygate_core::time_fmt::rfc3339(
        keygate_core::clock::Clock::now(&keygate_core::clock::SystemClock) + 3600,
    );
    let rolled = cli(&["roll", &id, "--old-key-expires-at", &until]);
    let second = rolled["secret"].as_str().unwrap().to_owned();
    assert_ne!(first, second);

    // Through the reverse proxy: the upstream sees the secret key's identity, not the secret.
    for secret in [&first, &second] {
        let resp = http()
            .get(format!("{proxy}/v1/echo/tiles"))
            .header("x-api-key", secret.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let seen: Value = resp.json().await.unwrap();
        assert_eq!(seen["headers"]["x-keygate-key-type"], json!(["secret"]));
        assert_eq!(seen["headers"]["x-keygate-key-id"], json!([id]));
        assert!(seen["headers"].get("x-api-key").is_none(), "{seen}");
        assert!(!seen.to_string().contains(secret.as_str()));
    }
    let resp = http()
        .post(format!("{proxy}/v1/echo/tiles"))
        .header("x-api-key", &second)
        .send()
        .await
        .unwrap();
    assert_eq!(reason(resp).await, (403, "API_NOT_ALLOWED".into()));
    // And through forward auth, as a bearer credential.
    assert_eq!(
        authz_status(&server, &other_secret, "/v1/anything").await,
        200
    );
    let revoked = cli(&["revoke", other["id"].as_str().unwrap(), "--reason", "done"]);
    assert_eq!(revoked["isActive"], false);
    assert_eq!(
        authz_status(&server, &other_secret, "/v1/anything").await,
        401
    );
    let listed = cli(&["list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    for secret in [&first, &second, &other_secret] {
        assert!(
            !listed.to_string().contains(&secret[5..48]),
            "lists show hints only"
        );
    }

    // Nothing at rest: no secret (nor its random part) in any file, nor in the log.
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            stored.extend(std::fs::read(&path).unwrap());
        }
    }
    let log = server.log.lock().unwrap().clone();
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    for secret in [&first, &second, &other_secret] {
        let random = &secret.as_bytes()[5..48];
        assert!(
            !contains(&stored, secret.as_bytes()),
            "a secret is in the data folder"
        );
        assert!(
            !contains(&stored, random),
            "a secret's random part is in the data folder"
        );
        assert!(!log.contains(secret.as_str()), "a secret is in the log");
    }
    // The scan looks where the keys are: their SHA-256 hashes are stored.
    let parsed = keygate_core::secret_key::SecretKeyText::parse(&second).unwrap();
    let db = std::fs::read(data.join("keygate.db")).unwrap();
    let wal = std::fs::read(data.join("keygate.db-wal")).unwrap_or_default();
    assert!(
        contains(&db, &parsed.hash()) || contains(&wal, &parsed.hash()),
        "the secret's hash is stored"
    );
}

//! The web UI in a real headless Chromium, driven through chromedriver (`WebDriver`), against a
//! real `keygate serve` on a real port: first-run setup, sign-in, Generate API Key, the one-time
//! download through the link, revocation, an invitation accepted by a second person, and what
//! that person may not do. Screenshots of the key pages go to `docs/screenshots/`.
//!
//! Chromium and chromedriver come from Debian (`scripts/test` installs them).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines
)] // test code: a failed expectation should panic; the scenario reads top to bottom

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Server, authz_status, http, reason};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// A chromedriver process on a free loopback port, killed on drop.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(driver_binary())
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver (apt install chromium chromium-driver; scripts/test does)");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http().get(format!("{url}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, url }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn driver_binary() -> PathBuf {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("chromedriver"))
}

async fn browser(driver: &Chromedriver, downloads: &Path) -> Client {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--window-size=1280,900", "--lang=en-US",
            ],
            "prefs": {
                "download.default_directory": downloads.to_str().unwrap(),
                "download.prompt_for_download": false,
                "safebrowsing.enabled": false,
            },
        },
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session in headless Chromium")
}

fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots")
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::create_dir_all(screenshot_dir()).unwrap();
    std::fs::write(screenshot_dir().join(name), png).unwrap();
}

async fn fill(c: &Client, id: &str, value: &str) {
    let field = c.find(Locator::Id(id)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(value).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

async fn path(c: &Client) -> String {
    let url = c.current_url().await.unwrap();
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

/// Waits for a navigation after a click to land on a path starting with `prefix`; returns it.
async fn landed(c: &Client, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = path(c).await;
        if p.starts_with(prefix) {
            // The new document is loaded once its main element is there.
            let _ = c.wait().for_element(Locator::Css("main")).await;
            return p;
        }
        assert!(Instant::now() < deadline, "still at {p}, expected {prefix}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the element with this `id` is on the page (a form that posts to its own URL has
/// landed once its answer's element is there).
async fn shown(c: &Client, id: &str) {
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id} not shown: {e}"));
}

async fn text(c: &Client) -> String {
    c.find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn sign_in(c: &Client, server: &Server, email: &str, password: &str) {
    c.goto(&server.url("/signin")).await.unwrap();
    fill(c, "email", email).await;
    fill(c, "password", password).await;
    click(c, "form.stack button[type=submit]").await;
    landed(c, "/access/integrations").await;
}

async fn sign_out(c: &Client) {
    click(c, "form.signout button").await;
    assert_eq!(landed(c, "/signin").await, "/signin?signed_out=1");
}

/// The session cookie the browser holds, and its CSRF token from the page.
async fn session_of(c: &Client) -> (String, String) {
    let cookie = c.get_named_cookie("keygate_session").await.unwrap();
    let csrf = c
        .find(Locator::Css("form.signout input[name=csrf_token]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    (cookie.value().to_owned(), csrf)
}

async fn wait_for_file(dir: &Path, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let path = dir.join(name);
        if let Ok(text) = std::fs::read_to_string(&path)
            && text.ends_with('\n')
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {name} in the download folder: {:?}",
            std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn token(args: &[&str]) -> String {
    let out = Command::new(BIN).arg("token").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_web_flow_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let db_url = format!("sqlite://{}/data/keygate.db", dir.path().display());
    let (server, printed) = Server::start_on(&db_url, &[], &[]);
    let setup_url = printed
        .iter()
        .flat_map(|l| l.split_whitespace())
        .find(|w| w.starts_with("http://") && w.contains("/setup/"))
        .unwrap_or_else(|| panic!("serve prints a setup URL: {printed:?}"))
        .to_owned();
    let issuer = printed
        .iter()
        .find_map(|l| l.strip_prefix("keygate: created issuer "))
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .to_owned();

    let driver = Chromedriver::start().await;
    let c = browser(&driver, &downloads).await;
    let holder = ("ada@example.com", "correct horse battery staple");

    // 1. First-run setup creates the Account Holder; the link then stops working.
    c.goto(&setup_url).await.unwrap();
    fill(&c, "first_name", "Ada").await;
    fill(&c, "last_name", "Lovelace").await;
    fill(&c, "email", holder.0).await;
    fill(&c, "password", holder.1).await;
    fill(&c, "password_confirm", holder.1).await;
    screenshot(&c, "setup.png").await;
    click(&c, "form.stack button[type=submit]").await;
    landed(&c, "/access/integrations").await;
    let cookie = c.get_named_cookie("keygate_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(
        cookie.same_site().map(|s| s.to_string()).as_deref(),
        Some("Strict")
    );
    c.goto(&setup_url).await.unwrap();
    assert!(text(&c).await.contains("Setup link not valid"));

    // 2. Sign out, then sign in.
    c.goto(&server.url("/access/integrations")).await.unwrap();
    sign_out(&c).await;
    screenshot(&c, "sign-in.png").await;
    sign_in(&c, &server, holder.0, holder.1).await;
    let page = text(&c).await;
    assert!(page.contains(&issuer), "Integrations shows the Issuer ID");

    // 3. Generate API Key: Name and Access.
    click(&c, "#generate-api-key").await;
    landed(&c, "/access/integrations/generate").await;
    fill(&c, "name", "CI uploads").await;
    c.find(Locator::Id("access"))
        .await
        .unwrap()
        .select_by_value("DEVELOPER")
        .await
        .unwrap();
    screenshot(&c, "generate-api-key.png").await;
    click(&c, "#generate").await;
    let created = landed(&c, "/access/integrations?").await;
    let key_id = created
        .strip_prefix("/access/integrations?created=")
        .unwrap_or_else(|| panic!("redirected to the new key: {created}"))
        .to_owned();
    assert!(text(&c).await.contains("Download it now"));
    screenshot(&c, "integrations.png").await;

    // 4. Download it through the link: the browser saves AuthKey_<KEYID>.p8.
    let link = format!("tr[data-key-id='{key_id}'] button.download");
    click(&c, &link).await;
    let p8 = wait_for_file(&downloads, &format!("AuthKey_{key_id}.p8")).await;
    assert!(p8.starts_with(&format!("-----BEGIN {}-----", "PRIVATE KEY")));
    let key_file = downloads.join(format!("AuthKey_{key_id}.p8"));
    let jwt = token(&[
        "--key",
        key_file.to_str().unwrap(),
        "--key-id",
        &key_id,
        "--issuer-id",
        &issuer,
    ]);
    assert_eq!(authz_status(&server, &jwt, "/v1/apps").await, 200);

    // 5. The link is gone.
    c.goto(&server.url("/access/integrations")).await.unwrap();
    assert!(
        c.find(Locator::Css(&link)).await.is_err(),
        "the download link is gone"
    );
    assert!(
        c.find(Locator::Css(&format!("tr[data-key-id='{key_id}']")))
            .await
            .is_ok()
    );

    // 6. Revoke, with confirmation; the key is listed under Revoked and its tokens refused.
    click(&c, &format!("a[href='/access/keys/{key_id}/revoke']")).await;
    landed(&c, &format!("/access/keys/{key_id}/revoke")).await;
    assert!(text(&c).await.contains("cannot be undone"));
    fill(&c, "reason", "rotated").await;
    click(&c, "#confirm-revoke").await;
    assert_eq!(
        landed(&c, "/access/integrations?").await,
        format!("/access/integrations?revoked={key_id}")
    );
    let revoked_rows = c
        .find(Locator::Css(&format!(
            "section[aria-labelledby=revoked-heading] tr[data-key-id='{key_id}']"
        )))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(revoked_rows.contains("rotated"), "{revoked_rows}");
    let resp = http()
        .get(server.url("/authz/v1/apps"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(reason(resp).await, (401, "KEY_REVOKED".into()));

    // Secret keys: created with restrictions, the secret shown once with a copy button,
    // rolled and revoked, all from the UI.
    click(&c, "#create-secret-key").await;
    landed(&c, "/access/secret-keys/new").await;
    fill(&c, "name", "Maps web").await;
    c.find(Locator::Id("access"))
        .await
        .unwrap()
        .select_by_value("DEVELOPER")
        .await
        .unwrap();
    fill(&c, "referrers", "https://*.example.com/*").await;
    fill(&c, "apis", "GET /v1/maps/**").await;
    screenshot(&c, "create-secret-key.png").await;
    click(&c, "#create").await;
    // The form posts back to its own URL: wait for the answer's field, not for the URL.
    shown(&c, "secret").await;
    assert!(text(&c).await.contains("It will not be shown again"));
    let secret_field = c.find(Locator::Id("secret")).await.unwrap();
    let secret = secret_field.prop("value").await.unwrap().unwrap();
    assert!(secret.starts_with("kgsk_"), "{secret}");
    assert!(
        c.find(Locator::Id("copy-secret")).await.is_ok(),
        "a copy button"
    );
    // The committed screenshot must hold no key material, even a throwaway one.
    c.execute(
        "document.getElementById('secret').value = arguments[0];",
        vec![json!(
            "kgsk_\u{2026} (the secret; redacted in this screenshot)"
        )],
    )
    .await
    .unwrap();
    screenshot(&c, "secret-key-created.png").await;
    let maps = |secret: String, referer: Option<&'static str>| {
        let url = server.url("/authz/v1/maps/tiles");
        async move {
            let mut req = http().get(url).header("x-api-key", secret);
            if let Some(r) = referer {
                req = req.header("referer", r);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let doc: Value = resp.json().await.unwrap_or(Value::Null);
            let why = doc["errors"][0]["meta"]["reason"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            (status, why)
        }
    };
    assert_eq!(
        maps(secret.clone(), Some("https://app.example.com/"))
            .await
            .0,
        200
    );
    assert_eq!(
        maps(secret.clone(), None).await,
        (403, "REFERRER_NOT_ALLOWED".into())
    );
    c.goto(&server.url("/access/integrations")).await.unwrap();
    assert!(
        !c.source().await.unwrap().contains(&secret),
        "lists never show the secret"
    );
    let secret_id = c
        .find(Locator::Css("tr[data-secret-key-id]"))
        .await
        .unwrap()
        .attr("data-secret-key-id")
        .await
        .unwrap()
        .unwrap();
    click(
        &c,
        &format!("a[href='/access/secret-keys/{secret_id}/roll']"),
    )
    .await;
    landed(&c, &format!("/access/secret-keys/{secret_id}/roll")).await;
    c.find(Locator::Id("overlap"))
        .await
        .unwrap()
        .select_by_value("0")
        .await
        .unwrap();
    click(&c, "#confirm-roll").await;
    shown(&c, "secret").await;
    let rolled = c
        .find(Locator::Id("secret"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(rolled, secret);
    assert_eq!(
        maps(secret.clone(), Some("https://app.example.com/")).await,
        (401, "KEY_EXPIRED".into())
    );
    assert_eq!(
        maps(rolled.clone(), Some("https://app.example.com/"))
            .await
            .0,
        200
    );
    c.goto(&server.url(&format!("/access/secret-keys/{secret_id}/revoke")))
        .await
        .unwrap();
    click(&c, "#confirm-revoke-secret").await;
    landed(&c, "/access/integrations?").await;
    // Listed under Revoked now, and no longer among the live secret keys.
    assert!(
        c.find(Locator::Css(&format!(
            "section[aria-labelledby=revoked-heading] tr[data-secret-key-id='{secret_id}']"
        )))
        .await
        .is_ok(),
        "the revoked secret key is under Revoked"
    );
    assert!(
        c.find(Locator::Css(&format!(
            "section[aria-labelledby=secret-heading] tr[data-secret-key-id='{secret_id}']"
        )))
        .await
        .is_err()
    );
    assert_eq!(
        maps(rolled.clone(), Some("https://app.example.com/")).await,
        (401, "KEY_REVOKED".into())
    );

    // 7. Invite a user; they accept and sign in.
    click(&c, "nav.tabs a[href='/access/people']").await;
    landed(&c, "/access/people").await;
    fill(&c, "first_name", "Grace").await;
    fill(&c, "last_name", "Hopper").await;
    fill(&c, "email", "grace@example.com").await;
    // Roles are checkboxes; Developer is checked by default.
    assert!(
        c.find(Locator::Id("roles-DEVELOPER"))
            .await
            .unwrap()
            .is_selected()
            .await
            .unwrap()
    );
    click(&c, "form[action='/access/people/invite'] button").await;
    landed(&c, "/access/people/invite").await;
    let accept = c
        .find(Locator::Id("accept-link"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    assert!(accept.starts_with(&server.url("/invitations/")), "{accept}");
    assert!(text(&c).await.contains("grace@example.com"));
    c.execute(
        "document.getElementById('accept-link').value = arguments[0];",
        vec![json!(
            "http://127.0.0.1:8080/invitations/\u{2026} (redacted in this screenshot)"
        )],
    )
    .await
    .unwrap();
    screenshot(&c, "people.png").await;
    sign_out(&c).await;
    c.goto(&accept).await.unwrap();
    assert!(text(&c).await.contains("Developer"));
    let grace = ("grace@example.com", "amazing grace 1906");
    fill(&c, "password", grace.1).await;
    fill(&c, "password_confirm", grace.1).await;
    click(&c, "form.stack button[type=submit]").await;
    landed(&c, "/access/integrations").await;
    c.goto(&accept).await.unwrap();
    assert!(
        text(&c).await.contains("Invitation not valid"),
        "the link works once"
    );
    c.goto(&server.url("/access/integrations")).await.unwrap();
    sign_out(&c).await;
    sign_in(&c, &server, grace.0, grace.1).await;

    // 8. The new user sees no Generate button, and the API refuses them with 403.
    assert!(c.find(Locator::Id("generate-api-key")).await.is_err());
    let (session, csrf) = session_of(&c).await;
    let cookie = format!("keygate_session={session}");
    let resp = http()
        .get(server.url("/v1/users"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(reason(resp).await, (403, "ROLE_NOT_ALLOWED".into()));
    let resp = http()
        .post(server.url("/v1/apiKeys"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&json!({"data": {"type": "apiKeys", "attributes": {"name": "mine", "roles": ["ADMIN"]}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(reason(resp).await, (403, "ROLE_NOT_ALLOWED".into()));
    // The same browser, asking the API directly.
    c.goto(&server.url("/v1/userInvitations")).await.unwrap();
    let source = c.source().await.unwrap();
    assert!(source.contains("FORBIDDEN_ERROR"), "{source}");

    // She may have an individual key of her own: its token has sub "user" and no iss.
    c.goto(&server.url("/access/integrations")).await.unwrap();
    click(&c, "#generate-individual-key").await;
    let created = landed(&c, "/access/integrations?").await;
    let own_id = created
        .strip_prefix("/access/integrations?created=")
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    click(&c, &format!("tr[data-key-id='{own_id}'] button.download")).await;
    wait_for_file(&downloads, &format!("AuthKey_{own_id}.p8")).await;
    let own_file = downloads.join(format!("AuthKey_{own_id}.p8"));
    let own = token(&[
        "--key",
        own_file.to_str().unwrap(),
        "--key-id",
        &own_id,
        "--individual",
    ]);
    let resp = http()
        .get(server.url("/authz/v1/apps"))
        .bearer_auth(&own)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-keygate-key-type"], "individual");
    assert_eq!(resp.headers()["x-keygate-roles"], "DEVELOPER");
    assert!(resp.headers().contains_key("x-keygate-user-id"));

    c.close().await.unwrap();
    // Nothing secret reached the log.
    let log = server.log.lock().unwrap().clone();
    for secret in [
        holder.1,
        grace.1,
        session.as_str(),
        jwt.as_str(),
        own.as_str(),
    ] {
        assert!(!log.contains(secret), "the log holds a secret");
    }
    assert!(!log.contains(&accept), "the log holds an invitation link");
    let setup_secret = setup_url.rsplit('/').next().unwrap();
    assert!(!log.contains(setup_secret), "the log holds the setup link");
}

//! keygate behind a real gateway: nginx `auth_request` (from Debian's package, which
//! `scripts/test` installs) in front of a test upstream, with the exact configuration shipped in
//! `docs/gateways/nginx.conf`. Each outcome is observed through nginx: allowed (and what the
//! upstream saw), 401, 403 and 429.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    clippy::needless_pass_by_value
)] // test code: a failed expectation should panic; scenarios read top to bottom

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const POLICY: &str = r#"
forward_auth_headers = "nginx"
[roles.DEVELOPER]
allow = ["GET /v1/echo/**"]
rate_limit_per_hour = 3
"#;

fn nginx_binary() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("nginx is not installed: run ./scripts/test, which installs it");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real nginx master process running the shipped config; stopped on drop.
struct Nginx {
    child: Child,
    base: String,
}

impl Nginx {
    fn start(dir: &Path, keygate: &str, upstream: &str) -> Self {
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/gateways/nginx.conf"),
        )
        .unwrap();
        let port = free_port();
        let site = shipped
            .replace("server 127.0.0.1:8080;", &format!("server {keygate};"))
            .replace("server 127.0.0.1:3000;", &format!("server {upstream};"))
            .replace(
                "listen 127.0.0.1:8000;",
                &format!("listen 127.0.0.1:{port};"),
            );
        assert!(site.contains(&format!("listen 127.0.0.1:{port};")));
        let d = dir.display();
        // Workers run as root only when the test does (as in CI); nginx refuses `user` otherwise.
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let conf = format!(
            "{user}daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             {site}\n}}\n",
            user = if is_root { "user root;\n" } else { "" },
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(nginx_binary())
            .args(["-p", &d.to_string(), "-c"])
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .expect("start nginx");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nginx did not start: {}{}",
                std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default(),
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown: the master stops its workers and exits.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn error_of(resp: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = resp.status().as_u16();
    let rate = resp
        .headers()
        .get("x-rate-limit")
        .map(|v| v.to_str().unwrap().to_owned());
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(ct, "application/json", "keygate's own answer, not nginx's");
    (status, rate, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_allows_401s_403s_and_429s() {
    let up = Arc::new(Upstream::default());
    let upstream = serve_upstream(echo_routes().with_state(Arc::clone(&up))).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, POLICY).unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let admin = bootstrap(&server, &dir.path().join("out"));
    let admin_token = cli_token(&admin.key_file, &admin.key_id, &admin.issuer);
    wait_until_accepted(&server, &admin_token).await;
    let dev_id = create_key(&server, &admin_token, &["DEVELOPER"]).await;
    let dev_file = dir.path().join("dev.p8");
    download_key(&server, &admin_token, &dev_id, &dev_file).await;
    let dev = cli_token(&dev_file, &dev_id, &admin.issuer);

    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir(&nginx_dir).unwrap();
    let keygate_addr = server.base.trim_start_matches("http://").to_owned();
    let upstream_addr = upstream.trim_start_matches("http://").to_owned();
    let nginx = Nginx::start(&nginx_dir, &keygate_addr, &upstream_addr);
    let client = http();

    // 401: no credential. The body is keygate's, with the exact reason.
    let (status, rate, doc) = error_of(
        client
            .get(format!("{}/v1/echo/a", nginx.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(doc["errors"][0]["meta"]["reason"], "TOKEN_MISSING");
    assert_eq!(rate, None);
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);

    // Allowed: the upstream sees the identity, not the credential or the client's spoofing.
    let resp = client
        .get(format!("{}/v1/echo/a?x=%5B1%5D", nginx.base))
        .bearer_auth(&dev)
        .header("x-keygate-key-id", "SPOOFED000")
        .header("x-keygate-roles", "ADMIN")
        .header("x-keygate-user-id", "spoofed-user")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-rate-limit"],
        "user-hour-lim:3;user-hour-rem:2;"
    );
    let seen: Value = resp.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(seen["uri"], "/v1/echo/a?x=%5B1%5D");
    assert_eq!(h["x-keygate-key-id"], json!([dev_id]));
    assert_eq!(h["x-keygate-issuer-id"], json!([admin.issuer]));
    assert_eq!(h["x-keygate-key-type"], json!(["team"]));
    assert_eq!(h["x-keygate-roles"], json!(["DEVELOPER"]));
    assert!(h.get("authorization").is_none(), "{h}");
    assert!(h.get("x-keygate-user-id").is_none(), "{h}");
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);

    // 403: the role does not allow the method.
    let (status, rate, doc) = error_of(
        client
            .delete(format!("{}/v1/echo/a", nginx.base))
            .bearer_auth(&dev)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(doc["errors"][0]["meta"]["reason"], "ROLE_NOT_ALLOWED");
    assert_eq!(rate.as_deref(), Some("user-hour-lim:3;user-hour-rem:2;"));

    // 429: two more are allowed, then the limit holds.
    for remaining in [1, 0] {
        let resp = client
            .get(format!("{}/v1/echo/b", nginx.base))
            .bearer_auth(&dev)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["x-rate-limit"],
            format!("user-hour-lim:3;user-hour-rem:{remaining};").as_str()
        );
    }
    let resp = client
        .get(format!("{}/v1/echo/b", nginx.base))
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

    // A revoked key is refused through nginx on the next request.
    let resp = http()
        .patch(server.url(&format!("/v1/apiKeys/{dev_id}")))
        .bearer_auth(&admin_token)
        .json(
            &json!({"data": {"type": "apiKeys", "id": dev_id, "attributes": {"isActive": false}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, _, doc) = error_of(
        client
            .get(format!("{}/v1/echo/a", nginx.base))
            .bearer_auth(&dev)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(doc["errors"][0]["meta"]["reason"], "KEY_REVOKED");
}

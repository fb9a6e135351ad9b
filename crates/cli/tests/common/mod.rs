//! What the end-to-end test binaries share: a real `keygate serve` process on a real port, the
//! CLI, and small HTTP helpers.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_keygate");

/// Adds `serve` on a free port with `db_url`, `args` and `env` to `cmd`, as every test starts
/// keygate: trace logging, a 100 ms feed poll, no master key from the caller's environment,
/// stdout and stderr piped for [`Server::launch`].
pub fn serve_args(cmd: &mut Command, db_url: &str, args: &[&str], env: &[(&str, &str)]) {
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--database", db_url])
        .args(args)
        .env("KEYGATE_LOG", "trace")
        .env("KEYGATE_SYNC_INTERVAL", "100ms")
        .env_remove("KEYGATE_MASTER_KEY")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
}

/// A running `keygate serve`, killed on drop. Its stderr (the log) is collected.
pub struct Server {
    pub child: Child,
    pub base: String,
    /// The reverse proxy's base URL, when started with `--proxy-listen`.
    pub proxy: Option<String>,
    pub log: Arc<Mutex<String>>,
    pub db_url: String,
}

impl Server {
    pub fn start(data: &Path) -> Self {
        Self::start_with(data, &[], &[])
    }

    /// Starts `keygate serve` on a new `SQLite` file in `data`, with extra flags and environment.
    pub fn start_with(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let db_url = format!("sqlite://{}/keygate.db", data.display());
        let (server, printed) = Self::start_on(&db_url, args, env);
        assert!(
            printed.iter().any(|l| l.contains("created issuer")),
            "first start prints the issuer ID: {printed:?}"
        );
        server
    }

    /// Starts `keygate serve` on any database URL; also returns what it printed before
    /// listening.
    pub fn start_on(db_url: &str, args: &[&str], env: &[(&str, &str)]) -> (Self, Vec<String>) {
        let mut cmd = Command::new(BIN);
        serve_args(&mut cmd, db_url, args, env);
        Self::launch(cmd, db_url.to_owned())
    }

    /// Runs a prepared `keygate serve` command (see [`serve_args`]; the program may be a
    /// wrapper that execs keygate) and waits until it listens; also returns what it printed
    /// before.
    pub fn launch(mut cmd: Command, db_url: String) -> (Self, Vec<String>) {
        let mut child = cmd.spawn().expect("start keygate serve");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut printed = Vec::new();
        let mut proxy = None;
        let base = loop {
            let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            else {
                // Never leave a half-started keygate behind.
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "keygate did not start; stdout: {printed:?}; log: {}",
                    log.lock().unwrap()
                );
            };
            if let Some(addr) = line.strip_prefix("keygate listening on ") {
                break addr.to_owned();
            }
            if let Some(rest) = line.strip_prefix("keygate proxy listening on ") {
                proxy = rest.split(' ').next().map(str::to_owned);
            }
            printed.push(line);
        };
        (
            Self {
                child,
                base,
                proxy,
                log,
                db_url,
            },
            printed,
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    /// Stops the server, then scans its whole trace-level log for anything shaped like a secret,
    /// so every end-to-end test is also a hygiene test (hygiene.rs checks exact values too).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            return;
        }
        let log = self.log.lock().unwrap();
        if let Some(found) = secret_shapes(&log).first() {
            panic!("the server log holds {found}");
        }
    }
}

/// What in `text` looks like a secret: a PEM private key, a whole `kgsk_` secret key, a JWT,
/// a session or form cookie's value, or a `Bearer` credential. Returns descriptions, never the
/// secret itself.
pub fn secret_shapes(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    if text.contains(&format!("{} KEY-----", "PRIVATE")) {
        found.push("a PEM private key".to_owned());
    }
    let base62 = |c: char| c.is_ascii_alphanumeric();
    let b64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    for (at, _) in text.match_indices("kgsk_") {
        let rest = &text[at + 5..];
        let body: String = rest.chars().take_while(|c| base62(*c)).collect();
        if body.len() >= 43 {
            found.push(format!("a secret key at byte {at}"));
        }
    }
    for (at, _) in text.match_indices("eyJ") {
        let run: String = text[at..]
            .chars()
            .take_while(|c| b64url(*c) || *c == '.')
            .collect();
        if run.split('.').filter(|p| p.len() >= 4).count() >= 2 {
            found.push(format!("a JWT at byte {at}"));
        }
    }
    for name in ["keygate_session=", "keygate_form=", "Bearer "] {
        for (at, _) in text.match_indices(name) {
            let value: String = text[at + name.len()..]
                .chars()
                .take_while(|c| b64url(*c) || *c == '.')
                .collect();
            if value.len() >= 16 {
                found.push(format!("a {name}... value at byte {at}"));
            }
        }
    }
    found
}

pub fn keygate(args: &[&str]) -> (bool, String, String) {
    keygate_env(args, &[])
}

/// Runs the CLI with extra environment (`KEYGATE_MASTER_KEY` for a `PostgreSQL` database).
pub fn keygate_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("KEYGATE_MASTER_KEY")
        .envs(env.iter().copied())
        .output()
        .expect("run keygate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub struct Admin {
    pub issuer: String,
    pub key_id: String,
    pub key_file: PathBuf,
}

pub fn bootstrap(server: &Server, out: &Path) -> Admin {
    bootstrap_env(server, out, &[])
}

pub fn bootstrap_env(server: &Server, out: &Path, env: &[(&str, &str)]) -> Admin {
    let (ok, stdout, stderr) = keygate_env(
        &[
            "admin",
            "bootstrap",
            "--database",
            &server.db_url,
            "--out",
            out.to_str().unwrap(),
        ],
        env,
    );
    assert!(ok, "bootstrap failed: {stderr}");
    let v: Value = serde_json::from_str(stdout.trim()).expect("bootstrap prints one JSON object");
    let key_file = PathBuf::from(v["privateKeyPath"].as_str().unwrap());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    Admin {
        issuer: v["issuerId"].as_str().unwrap().to_owned(),
        key_id: v["keyId"].as_str().unwrap().to_owned(),
        key_file,
    }
}

/// Runs a `keygate keys ...` command against the server as the bootstrapped admin.
pub fn admin_cli(server: &Server, admin: &Admin, args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<&str> = vec!["keys"];
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
    ]);
    keygate(&all)
}

pub fn cli_token(key_file: &Path, key_id: &str, issuer: &str) -> String {
    let (ok, stdout, stderr) = keygate(&[
        "token",
        "--key",
        key_file.to_str().unwrap(),
        "--key-id",
        key_id,
        "--issuer-id",
        issuer,
    ]);
    assert!(ok, "keygate token failed: {stderr}");
    stdout.trim().to_owned()
}

/// Waits until the server accepts a key bootstrapped behind its back (SPEC: within 2 s).
pub async fn wait_until_accepted(server: &Server, token: &str) {
    let started = Instant::now();
    let client = http();
    loop {
        let status = client
            .get(server.url("/v1/issuer"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status();
        if status == 200 {
            return;
        }
        assert!(
            // Loose: the node picks the key up in milliseconds, but CI machines are loaded.
            started.elapsed() < Duration::from_secs(10),
            "bootstrapped key not accepted within 10 s (last status {status})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub async fn create_key(server: &Server, admin_token: &str, roles: &[&str]) -> String {
    let resp = http()
        .post(server.url("/v1/apiKeys"))
        .bearer_auth(admin_token)
        .json(&json!({"data": {"type": "apiKeys", "attributes": {"name": "e2e", "roles": roles}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let doc: Value = resp.json().await.unwrap();
    doc["data"]["id"].as_str().unwrap().to_owned()
}

pub async fn reason(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let doc: Value = resp.json().await.unwrap();
    (
        status,
        doc["errors"][0]["meta"]["reason"]
            .as_str()
            .or(doc["errors"][0]["code"].as_str())
            .unwrap_or("")
            .to_owned(),
    )
}

// ---- a test upstream ---------------------------------------------------------------------

/// A test upstream's shared state: how many requests reached it.
#[derive(Debug, Default)]
pub struct Upstream {
    pub hits: AtomicU64,
}

pub fn headers_json(h: &HeaderMap) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in h {
        out.entry(k.as_str().to_owned())
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .unwrap()
            .push(json!(v.to_str().unwrap_or("<binary>")));
    }
    Value::Object(out)
}

/// Answers with the method, URI and headers it received, as JSON.
pub async fn echo(
    State(up): State<Arc<Upstream>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    req: Request,
) -> Response {
    up.hits.fetch_add(1, Ordering::SeqCst);
    let body = json!({
        "peer": peer.to_string(),
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "headers": headers_json(req.headers()),
    });
    (
        [("content-type", "application/json")],
        serde_json::to_vec(&body).unwrap(),
    )
        .into_response()
}

/// `/v1/echo` and `/v1/echo/{*rest}` answered by [`echo`], for any method.
pub fn echo_routes() -> Router<Arc<Upstream>> {
    Router::new()
        .route("/v1/echo", any(echo))
        .route("/v1/echo/{*rest}", any(echo))
}

/// Serves `app` on a fresh loopback port; returns its base URL.
pub async fn serve_upstream(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    format!("http://{addr}")
}

/// Downloads a new key's `.p8` through the API into `path`.
pub async fn download_key(server: &Server, admin_token: &str, key_id: &str, path: &Path) {
    let resp = http()
        .get(server.url(&format!("/v1/apiKeys/{key_id}/privateKey")))
        .bearer_auth(admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    std::fs::write(path, resp.bytes().await.unwrap()).unwrap();
}

/// Revokes a key through the API.
pub async fn revoke_key(server: &Server, admin_token: &str, key_id: &str) -> reqwest::Response {
    http()
        .patch(server.url(&format!("/v1/apiKeys/{key_id}")))
        .bearer_auth(admin_token)
        .json(
            &json!({"data": {"type": "apiKeys", "id": key_id, "attributes": {"isActive": false}}}),
        )
        .send()
        .await
        .unwrap()
}

/// The status `/authz/{path}` gives a token on a server.
pub async fn authz_status(server: &Server, token: &str, path: &str) -> u16 {
    http()
        .get(server.url(&format!("/authz{path}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Inserts `n` team keys (`K000000001`…) straight into a keygate PostgreSQL database whose
/// issuer exists, as the benchmarks' million-key fixtures do (creating them through the API
/// would measure key creation), all with the public half `public`. Returns the issuer ID and how
/// long it took.
pub async fn insert_bench_keys(db_url: &str, n: usize, public: &[u8]) -> (String, Duration) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(db_url).await.unwrap();
    let issuer: String = sqlx::query_scalar("SELECT id FROM issuers LIMIT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let inserting = Instant::now();
    sqlx::query(
        "INSERT INTO api_keys (id, issuer_id, name, roles, key_type, algorithm, public_key, \
         private_key_state, created_by, created_at) \
         SELECT 'K' || lpad(g::text, 9, '0'), $1, 'bench ' || g, 'DEVELOPER', 'TEAM', 'ES256', \
         $2, 'NEVER_HELD', 'bench', 1800000000 FROM generate_series(1, $3) AS g",
    )
    .bind(&issuer)
    .bind(public)
    .bind(i64::try_from(n).unwrap())
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("ANALYZE api_keys")
        .execute(&mut conn)
        .await
        .unwrap();
    (issuer, inserting.elapsed())
}

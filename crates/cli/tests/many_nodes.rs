//! Many nodes on one PostgreSQL database (a fresh one per test, on `KEYGATE_TEST_POSTGRES`):
//! real `keygate serve` processes sharing a master key. A key created on one node works on the
//! others; a revocation reaches them (how fast is `benches/propagation.rs`'s to measure: p99 in
//! milliseconds); a node that loses its database keeps
//! verifying from memory, refuses writes with 503, and converges after recovery without a
//! restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    clippy::needless_pass_by_value
)] // test code: a failed expectation should panic; scenarios read top to bottom

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use keygate_testkit::PgDatabase;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// A fresh master key, as an operator would make with `openssl rand -base64 32`.
fn master_key() -> String {
    keygate_core::crypto::MasterKey::generate()
        .unwrap()
        .to_base64()
        .to_string()
}

/// Boots one node on the shared database. The safety-net poll is slowed to an hour, so what
/// these tests see is `LISTEN`/`NOTIFY` and the listener's reconnect-and-reload.
fn node(db: &str, master: &str) -> Server {
    let (server, _) = Server::start_on(
        db,
        &[],
        &[
            ("KEYGATE_MASTER_KEY", master),
            ("KEYGATE_LOG", "debug"),
            ("KEYGATE_SYNC_INTERVAL", "1h"),
        ],
    );
    server
}

/// Creates a key on `on`, downloads it, and returns its ID and a token for it.
async fn new_key(on: &Server, admin: &Admin, admin_token: &str, dir: &Path) -> (String, String) {
    let id = create_key(on, admin_token, &["DEVELOPER"]).await;
    let file = dir.join(format!("AuthKey_{id}.p8"));
    download_key(on, admin_token, &id, &file).await;
    let token = cli_token(&file, &id, &admin.issuer);
    (id, token)
}

/// How long a node may take here to follow a change made on another. Nodes follow in
/// milliseconds (the propagation benchmark measures it, and these tests print it); the bound is
/// loose because a test on a shared two-core machine checks that nodes converge, not how fast.
const FOLLOW: Duration = Duration::from_secs(10);

/// Polls until `/authz` on `server` gives `want` for `token`; returns how long it took.
async fn until_status(server: &Server, token: &str, want: u16, within: Duration) -> Duration {
    let started = Instant::now();
    let client = http();
    loop {
        let got = client
            .get(server.url("/authz/v1/apps"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{} still answers {got}, not {want}, after {within:?}",
            server.base
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_keys_and_revocations() {
    let db = PgDatabase::create().await;
    let master = master_key();
    let a = node(db.url(), &master);
    let b = node(db.url(), &master);
    let c = node(db.url(), &master);
    let dir = tempfile::tempdir().unwrap();
    let admin = bootstrap_env(&a, dir.path(), &[("KEYGATE_MASTER_KEY", &master)]);
    let admin_token = cli_token(&admin.key_file, &admin.key_id, &admin.issuer);
    wait_until_accepted(&a, &admin_token).await;

    for round in 0..3 {
        let (id, token) = new_key(&a, &admin, &admin_token, dir.path()).await;
        // Created on A: works on B and C.
        for n in [&b, &c] {
            until_status(n, &token, 200, FOLLOW).await;
        }
        // Revoked on A: refused on B and C.
        let revoked_at = Instant::now();
        assert_eq!(revoke_key(&a, &admin_token, &id).await.status(), 200);
        assert_eq!(authz_status(&a, &token, "/v1/apps").await, 401);
        for n in [&b, &c] {
            until_status(n, &token, 401, FOLLOW).await;
        }
        eprintln!(
            "round {round}: revocation reached B and C in {:?}",
            revoked_at.elapsed()
        );
        let resp = http()
            .get(b.url("/authz/v1/apps"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(reason(resp).await, (401, "KEY_REVOKED".to_owned()));
    }
    // Every node sees the same keys through the management API.
    let list = |n: &Server| {
        let url = n.url("/v1/apiKeys?limit=200");
        let token = admin_token.clone();
        async move {
            let doc: Value = http()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let mut ids: Vec<String> = doc["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    let on_a = list(&a).await;
    assert_eq!(on_a.len(), 4);
    assert_eq!(list(&b).await, on_a);
    assert_eq!(list(&c).await, on_a);
}

/// Secret keys ride the same change feed: created, rolled or revoked on one node, every other
/// node follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_keys_propagate_across_nodes() {
    let db = PgDatabase::create().await;
    let master = master_key();
    let a = node(db.url(), &master);
    let b = node(db.url(), &master);
    let dir = tempfile::tempdir().unwrap();
    let admin = bootstrap_env(&a, dir.path(), &[("KEYGATE_MASTER_KEY", &master)]);
    let admin_token = cli_token(&admin.key_file, &admin.key_id, &admin.issuer);
    wait_until_accepted(&a, &admin_token).await;
    wait_until_accepted(&b, &admin_token).await;
    let created: Value = http()
        .post(a.url("/v1/secretKeys"))
        .bearer_auth(&admin_token)
        .json(&serde_json::json!({"data": {"type": "secretKeys", "attributes": {"name": "s", "roles": ["DEVELOPER"]}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    let first = created["data"]["attributes"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    until_status(&b, &first, 200, FOLLOW).await;
    // Rolled on A with no overlap: on B the new secret works and the old one stops.
    let rolled: Value = http()
        .post(a.url(&format!("/v1/secretKeys/{id}/roll")))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let second = rolled["data"]["attributes"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    until_status(&b, &second, 200, FOLLOW).await;
    until_status(&b, &first, 401, FOLLOW).await;
    // Revoked on A: refused on B.
    let revoked_at = Instant::now();
    let resp = http()
        .patch(a.url(&format!("/v1/secretKeys/{id}")))
        .bearer_auth(&admin_token)
        .json(
            &serde_json::json!({"data": {"type": "secretKeys", "attributes": {"isActive": false}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    until_status(&b, &second, 401, FOLLOW).await;
    eprintln!(
        "secret-key revocation reached B in {:?}",
        revoked_at.elapsed()
    );
    let resp = http()
        .get(b.url("/authz/v1/apps"))
        .header("x-api-key", &second)
        .send()
        .await
        .unwrap();
    assert_eq!(reason(resp).await, (401, "KEY_REVOKED".to_owned()));
}

/// A TCP relay between one node and PostgreSQL that the test can cut (closing every relayed
/// connection and refusing new ones) and restore, without touching the shared server.
struct Relay {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (flag, held) = (Arc::clone(&up), Arc::clone(&links));
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                held.lock().await.push(link);
            }
        });
        Self { addr, up, links }
    }

    async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for link in self.links.lock().await.drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_its_database_verifies_refuses_writes_and_converges() {
    let db = PgDatabase::create().await;
    let master = master_key();
    let direct: url_parts::Parts = url_parts::parse(db.url());
    let relay = Relay::start(direct.socket_addr()).await;
    let relayed_url = direct.with_addr(relay.addr);

    let a = node(db.url(), &master);
    let d = node(&relayed_url, &master);
    let dir = tempfile::tempdir().unwrap();
    let admin = bootstrap_env(&a, dir.path(), &[("KEYGATE_MASTER_KEY", &master)]);
    let admin_token = cli_token(&admin.key_file, &admin.key_id, &admin.issuer);
    wait_until_accepted(&a, &admin_token).await;
    wait_until_accepted(&d, &admin_token).await;
    let (k1, t1) = new_key(&a, &admin, &admin_token, dir.path()).await;
    until_status(&d, &t1, 200, FOLLOW).await;

    relay.cut().await;

    // Verification continues from memory.
    assert_eq!(authz_status(&d, &t1, "/v1/apps").await, 200);
    // Readiness says the database is gone; writes are refused with 503 in the error shape.
    let ready = http().get(d.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let resp = http()
        .post(d.url("/v1/apiKeys"))
        .bearer_auth(&admin_token)
        .json(&serde_json::json!({"data": {"type": "apiKeys", "attributes": {"name": "x", "roles": ["DEVELOPER"]}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(reason(resp).await, (503, "SERVICE_UNAVAILABLE".to_owned()));
    // Meanwhile the rest of the deployment moves on: K1 revoked, K2 created on A.
    assert_eq!(revoke_key(&a, &admin_token, &k1).await.status(), 200);
    let (_k2, t2) = new_key(&a, &admin, &admin_token, dir.path()).await;
    // D cannot know yet.
    assert_eq!(authz_status(&d, &t1, "/v1/apps").await, 200);
    assert_eq!(authz_status(&d, &t2, "/v1/apps").await, 401);

    relay.restore();

    // D converges with no restart: K1 refused, K2 accepted, writes and readiness back. The
    // listener retries with a backoff of at most 5 s, then reloads every key: up to a backoff
    // and a reload on top of FOLLOW.
    let converged = Instant::now();
    until_status(&d, &t1, 401, FOLLOW + Duration::from_secs(10)).await;
    until_status(&d, &t2, 200, FOLLOW + Duration::from_secs(10)).await;
    eprintln!("node converged {:?} after recovery", converged.elapsed());
    let started = Instant::now();
    loop {
        if http().get(d.url("/readyz")).send().await.unwrap().status() == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "readyz stays 503"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = http()
        .post(d.url("/v1/apiKeys"))
        .bearer_auth(&admin_token)
        .json(&serde_json::json!({"data": {"type": "apiKeys", "attributes": {"name": "after", "roles": ["DEVELOPER"]}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
}

/// Just enough URL handling to point a node at the relay instead of the server.
mod url_parts {
    pub struct Parts {
        scheme_user: String,
        host: String,
        port: u16,
        rest: String,
    }

    pub fn parse(url: &str) -> Parts {
        let (scheme, after) = url.split_once("://").unwrap();
        let (authority, rest) = after.split_at(after.find('/').unwrap_or(after.len()));
        let (user, hostport) = authority
            .rsplit_once('@')
            .map_or(("", authority), |(u, h)| (u, h));
        let (host, port) = hostport
            .rsplit_once(':')
            .map_or((hostport, 5432), |(h, p)| (h, p.parse().unwrap()));
        Parts {
            scheme_user: if user.is_empty() {
                format!("{scheme}://")
            } else {
                format!("{scheme}://{user}@")
            },
            host: host.to_owned(),
            port,
            rest: rest.to_owned(),
        }
    }

    impl Parts {
        pub fn socket_addr(&self) -> std::net::SocketAddr {
            use std::net::ToSocketAddrs;
            (self.host.as_str(), self.port)
                .to_socket_addrs()
                .unwrap()
                .next()
                .unwrap()
        }

        pub fn with_addr(&self, addr: std::net::SocketAddr) -> String {
            format!("{}{addr}{}", self.scheme_user, self.rest)
        }
    }
}

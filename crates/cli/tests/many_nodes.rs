//! Many nodes on one PostgreSQL database (a fresh one per test, on `KEYGATE_TEST_POSTGRES`):
//! real `keygate serve` processes sharing a master key. A key created on one node works on the
//! others; a revocation reaches them (how fast is `benches/propagation.rs`'s to measure: p99 in
//! milliseconds); a node that loses its database keeps
//! verifying from memory, refuses writes with 503, and converges after recovery without a
//! restart. A node whose connections die silently (no error, no close: the relay below stops
//! forwarding) notices by itself and catches up, and says it is not ready meanwhile; a node
//! whose clock runs a day ahead (under libfaketime) sweeps nothing of the others' and says its
//! clock is off.

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
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use common::*;
use keygate_testkit::PgDatabase;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
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

/// What the relay does with a connection a node opens now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NewLinks {
    /// Relayed to PostgreSQL.
    Forward,
    /// Closed at once (the database's host is down: the node sees a refused or reset
    /// connection).
    Refuse,
    /// Accepted and held open, with nothing forwarded either way (the network swallows
    /// everything: the node's connect and startup wait for ever).
    Hold,
}

/// One relayed connection; `frozen` stops it for good, leaving both sockets open.
struct Link {
    task: JoinHandle<()>,
    frozen: watch::Sender<bool>,
}

struct RelayState {
    new_links: NewLinks,
    links: Vec<Link>,
}

/// A TCP relay between one node and PostgreSQL, which the test can break in the ways a network
/// breaks, without touching the shared server:
///
/// - [`Relay::cut`] closes every relayed connection and refuses new ones (a database host that
///   went down: the node sees errors at once); [`Relay::restore`] relays new ones again.
/// - [`Relay::freeze_existing`] silently stops every existing connection: no byte is forwarded
///   in either direction any more, yet both sockets stay open, so neither the node nor
///   PostgreSQL sees an error or a close. That is how lost NAT or firewall state, a failover,
///   or a frozen host looks from the node: old flows dead, no error ever.
/// - [`Relay::set_new_links`] says what happens to connections opened from then on.
///
/// Frozen connections are never revived (a flow whose state was lost stays lost); they end
/// when the relay is dropped.
struct Relay {
    addr: std::net::SocketAddr,
    state: Arc<StdMutex<RelayState>>,
    accept: JoinHandle<()>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(StdMutex::new(RelayState {
            new_links: NewLinks::Forward,
            links: Vec::new(),
        }));
        let shared = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            // Ends when the relay is dropped (the task is aborted).
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let mut state = shared.lock().unwrap();
                let held = match state.new_links {
                    NewLinks::Refuse => {
                        drop(client);
                        continue;
                    }
                    NewLinks::Forward => false,
                    NewLinks::Hold => true,
                };
                let (frozen, watch) = watch::channel(held);
                let task = tokio::spawn(relay_link(client, target, watch));
                state.links.retain(|l| !l.task.is_finished());
                state.links.push(Link { task, frozen });
            }
        });
        Self {
            addr,
            state,
            accept,
        }
    }

    /// Closes every relayed connection and refuses new ones.
    fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.new_links = NewLinks::Refuse;
        for link in state.links.drain(..) {
            link.task.abort();
        }
    }

    /// Relays new connections again.
    fn restore(&self) {
        self.set_new_links(NewLinks::Forward);
    }

    /// Stops every existing connection for good, silently: sockets stay open, nothing crosses.
    /// New connections are unaffected (see [`Relay::set_new_links`]).
    fn freeze_existing(&self) {
        let state = self.state.lock().unwrap();
        for link in &state.links {
            link.frozen.send_replace(true);
        }
    }

    fn set_new_links(&self, what: NewLinks) {
        self.state.lock().unwrap().new_links = what;
    }
}

impl Drop for Relay {
    /// Ends the relay and every connection it holds, frozen or not.
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(mut state) = self.state.lock() {
            for link in state.links.drain(..) {
                link.task.abort();
            }
        }
    }
}

/// Relays one connection until either side closes it, or until it is frozen: then it holds both
/// sockets open, forwarding nothing, until aborted. A link frozen from the start (held) never
/// even reaches PostgreSQL.
async fn relay_link(
    mut client: TcpStream,
    target: std::net::SocketAddr,
    mut frozen: watch::Receiver<bool>,
) {
    let held = *frozen.borrow_and_update();
    if held {
        std::future::pending::<()>().await;
    }
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let froze = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
        f = frozen.wait_for(|f| *f) => f.is_ok(),
    };
    if froze {
        // Whatever was in flight went with the copy; `client` and `server` stay open.
        std::future::pending::<()>().await;
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

    relay.cut();

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

/// `/readyz` on a node: its status, its body, and how long it took to answer.
async fn readyz(server: &Server) -> (u16, Value, Duration) {
    let started = Instant::now();
    let resp = http().get(server.url("/readyz")).send().await.unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body, started.elapsed())
}

/// The `detail` of an error document (empty if there is none).
fn detail(body: &Value) -> String {
    body["errors"][0]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Polls `/readyz` until it answers `want`; returns the body and how long it took.
async fn until_ready_is(server: &Server, want: u16, within: Duration) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        let (status, body, _) = readyz(server).await;
        if status == want {
            return (body, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "{} /readyz still answers {status}, not {want}, after {within:?}: {body}",
            server.base
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One answer of `/readyz`, seen by [`ReadyzWatch`].
#[derive(Debug)]
struct ReadyzSample {
    /// When it was asked, from the watch's start.
    at: Duration,
    /// How long it took to answer.
    took: Duration,
    status: u16,
    detail: String,
}

/// Asks a node's `/readyz` over and over in the background (every 100 ms, one request at a
/// time, for at most `limit`), keeping every answer: what a monitoring system would see.
struct ReadyzWatch {
    stop: watch::Sender<bool>,
    task: JoinHandle<Vec<ReadyzSample>>,
}

impl ReadyzWatch {
    fn start(server: &Server, limit: Duration) -> Self {
        let url = server.url("/readyz");
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let client = http();
            let mut seen = Vec::new();
            while started.elapsed() < limit && !*stopped.borrow_and_update() {
                let at = started.elapsed();
                let asked = Instant::now();
                let (status, detail) = match client.get(&url).send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let body: Value = resp.json().await.unwrap_or(Value::Null);
                        (status, detail(&body))
                    }
                    Err(e) => (0, format!("no answer: {e}")),
                };
                seen.push(ReadyzSample {
                    at,
                    took: asked.elapsed(),
                    status,
                    detail,
                });
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stopped.changed() => {}
                }
            }
            seen
        });
        Self { stop, task }
    }

    async fn finish(self) -> Vec<ReadyzSample> {
        self.stop.send_replace(true);
        let seen = self.task.await.unwrap();
        for s in &seen {
            eprintln!(
                "  readyz at {:>6.1?} (took {:>5.1?}): {} {}",
                s.at, s.took, s.status, s.detail
            );
        }
        seen
    }
}

/// Asserts `/authz` on `server` keeps giving `want` for `token` for `during`: what a node that
/// does not hear of a change keeps answering.
async fn stays_status(server: &Server, token: &str, want: u16, during: Duration) {
    let started = Instant::now();
    while started.elapsed() < during {
        assert_eq!(authz_status(server, token, "/v1/apps").await, want);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long a node may take to notice a connection that died silently and catch up: up to
/// 5 s of quiet before the heartbeat, 3 s for its answer, a reconnect and a reload (each
/// pooled connection that died with it costs one try a 5 s acquire timeout, until the pool
/// drops it as idle after 10 to 20 s), with room for a loaded two-core machine.
const SILENT_CUT_BOUND: Duration = Duration::from_secs(30);

/// Polls `/authz` on `server` until it gives `want` for `token`; returns how long it took, or,
/// after `within`, what the node says about itself: its `/readyz` answer and its listener's log.
async fn follows_within(
    server: &Server,
    token: &str,
    want: u16,
    within: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let got = authz_status(server, token, "/v1/apps").await;
        if got == want {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= within {
            let (status, body, took) = readyz(server).await;
            let log = server.log.lock().unwrap();
            let listener: Vec<&str> = log
                .lines()
                .filter(|l| {
                    l.contains("change listener")
                        || l.contains("usage flush failed")
                        || l.contains("key ring")
                })
                .collect();
            return Err(format!(
                "{} still answers {got}, not {want}, after {within:?}; /readyz: {status} in {took:?}: {body}; its log:\n{}",
                server.base,
                listener.join("\n")
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connection that dies without closing (lost NAT state, a failover; here the relay stops
/// forwarding on every existing connection while new ones work) must not stop a node following
/// the feed: the listener's heartbeat finds it dead, reconnects and reloads every key, with no
/// restart.
///
/// The node's pool holds a few idle connections when they die, as a node serving requests
/// does; each costs whoever meets it next an acquire timeout, so the reload after the reconnect
/// may fail, and must then be retried: nothing else brings the node up to date before the next
/// change (the poll runs hourly here). `/readyz` is not polled while the node catches up: each
/// call that meets a dead pooled connection spends it, which would change what the reload meets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_connections_die_silently_notices_and_catches_up() {
    let db = PgDatabase::create().await;
    let master = master_key();
    let direct: url_parts::Parts = url_parts::parse(db.url());
    let relay = Relay::start(direct.socket_addr()).await;
    let a = node(db.url(), &master);
    let d = node(&direct.with_addr(relay.addr), &master);
    let dir = tempfile::tempdir().unwrap();
    let admin = bootstrap_env(&a, dir.path(), &[("KEYGATE_MASTER_KEY", &master)]);
    let admin_token = cli_token(&admin.key_file, &admin.key_id, &admin.issuer);
    wait_until_accepted(&a, &admin_token).await;
    wait_until_accepted(&d, &admin_token).await;
    let (k1, t1) = new_key(&a, &admin, &admin_token, dir.path()).await;
    until_status(&d, &t1, 200, FOLLOW).await;
    // D follows (it just read the feed); a few concurrent requests leave its pool a few idle
    // connections, which are about to die.
    let warm = futures_util::future::join_all((0..3).map(|_| readyz(&d))).await;
    for (status, body, _) in warm {
        assert_eq!(status, 200, "{body}");
    }

    relay.freeze_existing();
    let frozen = Instant::now();
    assert_eq!(revoke_key(&a, &admin_token, &k1).await.status(), 200);
    let (_k2, t2) = new_key(&a, &admin, &admin_token, dir.path()).await;
    // The freeze holds: the NOTIFY that reaches a following node in milliseconds is lost.
    stays_status(&d, &t1, 200, Duration::from_secs(1)).await;

    let left = SILENT_CUT_BOUND.saturating_sub(frozen.elapsed());
    follows_within(&d, &t1, 401, left)
        .await
        .unwrap_or_else(|why| panic!("the revocation never reached D: {why}"));
    let refused = frozen.elapsed();
    follows_within(&d, &t2, 200, SILENT_CUT_BOUND.saturating_sub(refused))
        .await
        .unwrap_or_else(|why| panic!("the new key never reached D: {why}"));
    let accepted = frozen.elapsed();
    eprintln!(
        "silent cut: D refused the revoked key {refused:?} and accepted the new one {accepted:?} after its connections froze"
    );
    assert!(
        d.log
            .lock()
            .unwrap()
            .contains("change listener: the connection stopped answering"),
        "the heartbeat is what found the dead connection"
    );
    // It follows the live feed again, on its new connection, in milliseconds.
    let (_k3, t3) = new_key(&a, &admin, &admin_token, dir.path()).await;
    let followed = until_status(&d, &t3, 200, FOLLOW).await;
    eprintln!("silent cut: after recovery a new key reached D in {followed:?}");
    let (body, took) = until_ready_is(&d, 200, Duration::from_secs(15)).await;
    eprintln!("silent cut: D ready {took:?} later: {body}");
}

/// Everything between a node and PostgreSQL is swallowed for 15 s (existing connections and new
/// ones alike), then new connections work again while the old ones stay dead (a failover): the
/// node says it is not ready, stays healthy, verifies from memory, and catches up by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_silently_is_not_ready_verifies_from_memory_and_catches_up() {
    const OUTAGE: Duration = Duration::from_secs(15);
    let db = PgDatabase::create().await;
    let master = master_key();
    let direct: url_parts::Parts = url_parts::parse(db.url());
    let relay = Relay::start(direct.socket_addr()).await;
    let a = node(db.url(), &master);
    let d = node(&direct.with_addr(relay.addr), &master);
    let dir = tempfile::tempdir().unwrap();
    let admin = bootstrap_env(&a, dir.path(), &[("KEYGATE_MASTER_KEY", &master)]);
    let admin_token = cli_token(&admin.key_file, &admin.key_id, &admin.issuer);
    wait_until_accepted(&a, &admin_token).await;
    wait_until_accepted(&d, &admin_token).await;
    let (k1, t1) = new_key(&a, &admin, &admin_token, dir.path()).await;
    until_status(&d, &t1, 200, FOLLOW).await;
    let (status, body, _) = readyz(&d).await;
    assert_eq!(status, 200, "{body}");

    relay.set_new_links(NewLinks::Hold);
    relay.freeze_existing();
    let frozen = Instant::now();
    let watch = ReadyzWatch::start(&d, OUTAGE + SILENT_CUT_BOUND + Duration::from_secs(20));
    assert_eq!(revoke_key(&a, &admin_token, &k1).await.status(), 200);
    let (_k2, t2) = new_key(&a, &admin, &admin_token, dir.path()).await;

    // Meanwhile D is alive and verifies from memory: the revoked key still works on it (it
    // cannot know), the new one does not yet.
    let client = http();
    while frozen.elapsed() < OUTAGE {
        let health = client.get(d.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(authz_status(&d, &t1, "/v1/apps").await, 200);
        assert_eq!(authz_status(&d, &t2, "/v1/apps").await, 401);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    relay.set_new_links(NewLinks::Forward);
    let back = frozen.elapsed();
    let back_at = Instant::now();
    follows_within(&d, &t1, 401, SILENT_CUT_BOUND)
        .await
        .unwrap_or_else(|why| panic!("the revocation never reached D: {why}"));
    let refused = back_at.elapsed();
    follows_within(&d, &t2, 200, SILENT_CUT_BOUND)
        .await
        .unwrap_or_else(|why| panic!("the new key never reached D: {why}"));
    eprintln!(
        "outage: D refused the revoked key {refused:?} and accepted the new one {:?} after new connections worked again",
        back_at.elapsed()
    );
    let (body, took) = until_ready_is(&d, 200, Duration::from_secs(15)).await;
    eprintln!("outage: D ready {took:?} later: {body}");
    let seen = watch.finish().await;
    // Not ready within 15 s of the cut, saying why; never ready while cut off.
    let first = seen
        .iter()
        .find(|s| s.status == 503)
        .unwrap_or_else(|| panic!("/readyz never answered 503: {seen:?}"));
    assert!(
        first.at + first.took <= OUTAGE,
        "/readyz took {:?} to answer 503",
        first.at + first.took
    );
    assert!(
        first.detail.contains("change feed") || first.detail.contains("database"),
        "{first:?}"
    );
    for s in seen.iter().filter(|s| s.at + s.took < back) {
        assert_eq!(s.status, 503, "ready while cut off: {s:?}");
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

/// A node on the shared database that re-reads the feed every 100 ms (the other tests slow
/// that to an hour to watch `LISTEN`; here it is beside the point).
fn polling_node(db: &str, master: &str, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![("KEYGATE_MASTER_KEY", master), ("KEYGATE_LOG", "debug")];
    env.extend_from_slice(extra);
    Server::start_on(db, &[], &env).0
}

/// What `faketime -f OFFSET` puts in a program's environment to shift its clock (libfaketime,
/// preloaded). The node is started with it directly rather than under the `faketime` wrapper,
/// which forks: killing the wrapper would leave the node running.
fn faketime_env(offset: &str) -> Vec<(String, String)> {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("faketime")
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run faketime ({e}): install the faketime package (scripts/test does)"
                )
            });
        assert!(out.status.success(), "faketime {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let mut env = Vec::new();
    for name in ["LD_PRELOAD", "FAKETIME"] {
        let value = run(&["-f", offset, "printenv", name]);
        assert!(!value.is_empty(), "faketime sets no {name}");
        env.push((name.to_owned(), value));
    }
    env
}

/// A person invited on `on` accepts over HTTP, as in a browser; returns their session cookie's
/// value.
async fn signed_in_person(on: &Server, admin_token: &str) -> String {
    let resp = http()
        .post(on.url("/v1/userInvitations"))
        .bearer_auth(admin_token)
        .json(&serde_json::json!({"data": {"type": "userInvitations", "attributes": {
            "email": "lin@example.com", "firstName": "Lin", "lastName": "Chen", "roles": ["DEVELOPER"]}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let doc: Value = resp.json().await.unwrap();
    let accept = on.url(doc["links"]["accept"].as_str().unwrap());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let cookie = |resp: &reqwest::Response, name: &str| {
        resp.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.split(';').next())
            .map(str::to_owned)
    };
    let page = client.get(&accept).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let form = cookie(&page, "keygate_form").unwrap();
    let done = client
        .post(&accept)
        .header("cookie", format!("keygate_form={form}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "csrf_token={form}&password=long+enough+secret&password_confirm=long+enough+secret"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 303);
    cookie(&done, "keygate_session").expect("accepting signs the person in")
}

/// The status of the Account page for a session cookie (200: signed in; a redirect: not).
async fn account_status(on: &Server, session: &str) -> u16 {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
        .get(on.url("/account"))
        .header("cookie", format!("keygate_session={session}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A node whose clock runs a day ahead (25 h, past the 24 h download window and any session's
/// idle timeout) shares the database with a normal one. Its sweeps decide with the database's
/// clock, so it erases no key another node just made and ends no session; its /readyz says its
/// clock is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_its_clock_a_day_ahead_erases_nothing_and_is_not_ready() {
    let skew = faketime_env("+25h");
    let db = PgDatabase::create().await;
    let master = master_key();
    let a = polling_node(db.url(), &master, &[]);
    let dir = tempfile::tempdir().unwrap();
    let admin = bootstrap_env(&a, dir.path(), &[("KEYGATE_MASTER_KEY", &master)]);
    let admin_token = cli_token(&admin.key_file, &admin.key_id, &admin.issuer);
    wait_until_accepted(&a, &admin_token).await;
    // Made just now on A: a key whose private key waits for its download, and a session.
    let pending = create_key(&a, &admin_token, &["DEVELOPER"]).await;
    let session = signed_in_person(&a, &admin_token).await;
    assert_eq!(account_status(&a, &session).await, 200);
    assert_ne!(account_status(&a, "not-a-session").await, 200);

    // The skewed node sweeps at start and then every second.
    let mut env: Vec<(&str, &str)> = skew.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("KEYGATE_SWEEP_INTERVAL", "1s"));
    let s = polling_node(db.url(), &master, &env);
    // Two sweeps begun means one finished (and committed): the session sweep is its last step,
    // and sqlx logs each statement it ran.
    let started = Instant::now();
    loop {
        let sweeps = s
            .log
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains("DELETE FROM sessions"))
            .count();
        if sweeps >= 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the skewed node did not sweep twice in 20 s: {}",
            s.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "clock: the skewed node had swept {:?} after it started",
        started.elapsed()
    );
    // Nothing of A's was swept: the session still works, the key downloads (once).
    assert_eq!(
        account_status(&a, &session).await,
        200,
        "the skewed node ended a session of A's"
    );
    let resp = http()
        .get(a.url(&format!("/v1/apiKeys/{pending}/privateKey")))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let pem = resp.text().await.unwrap();
    assert_eq!(status, 200, "the skewed node erased a key of A's: {pem}");
    assert!(pem.starts_with("-----BEGIN "));
    assert!(
        !s.log
            .lock()
            .unwrap()
            .contains("erased private keys past their download window"),
        "the skewed node erased something"
    );

    // It knows its clock is off, and says so.
    let (status, body, _) = readyz(&s).await;
    assert_eq!(status, 503, "{body}");
    let why = detail(&body);
    assert!(why.contains("clock differs from the database's"), "{body}");
    let skew_seconds: i64 = why
        .split("database's by ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no skew in {why:?}"));
    assert!(
        (-25 * 3600 - 60..=-25 * 3600 + 60).contains(&skew_seconds),
        "the database's clock minus the node's is about -25 h: {skew_seconds}"
    );
    assert!(
        !why.contains("change feed"),
        "only the clock is wrong: {why}"
    );
    assert!(
        s.log
            .lock()
            .unwrap()
            .contains("this node's clock differs from the database's")
    );
    let (status, body, _) = readyz(&a).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["clockSkewSeconds"].as_i64().unwrap().abs() <= 5,
        "{body}"
    );
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

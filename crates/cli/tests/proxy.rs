//! The reverse proxy, end to end: the real binary with `--proxy-listen/--upstream` in front of a
//! real upstream on a real port. Identity injection, spoofing removal, pass-through of the
//! upstream's answer, 100 MB bodies both ways with bounded memory, usage tracking, and 502.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    clippy::needless_pass_by_value
)] // test code: a failed expectation should panic; scenarios read top to bottom

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::*;
use futures_util::StreamExt as _;
use serde_json::{Value, json};

const BIG: u64 = 100 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// The byte at `offset` of the test stream: a pattern no chunk boundary can hide a shift in.
#[allow(clippy::cast_possible_truncation)] // masked to one byte
fn pattern_byte(offset: u64) -> u8 {
    ((offset.wrapping_mul(2_654_435_761) >> 13) & 0xff) as u8
}

/// Order-sensitive checksum over a stream that arrives in pieces.
#[derive(Default)]
struct Digest {
    len: u64,
    sum: u64,
    mismatches: u64,
}

impl Digest {
    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            if *b != pattern_byte(self.len) {
                self.mismatches += 1;
            }
            self.sum = self.sum.wrapping_mul(31).wrapping_add(u64::from(*b));
            self.len += 1;
        }
    }
}

fn pattern_chunk(start: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern_byte(start + i)).collect()
}

async fn teapot(State(up): State<Arc<Upstream>>) -> Response {
    up.hits.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::IM_A_TEAPOT,
        [
            (
                "content-type",
                "application/vnd.example+json; charset=latin1; q=x",
            ),
            ("x-upstream", "kept"),
            ("set-cookie", "a=b; HttpOnly"),
        ],
        "short and stout",
    )
        .into_response()
}

async fn upload(State(up): State<Arc<Upstream>>, body: Body) -> Response {
    up.hits.fetch_add(1, Ordering::SeqCst);
    let mut digest = Digest::default();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        digest.update(&chunk.unwrap());
    }
    let doc = json!({"len": digest.len, "sum": digest.sum, "mismatches": digest.mismatches});
    (
        [("content-type", "application/json")],
        serde_json::to_vec(&doc).unwrap(),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct Size {
    n: u64,
}

async fn download(State(up): State<Arc<Upstream>>, Query(size): Query<Size>) -> Response {
    up.hits.fetch_add(1, Ordering::SeqCst);
    let total = size.n;
    let stream = futures_util::stream::unfold(0u64, move |sent| async move {
        if sent >= total {
            return None;
        }
        let len = usize::try_from((total - sent).min(CHUNK as u64)).unwrap();
        let chunk = pattern_chunk(sent, len);
        Some((Ok::<_, std::io::Error>(chunk), sent + len as u64))
    });
    (
        [("content-type", "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn start_upstream() -> (String, Arc<Upstream>) {
    let up = Arc::new(Upstream::default());
    let app = echo_routes()
        .route("/v1/teapot", get(teapot))
        .route("/v1/upload", post(upload))
        .route("/v1/download", get(download))
        .with_state(Arc::clone(&up));
    (serve_upstream(app).await, up)
}

/// Peak resident memory of a process so far (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_forwards_allowed_requests_and_streams_big_bodies() {
    let (upstream, up) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &["--proxy-listen", "127.0.0.1:0", "--upstream", &upstream],
        &[
            ("KEYGATE_USAGE_FLUSH_INTERVAL", "100ms"),
            // Body bytes at trace level would make the log the memory hog.
            ("KEYGATE_LOG", "debug"),
        ],
    );
    let proxy = server
        .proxy
        .clone()
        .expect("serve prints the proxy address");
    let admin = bootstrap(&server, &dir.path().join("out"));
    let token = cli_token(&admin.key_file, &admin.key_id, &admin.issuer);
    wait_until_accepted(&server, &token).await;
    let client = http();

    // Refused requests are answered by keygate and never reach the upstream.
    let resp = client.get(format!("{proxy}/v1/echo")).send().await.unwrap();
    assert_eq!(reason(resp).await, (401, "TOKEN_MISSING".to_owned()));
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);

    // Allowed: identity injected, spoofed identity and the credential removed.
    let resp = client
        .post(format!("{proxy}/v1/echo/a%20b?x=1&y=%5B2%5D"))
        .bearer_auth(&token)
        .header("x-keygate-key-id", "SPOOFED000")
        .header("x-keygate-roles", "ACCOUNT_HOLDER")
        .header("X-Keygate-Anything", "spoofed")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "x-drop-me")
        .header("x-drop-me", "hop-by-hop")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-rate-limit"],
        "user-hour-lim:3600;user-hour-rem:3599;"
    );
    let seen: Value = resp.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["uri"], "/v1/echo/a%20b?x=1&y=%5B2%5D");
    assert_eq!(h["x-keygate-key-id"], json!([admin.key_id]));
    assert_eq!(h["x-keygate-issuer-id"], json!([admin.issuer]));
    assert_eq!(h["x-keygate-key-type"], json!(["team"]));
    assert_eq!(h["x-keygate-roles"], json!(["ADMIN"]));
    assert!(h.get("x-keygate-anything").is_none(), "{h}");
    assert!(h.get("authorization").is_none(), "{h}");
    assert!(h.get("x-drop-me").is_none(), "{h}");
    assert_eq!(h["x-forwarded-for"], json!(["203.0.113.9, 127.0.0.1"]));
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);

    // Upstream connections are pooled and kept alive: sequential requests reuse them. (Ten
    // requests, at most two connections: the pool gets a connection back from a background
    // task, so on a loaded machine a request can now and then find it not yet returned.)
    let mut peers = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let seen: Value = client
            .get(format!("{proxy}/v1/echo"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        peers.insert(seen["peer"].as_str().unwrap().to_owned());
    }
    assert!(peers.len() <= 2, "connections are pooled: {peers:?}");

    // The upstream's status, headers and body pass through untouched.
    let resp = client
        .get(format!("{proxy}/v1/teapot"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 418);
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.example+json; charset=latin1; q=x"
    );
    assert_eq!(resp.headers()["x-upstream"], "kept");
    assert_eq!(resp.headers()["set-cookie"], "a=b; HttpOnly");
    assert_eq!(
        resp.headers()["x-rate-limit"],
        "user-hour-lim:3600;user-hour-rem:3588;"
    );
    assert_eq!(resp.text().await.unwrap(), "short and stout");

    // 100 MB up and 100 MB down, streamed: keygate's peak memory barely moves.
    let pid = server.child.id();
    let before = peak_rss(pid);
    let started = Instant::now();
    let upload_stream = futures_util::stream::unfold(0u64, |sent| async move {
        if sent >= BIG {
            return None;
        }
        let len = usize::try_from((BIG - sent).min(CHUNK as u64)).unwrap();
        Some((
            Ok::<_, std::io::Error>(pattern_chunk(sent, len)),
            sent + len as u64,
        ))
    });
    let resp = client
        .post(format!("{proxy}/v1/upload"))
        .bearer_auth(&token)
        .body(reqwest::Body::wrap_stream(upload_stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got: Value = resp.json().await.unwrap();
    assert_eq!(got["len"], BIG);
    assert_eq!(got["mismatches"], 0);

    let mut resp = client
        .get(format!("{proxy}/v1/download?n={BIG}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut digest = Digest::default();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        digest.update(&chunk);
    }
    assert_eq!((digest.len, digest.mismatches), (BIG, 0));
    let after = peak_rss(pid);
    let grew = after.saturating_sub(before);
    eprintln!(
        "proxied 2 x {} MiB in {:?}; keygate peak RSS {} MiB -> {} MiB",
        BIG >> 20,
        started.elapsed(),
        before >> 20,
        after >> 20
    );
    assert!(
        grew < 32 * 1024 * 1024,
        "keygate's peak RSS grew by {} MiB while streaming 200 MiB",
        grew >> 20
    );

    // Usage is batched and flushed: the key list shows all 14 admitted requests.
    let deadline = Instant::now() + Duration::from_secs(10);
    let me = loop {
        let list: Value = client
            .get(server.url("/v1/apiKeys"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let me = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == admin.key_id.as_str())
            .unwrap()
            .clone();
        if me["attributes"]["requestCount"] == 14 || Instant::now() > deadline {
            break me;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(me["attributes"]["requestCount"], 14, "{me}");
    assert!(me["attributes"]["lastUsedDate"].is_string(), "{me}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_502_in_the_error_shape() {
    // A port held by a bound socket that never listens, for the whole test: connecting to it is
    // refused, and no other listener (keygate's own, or another test's) can be handed the port.
    // Dropping a listener instead would free the port for the next `bind(":0")`, and the proxy
    // could then reach whatever took it.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = held.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let upstream = format!("http://{closed}");
    let server = Server::start_with(
        dir.path(),
        &["--proxy-listen", "127.0.0.1:0", "--upstream", &upstream],
        &[],
    );
    let proxy = server.proxy.clone().unwrap();
    let admin = bootstrap(&server, &dir.path().join("out"));
    let token = cli_token(&admin.key_file, &admin.key_id, &admin.issuer);
    wait_until_accepted(&server, &token).await;
    let resp = http()
        .get(format!("{proxy}/v1/anything"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.headers()["x-rate-limit"],
        "user-hour-lim:3600;user-hour-rem:3599;"
    );
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["errors"][0]["status"], "502");
    assert_eq!(doc["errors"][0]["code"], "BAD_GATEWAY");
    assert!(doc["errors"][0]["id"].is_string());
    drop(held);
}

/// A raw upstream that records each request head it reads (request line and headers, as
/// sent) and answers `/api/framing` with a stale `Content-Length` beside chunked framing, any
/// other path with `ok`.
async fn raw_upstream() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let framing = head.starts_with("GET /api/framing ");
                    log.lock().unwrap().push(head);
                    let answer: &[u8] = if framing {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    };
                    if conn.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}/api"), seen)
}

/// Sends `request` as raw bytes on a new connection and returns the status and the whole
/// answer (the request should say `Connection: close`).
async fn raw_request(addr: &str, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The upstream gets exactly the target keygate checked, inside the prefix, for every key and
/// every policy (here an admin key under an open policy, where no rule parses the path);
/// targets that servers could read differently, transfer codings other than `chunked` alone
/// and method overrides are refused in the error shape; answers are framed as the upstream
/// framed them; the client's claims of address, scheme and keygate's own cookies do not reach
/// the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_forwards_exactly_what_it_checked() {
    let (upstream, seen) = raw_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &["--proxy-listen", "127.0.0.1:0", "--upstream", &upstream],
        &[],
    );
    let proxy = server.proxy.clone().unwrap();
    let addr = proxy.trim_start_matches("http://").to_owned();
    let admin = bootstrap(&server, &dir.path().join("out"));
    let token = cli_token(&admin.key_file, &admin.key_id, &admin.issuer);
    wait_until_accepted(&server, &token).await;
    let get = |target: &str, extra: &str| {
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{extra}Connection: close\r\n\r\n"
        )
        .into_bytes()
    };

    let (status, _) = raw_request(&addr, &get("/v1/echo/a?x=1", "")).await;
    assert_eq!(status, 200);
    assert!(
        seen.lock().unwrap()[0].starts_with("GET /api/v1/echo/a?x=1 HTTP/1.1"),
        "{:?}",
        seen.lock().unwrap()
    );

    for target in [
        "/../internal/secrets",
        "/%2e%2e/internal/secrets",
        "/%2E%2E/internal",
        "/v1/../../x",
        "/./../x",
        "/v1/echo/..;/x",
        "/v1/echo/%252e%252e/x",
        "//internal",
        "/v1/echo/%EF%BC%8E%EF%BC%8E/x",
        "/v1/echo/a%2f..%2f..%2fx",
        "http://127.0.0.1:1/../internal",
    ] {
        let before = seen.lock().unwrap().len();
        let (status, text) = raw_request(&addr, &get(target, "")).await;
        assert_eq!(status, 400, "{target}: {text}");
        assert!(text.contains("\"errors\""), "{target}: {text}");
        assert_eq!(
            seen.lock().unwrap().len(),
            before,
            "{target} reached the upstream"
        );
    }

    // Framing: only `chunked` alone is a transfer coding that is forwarded.
    let before = seen.lock().unwrap().len();
    let coded = format!(
        "POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let (status, text) = raw_request(&addr, coded.as_bytes()).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("Transfer-Encoding"), "{text}");
    assert_eq!(seen.lock().unwrap().len(), before);
    // A stale Content-Length beside chunked framing in the answer: the client gets the body.
    let (status, text) = raw_request(&addr, &get("/framing", "")).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.ends_with("hello") || text.contains("\r\n\r\n5\r\nhello"),
        "{text}"
    );
    assert!(
        !text.to_ascii_lowercase().contains("content-length: 3"),
        "{text}"
    );

    // A method override would run another method than the one checked; a header name with _
    // is read as its - spelling by CGI-style servers.
    for name in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
        "X_Real_IP",
    ] {
        let before = seen.lock().unwrap().len();
        let (status, _) =
            raw_request(&addr, &get("/v1/echo/a", &format!("{name}: DELETE\r\n"))).await;
        assert_eq!(status, 400, "{name}");
        assert_eq!(seen.lock().unwrap().len(), before);
    }

    // The client's address and scheme claims, and keygate's own cookies, stop here.
    let (status, _) = raw_request(
        &addr,
        &get(
            "/v1/echo/claims",
            "X-Real-IP: 10.9.9.9\r\nTrue-Client-IP: 10.9.9.9\r\nX-Original-Method: DELETE\r\nX-Forwarded-Proto: https\r\nCookie: keygate_session=s3cr3t; theirs=1; keygate_form=f\r\n",
        ),
    )
    .await;
    assert_eq!(status, 200);
    let head = seen.lock().unwrap().last().unwrap().to_ascii_lowercase();
    assert!(head.contains("x-real-ip: 127.0.0.1"), "{head}");
    assert!(
        !head.contains("true-client-ip") && !head.contains("x-original-method"),
        "{head}"
    );
    assert!(!head.contains("10.9.9.9"), "{head}");
    assert!(head.contains("x-forwarded-proto: http\r\n"), "{head}");
    assert!(head.contains("cookie: theirs=1"), "{head}");
    assert!(
        !head.contains("keygate_session") && !head.contains("keygate_form"),
        "{head}"
    );
}

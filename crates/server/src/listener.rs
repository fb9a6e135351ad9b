//! Serving one listener (main or proxy) with bounded connections: a header-read timeout, an
//! idle keep-alive timeout and a connection cap, so that clients that connect and then hold
//! (slowloris), or simply too many of them, degrade service instead of taking `/authz` down.
//!
//! The cap works as nginx's `worker_connections` with reusable connections: at the cap, the
//! oldest connection that is not in the middle of a request (idle between requests, still
//! sending its headers, or still sending a request body) is closed to make room; only when
//! every connection is busy with a request it has sent whole is the new one closed instead. A
//! client trickling a body a byte a second therefore holds a place only until room is needed.
//! A request's head (request line and headers) is at most [`MAX_HEAD_BYTES`]: more is a 431. The cap is also kept below the process's open-file
//! limit, so `accept` does not fail for want of descriptors; when it does fail, the loop backs
//! off briefly rather than spinning or ending.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tower::ServiceExt as _;

use crate::config::ConnectionLimits;

/// Descriptors kept back from the connection budget: the database pool, the log, files,
/// the proxy's upstream connections' slack.
const RESERVED_FILES: u64 = 64;

/// The read buffer for a request head: nginx's default `large_client_header_buffers`
/// (4 × 8 KiB). hyper reads in growing chunks and refuses (431) a head still incomplete once
/// its buffer holds this much, so heads of up to about 56 KiB pass and larger ones never do.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// A client that stops reading an answer keygate has ready to send (its socket buffer full)
/// for this long makes its connection evictable at the cap, like one still sending headers.
const SEND_STALL: Duration = Duration::from_secs(2);

/// ... and for this long, closed outright: nginx's `send_timeout`.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves `router` on `listener` until `shutdown` turns true, then lets requests in flight
/// finish (for up to ten seconds). `files_per_connection` is how many descriptors one client
/// connection may cost (2 for the proxy, which holds an upstream connection beside it).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    share: ListenerShare,
    mut shutdown: watch::Receiver<bool>,
) {
    let cap = share.cap(limits.max_connections);
    let conns = Arc::new(Registry::default());
    let mut accept_failures: u32 = 0;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                accept_failures = 0;
                a
            }
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE) or a connection reset before it was
                // accepted: make room if we can, back off, and go on accepting.
                conns.evict_oldest_idle();
                accept_failures = accept_failures.saturating_add(1);
                if accept_failures == 1 || accept_failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures = accept_failures, "accept failed; backing off");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if conns.len() >= cap && !conns.evict_oldest_idle() {
            // Every connection is in the middle of a request: this one waits its turn by being
            // closed now (the client may retry), not by holding a descriptor.
            tracing::debug!(%peer, cap, "connection cap reached; closing the new connection");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (id, state) = conns.insert();
        let conns = Arc::clone(&conns);
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, router, limits, &state, shutdown).await;
            conns.remove(id);
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while conns.len() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    state: &Arc<ConnState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let service_state = Arc::clone(state);
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let guard = Busy::begin(&service_state);
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        let receiving = (!hyper::body::Body::is_end_stream(req.body()))
            .then(|| Receiving::begin(&service_state));
        let req = req.map(|body| match receiving {
            Some(receiving) => Body::new(ReceivingBody {
                body,
                receiving: Some(receiving),
            }),
            None => Body::new(body),
        });
        async move {
            let resp = match router.oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
            // The connection stays busy until the answer's body is sent (or dropped).
            let sending = Sending::begin(&guard.0);
            Ok::<_, Infallible>(resp.map(|body| {
                Body::new(Guarded {
                    body,
                    sending,
                    _busy: guard,
                })
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        // While a request is in flight, look every second whether its answer stalled.
        let deadline = if state.busy.load(Ordering::Acquire) > 0 {
            Instant::now() + Duration::from_secs(1)
        } else {
            state.idle_deadline(limits)
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                return;
            }
            () = state.close.notified() => {
                tracing::debug!(%peer, "connection closed to make room under the cap");
                return;
            }
            _ = shutdown.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(deadline) => {
                if state.is_idle_past(limits) {
                    tracing::debug!(%peer, "idle connection closed");
                    return;
                }
                if state.send_stalled_for(SEND_TIMEOUT) {
                    tracing::debug!(%peer, "client stopped reading the answer; connection closed");
                    return;
                }
            }
        }
    }
}

/// How a listener's connections share the process's descriptors.
#[derive(Debug, Clone, Copy)]
pub struct ListenerShare {
    /// Listeners in this process.
    pub listeners: u64,
    /// Descriptors one connection of this listener may hold.
    pub files_per_connection: u64,
}

impl ListenerShare {
    /// The configured cap, lowered to what the open-file limit allows.
    fn cap(self, configured: usize) -> usize {
        let Some(limit) = open_files_limit() else {
            return configured;
        };
        let budget = limit.saturating_sub(RESERVED_FILES) / self.listeners.max(1);
        let fits = usize::try_from(budget / self.files_per_connection.max(1))
            .unwrap_or(usize::MAX)
            .max(1);
        if fits < configured {
            tracing::warn!(
                configured,
                cap = fits,
                open_files_limit = limit,
                "max_connections lowered to fit the open-file limit (raise it with ulimit -n)"
            );
            fits
        } else {
            configured
        }
    }
}

/// The soft `RLIMIT_NOFILE`, read from `/proc/self/limits` (Linux); `None` elsewhere or when
/// unlimited.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The open connections of one listener.
#[derive(Debug, Default)]
struct Registry {
    inner: Mutex<RegistryInner>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    next: u64,
    open: HashMap<u64, Arc<ConnState>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.lock().open.len()
    }

    fn insert(&self) -> (u64, Arc<ConnState>) {
        let mut inner = self.lock();
        let id = inner.next;
        inner.next += 1;
        let state = Arc::new(ConnState::new());
        inner.open.insert(id, Arc::clone(&state));
        (id, state)
    }

    fn remove(&self, id: u64) {
        self.lock().open.remove(&id);
    }

    /// Closes the oldest connection with no request in flight that is not already closing;
    /// `false` if there is none.
    fn evict_oldest_idle(&self) -> bool {
        let inner = self.lock();
        let oldest = inner
            .open
            .iter()
            .filter(|(_, s)| s.evictable())
            .min_by_key(|(id, _)| **id);
        match oldest {
            Some((_, state)) => {
                state.evicted.store(true, Ordering::Release);
                state.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// One connection's state, shared by its task, its requests and the registry.
#[derive(Debug)]
struct ConnState {
    /// Requests in flight, counting an answer until its body is sent.
    busy: AtomicUsize,
    /// Of those, the ones whose request body has not all arrived yet.
    receiving: AtomicUsize,
    /// Of those, the ones whose answer is being sent.
    sending: AtomicUsize,
    /// Whether the answer's body last had nothing ready (the upstream's turn, not the client's).
    send_waits_on_body: AtomicBool,
    /// When the answer's body was last asked for more, in ms since `opened`: a client that
    /// does not read stops hyper asking.
    last_send_poll_ms: AtomicU64,
    /// Whether a request has started on it (idle before the first one is a header-read wait).
    served: AtomicBool,
    /// When the last request ended (or the connection opened), in ms since `opened`.
    last_active_ms: AtomicU64,
    opened: Instant,
    evicted: AtomicBool,
    close: Notify,
}

impl ConnState {
    fn new() -> Self {
        Self {
            busy: AtomicUsize::new(0),
            receiving: AtomicUsize::new(0),
            sending: AtomicUsize::new(0),
            send_waits_on_body: AtomicBool::new(false),
            last_send_poll_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
            last_active_ms: AtomicU64::new(0),
            opened: Instant::now(),
            evicted: AtomicBool::new(false),
            close: Notify::new(),
        }
    }

    /// Whether it may be closed to make room: not already closing, and no request in flight
    /// that the client has sent whole.
    fn evictable(&self) -> bool {
        let stalled = if self.send_stalled_for(SEND_STALL) {
            self.sending.load(Ordering::Acquire)
        } else {
            0
        };
        !self.evicted.load(Ordering::Acquire)
            && self.busy.load(Ordering::Acquire) <= self.receiving.load(Ordering::Acquire) + stalled
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether an answer is ready to go but the client has not taken any of it for `stall`.
    fn send_stalled_for(&self, stall: Duration) -> bool {
        self.sending.load(Ordering::Acquire) > 0
            && !self.send_waits_on_body.load(Ordering::Acquire)
            && self
                .elapsed_ms()
                .saturating_sub(self.last_send_poll_ms.load(Ordering::Acquire))
                > u64::try_from(stall.as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_active_ms
            .store(self.elapsed_ms(), Ordering::Release);
    }

    /// The longest it may sit with no request: the header-read timeout before its first
    /// request, the idle timeout between requests.
    fn allowed_idle(&self, limits: ConnectionLimits) -> Duration {
        if self.served.load(Ordering::Acquire) {
            limits.idle_timeout
        } else {
            limits.header_read_timeout
        }
    }

    fn idle_deadline(&self, limits: ConnectionLimits) -> Instant {
        let last = Duration::from_millis(self.last_active_ms.load(Ordering::Acquire));
        self.opened + last + self.allowed_idle(limits)
    }

    fn is_idle_past(&self, limits: ConnectionLimits) -> bool {
        self.busy.load(Ordering::Acquire) == 0 && Instant::now() >= self.idle_deadline(limits)
    }
}

/// A request in flight on a connection; ends when dropped.
#[derive(Debug)]
struct Busy(Arc<ConnState>);

impl Busy {
    fn begin(state: &Arc<ConnState>) -> Self {
        state.served.store(true, Ordering::Release);
        state.busy.fetch_add(1, Ordering::AcqRel);
        state.touch();
        Self(Arc::clone(state))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request whose body is still arriving; ends when the body has all arrived or is dropped.
#[derive(Debug)]
struct Receiving(Arc<ConnState>);

impl Receiving {
    fn begin(state: &Arc<ConnState>) -> Self {
        state.receiving.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(state))
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.0.receiving.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request body that marks its connection evictable until the last byte arrives.
#[derive(Debug)]
struct ReceivingBody {
    body: Incoming,
    receiving: Option<Receiving>,
}

impl hyper::body::Body for ReceivingBody {
    type Data = axum::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) || this.body.is_end_stream() {
            this.receiving = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An answer's body that keeps its connection marked busy until it is sent or dropped.
#[derive(Debug)]
struct Guarded {
    body: Body,
    sending: Sending,
    _busy: Busy,
}

/// An answer being sent; ends when its body is sent or dropped.
#[derive(Debug)]
struct Sending(Arc<ConnState>);

impl Sending {
    fn begin(state: &Arc<ConnState>) -> Self {
        state.send_waits_on_body.store(false, Ordering::Release);
        state
            .last_send_poll_ms
            .store(state.elapsed_ms(), Ordering::Release);
        state.sending.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(state))
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.sending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl hyper::body::Body for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let state = &this.sending.0;
        state
            .last_send_poll_ms
            .store(state.elapsed_ms(), Ordering::Release);
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        state
            .send_waits_on_body
            .store(polled.is_pending(), Ordering::Release);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_open_file_limit() {
        let share = ListenerShare {
            listeners: 1,
            files_per_connection: 1,
        };
        let limit = open_files_limit();
        let cap = share.cap(1_000_000);
        match limit {
            Some(l) => assert!(cap as u64 <= l.saturating_sub(RESERVED_FILES).max(1)),
            None => assert_eq!(cap, 1_000_000),
        }
        assert_eq!(share.cap(3), 3.min(cap));
    }
}

//! Serving HTTP/1.1 connections with bounds a careless or hostile client cannot stretch.
//!
//! - **Connections**: at most `max_connections` at once; one more is answered a canned 503 and
//!   closed without being read, so refusing costs one write.
//! - **Timeouts**, kept per connection by a supervisor that knows where the connection is in
//!   its request cycle ([`Activity`]):
//!   - *idle*: no request in progress for `idle_timeout` (also before the first byte);
//!   - *head*: the request line and headers not complete `header_timeout` after their first
//!     byte (slowloris);
//!   - *write*: the client has not acknowledged a byte of its response for `write_timeout` (a
//!     client that never reads its stream); closing drops the response, which cancels its job.
//!     Progress is what the peer acknowledged (the socket's unacknowledged bytes, `SIOCOUTQ`,
//!     against the bytes written), sampled every quarter of the timeout while something is
//!     outstanding: the kernel's send buffer grows to megabytes on its own, so a blocked write
//!     would reveal a stalled client only after those megabytes.
//!
//! The body of a request is bounded by the handler (`gateway.body_timeout`), which is where it
//! is read.
//!
//! hyper's own header timer would also close idle keep-alive connections at the head timeout
//! (it starts when hyper waits for a head, idle or not; 30 s by default once hyper has a
//! timer), and costs a timer allocation per request, so hyper gets no timer at all.

use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use ssw_protocol::error::{ErrorCode, ErrorEnvelope};
use ssw_telemetry::names;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// The connection bounds (from `gateway.*`).
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Open connections at most.
    pub max_connections: usize,
    /// Head complete within this of its first byte.
    pub header_timeout: Duration,
    /// No request in progress for this long closes the connection.
    pub idle_timeout: Duration,
    /// A response the client does not acknowledge for this long closes the connection.
    pub write_timeout: Duration,
}

impl Bounds {
    /// The bounds a gateway configuration sets.
    pub fn from_config(g: &ssw_config::GatewayConfig) -> Self {
        Self {
            max_connections: g.max_connections,
            header_timeout: g.header_timeout,
            idle_timeout: g.idle_timeout,
            write_timeout: g.write_timeout,
        }
    }
}

/// What a connection is doing, as far as its timeouts care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No request in progress since then.
    Idle(Instant),
    /// The first byte of a request head arrived then.
    Head(Instant),
    /// A request is being handled (its head is complete).
    Busy,
}

/// Why a connection was closed by the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expired {
    Idle,
    Head,
    Write,
}

impl Expired {
    fn label(self) -> &'static str {
        match self {
            Self::Idle => "idle_timeout",
            Self::Head => "header_timeout",
            Self::Write => "write_timeout",
        }
    }
}

/// One connection's activity, updated by its I/O and its service, read by its supervisor.
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
    /// Bytes written to the socket so far.
    written: AtomicU64,
    /// Signalled when a deadline may have moved earlier.
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::Idle(Instant::now())),
            written: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived: an idle connection starts a request head.
    fn read(&self) {
        let mut phase = self.lock();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(Instant::now());
            drop(phase);
            self.changed.notify_one();
        }
    }

    fn wrote(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn request_started(&self) {
        *self.lock() = Phase::Busy;
    }

    fn request_done(&self) {
        *self.lock() = Phase::Idle(Instant::now());
        self.changed.notify_one();
    }

    fn busy(&self) -> bool {
        *self.lock() == Phase::Busy
    }

    /// The idle or head deadline in force (none while a request is in progress).
    fn deadline(&self, b: &Bounds) -> Option<(Instant, Expired)> {
        match *self.lock() {
            Phase::Idle(t) => Some((t + b.idle_timeout, Expired::Idle)),
            Phase::Head(t) => Some((t + b.header_timeout, Expired::Head)),
            Phase::Busy => None,
        }
    }
}

/// Whether the peer keeps acknowledging what is written to it.
#[derive(Debug)]
struct AckWatch {
    /// Bytes the peer had acknowledged at the last sample.
    acked: u64,
    /// When the acknowledged count last grew (or nothing was outstanding).
    progress_at: Instant,
    /// When to sample next, while something is outstanding.
    next_sample: Option<Instant>,
    /// Bytes are (or may be) waiting for the peer.
    outstanding: bool,
}

impl AckWatch {
    fn new() -> Self {
        Self {
            acked: 0,
            progress_at: Instant::now(),
            next_sample: None,
            outstanding: false,
        }
    }

    /// When to sample next: every `period` while a request is in progress (`busy`: its
    /// response may be written at any time, and writes do not wake the supervisor) or bytes may
    /// be outstanding (more written than seen acknowledged); otherwise never.
    fn schedule(
        &mut self,
        written: u64,
        busy: bool,
        now: Instant,
        period: Duration,
    ) -> Option<Instant> {
        if written > self.acked || busy {
            if !self.outstanding {
                // Nothing was outstanding until now: the wait starts here, not at the last
                // progress of an earlier response.
                self.outstanding = true;
                self.progress_at = now;
            }
            if self.next_sample.is_none() {
                self.next_sample = Some(now + period);
            }
        } else {
            self.outstanding = false;
            self.next_sample = None;
        }
        self.next_sample
    }

    /// Accounts a sample: `written` bytes so far, `unacked` of them not acknowledged. Returns
    /// whether the peer has acknowledged nothing for `timeout` while bytes were outstanding.
    fn sample(&mut self, written: u64, unacked: u64, now: Instant, timeout: Duration) -> bool {
        self.next_sample = None;
        let acked = written.saturating_sub(unacked);
        if acked > self.acked || unacked == 0 {
            self.acked = acked;
            self.progress_at = now;
        }
        self.outstanding = unacked > 0;
        unacked > 0 && now.saturating_duration_since(self.progress_at) >= timeout
    }
}

/// Bytes written to `fd` and not yet acknowledged by the peer (`SIOCOUTQ`, tcp(7)).
#[allow(unsafe_code)]
fn unacked_bytes(fd: RawFd) -> Option<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int; `fd` is this connection's socket, open for
    // as long as the connection (which owns it) is being served.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    (r == 0).then(|| u64::try_from(n).unwrap_or(0))
}

/// The socket, reporting reads and blocked writes to the connection's [`Activity`].
struct TimedIo {
    tcp: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for TimedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl TimedIo {
    fn track(&self, r: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = &r {
            self.activity.wrote(*n);
        }
        r
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.track(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.track(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// The router behind one connection, marking each request's start and end.
#[derive(Clone)]
struct Tracked {
    router: Router,
    activity: Arc<Activity>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = hyper::Response<TrackedBody>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.activity.request_started();
        let mut router = self.router.clone();
        let activity = self.activity.clone();
        Box::pin(async move {
            let guard = DoneGuard(activity);
            let resp = match router.call(req.map(Body::new)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok(resp.map(|inner| TrackedBody {
                inner,
                _done: guard,
            }))
        })
    }
}

/// Marks the request done when its response body is finished or dropped.
struct DoneGuard(Arc<Activity>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// A response body that ends its request's busy phase when it is dropped.
struct TrackedBody {
    inner: Body,
    _done: DoneGuard,
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The canned answer to a connection beyond `max_connections`: a whole response, written
/// without reading the request.
static OVER_CAPACITY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let body = ErrorEnvelope::new(
        ErrorCode::ServerBusy,
        "too many open connections; retry later",
    )
    .to_json();
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
});

/// Serves `router` on `listener` until `shutdown`, then stops accepting, lets every connection
/// finish its request in progress (idle ones close at once) and returns when all are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    bounds: Bounds,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(bounds.max_connections));
    let conns = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, _peer) = match accepted {
            Ok(a) => a,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Out of descriptors or memory: back off briefly instead of spinning; the
                // connections in the kernel's queue wait.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(names::GATEWAY_CONNECTIONS_REFUSED).increment(1);
            let _ = tcp.try_write(&OVER_CAPACITY);
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            // Small SSE writes must leave at once: without TCP_NODELAY, Nagle's algorithm
            // holds each one until the client's delayed ACK (~40 ms).
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        conns.spawn(connection(
            tcp,
            router.clone(),
            bounds,
            shutdown.clone(),
            slot,
        ));
    }
    drop(listener);
    conns.close();
    conns.wait().await;
    Ok(())
}

/// Errors of one connection that do not concern the listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

async fn connection(
    tcp: TcpStream,
    router: Router,
    bounds: Bounds,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let open = metrics::gauge!(names::GATEWAY_OPEN_CONNECTIONS);
    open.increment(1.0);
    let fd = tcp.as_raw_fd();
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(TimedIo {
        tcp,
        activity: activity.clone(),
    });
    let service = Tracked {
        router,
        activity: activity.clone(),
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    let mut acks = AckWatch::new();
    let period = (bounds.write_timeout / 4).max(Duration::from_millis(50));
    let close = |why: Expired| {
        tracing::debug!(reason = why.label(), "closing connection");
        metrics::counter!(names::GATEWAY_CONNECTIONS_CLOSED, "reason" => why.label()).increment(1);
    };
    loop {
        let deadline = activity.deadline(&bounds).map(|d| d.0);
        let written = activity.written.load(Ordering::Relaxed);
        let sample = acks.schedule(written, activity.busy(), Instant::now(), period);
        let wake = match (deadline, sample) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = activity.changed.notified() => {}
            _ = tokio::time::sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {
                let now = Instant::now();
                // The deadline may have moved since it was read; close only if it still holds.
                if let Some((at, why)) = activity.deadline(&bounds)
                    && at <= now
                {
                    close(why);
                    break;
                }
                if sample.is_some_and(|at| at <= now) {
                    let written = activity.written.load(Ordering::Relaxed);
                    let stalled = unacked_bytes(fd)
                        .is_some_and(|unacked| acks.sample(written, unacked, now, bounds.write_timeout));
                    if stalled {
                        close(Expired::Write);
                        break;
                    }
                }
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    open.decrement(1.0);
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> Bounds {
        Bounds {
            max_connections: 10,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_follows_the_request_cycle() {
        let b = bounds();
        let a = Activity::new();
        let t0 = Instant::now();
        assert_eq!(a.deadline(&b), Some((t0 + b.idle_timeout, Expired::Idle)));
        tokio::time::advance(Duration::from_secs(5)).await;
        a.read();
        let head = Instant::now() + b.header_timeout;
        assert_eq!(a.deadline(&b), Some((head, Expired::Head)));
        // More bytes of the same head do not extend it.
        tokio::time::advance(Duration::from_secs(5)).await;
        a.read();
        assert_eq!(a.deadline(&b), Some((head, Expired::Head)));
        a.request_started();
        assert_eq!(
            a.deadline(&b),
            None,
            "a request in progress has no idle or head limit"
        );
        a.request_done();
        let idle = Instant::now() + b.idle_timeout;
        assert_eq!(a.deadline(&b), Some((idle, Expired::Idle)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_acknowledges_nothing_stalls_one_that_reads_slowly_does_not() {
        let timeout = Duration::from_secs(4);
        let period = Duration::from_secs(1);
        let mut w = AckWatch::new();
        assert_eq!(
            w.schedule(0, false, Instant::now(), period),
            None,
            "nothing written"
        );
        // 1 MB written; the peer takes 10 KB a second: never stalled.
        let mut written = 1_000_000u64;
        for i in 1..=10u64 {
            assert!(w.schedule(written, false, Instant::now(), period).is_some());
            tokio::time::advance(period).await;
            let unacked = written - i * 10_000;
            assert!(
                !w.sample(written, unacked, Instant::now(), timeout),
                "second {i}"
            );
        }
        // It stops reading: stalled once the timeout passes without progress, not before.
        written += 50_000;
        let unacked = written - 100_000;
        let mut stalled_after = None;
        for i in 1..=10u64 {
            w.schedule(written, false, Instant::now(), period);
            tokio::time::advance(period).await;
            if w.sample(written, unacked, Instant::now(), timeout) {
                stalled_after = Some(i);
                break;
            }
        }
        assert_eq!(stalled_after, Some(4));
        // A new response after a long quiet time: its wait starts when it is written.
        let mut w = AckWatch::new();
        tokio::time::advance(Duration::from_secs(600)).await;
        w.schedule(500, false, Instant::now(), period);
        tokio::time::advance(period).await;
        assert!(!w.sample(500, 500, Instant::now(), timeout));
        // Everything acknowledged is progress.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!w.sample(500, 0, Instant::now(), timeout));
        assert_eq!(w.schedule(500, false, Instant::now(), period), None);
    }

    #[test]
    fn the_canned_refusal_is_a_complete_response() {
        let text = std::str::from_utf8(&OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), len);
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "server_busy");
    }
}

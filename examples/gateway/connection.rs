//! One client connection's timeouts, held by the connection itself: its socket is wrapped in
//! [`Watched`], which fails a read that waits past the deadline of the connection's state, and
//! its service in [`Tracked`], which tells that state whether a request is in flight.
//!
//! | state | deadline | HAProxy |
//! |---|---|---|
//! | no request yet, or a request head begun | `requestHeader` from the connection's start or the head's first byte | `timeout http-request` |
//! | between requests (keep-alive, HTTP/2 with no stream) | `clientIdle` from the end of the last response | `timeout http-keep-alive` |
//! | a response the client does not read | `clientIdle` from the first blocked write | `timeout client` |
//! | a request in flight | none here: `clientBody` bounds its body, the backend timeouts the rest | `timeout client`/`server` |
//! | upgraded (WebSocket) | none here: the tunnel's `tunnelIdle` | `timeout tunnel` |
//!
//! The deadline is only looked at when a read or write has to wait, and the timer only moves
//! when the deadline does (once per request), so a busy connection pays two atomic updates per
//! request. On shutdown a connection with no request in flight, half-sent heads included, is
//! closed at once; the others finish their request within `shutdownGrace`.
//!
//! A plain HTTP/1 connection between requests has one more deadline, [`RELEASE_IDLE_AFTER`]
//! from the end of its last response: then its HTTP state is released (see `keep_alive`).
//! hyper looks at the socket again after a response only when woken, so while a request is in
//! flight the timer is set to ring within that period (`clientIdle` for connections that do
//! not release): on a busy connection it rings once per period.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::edge::Timeouts;

/// Marks a time that is not set.
const UNSET: u64 = u64::MAX;

/// How long a plain HTTP/1 connection waits between requests before it hands back its HTTP
/// state (hyper's two 8 KiB buffers among it). Short, because connections opened in a burst
/// keep their buffers this long and the allocator keeps the peak: 250 ms left 8.6 KB of
/// resident memory per idle connection after 4,000 opened in a second, 50 ms 4.4–4.9 KB. A
/// connection busier than this never rebuilds; its read timer rings once per period.
pub(crate) const RELEASE_IDLE_AFTER: Duration = Duration::from_millis(50);

/// What a connection is doing, shared by its socket, its service and its response bodies.
#[derive(Debug)]
pub(crate) struct Activity {
    /// The connection's start; times below are milliseconds since.
    start: Instant,
    /// Requests whose response has not ended.
    in_flight: AtomicUsize,
    /// When the last response ended (or the connection started).
    idle_since: AtomicU64,
    /// When the current request head began: the first byte read while no request was in
    /// flight (or the connection's start); `UNSET` between requests.
    head_since: AtomicU64,
    /// HTTP/2: bytes between requests are frames (pings, settings), not a head.
    h2: AtomicBool,
    /// Switched protocols: the tunnel keeps its own time.
    upgraded: AtomicBool,
    /// Whether this connection releases its HTTP state when idle (plain HTTP/1).
    releases: AtomicBool,
    /// Idle for [`RELEASE_IDLE_AFTER`] between requests: the state may be released.
    release_due: AtomicBool,
    /// Bytes were written since the last completed flush.
    unflushed: AtomicBool,
    /// While the HTTP state is handed back: shutting the socket down leaves it open.
    detached: AtomicBool,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            releases: AtomicBool::new(false),
            release_due: AtomicBool::new(false),
            unflushed: AtomicBool::new(false),
            detached: AtomicBool::new(false),
        })
    }

    /// From now on, the connection's HTTP state may be released when idle.
    pub(crate) fn enable_release(&self) {
        self.releases.store(true, Ordering::Relaxed);
    }

    /// Between two requests: none in flight, no byte of the next one read, not upgraded,
    /// HTTP/1.
    fn between_requests(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == UNSET
            && !self.upgraded.load(Ordering::Relaxed)
            && !self.h2.load(Ordering::Relaxed)
    }

    /// When the HTTP state is to be released, if it is not due already.
    fn release_at(&self) -> Option<Instant> {
        if !self.releases.load(Ordering::Relaxed)
            || self.release_due.load(Ordering::Relaxed)
            || !self.between_requests()
        {
            return None;
        }
        Some(self.at(self.idle_since.load(Ordering::Relaxed)) + RELEASE_IDLE_AFTER)
    }

    /// Whether the HTTP state may be released now: idle long enough between requests, with
    /// every byte of the last response flushed to the socket.
    pub(crate) fn may_release(&self) -> bool {
        self.release_due.load(Ordering::Relaxed)
            && self.between_requests()
            && !self.unflushed.load(Ordering::Relaxed)
    }

    /// While set, shutting the socket down leaves it open: hyper closes a connection it is
    /// told to shut down, and the socket outlives it.
    pub(crate) fn set_detached(&self, detached: bool) {
        self.detached.store(detached, Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(UNSET - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.start + Duration::from_millis(millis)
    }

    /// Whether no request is in flight: a connection that may be closed at once.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
    }

    fn on_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == UNSET
        {
            self.head_since.store(self.now(), Ordering::Relaxed);
        }
    }

    fn on_request(&self, version: Version) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(UNSET, Ordering::Relaxed);
        self.release_due.store(false, Ordering::Relaxed);
        if version == Version::HTTP_2 {
            self.h2.store(true, Ordering::Relaxed);
        }
    }

    fn on_response_end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(self.now(), Ordering::Relaxed);
        }
    }

    /// When a read that has to wait must give up, if ever.
    fn read_deadline(&self, timeouts: &Timeouts) -> Option<Instant> {
        if self.upgraded.load(Ordering::Relaxed) || self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let head = self.head_since.load(Ordering::Relaxed);
        if head != UNSET && !self.h2.load(Ordering::Relaxed) {
            return Some(self.at(head) + timeouts.request_header);
        }
        Some(self.at(self.idle_since.load(Ordering::Relaxed)) + timeouts.client_idle)
    }
}

/// The error a read or write gets when its deadline passes; hyper closes the connection.
fn timed_out(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
}

pin_project! {
    /// A client connection's socket, failing reads and writes that wait past the deadline of
    /// the connection's [`Activity`].
    pub(crate) struct Watched<IO> {
        #[pin]
        io: IO,
        activity: Arc<Activity>,
        timeouts: Timeouts,
        read_timer: Option<Pin<Box<Sleep>>>,
        write_timer: Option<Pin<Box<Sleep>>>,
        // Bytes read from the socket that the next reads return first.
        unread: Bytes,
    }
}

impl<IO> Watched<IO> {
    pub(crate) fn new(io: IO, activity: Arc<Activity>, timeouts: Timeouts) -> Self {
        Self { io, activity, timeouts, read_timer: None, write_timer: None, unread: Bytes::new() }
    }

    /// Puts bytes already read back in front of what the socket (and any bytes put back
    /// before, not read yet) will give.
    pub(crate) fn unread(&mut self, bytes: Bytes) {
        if self.unread.is_empty() {
            self.unread = bytes;
        } else {
            let mut joined = Vec::with_capacity(bytes.len() + self.unread.len());
            joined.extend_from_slice(&bytes);
            joined.extend_from_slice(&self.unread);
            self.unread = joined.into();
        }
    }
}

/// Whether `deadline` has passed, with `timer` as the alarm. The timer is moved only when the
/// deadline comes earlier than it, or when it rings before the deadline (which moved later
/// meanwhile): on a busy connection, whose deadline moves later with every request, that is
/// once per timeout period rather than once per request.
fn expired(timer: &mut Option<Pin<Box<Sleep>>>, deadline: Instant, cx: &mut Context<'_>) -> bool {
    let sleep = match timer {
        Some(sleep) => {
            if deadline < sleep.deadline() {
                sleep.as_mut().reset(deadline);
            }
            sleep
        }
        None => timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
    };
    loop {
        if sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        // It rang at its own deadline: past ours too, unless ours moved later.
        if deadline <= sleep.deadline() {
            return true;
        }
        sleep.as_mut().reset(deadline);
    }
}

impl<IO: AsyncRead> AsyncRead for Watched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread[..n]);
            this.unread.advance(n);
            this.activity.on_read();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match this.io.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.on_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                let activity = &**this.activity;
                let Some(deadline) = activity.read_deadline(this.timeouts) else {
                    // In flight. hyper reads again after a response only when woken, so the
                    // timer must ring by the time the idle deadline (or the release) can come
                    // and have the read looked at again; on a busy connection it rings once
                    // per that period. Without it a connection idled until the deadline of
                    // its last head, past a shorter `clientIdle`.
                    if !activity.upgraded.load(Ordering::Relaxed) {
                        let period = if activity.releases.load(Ordering::Relaxed) {
                            RELEASE_IDLE_AFTER
                        } else {
                            this.timeouts.client_idle
                        };
                        expired(this.read_timer, Instant::now() + period, cx);
                    }
                    return Poll::Pending;
                };
                if let Some(release) = activity.release_at().filter(|at| *at < deadline) {
                    if !expired(this.read_timer, release, cx) {
                        return Poll::Pending;
                    }
                    // Seen by the connection's task when this poll returns; the timer goes on
                    // to the idle deadline below, in case the state is kept after all.
                    activity.release_due.store(true, Ordering::Relaxed);
                }
                if expired(this.read_timer, deadline, cx) {
                    return Poll::Ready(Err(timed_out("client timeout: no request")));
                }
                Poll::Pending
            }
        }
    }
}

impl<IO: AsyncWrite> Watched<IO> {
    /// What a write's result means for the write timer: a write that has to wait may wait
    /// `clientIdle` at most (a client that stopped reading its response).
    fn written<T>(
        timer: &mut Option<Pin<Box<Sleep>>>,
        timeouts: &Timeouts,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => {
                let deadline = match timer {
                    // Already waiting: the same deadline.
                    Some(sleep) => sleep.deadline(),
                    None => Instant::now() + timeouts.client_idle,
                };
                if expired(timer, deadline, cx) {
                    return Poll::Ready(Err(timed_out("client timeout: response not read")));
                }
                Poll::Pending
            }
            ready => {
                *timer = None;
                ready
            }
        }
    }
}

impl<IO: AsyncWrite> AsyncWrite for Watched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.unflushed.store(true, Ordering::Relaxed);
        }
        Self::written(this.write_timer, this.timeouts, polled, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.unflushed.store(true, Ordering::Relaxed);
        }
        Self::written(this.write_timer, this.timeouts, polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let polled = this.io.poll_flush(cx);
        if let Poll::Ready(Ok(())) = polled {
            this.activity.unflushed.store(false, Ordering::Relaxed);
        }
        Self::written(this.write_timer, this.timeouts, polled, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.activity.detached.load(Ordering::Relaxed) {
            return this.io.poll_flush(cx);
        }
        this.io.poll_shutdown(cx)
    }
}

/// Counts a request in flight until its response ends (or is dropped unsent).
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.on_response_end();
    }
}

/// A connection's service, telling its [`Activity`] when requests start and end.
#[derive(Clone, Debug)]
pub(crate) struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S, B, ResB> Service<Request<B>> for Tracked<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<TrackedBody<ResB>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.activity.on_request(req.version());
        let guard = InFlight(self.activity.clone());
        TrackedFuture { inner: self.inner.call(req), guard: Some(guard) }
    }
}

pin_project! {
    /// The response future of [`Tracked`].
    pub(crate) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F, ResB, E> std::future::Future for TrackedFuture<F>
where
    F: std::future::Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<TrackedBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        if res.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(guard) = &guard
        {
            guard.0.upgraded.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Ok(res.map(|body| TrackedBody { body, guard })))
    }
}

pin_project! {
    /// A response body that ends its request's time in flight when it ends or is dropped.
    pub(crate) struct TrackedBody<B> {
        #[pin]
        body: B,
        guard: Option<InFlight>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.guard.take();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts() -> Timeouts {
        Timeouts {
            request_header: Duration::from_secs(10),
            client_idle: Duration::from_secs(60),
            ..Timeouts::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connection_state() {
        let activity = Activity::new();
        let t = timeouts();
        let start = activity.start;
        // A new connection: its head is due within requestHeader.
        assert_eq!(activity.read_deadline(&t), Some(start + t.request_header));
        activity.on_request(Version::HTTP_11);
        assert_eq!(activity.read_deadline(&t), None, "a request in flight");
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.on_response_end();
        // Keep-alive: clientIdle from the end of the response.
        let idle_from = start + Duration::from_secs(5);
        assert_eq!(activity.read_deadline(&t), Some(idle_from + t.client_idle));
        tokio::time::advance(Duration::from_secs(20)).await;
        activity.on_read();
        // A head begun: requestHeader from its first byte.
        assert_eq!(
            activity.read_deadline(&t),
            Some(start + Duration::from_secs(25) + t.request_header)
        );
        activity.on_request(Version::HTTP_2);
        activity.on_response_end();
        activity.on_read();
        // HTTP/2 frames between requests are not a head.
        let deadline = activity.read_deadline(&t).unwrap();
        assert_eq!(deadline, start + Duration::from_secs(25) + t.client_idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_is_due_only_between_http1_requests() {
        let activity = Activity::new();
        activity.enable_release();
        // No request yet: the first head is awaited, nothing to release.
        assert_eq!(activity.release_at(), None);
        activity.on_request(Version::HTTP_11);
        assert_eq!(activity.release_at(), None, "a request in flight");
        tokio::time::advance(Duration::from_secs(2)).await;
        activity.on_response_end();
        let idle_from = activity.start + Duration::from_secs(2);
        assert_eq!(activity.release_at(), Some(idle_from + RELEASE_IDLE_AFTER));
        activity.release_due.store(true, Ordering::Relaxed);
        assert!(activity.may_release());
        assert_eq!(activity.release_at(), None, "already due");
        activity.unflushed.store(true, Ordering::Relaxed);
        assert!(!activity.may_release(), "a response not flushed");
        activity.unflushed.store(false, Ordering::Relaxed);
        activity.on_read();
        assert!(!activity.may_release(), "a head begun");
        activity.on_request(Version::HTTP_11);
        assert!(!activity.release_due.load(Ordering::Relaxed), "a request makes it not due");
        activity.on_response_end();
        activity.upgraded.store(true, Ordering::Relaxed);
        assert_eq!(activity.release_at(), None, "upgraded");
        let h2 = Activity::new();
        h2.enable_release();
        h2.on_request(Version::HTTP_2);
        h2.on_response_end();
        assert_eq!(h2.release_at(), None, "HTTP/2");
    }

    #[tokio::test]
    async fn bytes_put_back_are_read_first_in_their_order() {
        use tokio::io::AsyncReadExt as _;
        let socket = tokio_test::io::Builder::new().read(b"de").build();
        let mut io = Watched::new(socket, Activity::new(), timeouts());
        io.unread(Bytes::from_static(b"c"));
        // Put back later, read earlier: what hyper had read ahead of bytes not read yet.
        io.unread(Bytes::from_static(b"ab"));
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"abcde");
    }
}

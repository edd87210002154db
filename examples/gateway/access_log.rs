//! One access-log line per request, when its response has been sent (or abandoned), on the
//! `access` target:
//!
//! ```text
//! 127.0.0.1 "GET /cart HTTP/1.1" 200 3ms rule=default/shop/0 session=pinned endpoint=echo/127.0.0.1:9001 bytes=512 upstream=2ms id=5f0c…
//! ```
//!
//! `session` is the layer's decision (`new`, `pinned`, `re-pinned`, `expired`, `invalid`,
//! `rejected`; `-` for a rule without persistence or an unrouted request), `endpoint` the key
//! of the endpoint that served it, or that failed (on `502`/`504`), `bytes` the response body
//! bytes sent, `upstream` the time until the endpoint's response head, `id` the request id
//! (`x-request-id`) the backend got. The time is until the response head; the line is written
//! once the body is done. Tokens never appear: the path is logged without its query and
//! without `;` path parameters (URL sessions travel there), and no header is logged.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, Version};
use http_body::{Body as _, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_session_persistence::Decision;

use crate::proxy::{ClientAddr, ServedByEndpoint, UpstreamTime};

/// What the line says about the request, taken before it is handed on.
pub(crate) struct Entry {
    started: Instant,
    client: String,
    method: Method,
    path: String,
    version: Version,
    rule: Option<String>,
    id: Option<HeaderValue>,
    /// Filled in when the response head is ready.
    status: u16,
    head: Duration,
    decision: &'static str,
    endpoint: Option<String>,
    upstream: Option<Duration>,
}

/// Whether access-log lines are written (`RUST_LOG` lets the `access` target through). When
/// they are not, nothing is measured or copied for them.
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: "access", tracing::Level::INFO)
}

/// A new request id: 32 hex digits, unique across threads, processes and restarts (a random
/// prefix per thread and that thread's counter), made without a system call, a lock or a
/// shared counter (which the serving threads' cores would pass to each other on every
/// request), and without the formatting machinery.
pub(crate) fn new_request_id() -> HeaderValue {
    thread_local! {
        static NEXT: Cell<(u64, u64)> = Cell::new({
            let mut seed = [0u8; 8];
            let _ = getrandom::fill(&mut seed);
            (u64::from_le_bytes(seed), 0)
        });
    }
    let (prefix, count) = NEXT.with(|next| {
        let (prefix, count) = next.get();
        next.set((prefix, count.wrapping_add(1)));
        (prefix, count)
    });
    let mut text = [0u8; 32];
    hex(prefix, &mut text[..16]);
    hex(count, &mut text[16..]);
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// `value` as 16 lowercase hex digits into `out`.
fn hex(value: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, digit) in out.iter_mut().enumerate().take(16) {
        *digit = DIGITS[((value >> (60 - 4 * i)) & 0xf) as usize];
    }
}

impl Entry {
    /// What the line will say about `req`; `None` when the access log is off.
    pub(crate) fn start<B>(
        req: &Request<B>,
        rule: Option<&str>,
        id: Option<HeaderValue>,
    ) -> Option<Self> {
        if !enabled() {
            return None;
        }
        let client = req
            .extensions()
            .get::<ClientAddr>()
            .map_or_else(|| "-".to_owned(), |c| c.addr.ip().to_canonical().to_string());
        Some(Self {
            started: Instant::now(),
            client,
            method: req.method().clone(),
            path: loggable_path(req.uri().path()),
            version: req.version(),
            rule: rule.map(str::to_owned),
            id,
            status: 0,
            head: Duration::ZERO,
            decision: "-",
            endpoint: None,
            upstream: None,
        })
    }

    fn head<B>(&mut self, res: &Response<B>) {
        self.status = res.status().as_u16();
        self.head = self.started.elapsed();
        self.decision = res.extensions().get::<Decision>().map_or("-", |d| d.as_str());
        self.endpoint = res.extensions().get::<ServedByEndpoint>().map(|e| e.0.clone());
        self.upstream = res.extensions().get::<UpstreamTime>().map(|t| t.0);
    }

    fn finish(&self, bytes: u64, complete: bool) {
        tracing::info!(
            target: "access",
            "{} \"{} {} {:?}\" {} {}ms rule={} session={} endpoint={} bytes={}{} upstream={} id={}",
            self.client,
            self.method,
            self.path,
            self.version,
            self.status,
            self.head.as_millis(),
            self.rule.as_deref().unwrap_or("-"),
            self.decision,
            self.endpoint.as_deref().unwrap_or("-"),
            bytes,
            if complete { "" } else { "(cut)" },
            self.upstream.map_or_else(|| "-".to_owned(), |t| format!("{}ms", t.as_millis())),
            self.id.as_ref().and_then(|id| id.to_str().ok()).unwrap_or("-"),
        );
    }
}

/// The path without `;` parameters in any segment.
pub(crate) fn loggable_path(path: &str) -> String {
    if !path.contains(';') {
        return path.to_owned();
    }
    path.split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

pin_project! {
    /// A response future whose response's body writes the access-log line when it ends.
    pub(crate) struct Logged<F> {
        #[pin]
        inner: F,
        entry: Option<Entry>,
    }
}

impl<F> Logged<F> {
    pub(crate) fn new(inner: F, entry: Option<Entry>) -> Self {
        Self { inner, entry }
    }
}

impl<F, E> Future for Logged<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        Poll::Ready(match (result, this.entry.take()) {
            (Ok(res), Some(mut entry)) => {
                entry.head(&res);
                Ok(res.map(|body| Body::new(Counted { body, entry, bytes: 0, done: false })))
            }
            (result, _) => result,
        })
    }
}

pin_project! {
    /// A response body that counts its bytes and writes the line when it ends or is dropped.
    struct Counted {
        #[pin]
        body: Body,
        entry: Entry,
        bytes: u64,
        done: bool,
    }

    impl PinnedDrop for Counted {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.done {
                this.entry.finish(*this.bytes, this.body.is_end_stream());
            }
        }
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if !*this.done {
                    *this.done = true;
                    this.entry.finish(*this.bytes, true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if !*this.done {
                    *this.done = true;
                    this.entry.finish(*this.bytes, false);
                }
            }
            Poll::Pending => {}
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

    #[test]
    fn paths_lose_their_parameters() {
        assert_eq!(loggable_path("/cart"), "/cart");
        assert_eq!(loggable_path("/cart;jsessionid=SECRET/x;v=1"), "/cart/x");
    }

    #[test]
    fn request_ids_differ() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        assert!(a.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)), "{a}");
        // One thread: its prefix, then its counter.
        assert_eq!(a[..16], b[..16]);
        let count = |id: &str| u64::from_str_radix(&id[16..], 16).unwrap();
        assert_eq!(count(b), count(a) + 1);
        // Another thread: another prefix.
        let other = std::thread::spawn(|| new_request_id().to_str().unwrap().to_owned());
        assert_ne!(other.join().unwrap()[..16], a[..16]);
        let mut out = [0u8; 16];
        hex(0x0123_4567_89ab_cdef, &mut out);
        assert_eq!(&out, b"0123456789abcdef");
    }
}

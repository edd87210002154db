//! One access-log line per request, when its response head is ready, on the `access` target:
//!
//! ```text
//! 127.0.0.1 "GET /cart HTTP/1.1" 200 3ms rule=default/shop/0 session=pinned endpoint=echo/127.0.0.1:9001
//! ```
//!
//! `session` is the layer's decision (`new`, `pinned`, `re-pinned`, `expired`, `invalid`,
//! `rejected`; `-` for a rule without persistence or an unrouted request), `endpoint` the key
//! of the endpoint that served it. Tokens never appear: the path is logged without its query
//! and without `;` path parameters (URL sessions travel there), and no header is logged.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{Method, Request, Response, Version};
use pin_project_lite::pin_project;
use tower_session_persistence::Decision;

use crate::proxy::ClientAddr;
use crate::stack::ServedByEndpoint;

/// What the line says about the request, taken before it is handed on.
pub(crate) struct Entry {
    started: Instant,
    client: String,
    method: Method,
    path: String,
    version: Version,
    rule: Option<String>,
}

/// Whether access-log lines are written (`RUST_LOG` lets the `access` target through). When
/// they are not, nothing is measured or copied for them.
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: "access", tracing::Level::INFO)
}

impl Entry {
    /// What the line will say about `req`; `None` when the access log is off.
    pub(crate) fn start<B>(req: &Request<B>, rule: Option<&str>) -> Option<Self> {
        if !enabled() {
            return None;
        }
        let client = req
            .extensions()
            .get::<ClientAddr>()
            .map_or_else(|| "-".to_owned(), |addr| addr.0.ip().to_canonical().to_string());
        Some(Self {
            started: Instant::now(),
            client,
            method: req.method().clone(),
            path: loggable_path(req.uri().path()),
            version: req.version(),
            rule: rule.map(str::to_owned),
        })
    }

    fn finish<B>(&self, res: &Response<B>) {
        let decision = res.extensions().get::<Decision>().map_or("-", |d| d.as_str());
        let endpoint = res.extensions().get::<ServedByEndpoint>().map_or("-", |e| e.0.as_str());
        tracing::info!(
            target: "access",
            "{} \"{} {} {:?}\" {} {}ms rule={} session={} endpoint={}",
            self.client,
            self.method,
            self.path,
            self.version,
            res.status().as_u16(),
            self.started.elapsed().as_millis(),
            self.rule.as_deref().unwrap_or("-"),
            decision,
            endpoint,
        );
    }
}

/// The path without `;` parameters in any segment.
fn loggable_path(path: &str) -> String {
    if !path.contains(';') {
        return path.to_owned();
    }
    path.split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

pin_project! {
    /// A response future that writes the access-log line when it completes.
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

impl<F, B, E> Future for Logged<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Ok(res), Some(entry)) = (&result, this.entry.as_ref()) {
            entry.finish(res);
        }
        Poll::Ready(result)
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
}

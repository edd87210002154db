//! HTTP/1.1 protocol upgrades (WebSocket and the like) through the proxy.
//!
//! `Connection` and `Upgrade` are hop-by-hop headers, so the proxy removes them; for a request
//! that asks to switch protocols it puts them back on both legs. When the backend answers
//! `101 Switching Protocols`, the client's connection and the backend's are joined and bytes
//! are copied both ways until either side closes. The session layer treats the upgrade request
//! like any other: it is pinned, and the `101` carries a new session when one is due.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The protocol a request asks to switch to: an HTTP/1.1 request whose `Connection` names
/// `upgrade` and that has an `Upgrade` header.
pub(crate) fn requested<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade.then(|| req.headers().get(header::UPGRADE).cloned()).flatten()
}

/// Puts the upgrade headers back after the hop-by-hop ones were removed.
pub(crate) fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Joins the client's and the backend's upgraded connections and copies bytes both ways,
/// until either side closes or nothing passes either way for `idle` (`timeouts.tunnelIdle`).
pub(crate) async fn tunnel(client: OnUpgrade, backend: OnUpgrade, idle: Option<Duration>) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return;
        }
    };
    let last = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut client = Noticed { io: TokioIo::new(client), last: last.clone(), start };
    let mut backend = Noticed { io: TokioIo::new(backend), last: last.clone(), start };
    let copied = tokio::io::copy_bidirectional(&mut client, &mut backend);
    let quiet = async {
        let Some(idle) = idle else { return std::future::pending().await };
        loop {
            let deadline = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        copied = copied => match copied {
            Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
            Err(error) => tracing::debug!(%error, "upgraded connection ended with an error"),
        },
        () = quiet => tracing::debug!(?idle, "upgraded connection closed: idle"),
    }
}

pin_project_lite::pin_project! {
    /// One side of a tunnel, noting when bytes last passed (milliseconds since `start`).
    struct Noticed<IO> {
        #[pin]
        io: IO,
        last: Arc<AtomicU64>,
        start: Instant,
    }
}

impl<IO> Noticed<IO> {
    fn notice(last: &AtomicU64, start: Instant) {
        let now = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        last.store(now, Ordering::Relaxed);
    }
}

impl<IO: AsyncRead> AsyncRead for Noticed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        if buf.filled().len() > before {
            Self::notice(this.last, *this.start);
        }
        polled
    }
}

impl<IO: AsyncWrite> AsyncWrite for Noticed<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            Self::notice(this.last, *this.start);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_upgrade_requests() {
        let ws = Request::builder()
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert_eq!(requested(&ws), Some(HeaderValue::from_static("websocket")));
        let plain = Request::builder().header("upgrade", "websocket").body(()).unwrap();
        assert_eq!(requested(&plain), None, "Connection must name upgrade");
        let h2 = Request::builder()
            .version(Version::HTTP_2)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert_eq!(requested(&h2), None);
    }
}

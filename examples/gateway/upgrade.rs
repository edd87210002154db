//! HTTP/1.1 protocol upgrades (WebSocket and the like) through the proxy.
//!
//! `Connection` and `Upgrade` are hop-by-hop headers, so the proxy removes them; for a request
//! that asks to switch protocols it puts them back on both legs. When the backend answers
//! `101 Switching Protocols`, the client's connection and the backend's are joined and bytes
//! are copied both ways until either side closes. The session layer treats the upgrade request
//! like any other: it is pinned, and the `101` carries a new session when one is due.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

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

/// Joins the client's and the backend's upgraded connections and copies bytes both ways.
pub(crate) async fn tunnel(client: OnUpgrade, backend: OnUpgrade) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return;
        }
    };
    let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
    match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
        Err(error) => tracing::debug!(%error, "upgraded connection ended with an error"),
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

//! The gateway's own metrics, through the `metrics` facade (a no-op until the admin port
//! installs its Prometheus recorder).

/// Counts a TLS handshake, by result.
pub(crate) fn tls_handshake(ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    metrics::counter!("gateway_tls_handshakes_total", "result" => result).increment(1);
}

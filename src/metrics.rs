//! Metrics through the [`metrics`](https://docs.rs/metrics) facade, with the `metrics` feature:
//! the application installs the recorder it wants (Prometheus, StatsD, …); without one, or
//! without the feature, nothing is recorded and nothing is paid.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `session_persistence_decisions_total` | counter | `scope`, `decision` (`new`, `pinned`, `re-pinned`, `expired`, `invalid`, `rejected`), `endpoint` |
//! | `gateway_redispatches_total` | counter | `reason`: `not_sent` (the endpoint never got the request), `sent` (an idempotent request retried by opt-in) |
//! | `gateway_redispatches_denied_total` | counter | `reason`: `attempts` (the request's attempts spent), `budget` (the balancer's retry budget spent) |
//!
//! Labels come from configuration only: the layer's scope and the balancer's endpoint keys.
//! No token, cookie value or client address is ever a label, so the number of series is
//! bounded by scopes × decisions × endpoints.

/// The counter of session decisions.
pub const DECISIONS_TOTAL: &str = "session_persistence_decisions_total";

/// Counts one decision of the layer of `scope`, for `endpoint` (the endpoint that served the
/// request, or the pinned one for `rejected`).
///
/// Per call: the endpoint's label (one allocation), the scope's reference count (the label
/// shares the layer's text), and the recorder's own lookup.
#[inline]
pub(crate) fn decision<K: crate::EndpointKey>(
    scope: &std::sync::Arc<str>,
    decision: crate::layer::Decision,
    endpoint: &K,
) {
    #[cfg(feature = "metrics")]
    {
        let endpoint = String::from_utf8_lossy(&endpoint.to_bytes()).into_owned();
        ::metrics::counter!(
            DECISIONS_TOTAL,
            "scope" => scope.clone(),
            "decision" => decision.as_str(),
            "endpoint" => endpoint,
        )
        .increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (scope, decision, endpoint);
}

/// The counter of requests the balancer sent to another endpoint.
pub const REDISPATCHES_TOTAL: &str = "gateway_redispatches_total";

/// The counter of failed requests the balancer could have sent elsewhere but did not.
pub const REDISPATCHES_DENIED_TOTAL: &str = "gateway_redispatches_denied_total";

/// Counts one redispatch; `reason` is `not_sent` or `sent`.
#[cfg(feature = "balance")]
#[inline]
pub(crate) fn redispatched(reason: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(REDISPATCHES_TOTAL, "reason" => reason).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = reason;
}

/// Counts one redispatch refused; `reason` is `attempts` or `budget`.
#[cfg(feature = "balance")]
#[inline]
pub(crate) fn redispatch_denied(reason: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(REDISPATCHES_DENIED_TOTAL, "reason" => reason).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = reason;
}

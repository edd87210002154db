//! Active health checks with HAProxy's `check inter rise fall` semantics, for any gateway: a
//! [`HealthChecker`] probes each endpoint it is given on its own schedule and reports every
//! change between [`Health::Up`] and [`Health::Down`] to a callback, which typically moves the
//! endpoint in every balancer of the process (and says so in logs and metrics).
//!
//! * An endpoint failing `fall` probes in a row goes down; a down endpoint comes back only
//!   after `rise` good probes in a row: never on a timer alone.
//! * A probe that does not answer within `timeout` failed; so did one that could not connect.
//! * Probes start at a random point of the first interval and each interval is drawn within
//!   ±`jitter` of `interval`, so that endpoints (and replicas of the gateway) do not probe in
//!   step.
//! * Endpoints start [`Up`](Health::Up), as in HAProxy: a gateway that starts does not wait
//!   for probes before serving, and a dead endpoint goes down after `fall` probes.
//!
//! What a probe does is yours: a closure from the endpoint's key to a future of `bool`, or
//! [`tcp_probe`]. Run one checker per process, not per thread or per balancer clone.
//!
//! ```
//! use std::time::Duration;
//! use tower_session_persistence::health::{Health, HealthCheckConfig, HealthChecker};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let (changes, mut seen) = tokio::sync::mpsc::unbounded_channel();
//! let config = HealthCheckConfig::new().interval(Duration::from_secs(2)).fall(3).rise(2);
//! // Stands in for an HTTP check: endpoint "b" answers nothing.
//! let probe = |key: &String| {
//!     let ok = key != "b";
//!     async move { ok }
//! };
//! let checker = HealthChecker::start(config, probe, move |key: &String, health| {
//!     let _ = changes.send((key.clone(), health));
//! });
//! checker.add("a".to_owned());
//! checker.add("b".to_owned());
//! // Three failed probes, about 6 s: "b" is down; "a" never changed.
//! assert_eq!(seen.recv().await, Some(("b".to_owned(), Health::Down)));
//! assert_eq!(checker.health(&"a".to_owned()), Some(Health::Up));
//! # }
//! ```

mod checker;
mod probe;

pub use self::checker::{Health, HealthCheckConfig, HealthChecker};
pub use self::probe::{Probe, tcp_probe};

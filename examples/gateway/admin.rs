//! The admin port (`admin: {listen: 127.0.0.1:9901}`, off when absent): Prometheus text at
//! `GET /metrics`, `GET /healthz` (the process is alive) and `GET /readyz` (configuration
//! loaded, listeners bound, at least one endpoint not ejected). It listens on its own socket,
//! loopback by default, never on the traffic ports.
//!
//! The gateway's metrics go through the `metrics` facade, like the library's
//! (`session_persistence_decisions_total`); the recorder is installed only when the admin port
//! is configured, so without it they cost nothing but a check of a flag.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `gateway_requests_total` | counter | `route` (the rule, `namespace/route/index`, or `-`), `code` |
//! | `gateway_request_duration_seconds` | histogram | `route`; until the response head |
//! | `gateway_endpoint_up` | gauge | `service`, `endpoint`: 1 unless ejected |
//! | `gateway_endpoint_state` | gauge | `service`, `endpoint`, `state` (serving, draining, ejected): 1 for the current state |
//! | `gateway_endpoint_in_flight` | gauge | `service`, `endpoint` |
//! | `gateway_endpoint_pinned_while_draining_total` | counter | `service`, `endpoint`: requests of established sessions it was sent |
//! | `gateway_drain_last_pinned_timestamp_seconds` | gauge | `service`, `endpoint`: while draining, when the last pinned request reached it (Unix time; 0: none yet) — a drain has gone quiet when this stops moving |
//! | `gateway_redispatches_total` | counter | `reason` (`not_sent`, `sent`): requests sent to another endpoint |
//! | `gateway_redispatches_denied_total` | counter | `reason` (`attempts`, `budget`) |
//! | `gateway_tls_handshakes_total` | counter | `result` (`ok`, `failed`) |
//!
//! Labels come from the configuration only (rules, services, endpoint keys) and status codes:
//! no token, cookie or client address is ever a label.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tower_session_persistence::balance::EndpointStats;

use axum::Router;
use axum::routing::get;
use http::{Response, StatusCode, header};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use pin_project_lite::pin_project;
use serde::Deserialize;
use tower_session_persistence::balance::EndpointState;

use crate::config::{ConfigError, parse_listen};
use crate::stack::Gateway;

/// Where the admin port listens when the block gives no address.
const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

/// The `admin:` block.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminConfig {
    listen: Option<String>,
}

/// Checks the `admin:` block: where the admin port listens.
pub(crate) fn check(config: Option<&AdminConfig>) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(config) = config else { return Ok(None) };
    let text = config.listen.as_deref().unwrap_or(DEFAULT_ADMIN);
    parse_listen(text).map(Some).map_err(|m| ConfigError::new("admin.listen", m))
}

/// Whether a recorder is installed: the request path measures only then.
static RECORDING: AtomicBool = AtomicBool::new(false);

fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// Installs the Prometheus recorder for the whole process (once, before serving).
pub(crate) fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("gateway_request_duration_seconds".into()),
            &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        )
        .map_err(|err| format!("cannot set up metrics: {err}"))?
        .install_recorder()
        .map_err(|err| format!("cannot set up metrics: {err}"))?;
    RECORDING.store(true, Ordering::Relaxed);
    Ok(handle)
}

/// Counts a TLS handshake, by result.
pub(crate) fn tls_handshake(ok: bool) {
    if recording() {
        let result = if ok { "ok" } else { "failed" };
        metrics::counter!("gateway_tls_handshakes_total", "result" => result).increment(1);
    }
}

/// One rule's request metrics (or the requests no rule matched, `route="-"`), their handles
/// looked up once: a lookup builds the series' key with owned label strings and searches the
/// registry, which per request cost several microseconds.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    route: String,
    duration: metrics::Histogram,
    /// One counter per status code seen so far (a handful per rule).
    by_code: std::sync::Mutex<Vec<(u16, metrics::Counter)>>,
}

impl RouteMetrics {
    /// The metrics of `route`, when a recorder is installed (it is, before any rule is built).
    pub(crate) fn new(route: &str) -> Option<Arc<Self>> {
        recording().then(|| {
            let duration = metrics::histogram!(
                "gateway_request_duration_seconds", "route" => route.to_owned()
            );
            Arc::new(Self { route: route.to_owned(), duration, by_code: Default::default() })
        })
    }

    fn record(&self, status: StatusCode, elapsed: Duration) {
        self.duration.record(elapsed.as_secs_f64());
        let code = status.as_u16();
        let counter = {
            let mut codes = self.by_code.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match codes.iter().find(|(c, _)| *c == code) {
                Some((_, counter)) => counter.clone(),
                None => {
                    let counter = metrics::counter!(
                        "gateway_requests_total",
                        "route" => self.route.clone(),
                        "code" => status.as_str().to_owned()
                    );
                    codes.push((code, counter.clone()));
                    counter
                }
            }
        };
        counter.increment(1);
    }
}

pin_project! {
    /// A response future that counts its response and its time to the head, per rule.
    pub(crate) struct Measured<F> {
        #[pin]
        inner: F,
        started: Option<(Instant, Arc<RouteMetrics>)>,
    }
}

impl<F> Measured<F> {
    pub(crate) fn new(inner: F, metrics: Option<&Arc<RouteMetrics>>) -> Self {
        Self { inner, started: metrics.map(|metrics| (Instant::now(), metrics.clone())) }
    }
}

impl<F, B, E> Future for Measured<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Ok(res), Some((started, metrics))) = (&result, this.started.take()) {
            metrics.record(res.status(), started.elapsed());
        }
        Poll::Ready(result)
    }
}

/// What the admin port serves from.
#[derive(Clone)]
struct Admin {
    handle: PrometheusHandle,
    gateways: Arc<std::sync::OnceLock<Vec<Gateway>>>,
}

/// The admin port, bound; [`AdminPort::serve`] starts answering.
pub(crate) struct AdminPort {
    listener: tokio::net::TcpListener,
    admin: Admin,
}

impl AdminPort {
    /// Binds `addr` (before the traffic ports start, so that a bad address fails the start).
    pub(crate) async fn bind(addr: SocketAddr, handle: PrometheusHandle) -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|err| format!("cannot listen on {addr} (admin.listen): {err}"))?;
        // Histograms are summarised on a schedule, not on every record.
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        Ok(Self { listener, admin: Admin { handle, gateways: Arc::default() } })
    }

    pub(crate) fn local_addr(&self) -> Result<SocketAddr, String> {
        self.listener.local_addr().map_err(|err| format!("cannot read the admin address: {err}"))
    }

    /// Serves the admin endpoints on the current runtime; `/readyz` says ready once
    /// `gateways` (every serving thread's) are given, which is when the listeners serve.
    pub(crate) fn serve(self) -> impl FnOnce(Vec<Gateway>) {
        let admin = self.admin.clone();
        let router = Router::new()
            .route("/metrics", get(metrics_page))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(self.admin);
        let listener = self.listener;
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "the admin port stopped");
            }
        });
        move |gateways| {
            let _ = admin.gateways.set(gateways);
        }
    }
}

/// Every endpoint as the serving threads see it: its service, its worst state (ejected, else
/// draining on any thread, else serving) and what the process's one health view knows of it.
fn endpoints(gateways: &[Gateway]) -> BTreeMap<(String, String), (EndpointState, EndpointStats)> {
    let mut all: BTreeMap<(String, String), (EndpointState, EndpointStats)> = BTreeMap::new();
    for gateway in gateways {
        for (service, key, state, stats) in gateway.endpoints() {
            let entry = all.entry((service, key)).or_insert((state, stats));
            // The state that says most: ejected, then draining, then serving.
            let rank = |s: EndpointState| match s {
                EndpointState::Ejected => 2,
                EndpointState::Draining => 1,
                _ => 0,
            };
            if rank(state) > rank(entry.0) {
                entry.0 = state;
            }
        }
    }
    all
}

async fn metrics_page(
    axum::extract::State(admin): axum::extract::State<Admin>,
) -> Response<String> {
    if let Some(gateways) = admin.gateways.get() {
        for ((service, endpoint), (state, stats)) in endpoints(gateways) {
            let labels = [("service", service), ("endpoint", endpoint)];
            let up = if state == EndpointState::Ejected { 0.0 } else { 1.0 };
            metrics::gauge!("gateway_endpoint_up", &labels).set(up);
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!("gateway_endpoint_in_flight", &labels).set(stats.in_flight as f64);
            metrics::counter!("gateway_endpoint_pinned_while_draining_total", &labels)
                .absolute(stats.pinned_while_draining);
            if state == EndpointState::Draining {
                let last = stats
                    .last_pinned_while_draining
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0.0, |d| d.as_secs_f64());
                metrics::gauge!("gateway_drain_last_pinned_timestamp_seconds", &labels).set(last);
            }
            for (name, each) in [
                ("serving", EndpointState::Serving),
                ("draining", EndpointState::Draining),
                ("ejected", EndpointState::Ejected),
            ] {
                let labels = [
                    ("service", labels[0].1.clone()),
                    ("endpoint", labels[1].1.clone()),
                    ("state", name.to_owned()),
                ];
                metrics::gauge!("gateway_endpoint_state", &labels).set(if state == each {
                    1.0
                } else {
                    0.0
                });
            }
        }
    }
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
        .body(admin.handle.render())
        .unwrap_or_default()
}

async fn readyz(axum::extract::State(admin): axum::extract::State<Admin>) -> (StatusCode, String) {
    let Some(gateways) = admin.gateways.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting: listeners not serving yet\n".into());
    };
    let all = endpoints(gateways);
    let up = all.values().filter(|(state, _)| *state != EndpointState::Ejected).count();
    if up == 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "no endpoint is up\n".into());
    }
    (StatusCode::OK, format!("ready: {up} of {} endpoint(s) up\n", all.len()))
}

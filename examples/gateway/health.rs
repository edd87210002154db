//! Active health checks of the services that ask for them (`healthCheck:` in an entry of
//! `services:`), run once per process with the library's `HealthChecker`: an HTTP `GET` of
//! `path` (its status among `expectedStatuses`), a TCP connect without a `path`, and the gRPC
//! health protocol (`grpc.health.v1.Health/Check`, `SERVING`) for `kubernetes.io/h2c`
//! services. An endpoint that goes down leaves every serving thread's balancers (its sessions
//! fail over per `onUnavailable`, it takes no new ones); it comes back after `rise` good
//! checks, never on a timer alone.
//!
//! The same control takes a draining endpoint out when its `drainTimeout` passes (its
//! remaining sessions re-pin), and brings it back if it stops draining.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;
use tower_session_persistence::health::{Health, HealthCheckConfig, HealthChecker};

use crate::config::{ConfigError, EndpointPlan, Plan, duration};
use crate::stack::Gateway;

/// A service's `healthCheck:` block.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct HealthCheckYaml {
    path: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<u32>,
    fall: Option<u32>,
    expected_statuses: Option<Vec<StatusesYaml>>,
}

/// `200` or `"200-399"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StatusesYaml {
    One(u16),
    Range(String),
}

/// How a service's endpoints are checked.
#[derive(Clone, Debug)]
pub(crate) struct HealthPlan {
    config: HealthCheckConfig,
    check: Check,
}

#[derive(Clone, Debug)]
enum Check {
    Tcp,
    Http { path: String, expected: Vec<(u16, u16)> },
    Grpc,
}

/// Checks a `healthCheck:` block found at `at`; `h2c` for `kubernetes.io/h2c` services.
pub(crate) fn check(
    yaml: &HealthCheckYaml,
    at: &str,
    h2c: bool,
) -> Result<HealthPlan, ConfigError> {
    let mut config = HealthCheckConfig::new();
    let positive = |text: &Option<String>, name: &str| match duration(
        text.as_deref(),
        &format!("{at}.{name}"),
    )? {
        Some(zero) if zero.is_zero() => {
            Err(ConfigError::new(format!("{at}.{name}"), "must be greater than zero"))
        }
        other => Ok(other),
    };
    if let Some(interval) = positive(&yaml.interval, "interval")? {
        config = config.interval(interval);
    }
    if let Some(timeout) = positive(&yaml.timeout, "timeout")? {
        config = config.timeout(timeout);
    }
    for (name, value) in [("rise", yaml.rise), ("fall", yaml.fall)] {
        if value == Some(0) {
            return Err(ConfigError::new(format!("{at}.{name}"), "must be at least 1"));
        }
    }
    if let Some(rise) = yaml.rise {
        config = config.rise(rise);
    }
    if let Some(fall) = yaml.fall {
        config = config.fall(fall);
    }
    let mut expected = Vec::new();
    for (i, statuses) in yaml.expected_statuses.iter().flatten().enumerate() {
        let at = format!("{at}.expectedStatuses[{i}]");
        let range = match statuses {
            StatusesYaml::One(code) => (*code, *code),
            StatusesYaml::Range(text) => {
                let parsed = text
                    .split_once('-')
                    .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
                parsed.ok_or_else(|| {
                    ConfigError::new(
                        &at,
                        format!("{text:?} is not a status or a range such as \"200-399\""),
                    )
                })?
            }
        };
        if !(100..=599).contains(&range.0) || !(100..=599).contains(&range.1) || range.0 > range.1 {
            return Err(ConfigError::new(at, "statuses are 100 to 599, ranges low-high"));
        }
        expected.push(range);
    }
    let check = match (&yaml.path, h2c) {
        (Some(_), true) => {
            return Err(ConfigError::new(
                format!("{at}.path"),
                "h2c services are checked with the gRPC health protocol: no path",
            ));
        }
        (None, true) => Check::Grpc,
        (None, false) if !expected.is_empty() => {
            return Err(ConfigError::new(
                format!("{at}.expectedStatuses"),
                "needs a path: without one the check is a TCP connect",
            ));
        }
        (None, false) => Check::Tcp,
        (Some(path), false) => {
            if !path.starts_with('/') || http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
                return Err(ConfigError::new(
                    format!("{at}.path"),
                    format!("{path:?} is not a path starting with '/'"),
                ));
            }
            if expected.is_empty() {
                // HAProxy's `http-check`: 2xx and 3xx are healthy.
                expected.push((200, 399));
            }
            Check::Http { path: path.clone(), expected }
        }
    };
    Ok(HealthPlan { config, check })
}

/// Whether each endpoint should be in the balancers, from its health checks and its drain
/// deadline, applied to every serving thread's gateway when that changes. One per process.
struct Control {
    gateways: Vec<Gateway>,
    endpoints: Mutex<HashMap<String, Status>>,
}

/// What is known of one endpoint.
struct Status {
    endpoint: EndpointPlan,
    /// Its checks say it is down.
    down: bool,
    /// Its drain deadline passed.
    expired: bool,
    /// Whether the balancers have it (what was last applied).
    applied: bool,
    /// The timer of its drain deadline.
    deadline: Option<AbortHandle>,
}

impl Control {
    /// Applies `key`'s status to the balancers if it changed; call with the lock released.
    fn update(&self, key: &str) {
        let change = {
            let mut endpoints = self.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(status) = endpoints.get_mut(key) else { return };
            let wanted = !status.down && !status.expired;
            (wanted != status.applied).then(|| {
                status.applied = wanted;
                (status.endpoint.clone(), wanted)
            })
        };
        if let Some((endpoint, wanted)) = change {
            for gateway in &self.gateways {
                gateway.set_health(&endpoint, wanted);
            }
        }
    }

    fn set_down(&self, key: &str, down: bool) {
        if let Some(status) =
            self.endpoints.lock().unwrap_or_else(PoisonError::into_inner).get_mut(key)
        {
            status.down = down;
        }
        self.update(key);
    }

    /// Follows `endpoint` as configured now: known, its drain deadline started or stopped.
    fn follow(self: &Arc<Self>, endpoint: &EndpointPlan) {
        let key = endpoint.key.clone();
        {
            let mut endpoints = self.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
            let status = endpoints.entry(key.clone()).or_insert_with(|| Status {
                endpoint: endpoint.clone(),
                down: false,
                expired: false,
                applied: true,
                deadline: None,
            });
            if status.endpoint.addr != endpoint.addr {
                // Moved: a new endpoint under the same key, which the gateways put in their
                // balancers; its checks start afresh (see `apply`).
                status.down = false;
                status.applied = true;
            }
            status.endpoint = endpoint.clone();
            match (endpoint.draining.then_some(endpoint.drain_timeout).flatten(), &status.deadline)
            {
                (Some(timeout), None) => {
                    let (control, key) = (Arc::downgrade(self), key.clone());
                    let task = tokio::spawn(async move {
                        tokio::time::sleep(timeout).await;
                        let Some(control) = control.upgrade() else { return };
                        tracing::warn!(endpoint = %key, ?timeout, "drain deadline passed: endpoint removed, its sessions re-pin");
                        if let Some(status) = control
                            .endpoints
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get_mut(&key)
                        {
                            status.expired = true;
                        }
                        control.update(&key);
                    });
                    status.deadline = Some(task.abort_handle());
                }
                (None, Some(_)) => {
                    // No longer draining (or no deadline): it may come back.
                    if let Some(task) = status.deadline.take() {
                        task.abort();
                    }
                    status.expired = false;
                }
                _ => {}
            }
        }
        self.update(&key);
    }

    /// Forgets `key` (removed from the configuration).
    fn forget(&self, key: &str) {
        let removed = self.endpoints.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
        if let Some(task) = removed.and_then(|status| status.deadline) {
            task.abort();
        }
    }
}

/// Endpoint key → the endpoint, for one service's checks.
type Checked = Arc<Mutex<HashMap<String, EndpointPlan>>>;

/// The running checks (one checker per checked service) and drain deadlines; kept up to date
/// with live changes.
pub(crate) struct HealthChecks {
    control: Arc<Control>,
    /// Service name → its checker and what it checks.
    services: Mutex<HashMap<String, (HealthChecker<String>, Checked)>>,
}

impl HealthChecks {
    /// Starts the checks of every service of `plan` that has one, and the drain deadlines,
    /// applying their changes to `gateways` (every serving thread's). Needs a tokio runtime:
    /// the checks and deadlines run on it.
    pub(crate) fn start(plan: &Plan, gateways: Vec<Gateway>) -> Self {
        let control = Arc::new(Control { gateways, endpoints: Mutex::default() });
        let mut services = HashMap::new();
        for service in &plan.services {
            for endpoint in &service.endpoints {
                control.follow(endpoint);
            }
            let Some(health) = &service.health else { continue };
            let endpoints: Checked = Arc::default();
            let check = health.check.clone();
            let timeout = health.config.get_timeout();
            let probe_endpoints = endpoints.clone();
            let probe = move |key: &String| {
                let addr = probe_endpoints
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(key)
                    .map(|e| e.addr);
                let check = check.clone();
                async move {
                    match addr {
                        Some(addr) => probe(addr, &check, timeout).await,
                        None => false,
                    }
                }
            };
            let (changes, name) = (Arc::downgrade(&control), service.name.clone());
            let on_change = move |key: &String, health: Health| {
                match health {
                    Health::Down => {
                        tracing::warn!(service = %name, endpoint = %key, "health check failing: endpoint down")
                    }
                    Health::Up => {
                        tracing::info!(service = %name, endpoint = %key, "health check passing: endpoint up")
                    }
                }
                if let Some(control) = changes.upgrade() {
                    control.set_down(key, health == Health::Down);
                }
            };
            let checker = HealthChecker::start(health.config, probe, on_change);
            for endpoint in &service.endpoints {
                endpoints
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(endpoint.key.clone(), endpoint.clone());
                checker.add(endpoint.key.clone());
            }
            services.insert(service.name.clone(), (checker, endpoints));
        }
        Self { control, services: Mutex::new(services) }
    }

    /// Follows a new configuration (after the gateways applied it): endpoints added to a
    /// checked service are checked, removed ones no longer; drain deadlines start and stop.
    /// (Adding or changing a `healthCheck:` block needs a restart.)
    pub(crate) fn apply(&self, plan: &Plan) {
        let configured: HashMap<&String, &EndpointPlan> =
            plan.services.iter().flat_map(|s| &s.endpoints).map(|e| (&e.key, e)).collect();
        let known: Vec<String> = self
            .control
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        for key in known.iter().filter(|key| !configured.contains_key(key)) {
            self.control.forget(key);
        }
        for endpoint in configured.values() {
            self.control.follow(endpoint);
        }
        let services = self.services.lock().unwrap_or_else(PoisonError::into_inner);
        for service in &plan.services {
            let Some((checker, endpoints)) = services.get(&service.name) else { continue };
            let mut known = endpoints.lock().unwrap_or_else(PoisonError::into_inner);
            let wanted: HashMap<&String, &EndpointPlan> =
                service.endpoints.iter().map(|e| (&e.key, e)).collect();
            known.retain(|key, _| {
                let keep = wanted.contains_key(key);
                if !keep {
                    checker.remove(key);
                }
                keep
            });
            for (key, endpoint) in wanted {
                match known.insert(key.clone(), endpoint.clone()) {
                    None => checker.add(key.clone()),
                    Some(old) if old.addr != endpoint.addr => {
                        checker.remove(key);
                        checker.add(key.clone());
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

/// One check of the endpoint at `addr`; a failure to connect is a failed check.
async fn probe(addr: SocketAddr, check: &Check, timeout: Duration) -> bool {
    let attempt = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        match check {
            Check::Tcp => Some(true),
            Check::Http { path, expected } => {
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
                tokio::spawn(connection);
                let req = Request::get(path.as_str())
                    .header(http::header::HOST, addr.to_string())
                    .header(http::header::USER_AGENT, "gateway-health-check")
                    .header(http::header::CONNECTION, "close")
                    .body(Empty::<Bytes>::new())
                    .ok()?;
                let status = sender.send_request(req).await.ok()?.status().as_u16();
                Some(expected.iter().any(|(low, high)| (*low..=*high).contains(&status)))
            }
            Check::Grpc => grpc_serving(stream, addr).await,
        }
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten().unwrap_or(false)
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `SERVING` in `grpc.health.v1.HealthCheckResponse.ServingStatus`.
const SERVING: i32 = 1;

/// The gRPC health protocol over h2c: the whole server (`service: ""`) must be `SERVING`.
async fn grpc_serving(stream: TcpStream, addr: SocketAddr) -> Option<bool> {
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    // One message, not compressed, of zero bytes: `HealthCheckRequest { service: "" }`.
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .ok()?;
    let res = sender.send_request(req).await.ok()?;
    if res.status() != StatusCode::OK {
        return Some(false);
    }
    let collected = res.into_body().collect().await.ok()?;
    let grpc_ok =
        collected.trailers().and_then(|t| t.get("grpc-status")).is_some_and(|status| status == "0");
    let body = collected.to_bytes();
    // The 5-byte message prefix: compressed flag, then the length.
    let message = body.get(5..)?;
    let response = <HealthCheckResponse as prost::Message>::decode(message).ok()?;
    Some(grpc_ok && response.status == SERVING)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str, h2c: bool) -> Result<HealthPlan, String> {
        let yaml: HealthCheckYaml = serde_norway::from_str(yaml).unwrap();
        check(&yaml, "services[0].healthCheck", h2c).map_err(|e| e.to_string())
    }

    #[test]
    fn checks_are_checked() {
        assert!(matches!(parse("{}", false).unwrap().check, Check::Tcp));
        assert!(matches!(parse("{}", true).unwrap().check, Check::Grpc));
        let plan = parse("{path: /healthz, expectedStatuses: [204, \"200-299\"], rise: 1}", false)
            .unwrap();
        assert!(
            matches!(plan.check, Check::Http { ref expected, .. } if expected == &[(204, 204), (200, 299)])
        );
        assert_eq!(plan.config.get_rise(), 1);
        let e = parse("{fall: 0}", false).unwrap_err();
        assert!(e.starts_with("services[0].healthCheck.fall: "), "{e}");
        let e = parse("{path: x}", false).unwrap_err();
        assert!(e.starts_with("services[0].healthCheck.path: "), "{e}");
        let e = parse("{path: /h, expectedStatuses: [\"300-200\"]}", false).unwrap_err();
        assert!(e.starts_with("services[0].healthCheck.expectedStatuses[0]: "), "{e}");
        let e = parse("{interval: 0s}", false).unwrap_err();
        assert!(e.starts_with("services[0].healthCheck.interval: "), "{e}");
        let e = parse("{path: /h}", true).unwrap_err();
        assert!(e.starts_with("services[0].healthCheck.path: "), "{e}");
    }
}

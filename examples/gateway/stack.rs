//! Assembles the services: one stack per rule, and the [`Gateway`] service that dispatches a
//! request to its rule.
//!
//! Each rule's stack is, from the outside in: errors turned into responses, the
//! `SessionPersistenceLayer` (only when the rule has `sessionPersistence`; scope
//! `<namespace>/<route>/<index>`), and the crate's `Balancer` with one weighted group per
//! `backendRef`, each fed by a discovery channel holding one [`Upstream`] per endpoint, keyed
//! `<service>/<address>`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tower::util::{BoxCloneSyncService, Oneshot};
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_session_persistence::ServedBy;
use tower_session_persistence::balance::{
    Balancer, DiscoverSender, EndpointState, EndpointStats, discover_channel,
};
use tower_session_persistence::edge::{TrustedProxies, request_host};
use tower_session_persistence::strategy::Url;

use crate::config::{EndpointPlan, Plan, RulePlan};
use crate::proxy::{ClientAddr, RequestHost, ServedByEndpoint, Upstream, Upstreams};
use crate::routing::{ArrivedOn, RouteTable, normalize_host};
use crate::{access_log, admin, failure};

/// A rule's whole stack, whatever its layers.
type RuleService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// Endpoint keys: an endpoint's `id`, or `<service>/<address>`; stable and unique.
type Key = String;

/// A rule, ready to serve.
pub(crate) struct Rule {
    scope: String,
    service: RuleService,
    /// One per `backendRef`, to add and remove endpoints while running (kept alive: dropping
    /// them would end the balancer's discovery).
    endpoints: Vec<DiscoverSender<Key, Upstream>>,
    /// What each `backendRef` has now, for live changes: its service and its endpoints.
    current: Mutex<Vec<Backend>>,
    /// What new endpoints are made with.
    upstreams: Upstreams,
    /// The balancer, when the rule has backends; to tell when it knows its endpoints.
    balancer: Option<Balancer<Key, Upstream, Body>>,
    /// How many endpoints the rule starts with.
    expected: usize,
    /// Endpoints that start draining, once the balancer knows them.
    initial_drains: Vec<Key>,
    /// Its request metrics, when the admin port records them.
    metrics: Option<Arc<admin::RouteMetrics>>,
}

/// One `backendRef` as the gateway runs it.
#[derive(Clone, Debug, Default)]
struct Backend {
    service: String,
    weight: u32,
    /// Endpoint key → (address, draining).
    endpoints: HashMap<Key, (SocketAddr, bool)>,
}

/// The service that forwards to `endpoint`.
fn upstream(endpoint: &EndpointPlan, upstreams: &Upstreams) -> Upstream {
    upstreams.endpoint(&endpoint.key, endpoint.addr, endpoint.h2c)
}

/// What a live change did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    pub(crate) added: usize,
    pub(crate) removed: usize,
    pub(crate) drained: usize,
    pub(crate) undrained: usize,
    pub(crate) reweighted: usize,
    /// Changes the running gateway cannot take without a restart (routes, matches,
    /// persistence, which services a rule uses).
    pub(crate) needs_restart: Vec<String>,
}

/// The gateway: checks the request's host, finds its rule and hands the request to it.
/// Cheap to clone.
#[derive(Clone)]
pub(crate) struct Gateway {
    table: Arc<RouteTable<Rule>>,
    /// The path parameters URL sessions travel in: routing matches paths without them.
    path_parameters: Arc<[String]>,
    /// Whose `x-request-id` is kept.
    trusted: TrustedProxies,
    /// The metrics of requests no rule matched (or refused before routing).
    unrouted: Option<Arc<admin::RouteMetrics>>,
}

impl Gateway {
    /// Builds every rule of `plan`; needs a tokio runtime (balancers start tasks).
    pub(crate) fn new(plan: &Plan, upstreams: &Upstreams) -> Self {
        let rules = plan.rules.iter().map(|rule| {
            let built = build_rule(rule, plan, upstreams);
            (rule.attachments.clone(), rule.matches.clone(), built)
        });
        let mut path_parameters: Vec<String> = plan
            .rules
            .iter()
            .filter_map(|rule| rule.persistence.as_ref()?.path_parameter().map(str::to_owned))
            .collect();
        path_parameters.sort();
        path_parameters.dedup();
        Self {
            table: Arc::new(RouteTable::attached(rules)),
            path_parameters: path_parameters.into(),
            trusted: plan.edge.forwarded.trusted().clone(),
            unrouted: admin::RouteMetrics::new("-"),
        }
    }

    /// Waits until every balancer knows the endpoints it was given (they arrive through a
    /// channel and a task), so that the first request finds them; gives up after `limit`.
    /// Applies the `services` of a new configuration to the running rules: endpoints added,
    /// removed, marked draining or serving again, and `backendRefs` weights. Sessions on
    /// endpoints that did not change are untouched. Anything else that changed is reported in
    /// [`Applied::needs_restart`] and left as it runs.
    pub(crate) fn apply(&self, plan: &Plan) -> Applied {
        let mut applied = Applied::default();
        let running: Vec<&str> = self.table.targets().iter().map(|r| r.scope.as_str()).collect();
        let planned: Vec<&str> = plan.rules.iter().map(|r| r.scope.as_str()).collect();
        if running != planned {
            applied.needs_restart.push(format!("rules changed: {running:?} -> {planned:?}"));
        }
        for rule in self.table.targets() {
            let Some(new) = plan.rules.iter().find(|r| r.scope == rule.scope) else { continue };
            rule.apply(new, &mut applied);
        }
        applied
    }

    /// An endpoint's health changed (active checks): down, it leaves every balancer that has
    /// it (its sessions fail over, it takes no new ones); up, it comes back under the same key
    /// (draining again if it was). Returns in how many rules it changed.
    pub(crate) fn set_health(&self, endpoint: &EndpointPlan, up: bool) -> usize {
        let mut changed = 0;
        for rule in self.table.targets() {
            let current = rule.current.lock().unwrap_or_else(PoisonError::into_inner);
            for (group, backend) in current.iter().enumerate() {
                let Some(&(_, draining)) = backend.endpoints.get(&endpoint.key) else { continue };
                let sender = &rule.endpoints[group];
                if up {
                    sender.insert(endpoint.key.clone(), upstream(endpoint, &rule.upstreams));
                    if draining && let Some(balancer) = &rule.balancer {
                        drain_when_known(balancer.clone(), endpoint.key.clone());
                    }
                } else {
                    sender.remove(endpoint.key.clone());
                }
                changed += 1;
            }
        }
        changed
    }

    /// Every endpoint of every rule as this thread's balancers see it: its service, its key,
    /// its state and what the process's health view knows of it (for the admin port).
    pub(crate) fn endpoints(&self) -> Vec<(String, Key, EndpointState, EndpointStats)> {
        let mut all = Vec::new();
        for rule in self.table.targets() {
            let Some(balancer) = &rule.balancer else { continue };
            let current = rule.current.lock().unwrap_or_else(PoisonError::into_inner);
            for backend in current.iter() {
                for key in backend.endpoints.keys() {
                    let Some(state) = balancer.state(key) else { continue };
                    let Some(stats) = balancer.stats(key) else { continue };
                    all.push((backend.service.clone(), key.clone(), state, stats));
                }
            }
        }
        all
    }

    pub(crate) async fn ready(&self, limit: Duration) -> bool {
        let all_known = || {
            self.table.targets().iter().all(|rule| {
                rule.balancer.as_ref().is_none_or(|balancer| balancer.len() >= rule.expected)
            })
        };
        let known = tokio::time::timeout(limit, async {
            while !all_known() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .is_ok();
        // Endpoints configured as draining take no session, the first one included.
        for rule in self.table.targets() {
            if let Some(balancer) = &rule.balancer {
                for key in &rule.initial_drains {
                    balancer.drain(key);
                }
            }
        }
        known
    }
}

impl Rule {
    /// A rule the gateway answers itself (a redirect, a rule without backends): no balancer,
    /// no endpoints.
    fn answered_here(scope: String, service: RuleService, upstreams: &Upstreams) -> Self {
        let metrics = admin::RouteMetrics::new(&scope);
        Rule {
            scope,
            service,
            endpoints: Vec::new(),
            current: Mutex::default(),
            upstreams: upstreams.clone(),
            balancer: None,
            expected: 0,
            initial_drains: Vec::new(),
            metrics,
        }
    }

    fn apply(&self, new: &RulePlan, applied: &mut Applied) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let services = |b: &[Backend]| b.iter().map(|b| b.service.clone()).collect::<Vec<_>>();
        let planned: Vec<String> = new.backends.iter().map(|b| b.service.clone()).collect();
        if services(&current) != planned {
            applied.needs_restart.push(format!("{}: backendRefs changed", self.scope));
            return;
        }
        let Some(balancer) = &self.balancer else { return };
        for (group, (now, plan)) in current.iter_mut().zip(&new.backends).enumerate() {
            if now.weight != plan.weight {
                balancer.set_weight(group, plan.weight);
                now.weight = plan.weight;
                applied.reweighted += 1;
            }
            let sender = &self.endpoints[group];
            let wanted: HashMap<Key, (SocketAddr, bool)> =
                plan.endpoints.iter().map(|e| (e.key.clone(), (e.addr, e.draining))).collect();
            let planned: HashMap<&Key, &EndpointPlan> =
                plan.endpoints.iter().map(|e| (&e.key, e)).collect();
            for key in now.endpoints.keys().filter(|k| !wanted.contains_key(*k)) {
                sender.remove(key.clone());
                applied.removed += 1;
            }
            for (key, &(addr, draining)) in &wanted {
                match now.endpoints.get(key) {
                    Some(&(old_addr, was_draining)) if old_addr == addr => {
                        if draining && !was_draining {
                            balancer.drain(key);
                            applied.drained += 1;
                        } else if !draining && was_draining {
                            balancer.set_state(key, EndpointState::Serving);
                            applied.undrained += 1;
                        }
                    }
                    // New, or moved to another address: a new endpoint under the same key.
                    _ => {
                        sender.insert(key.clone(), upstream(planned[key], &self.upstreams));
                        applied.added += 1;
                        if draining {
                            drain_when_known(balancer.clone(), key.clone());
                            applied.drained += 1;
                        }
                    }
                }
            }
            now.endpoints = wanted;
        }
    }
}

/// Drains `key` once the balancer knows it (after its discovery task has run); gives up after
/// 5 s (the endpoint was removed again meanwhile).
fn drain_when_known(balancer: Balancer<Key, Upstream, Body>, key: Key) {
    tokio::spawn(async move {
        for _ in 0..500 {
            if balancer.drain(&key) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

fn build_rule(rule: &RulePlan, plan: &Plan, upstreams: &Upstreams) -> Rule {
    let scope = rule.scope.clone();
    if let Some(redirect) = rule.redirect.clone() {
        let service = tower::service_fn(move |req: Request<Body>| {
            std::future::ready(Ok::<_, Infallible>(redirect.respond(&req)))
        });
        tracing::info!(rule = %scope, "rule ready, redirecting");
        return Rule::answered_here(scope, RuleService::new(service), upstreams);
    }
    if rule.backends.is_empty() {
        // Gateway API: a rule with no backends answers 500.
        let service = tower::service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(failure::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "this route rule has no backends",
            ))
        });
        return Rule::answered_here(scope, RuleService::new(service), upstreams);
    }

    let mut groups = Vec::with_capacity(rule.backends.len());
    let mut endpoints = Vec::with_capacity(rule.backends.len());
    let mut current = Vec::with_capacity(rule.backends.len());
    let mut expected = 0;
    for backend in &rule.backends {
        current.push(Backend {
            service: backend.service.clone(),
            weight: backend.weight,
            endpoints: backend
                .endpoints
                .iter()
                .map(|e| (e.key.clone(), (e.addr, e.draining)))
                .collect(),
        });
        let (sender, discover) = discover_channel();
        for endpoint in &backend.endpoints {
            sender.insert(endpoint.key.clone(), upstream(endpoint, upstreams));
            expected += 1;
        }
        endpoints.push(sender);
        groups.push((backend.weight, discover));
    }
    let balancer =
        rule.balancing.build(groups, rule.on_unavailable, upstreams.health_view().clone());
    let initial_drains = rule
        .backends
        .iter()
        .flat_map(|b| &b.endpoints)
        .filter(|e| e.draining)
        .map(|e| e.key.clone())
        .collect();

    let answered = answering(&scope, balancer.clone());
    let service = match &rule.persistence {
        Some(persistence) if persistence.learning().is_some() => {
            let learning = persistence.learning().expect("checked by the guard");
            let (session, store) = (learning.name(), plan.store.kind());
            tracing::info!(rule = %scope, session, store, endpoints = expected, "rule ready, learning");
            let layer = learning.layer::<Key>(&plan.store, &plan.keys, persistence.session_scope());
            RuleService::new(layer.layer(answered))
        }
        Some(persistence) => {
            let session = persistence.policy().name();
            tracing::info!(rule = %scope, session, endpoints = expected, "rule ready");
            let layer = persistence.layer::<Key>(&plan.keys, persistence.session_scope());
            // Errors become responses beneath the layer, so that it sees a rejected session.
            RuleService::new(layer.layer(answered))
        }
        None => {
            tracing::info!(rule = %scope, endpoints = expected, "rule ready, no persistence");
            RuleService::new(answered)
        }
    };
    Rule {
        scope,
        service,
        endpoints,
        current: Mutex::new(current),
        upstreams: upstreams.clone(),
        balancer: Some(balancer),
        expected,
        initial_drains,
        metrics: admin::RouteMetrics::new(&rule.scope),
    }
}

/// `service`, with its errors turned into responses and the serving endpoint noted for the
/// access log. The services here are always ready, so each request can call a clone at once.
fn answering<S>(
    scope: &str,
    service: S,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    let scope: Arc<str> = scope.into();
    tower::service_fn(move |req: Request<Body>| {
        let (service, scope) = (service.clone(), scope.clone());
        async move {
            Ok::<_, Infallible>(match service.oneshot(req).await {
                Ok(mut res) => {
                    if access_log::enabled()
                        && let Some(ServedBy(key)) =
                            res.extensions().get::<ServedBy<Key>>().cloned()
                    {
                        res.extensions_mut().insert(ServedByEndpoint(key));
                    }
                    res
                }
                Err(err) => failure::respond(&scope, &err),
            })
        }
    })
}

impl Service<Request<Body>> for Gateway {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = access_log::Logged<
        admin::Measured<
            futures_util::future::Either<
                Oneshot<RuleService, Request<Body>>,
                std::future::Ready<Result<Response<Body>, Infallible>>,
            >,
        >,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let refuse = |req: &Request<Body>, status: StatusCode, reason: &str| {
            let entry = access_log::Entry::start(req, None, None);
            let answer = failure::text(status, reason);
            let answer = futures_util::future::Either::Right(std::future::ready(Ok(answer)));
            access_log::Logged::new(admin::Measured::new(answer, self.unrouted.as_ref()), entry)
        };
        // One host per request: two `Host` headers, or an authority that disagrees with
        // `Host`, could route by one host and reach the backend with the other.
        let host = match request_host(&req) {
            Ok(host) => host,
            Err(err) => return refuse(&req, StatusCode::BAD_REQUEST, &err.to_string()),
        };
        // A tunnel to anywhere is not a route (no rule can ask for one).
        if req.method() == Method::CONNECT {
            return refuse(&req, StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported");
        }
        let request_id = self.request_id(&mut req);
        let normalized = host.as_deref().map(normalize_host);
        let mut path = std::borrow::Cow::Borrowed(req.uri().path());
        for name in self.path_parameters.iter() {
            if let std::borrow::Cow::Owned(stripped) = Url::routing_path(&path, name) {
                path = std::borrow::Cow::Owned(stripped);
            }
        }
        let port = req.extensions().get::<ArrivedOn>().map(|on| on.0);
        let rule = self.table.find(port, normalized.as_deref(), &path);
        drop(path);
        let entry =
            access_log::Entry::start(&req, rule.map(|rule| rule.scope.as_str()), Some(request_id));
        req.extensions_mut().insert(RequestHost(host));
        let future = match rule {
            Some(rule) => futures_util::future::Either::Left(rule.service.clone().oneshot(req)),
            None => futures_util::future::Either::Right(std::future::ready(Ok(
                crate::grpc::no_route(&req).unwrap_or_else(|| {
                    failure::text(StatusCode::NOT_FOUND, "no route matches this request")
                }),
            ))),
        };
        let metrics = match rule {
            Some(rule) => rule.metrics.as_ref(),
            None => self.unrouted.as_ref(),
        };
        let future = admin::Measured::new(future, metrics);
        access_log::Logged::new(future, entry)
    }
}

impl Gateway {
    /// The request's id: the one a trusted proxy sent in `x-request-id`, or a new one, set
    /// in that header for the backend.
    fn request_id(&self, req: &mut Request<Body>) -> HeaderValue {
        let trusted = req
            .extensions()
            .get::<ClientAddr>()
            .is_some_and(|client| self.trusted.contains(client.addr.ip()));
        if trusted
            && let Some(id) = req.headers().get(X_REQUEST_ID)
            && !id.is_empty()
            && id.len() <= 200
        {
            return id.clone();
        }
        let id = access_log::new_request_id();
        req.headers_mut().insert(X_REQUEST_ID, id.clone());
        id
    }
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

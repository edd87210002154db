//! Assembles the services: one stack per rule, and the [`Gateway`] service that dispatches a
//! request to its rule.
//!
//! Each rule's stack is, from the outside in: errors turned into responses, the
//! `SessionPersistenceLayer` (only when the rule has `sessionPersistence`; scope
//! `<namespace>/<route>/<index>`), and the crate's `Balancer` with one weighted group per
//! `backendRef`, each fed by a discovery channel holding one [`Upstream`] per endpoint, keyed
//! `<service>/<address>`.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode, header};
use tower::util::{BoxCloneSyncService, Oneshot};
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_session_persistence::balance::{Balancer, DiscoverSender, discover_channel};

use crate::config::{Plan, RulePlan};
use crate::failure;
use crate::proxy::{HttpClient, Upstream};
use crate::routing::{RouteTable, normalize_host};

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
    #[allow(dead_code)]
    endpoints: Vec<DiscoverSender<Key, Upstream>>,
    /// The balancer, when the rule has backends; to tell when it knows its endpoints.
    balancer: Option<Balancer<Key, Upstream, Body>>,
    /// How many endpoints the rule starts with.
    expected: usize,
}

/// The gateway: finds the request's rule and hands the request to it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Gateway {
    table: Arc<RouteTable<Rule>>,
}

impl Gateway {
    /// Builds every rule of `plan`; needs a tokio runtime (balancers start tasks).
    pub(crate) fn new(plan: &Plan, client: &HttpClient) -> Self {
        let rules = plan.rules.iter().map(|rule| {
            let built = build_rule(rule, plan, client);
            (rule.hostnames.clone(), rule.matches.clone(), built)
        });
        Self { table: Arc::new(RouteTable::new(rules)) }
    }

    /// Waits until every balancer knows the endpoints it was given (they arrive through a
    /// channel and a task), so that the first request finds them; gives up after `limit`.
    pub(crate) async fn ready(&self, limit: Duration) -> bool {
        let all_known = || {
            self.table.targets().iter().all(|rule| {
                rule.balancer.as_ref().is_none_or(|balancer| balancer.len() >= rule.expected)
            })
        };
        tokio::time::timeout(limit, async {
            while !all_known() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .is_ok()
    }
}

fn build_rule(rule: &RulePlan, plan: &Plan, client: &HttpClient) -> Rule {
    let scope = rule.scope.clone();
    if rule.backends.is_empty() {
        // Gateway API: a rule with no backends answers 500.
        let service = tower::service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(failure::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "this route rule has no backends",
            ))
        });
        return Rule {
            scope,
            service: RuleService::new(service),
            endpoints: Vec::new(),
            balancer: None,
            expected: 0,
        };
    }

    let mut groups = Vec::with_capacity(rule.backends.len());
    let mut endpoints = Vec::with_capacity(rule.backends.len());
    let mut expected = 0;
    for backend in &rule.backends {
        let (sender, discover) = discover_channel();
        for endpoint in &backend.endpoints {
            sender.insert(
                endpoint.key.clone(),
                Upstream::new(endpoint.addr, client.clone(), plan.timeout),
            );
            expected += 1;
        }
        endpoints.push(sender);
        groups.push((backend.weight, discover));
    }
    let balancer = rule.balancing.build(groups, rule.on_unavailable);

    let service = match &rule.persistence {
        Some(persistence) => {
            let session = persistence.policy().name();
            tracing::info!(rule = %scope, session, endpoints = expected, "rule ready");
            let layer = persistence.layer::<Key>(&plan.keys, &scope);
            answering(&scope, layer.layer(balancer.clone()))
        }
        None => {
            tracing::info!(rule = %scope, endpoints = expected, "rule ready, no persistence");
            answering(&scope, balancer.clone())
        }
    };
    Rule { scope, service, endpoints, balancer: Some(balancer), expected }
}

/// `service`, with its errors turned into responses. The services here are always ready, so
/// each request can call a clone of it at once.
fn answering<S>(scope: &str, service: S) -> RuleService
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    let scope: Arc<str> = scope.into();
    RuleService::new(tower::service_fn(move |req: Request<Body>| {
        let (service, scope) = (service.clone(), scope.clone());
        async move {
            Ok::<_, Infallible>(match service.oneshot(req).await {
                Ok(res) => res,
                Err(err) => failure::respond(&scope, &err),
            })
        }
    }))
}

impl Service<Request<Body>> for Gateway {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        Oneshot<RuleService, Request<Body>>,
        std::future::Ready<Result<Response<Body>, Infallible>>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host())
            .map(normalize_host);
        match self.table.find(host.as_deref(), req.uri().path()) {
            Some(rule) => {
                tracing::trace!(rule = %rule.scope, "routed");
                futures_util::future::Either::Left(rule.service.clone().oneshot(req))
            }
            None => futures_util::future::Either::Right(std::future::ready(Ok(failure::text(
                StatusCode::NOT_FOUND,
                "no route matches this request",
            )))),
        }
    }
}

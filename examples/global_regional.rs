//! A global load balancer in front of regional load balancers, in one process.
//!
//! ```text
//! client ──► SessionPersistence (cookie `region`) ──► global Balancer: endpoints are regions
//!              eu ──► SessionPersistence (cookie `backend`, scope eu) ──► Balancer: eu-1, eu-2
//!              us ──► SessionPersistence (cookie `backend`, scope us) ──► Balancer: us-1, us-2
//! ```
//!
//! Each level pins its own choice with its own cookie and re-pins on its own: losing a backend
//! re-issues only the `backend` cookie; losing a region re-issues both. Both levels key their
//! endpoints by `String`: the seam's *take* semantics keep the levels' pins apart (each layer
//! removes the `PinnedEndpoint` / `ServedBy` meant for it).
//!
//! Run it with `cargo run --example global_regional`; it prints what happens and exits.
//! `tests/nesting.rs` runs the same construction and checks it.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::body::Body;
use http::{Request, Response};
use tokio::net::TcpListener;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_session_persistence::SessionPersistenceLayer;
use tower_session_persistence::balance::{
    Balancer, BalancerBuilder, DiscoverSender, discover_channel,
};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::token::SignedCodec;

/// Any endpoint at either level: a backend, or a whole region.
pub(crate) type Svc = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// The running gateway and the handles that change it.
pub(crate) struct World {
    /// Where the gateway listens (`http://127.0.0.1:port`).
    pub(crate) url: String,
    /// The global discovery: insert or remove regions.
    pub(crate) regions: DiscoverSender<String, Svc>,
    /// Each region's discovery: insert or remove its backends.
    pub(crate) backends: HashMap<String, DiscoverSender<String, Svc>>,
    /// The global balancer, over regions.
    pub(crate) global: Balancer<String, Svc, Body>,
    /// Each region's balancer, over its backends.
    pub(crate) regional: HashMap<String, Balancer<String, Svc, Body>>,
}

/// A backend: answers with its name in the body and the `x-backend` header.
pub(crate) fn backend(name: &str) -> Svc {
    let name = name.to_owned();
    BoxCloneSyncService::new(service_fn(move |_: Request<Body>| {
        let name = name.clone();
        async move {
            let res = Response::builder().header("x-backend", &name).body(Body::from(name));
            res.map_err(BoxError::from)
        }
    }))
}

/// A region: its own persistence layer (cookie `backend`, scoped to the region) over its own
/// balancer of `names`.
fn region(
    name: &str,
    names: &[&str],
) -> (Svc, DiscoverSender<String, Svc>, Balancer<String, Svc, Body>) {
    let (backends, discover) = discover_channel();
    for b in names {
        backends.insert((*b).to_owned(), backend(b));
    }
    let balancer: Balancer<String, Svc, Body> =
        BalancerBuilder::new().group(1, discover).replay_empty_bodies().build();
    let layer = SessionPersistenceLayer::new(
        SessionPolicy::cookie("backend").build().expect("a valid policy"),
        SignedCodec::new([[2u8; 32]]).expect("a valid key"),
    )
    .scope(name);
    let svc = BoxCloneSyncService::new(layer.layer(balancer.clone()));
    (svc, backends, balancer)
}

/// Starts the gateway on a loopback port: `layout` lists the regions and their backends.
pub(crate) async fn build(layout: &[(&str, &[&str])]) -> World {
    let (regions, discover) = discover_channel();
    let mut backends = HashMap::new();
    let mut regional = HashMap::new();
    for (name, names) in layout {
        let (svc, sender, balancer) = region(name, names);
        regions.insert((*name).to_owned(), svc);
        backends.insert((*name).to_owned(), sender);
        regional.insert((*name).to_owned(), balancer);
    }
    let global: Balancer<String, Svc, Body> =
        BalancerBuilder::new().group(1, discover).replay_empty_bodies().build();
    let layer = SessionPersistenceLayer::new(
        SessionPolicy::cookie("region").build().expect("a valid policy"),
        SignedCodec::new([[1u8; 32]]).expect("a valid key"),
    )
    .scope("global");
    // Boxed: an async block holding a concrete tower stack whose error is `BoxError` can trip
    // rustc's "implementation of `From` is not general enough"; a boxed service never does.
    let gateway: Svc = BoxCloneSyncService::new(layer.layer(global.clone()));

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let gateway = gateway.clone();
        async move {
            Ok::<_, Infallible>(gateway.oneshot(req).await.unwrap_or_else(|error| {
                Response::builder()
                    .status(503)
                    .body(Body::from(error.to_string()))
                    .unwrap_or_default()
            }))
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Discovery is applied by the balancers' own tasks: wait until every endpoint is known.
    let expected: usize = layout.iter().map(|(_, names)| names.len()).sum();
    for _ in 0..1000 {
        let known: usize = regional.values().map(Balancer::len).sum();
        if global.len() == layout.len() && known == expected {
            break;
        }
        tokio::task::yield_now().await;
    }
    World { url, regions, backends, global, regional }
}

/// What one response said: the backend, and the cookies it (re-)issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hop {
    pub(crate) backend: String,
    pub(crate) new_region: bool,
    pub(crate) new_backend: bool,
}

/// Sends one request with `client` (a cookie jar).
pub(crate) async fn hop(client: &reqwest::Client, url: &str) -> Result<Hop, reqwest::Error> {
    let res = client.get(url).send().await?.error_for_status()?;
    let issued = |name: &str| {
        res.headers()
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.starts_with(&format!("{name}="))))
    };
    let (new_region, new_backend) = (issued("region"), issued("backend"));
    let backend = res.text().await?;
    Ok(Hop { backend, new_region, new_backend })
}

/// The region a backend belongs to (`eu-1` is in `eu`).
pub(crate) fn region_of(backend: &str) -> &str {
    backend.split('-').next().unwrap_or(backend)
}

/// Waits until the balancers have applied a change (bounded).
pub(crate) async fn settle(done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

#[tokio::main]
pub(crate) async fn main() -> Result<(), BoxError> {
    let world = build(&[("eu", &["eu-1", "eu-2"]), ("us", &["us-1", "us-2"])]).await;
    println!("gateway on {}: regions eu (eu-1, eu-2) and us (us-1, us-2)", world.url);
    let client = reqwest::Client::builder().cookie_store(true).build()?;
    let show = |step: &str, h: &Hop| {
        println!(
            "{step:<32} served by {:<5} new region cookie: {:<5} new backend cookie: {}",
            h.backend, h.new_region, h.new_backend
        );
    };

    let first = hop(&client, &world.url).await?;
    show("first request", &first);
    for i in 1..=3 {
        show(&format!("request {i} with both cookies"), &hop(&client, &world.url).await?);
    }

    let region = region_of(&first.backend).to_owned();
    let regional = &world.regional[&region];
    world.backends[&region].remove(first.backend.clone());
    settle(|| regional.len() == 1).await;
    let moved = hop(&client, &world.url).await?;
    show(&format!("{} removed", first.backend), &moved);
    show("and again", &hop(&client, &world.url).await?);

    world.regions.remove(region.clone());
    settle(|| world.global.len() == 1).await;
    show(&format!("region {region} removed"), &hop(&client, &world.url).await?);
    show("and again", &hop(&client, &world.url).await?);
    Ok(())
}

//! An axum application with session persistence in front of three pods.
//!
//! `Router::layer` keeps everything under `/shop` on one pod; `route_layer` makes only
//! `/account/upload` sticky, while the rest of `/account` is balanced on every request.
//! `cargo run --example axum_layer` serves the app on a loopback port, drives it with a
//! cookie-jar client, prints which pod answered each request, and exits.

use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tower::{BoxError, ServiceBuilder};
use tower_session_persistence::balance::{BalancerBuilder, discover_channel};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::token::SignedCodec;
use tower_session_persistence::{
    Decision, OnUnavailable, PinnedUnavailable, SessionPersistenceLayer,
};

/// Which pod answered each request, per route, and what `/shop` said once its pod was gone.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) shop: Vec<String>,
    pub(crate) upload: Vec<String>,
    pub(crate) profile: Vec<String>,
    pub(crate) after_removal: (StatusCode, String),
}

pub(crate) async fn run() -> Result<Report, BoxError> {
    // Three in-process pods; a real gateway would proxy to remote ones (see `hyper_service`).
    let (endpoints, discover) = discover_channel();
    for pod in ["pod-a", "pod-b", "pod-c"] {
        endpoints.insert(pod.to_owned(), Router::new().fallback(move || async move { pod }));
    }
    // Strict, as Envoy's: a cart whose pod is gone gets a 503, not an empty cart elsewhere.
    let balancer = BalancerBuilder::new().group(1, discover).on_unavailable(OnUnavailable::Reject);
    let balancer = balancer.build();
    // axum wants services that never fail. Turn the balancer's errors into responses *beneath*
    // the persistence layer, so that it sees a rejection and records it.
    let upstream =
        ServiceBuilder::new().layer(HandleErrorLayer::new(error_page)).service(balancer.clone());

    // In production: a secret from your configuration, the same on every replica.
    let codec = SignedCodec::new([[7u8; 32]])?;
    let sticky = |name: &str, path: &str| -> Result<_, BoxError> {
        let policy = SessionPolicy::cookie(name).path(path).build()?;
        Ok(SessionPersistenceLayer::new(policy, codec.clone()))
    };
    // `Router::layer` wraps every route above it (and the fallback): one session for /shop.
    let shop = Router::new()
        .route_service("/shop/cart", upstream.clone())
        .route_service("/shop/checkout", upstream.clone())
        .layer(sticky("shop", "/shop")?);
    // `route_layer` wraps only the routes above it, and only requests that match them.
    let account = Router::new()
        .route_service("/account/upload", upstream.clone())
        .route_layer(sticky("upload", "/account/upload")?)
        .route_service("/account/profile", upstream);
    // Outermost: the application reads each request's decision to log or count it.
    let app = shop.merge(account).layer(axum::middleware::map_response(show_decision));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    // A browser-like client: it keeps cookies (reqwest sends `Secure` ones to loopback).
    let client = reqwest::Client::builder().cookie_store(true).build()?;
    let get = async |path: &str| -> Result<(StatusCode, String), BoxError> {
        let res = client.get(format!("{url}{path}")).send().await?;
        let status = res.status();
        let decision = res.headers().get("x-session-decision").map(|v| format!("{v:?}"));
        let body = res.text().await?;
        println!("GET {path:<16} -> {status} {body:<6} session: {}", decision.unwrap_or_default());
        Ok((status, body))
    };
    let pods = async |paths: &[&str]| -> Result<Vec<String>, BoxError> {
        let mut pods = Vec::new();
        for path in paths {
            pods.push(get(path).await?.1);
        }
        Ok(pods)
    };
    let shop = pods(&["/shop/cart", "/shop/cart", "/shop/checkout", "/shop/cart"]).await?;
    let upload = pods(&["/account/upload"; 4]).await?;
    let profile = pods(&["/account/profile"; 12]).await?;
    if !same(&shop) || !same(&upload) {
        return Err("a session left its pod".into());
    }

    // The shop's pod goes away: its session is refused (503), not moved.
    endpoints.remove(shop[0].clone());
    while balancer.state(&shop[0]).is_some() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after_removal = get("/shop/cart").await?;
    Ok(Report { shop, upload, profile, after_removal })
}

async fn error_page(error: BoxError) -> Response {
    if error.is::<PinnedUnavailable>() {
        return PinnedUnavailable::response();
    }
    (StatusCode::BAD_GATEWAY, error.to_string()).into_response()
}

async fn show_decision(mut res: Response) -> Response {
    if let Some(decision) = res.extensions().get::<Decision>() {
        let value = HeaderValue::from_static(decision.as_str());
        res.headers_mut().insert("x-session-decision", value);
    }
    res
}

fn same(pods: &[String]) -> bool {
    pods.windows(2).all(|w| w[0] == w[1])
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let report = run().await?;
    println!("/shop stayed on {}, /account/upload on {}", report.shop[0], report.upload[0]);
    println!("/account/profile was balanced: {:?}", report.profile);
    println!("/shop after its pod left: {:?}", report.after_removal);
    Ok(())
}

//! Sticky sessions with tower alone: the layer in front of the crate's balancer.
use std::convert::Infallible;

use http::{Request, Response};
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
use tower_session_persistence::SessionPersistenceLayer;
use tower_session_persistence::balance::{BalancerBuilder, discover_channel};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::token::SignedCodec;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    run().await
}

/// Three endpoints behind the balancer; one client with a cookie, always on one endpoint.
pub async fn run() -> Result<(), BoxError> {
    // Endpoints: any `Clone` tower service, keyed by a stable name. Insert, remove or drain
    // them at any time; they reach the balancer through a channel.
    let (endpoints, discover) = discover_channel();
    for pod in ["pod-a", "pod-b", "pod-c"] {
        let service =
            service_fn(
                move |_: Request<String>| async move { Ok::<_, Infallible>(Response::new(pod)) },
            );
        endpoints.insert(pod.to_owned(), service);
    }
    let balancer = BalancerBuilder::new().group(1, discover).build();
    while balancer.len() < 3 {
        tokio::task::yield_now().await;
    }

    let app = ServiceBuilder::new()
        .layer(
            SessionPersistenceLayer::new(
                SessionPolicy::cookie("shop-session").build()?,
                SignedCodec::new([*b"replace with 32+ secret bytes!!!"])?,
            )
            .scope("default/shop/cart"), // one scope per route rule: rules never share sessions
        )
        .service(balancer);

    // The first request is balanced and gets a session ...
    let res = app.clone().oneshot(Request::new(String::new())).await?;
    let set_cookie = res.headers()["set-cookie"].to_str()?;
    let cookie = set_cookie.split(';').next().unwrap_or_default().to_owned();
    let pod = *res.body();
    println!("{pod} answered and set {cookie}");
    // ... and every request that sends it back reaches the same endpoint.
    for _ in 0..5 {
        let req = Request::builder().header("cookie", &cookie).body(String::new())?;
        let res = app.clone().oneshot(req).await?;
        assert_eq!(*res.body(), pod);
        assert!(res.headers().get("set-cookie").is_none(), "nothing new to say");
    }
    Ok(())
}

//! Sticky sessions for an axum app: `cargo run`, then
//! `curl -c jar -b jar http://127.0.0.1:3000/shop/cart` a few times (always the same pod).
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower::{BoxError, ServiceBuilder};
use tower_session_persistence::balance::{BalancerBuilder, discover_channel};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::token::SignedCodec;
use tower_session_persistence::{PinnedUnavailable, SessionPersistenceLayer};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    axum::serve(listener, app()?).await?;
    Ok(())
}

/// `/shop` is sticky over three pods; `/healthz` is answered locally.
pub fn app() -> Result<Router, BoxError> {
    // The endpoints, keyed by a stable name. Here three in-process pods; in a gateway, one
    // HTTP client service per upstream address (see the crate's `hyper_service` example).
    let (endpoints, discover) = discover_channel();
    for pod in ["pod-a", "pod-b", "pod-c"] {
        endpoints.insert(pod.to_owned(), Router::new().fallback(move || async move { pod }));
    }
    let balancer = BalancerBuilder::new().group(1, discover).build();

    // The cookie's Path is the route's: other routes never receive (or see) the token.
    let policy = SessionPolicy::cookie("shop").path("/shop").build()?;
    // At least 32 secret bytes, the same on every replica: load them from your secret store.
    let codec = SignedCodec::new([*b"replace with 32+ secret bytes!!!"])?;

    let sticky = ServiceBuilder::new()
        // Outermost: reads the session on the way in, writes it on the way out.
        .layer(SessionPersistenceLayer::new(policy, codec))
        // Between the two: the balancer's errors become responses the layer can see.
        .layer(HandleErrorLayer::new(error_page))
        // Innermost: honours the session, tags each response with the pod that served it.
        .service(balancer);

    Ok(Router::new().route("/healthz", get(|| async { "ok" })).nest_service("/shop", sticky))
}

/// `503` when a session's pod is gone and the balancer was told to reject (not the default),
/// `502` for anything else.
async fn error_page(error: BoxError) -> Response {
    if error.is::<PinnedUnavailable>() {
        return PinnedUnavailable::response();
    }
    (StatusCode::BAD_GATEWAY, error.to_string()).into_response()
}

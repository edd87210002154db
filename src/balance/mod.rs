//! A load balancer that honours session persistence.
//!
//! [`Balancer`] wraps one tower [`Discover`](tower::discover::Discover) per weighted group of
//! endpoints (a Gateway API `backendRef`). A request carrying a [`PinnedEndpoint`] goes to
//! exactly that endpoint, whatever its group's weight, and waits for *that* endpoint's
//! readiness only, in a bounded queue with a fail-fast deadline. Every other request goes to
//! the endpoint its [affinity] key hashes to, if affinity is configured, or picks a
//! group by weight and is balanced within it by tower's power-of-two-choices
//! [`Balance`](tower::balance::p2c::Balance). All paths count in-flight requests on the same
//! [`Endpoint`], so p2c sees the load that pinned traffic brings. Every response carries
//! [`ServedBy`] with the endpoint's key.
//!
//! Endpoints have [states](EndpointState): *serving*; *draining* (no new sessions, its
//! sessions still reach it until it is removed); *ejected* for a while after a connect
//! failure; removed. The balancer never moves a session whose endpoint can take it. When the
//! pinned endpoint cannot (removed, ejected, or busy past the deadline), [`OnUnavailable`]
//! decides: balance the request (the layer then re-pins the session) or fail it with
//! [`PinnedUnavailable`]. A request whose endpoint fails to connect can be replayed once on
//! the balanced path ([`BalancerBuilder::replay_empty_bodies`]), so its client sees no error.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{ServiceExt, service_fn};
//! use tower_session_persistence::{PinnedEndpoint, ServedBy};
//! use tower_session_persistence::balance::{BalancerBuilder, discover_channel};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let (endpoints, discover) = discover_channel();
//! for name in ["pod-a", "pod-b"] {
//!     let svc = service_fn(move |_req: Request<()>| async move {
//!         Ok::<_, Infallible>(Response::new(name))
//!     });
//!     endpoints.insert(name.to_owned(), svc);
//! }
//! let balancer = BalancerBuilder::new().group(1, discover).build();
//! # tokio::task::yield_now().await;
//!
//! let mut req = Request::new(());
//! PinnedEndpoint("pod-b".to_owned()).insert(req.extensions_mut());
//! let mut res = balancer.oneshot(req).await?;
//! assert_eq!(*res.body(), "pod-b");
//! assert_eq!(ServedBy::<String>::take(res.extensions_mut()), Some(ServedBy("pod-b".to_owned())));
//! # Ok(())
//! # }
//! ```
//!
//! [`PinnedEndpoint`]: crate::PinnedEndpoint
//! [`ServedBy`]: crate::ServedBy
//! [`OnUnavailable`]: crate::OnUnavailable
//! [`PinnedUnavailable`]: crate::PinnedUnavailable

pub mod affinity;
mod balancer;
mod core;
mod discover;
mod endpoint;
mod failure;
mod feed;
mod future;
mod state;
mod view;
mod weights;

pub use self::balancer::{Balancer, BalancerBuilder, IntoHealthView, OwnView};
pub use self::core::{DispatcherGone, NoEndpoints};
pub use self::discover::{DiscoverReceiver, DiscoverSender, discover_channel};
pub use self::endpoint::{Endpoint, EndpointFuture};
pub use self::failure::{
    NoReplay, NotSent, Replay, ReplayEmptyBodies, is_connect_failure, take_unsent_request,
};
pub use self::future::ResponseFuture;
pub use self::state::EndpointState;
pub use self::view::{EndpointStats, HealthView};

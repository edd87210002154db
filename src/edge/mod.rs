//! What a gateway needs at the edge of the network, whatever it balances with: honest
//! forwarded headers, strict host checks and bounded waits on bodies.
//!
//! * [`ForwardedHeaders`]: `X-Forwarded-For`, RFC 7239 `Forwarded`, `Via` and the
//!   `X-Forwarded-*` family, with a trust model: a client's own claims are replaced unless it
//!   is one of the [`TrustedProxies`].
//! * [`request_host`]: the one host a request names, refusing requests that name two (two
//!   `Host` headers; an absolute-form URI or HTTP/2 `:authority` that disagrees with `Host`),
//!   which would let a client pass one host to routing and another to the backend.
//! * [`IdleTimeoutBody`]: a body that fails when no data arrives for a while, for request
//!   bodies from slow clients and response bodies from stalled backends; a steady transfer of
//!   any length is never cut.
//!
//! ```
//! use http::{HeaderMap, Request};
//! use tower_session_persistence::edge::{ForwardedHeaders, Proto, TrustedProxies, request_host};
//!
//! let req = Request::builder()
//!     .uri("/cart")
//!     .header("host", "shop.example")
//!     .header("x-forwarded-for", "10.9.9.9") // a claim from the client itself
//!     .body(())?;
//! assert_eq!(request_host(&req)?.as_deref(), Some("shop.example"));
//!
//! let forwarded = ForwardedHeaders::new(TrustedProxies::parse(["10.0.0.0/8"])?);
//! let mut headers = req.headers().clone();
//! forwarded.apply(&mut headers, "203.0.113.7".parse()?, Proto::Http, Some("shop.example"));
//! assert_eq!(headers["x-forwarded-for"], "203.0.113.7"); // untrusted peer: replaced
//! assert_eq!(headers["forwarded"], "for=203.0.113.7;host=shop.example;proto=http");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod forwarded;
mod host;
mod idle_body;

pub use self::forwarded::{ForwardedHeaders, Proto, TrustedProxies, TrustedProxiesError};
pub use self::host::{HostError, request_host};
pub use self::idle_body::{BodyIdleTimeout, IdleTimeoutBody};

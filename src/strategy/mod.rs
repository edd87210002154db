//! How a session travels: where the layer finds it in a request, what the backend sees, and
//! how the response hands it to the client.
//!
//! A [`Strategy`] has two hooks, one per direction. The built-in strategies use HAProxy's
//! words for cookies and GEP-1619's carriers for the rest:
//!
//! | strategy | request | response |
//! |---|---|---|
//! | [`Insert`] (default for cookies) | reads our cookie; removes it (`indirect`, default) | appends our `Set-Cookie` when the session is new, re-pinned, expired or due for refresh; removes the backend's own cookie of that name (unless `preserve`); `nocache`, `postonly` |
//! | [`Rewrite`] | reads the cookie; passes it on (or removes it with `indirect`) | replaces the value of the backend's `Set-Cookie` of that name with the token |
//! | [`Prefix`] | reads `<token>~<app value>`; the backend sees `<app value>` | prefixes the value of the backend's `Set-Cookie` of that name with `<token>~` |
//! | [`Passive`] | reads the cookie; changes nothing | writes nothing |
//! | [`Header`] (default for headers) | reads the header; removes it | sets the header when the session is new or changed |
//! | [`Url`] | reads a path or query parameter; strips it; offers the valid token to the backend in a header | adds the token to the `Location` of redirects |
//!
//! Every strategy splices the backend's `Set-Cookie` values rather than re-serialising them, so
//! attributes it does not know survive, and it appends rather than merges.
//!
//! Write your own by implementing [`Strategy`]; the layer does the rest (token checks,
//! timeouts, deciding when a new token is due). What the request hook learns travels to the
//! response hook in [`Strategy::State`]; this one answers in the carrier the client used:
//!
//! ```
//! use http::{request, response};
//! use tower_session_persistence::policy::SessionPolicy;
//! use tower_session_persistence::strategy::{Reply, Strategy};
//!
//! /// Reads the session from `Authorization: Session <token>` or from `X-Session`, and answers
//! /// in `X-Session`, or in `Authorization-Info` to clients that used `Authorization`.
//! #[derive(Debug)]
//! struct Bearer;
//!
//! /// Which header the client used.
//! #[derive(Debug, Default)]
//! enum Used {
//!     #[default]
//!     XSession,
//!     Authorization,
//! }
//!
//! impl Strategy for Bearer {
//!     type State = Used;
//!
//!     fn on_request(&self, _: &SessionPolicy, req: &mut request::Parts) -> (Option<String>, Used) {
//!         let header = |name| req.headers.get(name).and_then(|v| v.to_str().ok());
//!         if let Some(token) = header("authorization").and_then(|v| v.strip_prefix("Session ")) {
//!             return (Some(token.to_owned()), Used::Authorization);
//!         }
//!         (header("x-session").map(str::to_owned), Used::XSession)
//!     }
//!
//!     fn on_response(&self, _: &SessionPolicy, res: &mut response::Parts, reply: &Reply<'_>, used: Used) {
//!         let (true, Some(token)) = (reply.is_due(), reply.token()) else { return };
//!         let Ok(value) = token.parse() else { return };
//!         let name = match used {
//!             Used::Authorization => "authorization-info",
//!             Used::XSession => "x-session",
//!         };
//!         res.headers.insert(name, value);
//!     }
//! }
//! ```
//!
//! # Wrapping a built-in strategy
//!
//! A strategy can delegate to a built-in one and add to it; keep its `State` and pass it
//! through. This one inserts the cookie as [`Insert`] does and also tells the application which
//! decision the layer took:
//!
//! ```
//! use http::{HeaderValue, request, response};
//! use tower_session_persistence::policy::SessionPolicy;
//! use tower_session_persistence::strategy::{Insert, Reply, Strategy};
//!
//! #[derive(Debug)]
//! struct Announced(Insert);
//!
//! impl Strategy for Announced {
//!     type State = <Insert as Strategy>::State;
//!
//!     fn on_request(&self, policy: &SessionPolicy, req: &mut request::Parts) -> (Option<String>, Self::State) {
//!         self.0.on_request(policy, req)
//!     }
//!
//!     fn on_valid(&self, policy: &SessionPolicy, req: &mut request::Parts, token: &str) {
//!         self.0.on_valid(policy, req, token);
//!     }
//!
//!     fn on_response(&self, policy: &SessionPolicy, res: &mut response::Parts, reply: &Reply<'_>, state: Self::State) {
//!         res.headers.insert("x-session-decision", HeaderValue::from_static(reply.decision().as_str()));
//!         self.0.on_response(policy, res, reply, state);
//!     }
//! }
//! ```
//!
//! To write a cookie of your own, [`CookieAttributes::set_cookie`](crate::policy::CookieAttributes::set_cookie)
//! renders the policy's attributes as a `Set-Cookie` value exactly as [`Insert`] does.

mod cache;
mod cookie_modes;
mod header;
mod reply;
mod url;

use std::any::Any;
use std::fmt;

use http::{request, response};

pub use self::cookie_modes::{Insert, Passive, Prefix, Rewrite};
pub use self::header::Header;
pub use self::reply::Reply;
pub use self::url::Url;
use crate::policy::SessionPolicy;

/// Where a session travels and how the response carries it; see the [module docs](self).
pub trait Strategy: fmt::Debug + Send + Sync + 'static {
    /// What [`on_request`](Self::on_request) hands to [`on_response`](Self::on_response) for
    /// the same request (for example, which carrier the client used); `()` when nothing.
    /// Anything but a zero-sized type costs one allocation per request.
    type State: Send + Sync + 'static;

    /// Finds the session's token in the request, and changes the request into what the
    /// backend should see (for example, removes the token). Returns the token as the client
    /// sent it (the layer verifies it), and the state for [`on_response`](Self::on_response).
    fn on_request(
        &self,
        policy: &SessionPolicy,
        req: &mut request::Parts,
    ) -> (Option<String>, Self::State);

    /// Called after [`on_request`](Self::on_request) when the token was valid and is honoured.
    /// The default does nothing.
    fn on_valid(&self, policy: &SessionPolicy, req: &mut request::Parts, token: &str) {
        let _ = (policy, req, token);
    }

    /// Writes the session into the response, as `reply` says. Called once for each response
    /// that a balancer tagged with [`ServedBy`](crate::ServedBy), with the state that
    /// [`on_request`](Self::on_request) returned for its request.
    fn on_response(
        &self,
        policy: &SessionPolicy,
        res: &mut response::Parts,
        reply: &Reply<'_>,
        state: Self::State,
    );
}

impl<T: Strategy + ?Sized> Strategy for Box<T> {
    type State = T::State;

    fn on_request(
        &self,
        policy: &SessionPolicy,
        req: &mut request::Parts,
    ) -> (Option<String>, Self::State) {
        (**self).on_request(policy, req)
    }

    fn on_valid(&self, policy: &SessionPolicy, req: &mut request::Parts, token: &str) {
        (**self).on_valid(policy, req, token);
    }

    fn on_response(
        &self,
        policy: &SessionPolicy,
        res: &mut response::Parts,
        reply: &Reply<'_>,
        state: Self::State,
    ) {
        (**self).on_response(policy, res, reply, state);
    }
}

/// A strategy's state with its type erased; a `Box` of a zero-sized type does not allocate.
pub(crate) type AnyState = Box<dyn Any + Send + Sync>;

/// [`Strategy`] with its state type erased, so that the layer holds any strategy in one type.
pub(crate) trait DynStrategy: fmt::Debug + Send + Sync + 'static {
    fn on_request(
        &self,
        policy: &SessionPolicy,
        req: &mut request::Parts,
    ) -> (Option<String>, AnyState);

    fn on_valid(&self, policy: &SessionPolicy, req: &mut request::Parts, token: &str);

    fn on_response(
        &self,
        policy: &SessionPolicy,
        res: &mut response::Parts,
        reply: &Reply<'_>,
        state: AnyState,
    );
}

impl<T: Strategy> DynStrategy for T {
    fn on_request(
        &self,
        policy: &SessionPolicy,
        req: &mut request::Parts,
    ) -> (Option<String>, AnyState) {
        let (token, state) = Strategy::on_request(self, policy, req);
        (token, Box::new(state))
    }

    fn on_valid(&self, policy: &SessionPolicy, req: &mut request::Parts, token: &str) {
        Strategy::on_valid(self, policy, req, token);
    }

    fn on_response(
        &self,
        policy: &SessionPolicy,
        res: &mut response::Parts,
        reply: &Reply<'_>,
        state: AnyState,
    ) {
        // The state came from this strategy's own `on_request`: the downcast cannot fail.
        if let Ok(state) = state.downcast::<T::State>() {
            Strategy::on_response(self, policy, res, reply, *state);
        }
    }
}

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
//! timeouts, deciding when a new token is due):
//!
//! ```
//! use http::{request, response};
//! use tower_session_persistence::policy::SessionPolicy;
//! use tower_session_persistence::strategy::{Reply, Strategy};
//!
//! /// Reads the session from `Authorization: Session <token>` and answers in `X-Session`.
//! #[derive(Debug)]
//! struct Bearer;
//!
//! impl Strategy for Bearer {
//!     fn on_request(&self, _policy: &SessionPolicy, req: &mut request::Parts) -> Option<String> {
//!         let value = req.headers.get("authorization")?.to_str().ok()?;
//!         value.strip_prefix("Session ").map(str::to_owned)
//!     }
//!
//!     fn on_response(&self, _policy: &SessionPolicy, res: &mut response::Parts, reply: &Reply<'_>) {
//!         if let (true, Some(token)) = (reply.is_due(), reply.token()) {
//!             if let Ok(value) = token.parse() {
//!                 res.headers.insert("x-session", value);
//!             }
//!         }
//!     }
//! }
//! ```

mod cache;
mod cookie_modes;
mod header;
mod reply;
mod url;

use std::fmt;

use http::{request, response};

pub use self::cookie_modes::{Insert, Passive, Prefix, Rewrite};
pub use self::header::Header;
pub use self::reply::Reply;
pub use self::url::Url;
use crate::policy::SessionPolicy;

/// Where a session travels and how the response carries it; see the [module docs](self).
pub trait Strategy: fmt::Debug + Send + Sync + 'static {
    /// Finds the session's token in the request, and changes the request into what the
    /// backend should see (for example, removes the token). Returns the token as the client
    /// sent it; the layer verifies it.
    fn on_request(&self, policy: &SessionPolicy, req: &mut request::Parts) -> Option<String>;

    /// Called after [`on_request`](Self::on_request) when the token was valid and is honoured.
    /// The default does nothing.
    fn on_valid(&self, policy: &SessionPolicy, req: &mut request::Parts, token: &str) {
        let _ = (policy, req, token);
    }

    /// Writes the session into the response, as `reply` says.
    fn on_response(&self, policy: &SessionPolicy, res: &mut response::Parts, reply: &Reply<'_>);
}

impl<T: Strategy + ?Sized> Strategy for Box<T> {
    fn on_request(&self, policy: &SessionPolicy, req: &mut request::Parts) -> Option<String> {
        (**self).on_request(policy, req)
    }

    fn on_valid(&self, policy: &SessionPolicy, req: &mut request::Parts, token: &str) {
        (**self).on_valid(policy, req, token);
    }

    fn on_response(&self, policy: &SessionPolicy, res: &mut response::Parts, reply: &Reply<'_>) {
        (**self).on_response(policy, res, reply);
    }
}

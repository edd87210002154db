use std::cell::OnceCell;
use std::fmt;
use std::time::Duration;

use http::Method;

use crate::Decision;

/// What the layer has to tell the client about its session, handed to
/// [`Strategy::on_response`](super::Strategy::on_response).
pub struct Reply<'a> {
    decision: Decision,
    due: bool,
    method: &'a Method,
    max_age: Option<Duration>,
    make_token: &'a dyn Fn() -> Option<String>,
    token: OnceCell<Option<String>>,
}

impl fmt::Debug for Reply<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token.
        f.debug_struct("Reply")
            .field("decision", &self.decision)
            .field("due", &self.due)
            .field("method", &self.method)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl<'a> Reply<'a> {
    /// A reply; `make_token` is called at most once, the first time a strategy asks for the
    /// token. The layer builds these; build your own to test a strategy.
    ///
    /// ```
    /// use http::Method;
    /// use tower_session_persistence::Decision;
    /// use tower_session_persistence::strategy::Reply;
    ///
    /// let make = || Some("token".to_owned());
    /// let reply = Reply::new(Decision::New, true, &Method::GET, None, &make);
    /// assert_eq!(reply.token(), Some("token"));
    /// ```
    pub fn new(
        decision: Decision,
        due: bool,
        method: &'a Method,
        max_age: Option<Duration>,
        make_token: &'a dyn Fn() -> Option<String>,
    ) -> Self {
        Self { decision, due, method, max_age, make_token, token: OnceCell::new() }
    }

    /// How the layer treated the request's session.
    pub fn decision(&self) -> Decision {
        self.decision
    }

    /// Whether the client should be given a token now: the session is new, re-pinned, expired
    /// or due for a refresh. Strategies that rewrite the backend's own cookie use the token
    /// whenever the backend sets that cookie, due or not.
    pub fn is_due(&self) -> bool {
        self.due
    }

    /// The request's method (for `postonly` and cacheability).
    pub fn method(&self) -> &Method {
        self.method
    }

    /// How long the client should keep a permanent cookie: what is left of the absolute
    /// timeout. `None` for session cookies.
    pub fn max_age(&self) -> Option<Duration> {
        self.max_age
    }

    /// The token naming the endpoint that served the request, or `None` if the codec cannot
    /// name it (the client should then drop its session).
    pub fn token(&self) -> Option<&str> {
        self.token.get_or_init(self.make_token).as_deref()
    }
}

//! Failed requests: turns a balancer or upstream error into the response the client gets.
//!
//! The error's `source()` chain is searched for a known cause: a session's endpoint that is
//! gone (`503`), no endpoint for a new session (`503`), a timeout (`504`). Anything else is a
//! failed upstream exchange: refused, reset, malformed (`502`). The body is a short reason;
//! it never repeats the error's text, which may name endpoints.

use std::error::Error;

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};
use tower::BoxError;
use tower_session_persistence::PinnedUnavailable;
use tower_session_persistence::balance::NoEndpoints;

use tower_session_persistence::balance::NotSent;

use crate::client_body::ClientBodyError;
use crate::proxy::{EndpointError, ServedByEndpoint, UpstreamTimeout};

/// What went wrong, as the client may learn it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The session's endpoint is gone and the rule says `onUnavailable: reject`.
    PinnedUnavailable,
    /// No endpoint can take a new session.
    NoEndpoints,
    /// The upstream did not answer in time.
    Timeout,
    /// The upstream exchange failed.
    Upstream,
    /// The client's request body was malformed or cut short.
    BadRequestBody,
    /// The client stopped sending its request body.
    RequestBodyTimeout,
}

impl Failure {
    /// Classifies an error by the first known cause in its chain.
    pub(crate) fn of(error: &BoxError) -> Self {
        let mut cause: Option<&(dyn Error + 'static)> = Some(error.as_ref());
        while let Some(err) = cause {
            // The client's fault first: its body error is wrapped in the upstream's.
            if let Some(body) = err.downcast_ref::<ClientBodyError>() {
                return match body {
                    ClientBodyError::Timeout(_) => Failure::RequestBodyTimeout,
                    ClientBodyError::Malformed(_) => Failure::BadRequestBody,
                };
            }
            if err.is::<NotSent>() {
                // Refused or a connect timeout: never a 504, the backend was not reached.
                return Failure::Upstream;
            }
            if err.is::<PinnedUnavailable>() {
                return Failure::PinnedUnavailable;
            }
            if err.is::<NoEndpoints>() {
                return Failure::NoEndpoints;
            }
            if err.is::<UpstreamTimeout>()
                || err.is::<tower::timeout::error::Elapsed>()
                || err.is::<tokio::time::error::Elapsed>()
                || err
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            {
                return Failure::Timeout;
            }
            cause = err.source();
        }
        Failure::Upstream
    }

    pub(crate) fn status(self) -> StatusCode {
        match self {
            Failure::PinnedUnavailable => PinnedUnavailable::STATUS,
            Failure::NoEndpoints => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::Upstream => StatusCode::BAD_GATEWAY,
            Failure::BadRequestBody => StatusCode::BAD_REQUEST,
            Failure::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Failure::PinnedUnavailable => "the backend of your session is unavailable",
            Failure::NoEndpoints => "no backend is available",
            Failure::Timeout => "the backend did not answer in time",
            Failure::Upstream => "the backend could not be reached",
            Failure::BadRequestBody => "the request body is malformed",
            Failure::RequestBodyTimeout => "the request body did not arrive in time",
        }
    }
}

/// A short plain-text response.
pub(crate) fn text(status: StatusCode, reason: &str) -> Response<Body> {
    let mut res = Response::new(Body::from(format!("{} {reason}\n", status.as_u16())));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    res
}

/// The response for a failed request to the rule `scope`; logs the error (which never holds a
/// token).
pub(crate) fn respond(scope: &str, error: &BoxError) -> Response<Body> {
    let failure = Failure::of(error);
    let endpoint = failed_endpoint(error);
    let endpoint_name = endpoint.as_deref().unwrap_or("-");
    match failure {
        Failure::Upstream | Failure::Timeout => {
            tracing::warn!(
                rule = scope,
                endpoint = endpoint_name,
                error = %chain(error),
                "upstream request failed"
            );
        }
        Failure::PinnedUnavailable | Failure::NoEndpoints => {
            tracing::info!(rule = scope, error = %error, "request not routed");
        }
        Failure::BadRequestBody | Failure::RequestBodyTimeout => {
            tracing::info!(rule = scope, error = %chain(error), "client request body failed");
        }
    }
    let mut res = text(failure.status(), failure.reason());
    if let Some(endpoint) = endpoint {
        res.extensions_mut().insert(ServedByEndpoint(endpoint.to_string()));
    }
    if failure == Failure::PinnedUnavailable {
        // Tells the session layer above that it rejected a session (`Decision::Rejected`).
        res.extensions_mut().insert(PinnedUnavailable::default());
    }
    res
}

/// The endpoint an error happened with, when it says.
fn failed_endpoint(error: &BoxError) -> Option<std::sync::Arc<str>> {
    let mut cause: Option<&(dyn Error + 'static)> = Some(error.as_ref());
    while let Some(err) = cause {
        if let Some(named) = err.downcast_ref::<EndpointError>() {
            return Some(named.endpoint.clone());
        }
        cause = err.source();
    }
    None
}

/// The error and its causes, `: `-separated, for logs.
fn chain(error: &BoxError) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(err) = cause {
        text.push_str(": ");
        text.push_str(&err.to_string());
        cause = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(BoxError);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(self.0.as_ref())
        }
    }

    #[test]
    fn classifies_by_the_cause_chain() {
        let wrapped: BoxError = Box::new(Wrapper(Box::new(PinnedUnavailable::default())));
        assert_eq!(Failure::of(&wrapped).status(), StatusCode::SERVICE_UNAVAILABLE);
        let wrapped: BoxError = Box::new(Wrapper(Box::new(UpstreamTimeout)));
        assert_eq!(Failure::of(&wrapped).status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            Failure::of(&NoEndpoints::default().into()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let refused: BoxError = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert_eq!(Failure::of(&refused).status(), StatusCode::BAD_GATEWAY);
    }
}

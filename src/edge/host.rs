use std::fmt;

use http::{Request, Version, header};

/// Why a request's host cannot be trusted; answer it with `400 Bad Request`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostError {
    /// More than one `Host` header.
    Duplicate,
    /// A `Host` header that is not a valid host (not visible ASCII, empty).
    Invalid,
    /// The request-target's authority (absolute-form, or HTTP/2 `:authority`) names another
    /// host than the `Host` header.
    Mismatch,
    /// An HTTP/1.1 request without any host (RFC 9112 §3.2).
    Missing,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostError::Duplicate => "more than one Host header",
            HostError::Invalid => "the Host header is not a valid host",
            HostError::Mismatch => "the request target's authority and the Host header differ",
            HostError::Missing => "an HTTP/1.1 request without a Host header",
        })
    }
}

impl std::error::Error for HostError {}

/// The host a request is for, checked the way HAProxy checks it: the request-target's
/// authority when there is one (HTTP/1.1 absolute-form, HTTP/2 `:authority`), else the one
/// `Host` header; `None` for an HTTP/1.0 request that names none.
///
/// # Errors
///
/// A request that names two hosts, or none where HTTP/1.1 requires one; see [`HostError`].
///
/// ```
/// use http::Request;
/// use tower_session_persistence::edge::{HostError, request_host};
///
/// let two = Request::builder().header("host", "a.example").header("host", "b.example").body(())?;
/// assert_eq!(request_host(&two), Err(HostError::Duplicate));
/// let absolute =
///     Request::builder().uri("http://a.example/x").header("host", "b.example").body(())?;
/// assert_eq!(request_host(&absolute), Err(HostError::Mismatch));
/// # Ok::<(), http::Error>(())
/// ```
pub fn request_host<B>(req: &Request<B>) -> Result<Option<String>, HostError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Duplicate);
    }
    let host = match host {
        Some(value) => {
            let text = value.to_str().map_err(|_| HostError::Invalid)?.trim();
            if text.is_empty() || text.bytes().any(|b| b == b'/' || b == b'@' || b == b' ') {
                return Err(HostError::Invalid);
            }
            Some(text)
        }
        None => None,
    };
    match (req.uri().authority(), host) {
        (Some(authority), Some(host)) if !authority.as_str().eq_ignore_ascii_case(host) => {
            Err(HostError::Mismatch)
        }
        (Some(authority), _) => Ok(Some(authority.as_str().to_owned())),
        (None, Some(host)) => Ok(Some(host.to_owned())),
        (None, None) if req.version() == Version::HTTP_11 => Err(HostError::Missing),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut builder = Request::builder().version(version).uri(uri);
        for host in hosts {
            builder = builder.header("host", *host);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn one_host_only() {
        const HTTP_10: Version = Version::HTTP_10;
        const HTTP_11: Version = Version::HTTP_11;
        const HTTP_2: Version = Version::HTTP_2;
        assert_eq!(request_host(&req(HTTP_11, "/", &["a.example"])), Ok(Some("a.example".into())));
        assert_eq!(request_host(&req(HTTP_11, "/", &["a", "a"])), Err(HostError::Duplicate));
        assert_eq!(request_host(&req(HTTP_11, "/", &[])), Err(HostError::Missing));
        assert_eq!(request_host(&req(HTTP_10, "/", &[])), Ok(None));
        assert_eq!(request_host(&req(HTTP_11, "/", &["a/b"])), Err(HostError::Invalid));
        let abs = |hosts: &[&str]| request_host(&req(HTTP_11, "http://A.example:80/x", hosts));
        assert_eq!(abs(&[]), Ok(Some("A.example:80".into())));
        assert_eq!(abs(&["a.example:80"]), Ok(Some("A.example:80".into())));
        assert_eq!(abs(&["b.example"]), Err(HostError::Mismatch));
        let h2 = |hosts: &[&str]| request_host(&req(HTTP_2, "https://a.example/x", hosts));
        assert_eq!(h2(&[]), Ok(Some("a.example".into())));
        assert_eq!(h2(&["evil.example"]), Err(HostError::Mismatch));
    }
}

use std::fmt;
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, VIA};
use ipnet::IpNet;

const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The peers whose forwarded headers are believed: the proxies and load balancers in front of
/// the gateway, as CIDR blocks (`10.0.0.0/8`, `2001:db8::/32`) or single addresses. Empty by
/// default: nobody is believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

/// A [`TrustedProxies`] entry that is neither a CIDR block nor an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedProxiesError {
    /// The entry's position in the list.
    pub index: usize,
    /// The entry as given.
    pub entry: String,
}

impl fmt::Display for TrustedProxiesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a CIDR block or an IP address, e.g. 10.0.0.0/8 or 192.0.2.1",
            self.entry
        )
    }
}

impl std::error::Error for TrustedProxiesError {}

impl TrustedProxies {
    /// Trusts nobody.
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads a list of CIDR blocks and addresses.
    ///
    /// # Errors
    ///
    /// The first entry that is neither, with its position.
    pub fn parse<I, S>(entries: I) -> Result<Self, TrustedProxiesError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nets = Vec::new();
        for (index, entry) in entries.into_iter().enumerate() {
            let text = entry.as_ref().trim();
            let net = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| TrustedProxiesError { index, entry: text.to_owned() })?;
            nets.push(net.trunc());
        }
        Ok(Self { nets })
    }

    /// Whether `peer` is trusted (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.nets.iter().any(|net| net.contains(&peer))
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

/// The scheme the client used to reach the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Proto::Http => "http",
            Proto::Https => "https",
        }
    }
}

/// Writes the forwarded headers a backend relies on to learn who its client is, the way
/// HAProxy's `option forwardfor` and NGINX's `real_ip` modules do with a trust list:
///
/// * from an **untrusted** peer (anyone not in [`TrustedProxies`]), every forwarded header
///   the client sent (`X-Forwarded-For`, `Forwarded`, `X-Real-IP`, `X-Forwarded-Host`,
///   `-Port`, `-Proto`) is removed, and `X-Forwarded-For` is the peer's address alone: a
///   client cannot claim another address;
/// * from a **trusted** peer, the peer is appended to `X-Forwarded-For` and `Forwarded`, and
///   the `X-Forwarded-Host`/`-Proto`/`-Port` and `X-Real-IP` it sent are kept;
/// * either way, `X-Forwarded-Proto` and `X-Forwarded-Host` are set when not kept, an RFC 7239
///   `Forwarded` element (`for`, `host`, `proto`) is added, and `Via` gets `1.1 <pseudonym>`.
#[derive(Clone, Debug)]
pub struct ForwardedHeaders {
    trusted: TrustedProxies,
    via: HeaderValue,
}

impl ForwardedHeaders {
    /// Forwarded headers with `trusted` proxies, and `Via: 1.1 gateway`.
    pub fn new(trusted: TrustedProxies) -> Self {
        Self { trusted, via: HeaderValue::from_static("1.1 gateway") }
    }

    /// The pseudonym the gateway gives itself in `Via` (RFC 9110 §7.6.3); a value that is
    /// not a valid header value is ignored (and the previous one kept).
    pub fn via_pseudonym(mut self, pseudonym: &str) -> Self {
        if let Ok(value) = HeaderValue::try_from(format!("1.1 {pseudonym}")) {
            self.via = value;
        } else {
            tracing::warn!(pseudonym, "not a valid Via pseudonym; keeping the previous");
        }
        self
    }

    /// The trusted proxies.
    pub fn trusted(&self) -> &TrustedProxies {
        &self.trusted
    }

    /// Rewrites `headers`, the request's, for a request from `peer` over `proto` naming
    /// `host` (the request's host, e.g. from [`request_host`](super::request_host)).
    pub fn apply(&self, headers: &mut HeaderMap, peer: IpAddr, proto: Proto, host: Option<&str>) {
        use std::fmt::Write as _;
        let peer = peer.to_canonical();
        let trusted = self.trusted.contains(peer);
        let address = peer.to_string();
        let mut element = String::with_capacity(64);
        element.push_str("for=");
        match peer {
            IpAddr::V4(_) => element.push_str(&address),
            IpAddr::V6(_) => {
                let _ = write!(element, "\"[{address}]\"");
            }
        }
        if let Some(host) = host {
            element.push_str(";host=");
            push_token_or_quoted(&mut element, host);
        }
        element.push_str(";proto=");
        element.push_str(proto.as_str());

        if trusted {
            append(headers, X_FORWARDED_FOR, &address);
            append(headers, FORWARDED, &element);
        } else {
            for name in [X_REAL_IP, X_FORWARDED_HOST, X_FORWARDED_PORT, X_FORWARDED_PROTO] {
                headers.remove(name);
            }
            set(headers, X_FORWARDED_FOR, &address);
            set(headers, FORWARDED, &element);
        }
        if !headers.contains_key(X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto.as_str()));
        }
        if let Some(host) = host
            && !headers.contains_key(X_FORWARDED_HOST)
            && let Ok(value) = HeaderValue::try_from(host)
        {
            headers.insert(X_FORWARDED_HOST, value);
        }
        append_value(headers, VIA, &self.via);
    }
}

/// Replaces every field of `name` with `value`.
fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::try_from(value) {
        Ok(value) => {
            headers.insert(name, value);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// Appends `value` to the list in the fields of `name`, as one field.
fn append(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let earlier: Vec<&str> =
        headers.get_all(&name).iter().filter_map(|v| v.to_str().ok()).collect();
    if earlier.is_empty() {
        set(headers, name, value);
    } else {
        let joined = format!("{}, {value}", earlier.join(", "));
        set(headers, name, &joined);
    }
}

fn append_value(headers: &mut HeaderMap, name: HeaderName, value: &HeaderValue) {
    if headers.contains_key(&name) {
        if let Ok(value) = value.to_str() {
            append(headers, name, value);
        }
    } else {
        headers.insert(name, value.clone());
    }
}

/// RFC 7239 `value = token / quoted-string`.
fn push_token_or_quoted(out: &mut String, value: &str) {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !value.is_empty() && value.chars().all(tchar) {
        out.push_str(value);
    } else {
        out.push('"');
        for c in value.chars().filter(|c| c.is_ascii() && !c.is_ascii_control()) {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spoofed() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-port", "1"),
            ("x-forwarded-proto", "https"),
        ] {
            h.append(name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn an_untrusted_peer_cannot_claim_anything() {
        let fwd = ForwardedHeaders::new(TrustedProxies::parse(["10.0.0.0/8"]).unwrap());
        let mut h = spoofed();
        fwd.apply(&mut h, "192.0.2.1".parse().unwrap(), Proto::Http, Some("shop.example:8080"));
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["forwarded"], "for=192.0.2.1;host=\"shop.example:8080\";proto=http");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example:8080");
        assert_eq!(h["via"], "1.1 gateway");
        assert!(!h.contains_key("x-real-ip") && !h.contains_key("x-forwarded-port"));
    }

    #[test]
    fn a_trusted_peer_is_appended_to() {
        let fwd = ForwardedHeaders::new(TrustedProxies::parse(["10.0.0.0/8", "::1"]).unwrap());
        let mut h = spoofed();
        fwd.apply(&mut h, "10.1.2.3".parse().unwrap(), Proto::Https, Some("shop.example"));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.1.2.3");
        assert_eq!(h["forwarded"], "for=1.2.3.4, for=10.1.2.3;host=shop.example;proto=https");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "evil.example");
        assert_eq!(h["x-real-ip"], "1.2.3.4");
        let mut h = HeaderMap::new();
        fwd.apply(&mut h, "::1".parse().unwrap(), Proto::Http, None);
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
    }

    #[test]
    fn mapped_addresses_count_as_ipv4() {
        let trusted = TrustedProxies::parse(["127.0.0.1"]).unwrap();
        assert!(trusted.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!trusted.contains("127.0.0.2".parse().unwrap()));
        let err = TrustedProxies::parse(["10.0.0.0/8", "ten"]).unwrap_err();
        assert_eq!(err.index, 1);
    }
}

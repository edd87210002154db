//! Request matching: which rule serves a request, by Gateway API `HTTPRoute` precedence.
//!
//! This module only decides; it knows nothing of services or sessions. A rule matches when one
//! of its route's hostnames matches the request's host (or the route names none) and one of its
//! path matches matches the request's path. Among matching rules, the most specific wins:
//!
//! 1. the largest number of characters in a matching non-wildcard hostname, then in a matching
//!    hostname (wildcards count their suffix);
//! 2. an `Exact` path match over a `PathPrefix` one, then the longer prefix;
//! 3. the earlier rule in the file (the file's order stands in for the API's creation
//!    timestamp and rule order).

use std::cmp::Reverse;

/// A `path` match of an `HTTPRouteMatch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PathMatch {
    /// `type: Exact`: the whole path, byte for byte.
    Exact(String),
    /// `type: PathPrefix`: whole path segments, so `/cart` matches `/cart` and `/cart/x` but
    /// not `/cartx`. Stored without a trailing `/` (the root prefix as the empty string).
    Prefix(String),
}

impl PathMatch {
    /// Reads `type` and `value` as Gateway API gives them (both optional: `PathPrefix` and `/`).
    /// An error names the field at fault (`type` or `value`) and the rule.
    pub(crate) fn parse(
        kind: Option<&str>,
        value: Option<&str>,
    ) -> Result<Self, (&'static str, String)> {
        let value = value.unwrap_or("/");
        if !value.starts_with('/') {
            return Err(("value", format!("{value:?} must start with '/'")));
        }
        if value.bytes().any(|b| b == b'?' || b == b'#' || b.is_ascii_whitespace() || b > 0x7e) {
            return Err((
                "value",
                format!("{value:?} must not contain '?', '#', whitespace or non-ASCII characters"),
            ));
        }
        match kind.unwrap_or("PathPrefix") {
            "Exact" => Ok(PathMatch::Exact(value.to_owned())),
            "PathPrefix" => Ok(PathMatch::Prefix(value.trim_end_matches('/').to_owned())),
            "RegularExpression" => {
                Err(("type", "RegularExpression is not supported: use PathPrefix or Exact".into()))
            }
            other => Err(("type", format!("{other:?} is not PathPrefix or Exact"))),
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Prefix(prefix) => path
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || prefix.is_empty()),
        }
    }

    /// Higher is more specific: `Exact` beats any prefix, a longer prefix beats a shorter one.
    fn rank(&self) -> (bool, usize) {
        match self {
            PathMatch::Exact(exact) => (true, exact.len()),
            PathMatch::Prefix(prefix) => (false, prefix.len()),
        }
    }
}

/// One of a route's `hostnames`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Hostname {
    /// `shop.example`: that host only.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any host ending so, with at least one more
    /// label (not `example.com` itself).
    Wildcard(String),
}

impl Hostname {
    /// Checks a Gateway API hostname: a lower-case DNS name, optionally prefixed by `*.`; no
    /// port, no IP address.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!(
                "{text:?} is not a hostname: lower-case DNS labels, optionally prefixed by '*.'"
            ));
        }
        if name.parse::<std::net::Ipv4Addr>().is_ok() {
            return Err(format!("{text:?} is an IP address; hostnames must be names"));
        }
        Ok(if wildcard {
            Hostname::Wildcard(format!(".{name}"))
        } else {
            Hostname::Exact(text.into())
        })
    }

    /// Whether some host matches both.
    pub(crate) fn overlaps(&self, other: &Hostname) -> bool {
        match (self, other) {
            (Hostname::Exact(a), Hostname::Exact(b)) => a == b,
            (Hostname::Exact(name), wild @ Hostname::Wildcard(_))
            | (wild @ Hostname::Wildcard(_), Hostname::Exact(name)) => wild.rank(name).is_some(),
            // `*.a.example` and `*.example`: hosts under the longer suffix match both.
            (Hostname::Wildcard(a), Hostname::Wildcard(b)) => {
                a.ends_with(b.as_str()) || b.ends_with(a.as_str())
            }
        }
    }

    /// `(characters of a matching exact hostname, characters of the matching hostname)`, or
    /// `None` when `host` does not match.
    fn rank(&self, host: &str) -> Option<(usize, usize)> {
        match self {
            Hostname::Exact(name) => (host == name).then_some((name.len(), name.len())),
            Hostname::Wildcard(suffix) => {
                (host.len() > suffix.len() && host.ends_with(suffix)).then_some((0, suffix.len()))
            }
        }
    }
}

/// The host a request names, as hostnames are compared: without port or trailing dot, in
/// lower case.
pub(crate) fn normalize_host(host: &str) -> String {
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080`. It never matches a hostname, but keep it whole.
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _port)| name)
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// Where a rule is reachable: on one port (`None`: on every port, as without `gateways:`),
/// for these hostnames (empty: any host), already intersected with the listener's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Attachment {
    pub(crate) port: Option<usize>,
    pub(crate) hostnames: Vec<Hostname>,
}

/// The port a request came in on (an index into the listeners' ports), in its extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ArrivedOn(pub(crate) usize);

struct Entry {
    /// The port the entry is for; `None` for every port.
    port: Option<usize>,
    /// The hostnames of the rule's route; empty means any host.
    hostnames: Vec<Hostname>,
    path: PathMatch,
    /// Index into `targets`, which is also the rule's place in the file.
    target: usize,
}

/// Every rule of every route, ready to be matched. `T` is what a rule leads to.
pub(crate) struct RouteTable<T> {
    entries: Vec<Entry>,
    targets: Vec<T>,
}

impl<T> RouteTable<T> {
    /// A table of rules in file order, reachable on every port: each with its route's
    /// hostnames and its path matches.
    #[cfg(test)]
    pub(crate) fn new(rules: impl IntoIterator<Item = (Vec<Hostname>, Vec<PathMatch>, T)>) -> Self {
        Self::attached(rules.into_iter().map(|(hostnames, paths, target)| {
            (vec![Attachment { port: None, hostnames }], paths, target)
        }))
    }

    /// A table of rules in file order: each with where it is attached and its path matches.
    pub(crate) fn attached(
        rules: impl IntoIterator<Item = (Vec<Attachment>, Vec<PathMatch>, T)>,
    ) -> Self {
        let mut entries = Vec::new();
        let mut targets = Vec::new();
        for (attachments, paths, target) in rules {
            for attachment in attachments {
                for path in &paths {
                    entries.push(Entry {
                        port: attachment.port,
                        hostnames: attachment.hostnames.clone(),
                        path: path.clone(),
                        target: targets.len(),
                    });
                }
            }
            targets.push(target);
        }
        Self { entries, targets }
    }

    /// The rule for a request that came in on `port` (`None`: no gateways, one port) to
    /// `host` (already [normalized](normalize_host); `None` when the request names none) and
    /// `path`, if any matches.
    pub(crate) fn find(&self, port: Option<usize>, host: Option<&str>, path: &str) -> Option<&T> {
        self.entries
            .iter()
            .filter(|entry| entry.port.is_none() || entry.port == port)
            .filter_map(|entry| {
                let host_rank = if entry.hostnames.is_empty() {
                    (0, 0)
                } else {
                    let host = host?;
                    entry.hostnames.iter().filter_map(|h| h.rank(host)).max()?
                };
                entry
                    .path
                    .matches(path)
                    .then(|| ((host_rank, entry.path.rank(), Reverse(entry.target)), entry.target))
            })
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, target)| &self.targets[target])
    }

    /// Every rule's target, in file order.
    pub(crate) fn targets(&self) -> &[T] {
        &self.targets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(v: &str) -> PathMatch {
        PathMatch::parse(Some("PathPrefix"), Some(v)).unwrap()
    }

    fn exact(v: &str) -> PathMatch {
        PathMatch::parse(Some("Exact"), Some(v)).unwrap()
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix("/cart").matches("/cart"));
        assert!(prefix("/cart").matches("/cart/x"));
        assert!(!prefix("/cart").matches("/cartx"));
        assert!(prefix("/cart/").matches("/cart"));
        assert!(prefix("/").matches("/anything"));
        assert!(prefix("/").matches("/"));
        assert!(exact("/a").matches("/a") && !exact("/a").matches("/a/"));
    }

    #[test]
    fn the_most_specific_rule_wins() {
        let any = Vec::new;
        let table = RouteTable::new([
            (any(), vec![prefix("/")], "root"),
            (any(), vec![prefix("/cart")], "cart"),
            (any(), vec![exact("/cart/checkout")], "checkout"),
            (any(), vec![prefix("/cart")], "cart-second"),
            (vec![Hostname::parse("*.example.com").unwrap()], vec![prefix("/")], "wild"),
            (vec![Hostname::parse("shop.example.com").unwrap()], vec![prefix("/")], "shop"),
        ]);
        assert_eq!(table.find(None, None, "/x"), Some(&"root"));
        assert_eq!(table.find(None, None, "/cart/1"), Some(&"cart"));
        assert_eq!(table.find(None, None, "/cart/checkout"), Some(&"checkout"));
        assert_eq!(table.find(None, Some("a.example.com"), "/cart"), Some(&"wild"));
        assert_eq!(table.find(None, Some("shop.example.com"), "/cart"), Some(&"shop"));
        assert_eq!(table.find(None, Some("example.com"), "/cart"), Some(&"cart"));
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Shop.Example:8080"), "shop.example");
        assert_eq!(normalize_host("shop.example."), "shop.example");
        assert_eq!(normalize_host("[::1]:80"), "::1");
    }

    #[test]
    fn bad_matches_and_hostnames_are_refused() {
        assert_eq!(PathMatch::parse(Some("Regex"), None).unwrap_err().0, "type");
        assert_eq!(PathMatch::parse(None, Some("cart")).unwrap_err().0, "value");
        assert!(Hostname::parse("Shop.example").is_err());
        assert!(Hostname::parse("shop.example:80").is_err());
        assert!(Hostname::parse("10.0.0.1").is_err());
        assert!(Hostname::parse("*.example.com").is_ok());
    }
}

//! Sessions in the URL: a path parameter (`/cart;jsessionid=TOKEN?x=1`) or a query parameter
//! (`/cart?session=TOKEN`). Names match literally (no percent-decoding); the first occurrence
//! wins; stripping removes every occurrence and keeps the rest of the URL byte-exact.

/// Where in the URL the session travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// `;name=value` after a path segment.
    PathParameter,
    /// `name=value` in the query string.
    Query,
}

/// Splits a request target or `Location` into (path, query without `?`, fragment with `#`).
fn split(target: &str) -> (&str, Option<&str>, &str) {
    let (rest, fragment) = match target.find('#') {
        Some(i) => target.split_at(i),
        None => (target, ""),
    };
    match rest.split_once('?') {
        Some((path, query)) => (path, Some(query), fragment),
        None => (rest, None, fragment),
    }
}

fn params<'a>(
    place: Place,
    path: &'a str,
    query: Option<&'a str>,
) -> Box<dyn Iterator<Item = &'a str> + 'a> {
    match place {
        // Every `;`-separated piece after the first of each segment is a parameter.
        Place::PathParameter => {
            Box::new(path.split('/').flat_map(|segment| segment.split(';').skip(1)))
        }
        Place::Query => Box::new(query.into_iter().flat_map(|q| q.split('&'))),
    }
}

/// The value of the first parameter `name` in `target`.
pub(crate) fn find<'a>(target: &'a str, place: Place, name: &str) -> Option<&'a str> {
    let (path, query, _) = split(target);
    params(place, path, query).find_map(|param| {
        let (key, value) = param.split_once('=')?;
        (key == name).then_some(value)
    })
}

/// `target` without any parameter `name`, or `None` if it had none.
pub(crate) fn strip(target: &str, place: Place, name: &str) -> Option<String> {
    let (path, query, fragment) = split(target);
    let ours = |param: &str| param.split_once('=').is_some_and(|(key, _)| key == name);
    match place {
        Place::PathParameter => {
            if !params(place, path, None).any(ours) {
                return None;
            }
            let segments: Vec<String> = path
                .split('/')
                .map(|segment| {
                    let mut pieces = segment.split(';');
                    let mut kept = pieces.next().unwrap_or_default().to_owned();
                    for piece in pieces.filter(|p| !ours(p)) {
                        kept.push(';');
                        kept.push_str(piece);
                    }
                    kept
                })
                .collect();
            let mut out = segments.join("/");
            if let Some(query) = query {
                out.push('?');
                out.push_str(query);
            }
            out.push_str(fragment);
            Some(out)
        }
        Place::Query => {
            let query = query?;
            if !query.split('&').any(ours) {
                return None;
            }
            let kept: Vec<&str> = query.split('&').filter(|p| !ours(p)).collect();
            let mut out = path.to_owned();
            if !kept.is_empty() {
                out.push('?');
                out.push_str(&kept.join("&"));
            }
            out.push_str(fragment);
            Some(out)
        }
    }
}

/// `target` carrying `name=token` (any earlier occurrence replaced): a path parameter on the
/// last segment, or a query parameter appended.
pub(crate) fn with_token(target: &str, place: Place, name: &str, token: &str) -> String {
    let stripped = strip(target, place, name);
    let target = stripped.as_deref().unwrap_or(target);
    let (path, query, fragment) = split(target);
    let mut out = String::with_capacity(target.len() + name.len() + token.len() + 2);
    match place {
        Place::PathParameter => {
            out.push_str(path);
            out.push(';');
            out.push_str(name);
            out.push('=');
            out.push_str(token);
            if let Some(query) = query {
                out.push('?');
                out.push_str(query);
            }
        }
        Place::Query => {
            out.push_str(path);
            out.push('?');
            if let Some(query) = query.filter(|q| !q.is_empty()) {
                out.push_str(query);
                out.push('&');
            }
            out.push_str(name);
            out.push('=');
            out.push_str(token);
        }
    }
    out.push_str(fragment);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Place::{PathParameter as P, Query as Q};

    #[test]
    fn finds_the_first_parameter() {
        assert_eq!(find("/cart;jsessionid=T?x=1", P, "jsessionid"), Some("T"));
        assert_eq!(find("/a;x=1;jsessionid=T/b;jsessionid=U", P, "jsessionid"), Some("T"));
        assert_eq!(find("/cart?x=1&session=T&session=U", Q, "session"), Some("T"));
        assert_eq!(find("/cart?session", Q, "session"), None);
        assert_eq!(find("/cart?%73ession=T", Q, "session"), None, "names match literally");
        assert_eq!(find("/cart#session=T", Q, "session"), None);
        assert_eq!(find("/cart?x=;jsessionid=T", P, "jsessionid"), None, "not in the query");
    }

    #[test]
    fn strips_and_keeps_the_rest_byte_exact() {
        assert_eq!(strip("/cart;jsessionid=T?x=1", P, "jsessionid").unwrap(), "/cart?x=1");
        assert_eq!(strip("/a;v=2;jsessionid=T/b", P, "jsessionid").unwrap(), "/a;v=2/b");
        assert_eq!(
            strip("/c?a=%20&session=T&b=2&session=U#f", Q, "session").unwrap(),
            "/c?a=%20&b=2#f"
        );
        assert_eq!(strip("/c?session=T", Q, "session").unwrap(), "/c");
        assert_eq!(strip("/c?a=1", Q, "session"), None);
        assert_eq!(strip("/c;x=1", P, "jsessionid"), None);
    }

    #[test]
    fn adds_the_token_to_a_location() {
        assert_eq!(with_token("/next", P, "jsessionid", "T"), "/next;jsessionid=T");
        assert_eq!(
            with_token("https://h/next?a=1#top", P, "jsessionid", "T"),
            "https://h/next;jsessionid=T?a=1#top"
        );
        assert_eq!(with_token("/next?a=1", Q, "s", "T"), "/next?a=1&s=T");
        assert_eq!(with_token("/next?s=old&a=1", Q, "s", "T"), "/next?a=1&s=T");
        assert_eq!(with_token("/next", Q, "s", "T"), "/next?s=T");
    }
}

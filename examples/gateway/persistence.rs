//! A rule's session persistence: the Gateway API `sessionPersistence` stanza, read by the
//! library, with the gateway's `x-session-persistence` extension block on top; and the layer
//! that enforces it.
//!
//! The stanza is interpreted by `SessionPersistenceConfig::to_policy` (both Gateway API shapes,
//! the default name, every GEP rule). Its result is copied field by field into a fresh
//! `PolicyBuilder`, the extension's cookie settings are applied, and the policy is built again,
//! which checks them too. The extension's other settings pick the strategy and tune the layer.

use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;
use tower_session_persistence::policy::{
    Carrier, SameSite, SessionPersistenceConfig, SessionPolicy,
};
use tower_session_persistence::strategy::{Insert, Passive, Prefix, Rewrite, Url};
use tower_session_persistence::token::{Dates, PlainCodec, SealedCodec, SignedCodec};
use tower_session_persistence::{OnUnavailable, SessionPersistenceLayer};

use crate::config::{ConfigError, ConfigWarning, Keys, duration};
use crate::store::Learning;

/// The `x-session-persistence` extension block; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Extension {
    on_unavailable: Option<OnUnavailableName>,
    strategy: Option<StrategyName>,
    codec: Option<CodecName>,
    url: Option<UrlConfig>,
    indirect: Option<bool>,
    preserve: Option<bool>,
    nocache: Option<bool>,
    postonly: Option<bool>,
    secure: Option<bool>,
    http_only: Option<bool>,
    same_site: Option<SameSiteName>,
    domain: Option<OneOrMany>,
    partitioned: Option<bool>,
    attributes: Option<Vec<String>>,
    max_clock_skew: Option<String>,
    refresh_interval: Option<String>,
    /// Our own idle timeout: Gateway API v1.6 and main dropped the stanza's `idleTimeout`
    /// (it "needs server state"); ours needs none, the token carries the time of last use.
    idle_timeout: Option<String>,
    /// Rules naming the same scope share their sessions (and may share a cookie name).
    scope: Option<String>,
    /// `strategy: learn`: the application's cookie or header (see `store.rs`).
    learn: Option<crate::store::LearnConfig>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OnUnavailableName {
    Rebalance,
    Reject,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StrategyName {
    Insert,
    Rewrite,
    Prefix,
    Passive,
    Url,
    Learn,
}

/// How tokens are written: `signed` (default), `sealed`, or `plain` (HAProxy's values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CodecName {
    #[default]
    Signed,
    Sealed,
    Plain,
}

/// `url`: where the session travels with `strategy: url`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UrlConfig {
    /// `path` (`;name=TOKEN`, the default) or `query` (`name=TOKEN`).
    parameter: Option<UrlParameter>,
    /// Remove the parameter before the backend (default true).
    strip: Option<bool>,
    /// Offer a valid token to the backend in this request header.
    expose_header: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum UrlParameter {
    Path,
    Query,
}

/// `domain: example.com` or `domain: [a.example, b.example]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn values(&self) -> &[String] {
        match self {
            OneOrMany::One(one) => std::slice::from_ref(one),
            OneOrMany::Many(many) => many,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize)]
enum SameSiteName {
    Strict,
    Lax,
    None,
    Omit,
}

/// How the session travels, when the extension chooses; otherwise the library's default
/// (`insert` for cookies, the header for headers).
#[derive(Clone, Debug)]
enum StrategyPlan {
    Insert(Insert),
    Rewrite(Rewrite),
    Prefix,
    Passive,
    /// `in_path`: a path parameter (which routing must not see), else a query parameter.
    Url {
        url: Url,
        in_path: bool,
    },
}

/// A rule's checked session persistence.
#[derive(Debug)]
pub(crate) struct Persistence {
    policy: SessionPolicy,
    strategy: Option<StrategyPlan>,
    codec: CodecName,
    max_clock_skew: Option<Duration>,
    refresh_interval: Option<Duration>,
    /// `x-session-persistence.scope`, as given.
    shared_scope: Option<String>,
    /// The scope tokens are bound to, once [`resolve_scope`](Self::resolve_scope) ran.
    session_scope: Option<String>,
    /// `strategy: learn`: the rule persists on the application's own session instead.
    learn: Option<Learning>,
    /// What the file does that works but should change (logged at load, shown by `--check`).
    warnings: Vec<ConfigWarning>,
}

impl Persistence {
    /// Binds the persistence to its session scope: the rule's own (`rule_scope`), or the
    /// scope it shares on purpose (`<namespace>/x-scope/<name>`).
    pub(crate) fn resolve_scope(&mut self, namespace: &str, rule_scope: &str) {
        self.session_scope = Some(match &self.shared_scope {
            Some(shared) => format!("{namespace}/x-scope/{shared}"),
            None => rule_scope.to_owned(),
        });
    }

    /// The scope its tokens are bound to.
    pub(crate) fn session_scope(&self) -> &str {
        self.session_scope.as_deref().unwrap_or_default()
    }

    /// The learned-session settings, with `strategy: learn`.
    pub(crate) fn learning(&self) -> Option<&Learning> {
        self.learn.as_ref()
    }

    /// What the rule's stanza does that works but should change.
    pub(crate) fn warnings(&self) -> &[ConfigWarning] {
        &self.warnings
    }

    /// The policy: name, carrier, timeouts, cookie attributes.
    pub(crate) fn policy(&self) -> &SessionPolicy {
        &self.policy
    }

    /// The name of the path parameter the session travels in (`strategy: url`, `parameter:
    /// path`), which routing must not see.
    pub(crate) fn path_parameter(&self) -> Option<&str> {
        match &self.strategy {
            Some(StrategyPlan::Url { in_path: true, .. }) => Some(self.policy.name()),
            _ => None,
        }
    }

    /// The layer enforcing this persistence for the rule `scope`, its tokens made with `keys`.
    pub(crate) fn layer<K>(&self, keys: &Keys, scope: &str) -> SessionPersistenceLayer<K> {
        // The keys passed `SignedCodec::new` when the file was read; the sealed codec takes the
        // same keys.
        let mut layer = match self.codec {
            CodecName::Signed => SessionPersistenceLayer::keyed(
                self.policy.clone(),
                SignedCodec::new(&keys.0).expect("keys checked when the file was read"),
            ),
            CodecName::Sealed => SessionPersistenceLayer::keyed(
                self.policy.clone(),
                SealedCodec::new(&keys.0).expect("keys checked when the file was read"),
            ),
            CodecName::Plain => {
                SessionPersistenceLayer::keyed(self.policy.clone(), PlainCodec::new(self.dates()))
            }
        }
        .scope(scope);
        layer = match self.strategy.clone() {
            None => layer,
            Some(StrategyPlan::Insert(insert)) => layer.strategy(insert),
            Some(StrategyPlan::Rewrite(rewrite)) => layer.strategy(rewrite),
            Some(StrategyPlan::Prefix) => layer.strategy(Prefix),
            Some(StrategyPlan::Passive) => layer.strategy(Passive),
            Some(StrategyPlan::Url { url, .. }) => layer.strategy(url),
        };
        // Plain values with dates behave as HAProxy's maxidle/maxlife: refreshed whenever the
        // last date has passed, and dates up to 24 h ahead tolerated.
        let haproxy_dates = self.codec == CodecName::Plain && self.dates() != Dates::None;
        match self.max_clock_skew {
            Some(skew) => layer = layer.max_clock_skew(skew),
            None if haproxy_dates => layer = layer.max_clock_skew(Duration::from_secs(86_400)),
            None => {}
        }
        match self.refresh_interval {
            Some(interval) => layer = layer.refresh_interval(interval),
            None if haproxy_dates => layer = layer.refresh_interval(Duration::ZERO),
            None => {}
        }
        layer
    }

    /// The HAProxy dates a plain token carries: `maxlife` (absoluteTimeout) needs both,
    /// `maxidle` (idleTimeout) the last.
    fn dates(&self) -> Dates {
        match (self.policy.absolute_timeout(), self.policy.idle_timeout()) {
            (Some(_), _) => Dates::LastAndFirst,
            (None, Some(_)) => Dates::Last,
            (None, None) => Dates::None,
        }
    }
}

/// `x-session-persistence.scope`, checked.
fn shared_scope(
    ext: &Extension,
    field: &dyn Fn(&str) -> String,
) -> Result<Option<String>, ConfigError> {
    match &ext.scope {
        Some(scope) if !valid_scope(scope) => Err(ConfigError::new(
            field("scope"),
            "must be 1 to 63 lower-case letters, digits or '-'",
        )),
        scope => Ok(scope.clone()),
    }
}

fn valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope.len() <= 63
        && scope.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// What the rule does when a session's endpoint is gone (`onUnavailable`, default rebalance).
pub(crate) fn on_unavailable(extension: Option<&Extension>) -> OnUnavailable {
    match extension.and_then(|e| e.on_unavailable) {
        Some(OnUnavailableName::Reject) => OnUnavailable::Reject,
        Some(OnUnavailableName::Rebalance) | None => OnUnavailable::Rebalance,
    }
}

/// Checks a rule's stanza and extension (`at` is the rule's YAML path). `default_name` names
/// the cookie or header when the stanza does not.
pub(crate) fn check(
    stanza: &SessionPersistenceConfig,
    extension: Option<&Extension>,
    default_name: &str,
    at: &str,
) -> Result<Persistence, ConfigError> {
    let stanza_at = format!("{at}.sessionPersistence");
    let mut standard = stanza.to_policy(default_name).map_err(|e| e.within(&stanza_at))?;
    let mut warnings = Vec::new();
    // The main shape (cookie / header) has no idleTimeout: read it, but say where it belongs.
    if stanza.idle_timeout.is_some() && (stanza.cookie.is_some() || stanza.header.is_some()) {
        warnings.push(ConfigWarning::new(
            format!("{stanza_at}.idleTimeout"),
            "is not a Gateway API field any more (removed in v1.6, gateway-api #4771): read \
             as before, but move it to x-session-persistence.idleTimeout",
        ));
    }
    let ext_at = format!("{at}.x-session-persistence");
    let field = |name: &str| format!("{ext_at}.{name}");
    if let Some(text) = extension.and_then(|e| e.idle_timeout.as_deref()) {
        if stanza.idle_timeout.is_some() {
            return Err(ConfigError::new(
                field("idleTimeout"),
                format!("is also set as {stanza_at}.idleTimeout: set it in one place (here)"),
            ));
        }
        if let Some(idle) = duration(Some(text), &field("idleTimeout"))? {
            standard = standard
                .to_builder()
                .idle_timeout(idle)
                .build()
                .map_err(|err| ConfigError::new(field("idleTimeout"), err.rule()))?;
        }
    }
    let Some(ext) = extension else {
        return Ok(Persistence {
            policy: standard,
            strategy: None,
            codec: CodecName::Signed,
            max_clock_skew: None,
            refresh_interval: None,
            shared_scope: None,
            session_scope: None,
            learn: None,
            warnings,
        });
    };

    if ext.strategy == Some(StrategyName::Learn) || ext.learn.is_some() {
        if ext.strategy != Some(StrategyName::Learn) {
            return Err(ConfigError::new(field("learn"), "applies to strategy learn only"));
        }
        let ignored = [
            ("codec", ext.codec.is_some()),
            ("url", ext.url.is_some()),
            ("indirect", ext.indirect.is_some()),
            ("preserve", ext.preserve.is_some()),
            ("nocache", ext.nocache.is_some()),
            ("postonly", ext.postonly.is_some()),
            ("secure", ext.secure.is_some()),
            ("httpOnly", ext.http_only.is_some()),
            ("sameSite", ext.same_site.is_some()),
            ("domain", ext.domain.is_some()),
            ("partitioned", ext.partitioned.is_some()),
            ("attributes", ext.attributes.is_some()),
            ("maxClockSkew", ext.max_clock_skew.is_some()),
            ("refreshInterval", ext.refresh_interval.is_some()),
        ];
        let ignored = ignored.iter().find(|(_, set)| *set).map(|(name, _)| *name);
        let learn =
            crate::store::check_learn(stanza, &standard, ext.learn.as_ref(), ignored, &ext_at)?;
        return Ok(Persistence {
            policy: standard,
            strategy: None,
            codec: CodecName::Signed,
            max_clock_skew: None,
            refresh_interval: None,
            shared_scope: shared_scope(ext, &field)?,
            session_scope: None,
            learn: Some(learn),
            warnings,
        });
    }

    let cookie_only = [
        ("strategy", ext.strategy.is_some()),
        ("indirect", ext.indirect.is_some()),
        ("preserve", ext.preserve.is_some()),
        ("nocache", ext.nocache.is_some()),
        ("postonly", ext.postonly.is_some()),
        ("secure", ext.secure.is_some()),
        ("httpOnly", ext.http_only.is_some()),
        ("sameSite", ext.same_site.is_some()),
        ("domain", ext.domain.is_some()),
        ("partitioned", ext.partitioned.is_some()),
        ("attributes", ext.attributes.is_some()),
    ];
    if let Carrier::Header(_) = standard.carrier()
        && let Some((name, _)) = cookie_only.iter().find(|(_, set)| *set)
    {
        return Err(ConfigError::new(
            field(name),
            "applies to cookie sessions only (this rule's sessionPersistence is a header)",
        ));
    }

    let strategy = strategy(ext, &field)?;
    let mut builder = standard.to_builder();
    // The policy holds `indirect` for insert and rewrite alike (the others refuse it above).
    if let Some(on) = ext.indirect {
        builder = builder.indirect(on);
    }
    if let Some(on) = ext.secure {
        builder = builder.secure(on);
    }
    if let Some(on) = ext.http_only {
        builder = builder.http_only(on);
    }
    if let Some(same_site) = ext.same_site {
        builder = builder.same_site(match same_site {
            SameSiteName::Strict => Some(SameSite::Strict),
            SameSiteName::Lax => Some(SameSite::Lax),
            SameSiteName::None => Some(SameSite::None),
            SameSiteName::Omit => None,
        });
    }
    for domain in ext.domain.iter().flat_map(OneOrMany::values) {
        builder = builder.domain(domain.clone());
    }
    if let Some(on) = ext.partitioned {
        builder = builder.partitioned(on);
    }
    for (i, attribute) in ext.attributes.iter().flatten().enumerate() {
        // Checked one by one with the library's own rule, to name the one at fault.
        SessionPolicy::cookie("check")
            .attribute(attribute.clone())
            .build()
            .map_err(|err| ConfigError::new(field(&format!("attributes[{i}]")), err.rule()))?;
        builder = builder.attribute(attribute.clone());
    }
    // Settings from the extension block are named there; the stanza's own fields in it.
    let policy = builder.build().map_err(|err| match err.field() {
        "cookie.domain" => ConfigError::new(field("domain"), err.rule()),
        "cookie.secure" if ext.secure.is_some() => ConfigError::new(field("secure"), err.rule()),
        "cookie.sameSite" if ext.same_site.is_some() => {
            ConfigError::new(field("sameSite"), err.rule())
        }
        "cookie.secure" | "cookie.sameSite" => ConfigError::new(field("secure"), err.rule()),
        _ => err.within(&stanza_at).into(),
    })?;
    Ok(Persistence {
        policy,
        strategy,
        codec: ext.codec.unwrap_or_default(),
        max_clock_skew: duration(ext.max_clock_skew.as_deref(), &field("maxClockSkew"))?,
        refresh_interval: duration(ext.refresh_interval.as_deref(), &field("refreshInterval"))?,
        shared_scope: shared_scope(ext, &field)?,
        session_scope: None,
        learn: None,
        warnings,
    })
}

/// The strategy the extension asks for, if it asks; options that do not apply to it are
/// errors.
fn strategy(
    ext: &Extension,
    field: &dyn Fn(&str) -> String,
) -> Result<Option<StrategyPlan>, ConfigError> {
    let name = match ext.strategy {
        Some(name) => name,
        // Insert options alone choose insert, with the library's defaults for the rest.
        None if ext.preserve.is_some() || ext.nocache.is_some() || ext.postonly.is_some() => {
            StrategyName::Insert
        }
        None => return Ok(None),
    };
    let only_insert = [
        ("preserve", ext.preserve.is_some()),
        ("nocache", ext.nocache.is_some()),
        ("postonly", ext.postonly.is_some()),
    ];
    if name != StrategyName::Insert
        && let Some((option, _)) = only_insert.iter().find(|(_, set)| *set)
    {
        return Err(ConfigError::new(field(option), "applies to strategy insert only"));
    }
    if ext.url.is_some() && name != StrategyName::Url {
        return Err(ConfigError::new(field("url"), "applies to strategy url only"));
    }
    if matches!(name, StrategyName::Prefix | StrategyName::Passive | StrategyName::Url)
        && ext.indirect.is_some()
    {
        return Err(ConfigError::new(
            field("indirect"),
            "applies to strategies insert and rewrite only",
        ));
    }
    Ok(Some(match name {
        StrategyName::Insert => StrategyPlan::Insert(
            Insert::new()
                .preserve(ext.preserve.unwrap_or(false))
                .nocache(ext.nocache.unwrap_or(false))
                .postonly(ext.postonly.unwrap_or(false)),
        ),
        StrategyName::Rewrite => StrategyPlan::Rewrite(Rewrite::new()),
        StrategyName::Prefix => StrategyPlan::Prefix,
        StrategyName::Passive => StrategyPlan::Passive,
        StrategyName::Learn => unreachable!("strategy learn is checked by crate::store"),
        StrategyName::Url => {
            let config = ext.url.clone().unwrap_or(UrlConfig {
                parameter: None,
                strip: None,
                expose_header: None,
            });
            let in_path = config.parameter.unwrap_or(UrlParameter::Path) == UrlParameter::Path;
            let mut url = if in_path { Url::path_parameter() } else { Url::query() };
            url = url.strip(config.strip.unwrap_or(true));
            if let Some(header) = &config.expose_header {
                let name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                    ConfigError::new(field("url.exposeHeader"), "must be a valid header name")
                })?;
                url = url.expose_header(name);
            }
            StrategyPlan::Url { url, in_path }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stanza(json: &str) -> SessionPersistenceConfig {
        serde_json::from_str(json).unwrap()
    }

    fn extension(json: &str) -> Extension {
        serde_json::from_str(json).unwrap()
    }

    fn error(stanza_json: &str, ext_json: &str) -> String {
        check(&stanza(stanza_json), Some(&extension(ext_json)), "d", "r").unwrap_err().to_string()
    }

    #[test]
    fn the_extension_applies_to_the_policy() {
        let ext = extension(
            r#"{"secure": false, "sameSite": "Lax", "indirect": false, "domain": "example.com",
                "attributes": ["Priority=High"], "partitioned": true}"#,
        );
        let p = check(&stanza(r#"{"cookie": {"path": "/app"}}"#), Some(&ext), "gen", "r").unwrap();
        assert_eq!(p.policy.name(), "gen");
        assert_eq!(p.policy.indirect(), Some(false));
        let Carrier::Cookie(c) = p.policy.carrier() else { panic!("cookie expected") };
        assert!(!c.secure && c.http_only && c.partitioned);
        assert_eq!(c.same_site, Some(SameSite::Lax));
        assert_eq!(c.path, "/app");
        assert_eq!(c.domains, ["example.com"]);
        assert_eq!(c.extra, ["Priority=High"]);
        assert!(p.strategy.is_none());
        assert_eq!(
            on_unavailable(Some(&extension(r#"{"onUnavailable": "reject"}"#))),
            OnUnavailable::Reject
        );
    }

    #[test]
    fn options_must_fit_the_carrier_and_the_strategy() {
        let e = error(r#"{"type": "Header", "header": {"name": "x-s"}}"#, r#"{"secure": false}"#);
        assert!(e.starts_with("r.x-session-persistence.secure: "), "{e}");
        let e = error(r#"{"cookie": {}}"#, r#"{"strategy": "rewrite", "nocache": true}"#);
        assert!(e.starts_with("r.x-session-persistence.nocache: "), "{e}");
        let e = error(r#"{"cookie": {}}"#, r#"{"strategy": "prefix", "indirect": true}"#);
        assert!(e.starts_with("r.x-session-persistence.indirect: "), "{e}");
        let e = error(r#"{"cookie": {}}"#, r#"{"attributes": ["ok", "bad;one"]}"#);
        assert!(e.starts_with("r.x-session-persistence.attributes[1]: "), "{e}");
        let e = error(r#"{"cookie": {}}"#, r#"{"domain": "a b"}"#);
        assert!(e.starts_with("r.x-session-persistence.domain: "), "{e}");
        let e = error(r#"{"cookie": {}}"#, r#"{"refreshInterval": "soon"}"#);
        assert!(e.starts_with("r.x-session-persistence.refreshInterval: "), "{e}");
        let p =
            check(&stanza(r#"{"cookie": {}}"#), Some(&extension(r#"{"nocache": true}"#)), "d", "r");
        assert!(matches!(p.unwrap().strategy, Some(StrategyPlan::Insert(_))));
    }

    #[test]
    fn the_extension_holds_the_idle_timeout() {
        let ext = extension(r#"{"idleTimeout": "10m"}"#);
        let p = check(&stanza(r#"{"cookie": {}}"#), Some(&ext), "d", "r").unwrap();
        assert_eq!(p.policy.idle_timeout(), Some(Duration::from_secs(600)));
        assert!(p.warnings.is_empty());
        // And bounds learned sessions too.
        let ext = extension(r#"{"idleTimeout": "10m", "strategy": "learn"}"#);
        let p = check(&stanza(r#"{"cookie": {"name": "JSESSIONID"}}"#), Some(&ext), "d", "r");
        assert_eq!(p.unwrap().policy.idle_timeout(), Some(Duration::from_secs(600)));
        let e = error(r#"{"cookie": {}}"#, r#"{"idleTimeout": "0s"}"#);
        assert!(e.starts_with("r.x-session-persistence.idleTimeout: "), "{e}");
        let e = error(r#"{"cookie": {}}"#, r#"{"idleTimeout": "soon"}"#);
        assert!(e.starts_with("r.x-session-persistence.idleTimeout: "), "{e}");
        let e = error(r#"{"idleTimeout": "5m"}"#, r#"{"idleTimeout": "10m"}"#);
        assert!(e.starts_with("r.x-session-persistence.idleTimeout: "), "{e}");
        assert!(e.contains("r.sessionPersistence.idleTimeout"), "{e}");
    }

    #[test]
    fn the_legacy_idle_timeout_in_the_main_shape_is_read_with_a_warning() {
        for json in [
            r#"{"cookie": {"name": "s"}, "idleTimeout": "5m"}"#,
            r#"{"type": "Header", "header": {"name": "x-s"}, "idleTimeout": "5m"}"#,
        ] {
            let p = check(&stanza(json), None, "d", "r").unwrap();
            assert_eq!(p.policy.idle_timeout(), Some(Duration::from_secs(300)), "{json}");
            let [warning] = p.warnings() else { panic!("one warning expected: {json}") };
            assert_eq!(warning.path, "r.sessionPersistence.idleTimeout");
            assert!(warning.message.contains("x-session-persistence.idleTimeout"));
        }
        // The released v1.1 to v1.5 shape had the field: no warning there.
        for json in [r#"{"sessionName": "s", "idleTimeout": "5m"}"#, r#"{"idleTimeout": "5m"}"#] {
            let p = check(&stanza(json), None, "d", "r").unwrap();
            assert_eq!(p.policy.idle_timeout(), Some(Duration::from_secs(300)), "{json}");
            assert!(p.warnings().is_empty(), "{json}");
        }
    }

    #[test]
    fn the_cookie_path_defaults_to_slash_and_may_be_set() {
        let path = |json: &str| {
            let p = check(&stanza(json), None, "d", "r").unwrap();
            let Carrier::Cookie(c) = p.policy.carrier() else { panic!("cookie expected") };
            c.path.clone()
        };
        assert_eq!(path(r#"{"cookie": {}}"#), "/");
        assert_eq!(path(r#"{"sessionName": "s"}"#), "/");
        assert_eq!(path(r#"{"cookie": {"path": "/shop"}}"#), "/shop");
        let e = check(&stanza(r#"{"cookie": {"path": "shop"}}"#), None, "d", "r").unwrap_err();
        assert!(e.to_string().starts_with("r.sessionPersistence.cookie.path: "), "{e}");
    }
}

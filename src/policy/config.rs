//! The Gateway API `sessionPersistence` stanza, in both shapes.

use serde::Deserialize;

use super::{Lifetime, PolicyError, SessionPolicy, parse_duration};

/// `sessionPersistence.type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum PersistenceType {
    /// Cookie-based (the default).
    #[default]
    Cookie,
    /// Header-based.
    Header,
}

/// `sessionPersistence.cookie` (the shape on Gateway API main).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieConfig {
    /// `name`.
    pub name: Option<String>,
    /// `path` (default `/`).
    pub path: Option<String>,
    /// `lifetimeType` (default `Session`).
    pub lifetime_type: Option<Lifetime>,
}

/// `sessionPersistence.cookieConfig` (the released v1.1 to v1.6 shape).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LegacyCookieConfig {
    /// `lifetimeType` (default `Session`).
    pub lifetime_type: Option<Lifetime>,
}

/// `sessionPersistence.header` (the shape on Gateway API main).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderConfig {
    /// `name` (required).
    pub name: Option<String>,
}

/// The Gateway API `sessionPersistence` stanza of an `HTTPRoute` or `GRPCRoute` rule.
///
/// Reads both the released v1.6 shape (`sessionName`, `cookieConfig`, and v1.1–v1.5's
/// `idleTimeout`) and the shape on main (`cookie {name, path, lifetimeType}`,
/// `header {name}`); mixing the two in one stanza is an error. Durations follow GEP-2257.
///
/// ```
/// use tower_session_persistence::policy::SessionPersistenceConfig;
///
/// let main_shape: SessionPersistenceConfig = serde_json::from_str(
///     r#"{"cookie": {"name": "shop", "lifetimeType": "Permanent"}, "absoluteTimeout": "1h"}"#,
/// )?;
/// let released: SessionPersistenceConfig = serde_json::from_str(
///     r#"{"sessionName": "shop", "absoluteTimeout": "1h", "cookieConfig": {"lifetimeType": "Permanent"}}"#,
/// )?;
/// assert_eq!(main_shape.to_policy("unused")?, released.to_policy("unused")?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionPersistenceConfig {
    /// `sessionName` (v1.6 shape).
    pub session_name: Option<String>,
    /// `absoluteTimeout`.
    pub absolute_timeout: Option<String>,
    /// `idleTimeout` (v1.1 to v1.5).
    pub idle_timeout: Option<String>,
    /// `type` (default `Cookie`).
    #[serde(rename = "type")]
    pub kind: Option<PersistenceType>,
    /// `cookieConfig` (v1.6 shape).
    pub cookie_config: Option<LegacyCookieConfig>,
    /// `cookie` (main shape).
    pub cookie: Option<CookieConfig>,
    /// `header` (main shape).
    pub header: Option<HeaderConfig>,
}

impl SessionPersistenceConfig {
    /// Checks the stanza and turns it into a policy. `default_name` names the cookie or header
    /// when the stanza does not; it should be unique per rule, as GEP-1619 asks.
    ///
    /// # Errors
    ///
    /// A [`PolicyError`] naming the field (relative to the stanza) and the rule it breaks.
    pub fn to_policy(&self, default_name: &str) -> Result<SessionPolicy, PolicyError> {
        let kind = self.kind.unwrap_or_default();
        let legacy = self.session_name.is_some() || self.cookie_config.is_some();
        if legacy && (self.cookie.is_some() || self.header.is_some()) {
            return Err(PolicyError::new(
                if self.session_name.is_some() { "sessionName" } else { "cookieConfig" },
                "cannot be mixed with cookie or header (use one Gateway API shape)",
            ));
        }
        let main_shape = self.cookie.is_some() || self.header.is_some();
        match kind {
            PersistenceType::Cookie => {
                if self.header.is_some() {
                    return Err(PolicyError::new("header", "must be absent unless type is Header"));
                }
            }
            PersistenceType::Header => {
                if self.cookie.is_some() {
                    return Err(PolicyError::new("cookie", "must be absent unless type is Cookie"));
                }
                if self.cookie_config.is_some() {
                    return Err(PolicyError::new(
                        "cookieConfig",
                        "can only be set with type Cookie",
                    ));
                }
                if main_shape && self.header.as_ref().and_then(|h| h.name.as_ref()).is_none() {
                    return Err(PolicyError::new("header.name", "is required"));
                }
            }
        }
        if let Some(name) = &self.session_name
            && name.len() > 128
        {
            return Err(PolicyError::new("sessionName", "must be at most 128 characters long"));
        }

        let explicit_name = match kind {
            PersistenceType::Cookie => self.cookie.as_ref().and_then(|c| c.name.clone()),
            PersistenceType::Header => self.header.as_ref().and_then(|h| h.name.clone()),
        };
        let from_session_name = explicit_name.is_none() && self.session_name.is_some();
        let name = explicit_name
            .or_else(|| self.session_name.clone())
            .unwrap_or_else(|| default_name.to_owned());

        let mut builder = match kind {
            PersistenceType::Cookie => SessionPolicy::cookie(name),
            PersistenceType::Header => SessionPolicy::header(name),
        };
        if let Some(timeout) = duration_field("absoluteTimeout", &self.absolute_timeout)? {
            builder = builder.absolute_timeout(timeout);
        }
        if let Some(timeout) = duration_field("idleTimeout", &self.idle_timeout)? {
            builder = builder.idle_timeout(timeout);
        }
        let lifetime = self
            .cookie
            .as_ref()
            .and_then(|c| c.lifetime_type)
            .or_else(|| self.cookie_config.as_ref().and_then(|c| c.lifetime_type));
        if let Some(lifetime) = lifetime {
            builder = builder.lifetime(lifetime);
        }
        if let Some(path) = self.cookie.as_ref().and_then(|c| c.path.clone()) {
            builder = builder.path(path);
        }
        builder.build().map_err(|err| {
            if from_session_name && err.field().ends_with(".name") {
                PolicyError::new("sessionName", err.rule())
            } else if kind == PersistenceType::Cookie && err.field() == "absoluteTimeout" && legacy
            {
                PolicyError::new("absoluteTimeout", err.rule())
            } else {
                err
            }
        })
    }
}

fn duration_field(
    field: &'static str,
    value: &Option<String>,
) -> Result<Option<std::time::Duration>, PolicyError> {
    value
        .as_deref()
        .map(|text| {
            parse_duration(text).ok_or_else(|| {
                PolicyError::new(
                    field,
                    format!("{text:?} is not a Gateway API duration (GEP-2257), e.g. 1h30m or 10s"),
                )
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::Carrier;

    fn parse(json: &str) -> SessionPersistenceConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn reads_both_shapes() {
        let p = parse(r#"{"sessionName":"A","type":"Cookie","absoluteTimeout":"10s","cookieConfig":{"lifetimeType":"Permanent"}}"#)
            .to_policy("d")
            .unwrap();
        assert_eq!(p.name(), "A");
        assert_eq!(p.absolute_timeout(), Some(Duration::from_secs(10)));
        let p = parse(r#"{"type":"Header","header":{"name":"x-session"},"absoluteTimeout":"30m"}"#)
            .to_policy("d")
            .unwrap();
        assert!(matches!(p.carrier(), Carrier::Header(h) if h == "x-session"));
        let p = parse(r#"{"cookie":{"path":"/app"}}"#).to_policy("gen-1").unwrap();
        assert_eq!(p.name(), "gen-1");
        let Carrier::Cookie(c) = p.carrier() else { panic!() };
        assert_eq!(c.path, "/app");
        let p = parse(r#"{"idleTimeout":"5m"}"#).to_policy("d").unwrap();
        assert_eq!(p.idle_timeout(), Some(Duration::from_secs(300)));
    }

    #[test]
    fn applies_the_union_rules() {
        let cases = [
            (r#"{"type":"Header","cookie":{}}"#, "cookie"),
            (r#"{"type":"Cookie","header":{"name":"x"}}"#, "header"),
            (r#"{"type":"Header","cookieConfig":{}}"#, "cookieConfig"),
            (r#"{"type":"Header","header":{}}"#, "header.name"),
            (r#"{"sessionName":"a","cookie":{}}"#, "sessionName"),
            (r#"{"cookie":{"lifetimeType":"Permanent"}}"#, "absoluteTimeout"),
            (r#"{"cookieConfig":{"lifetimeType":"Permanent"}}"#, "absoluteTimeout"),
            (r#"{"absoluteTimeout":"1d"}"#, "absoluteTimeout"),
            (r#"{"sessionName":"bad name"}"#, "sessionName"),
            (r#"{"cookie":{"name":"bad=name"}}"#, "cookie.name"),
        ];
        for (json, field) in cases {
            let err = parse(json).to_policy("d").unwrap_err();
            assert_eq!(err.field(), field, "{json}: {err}");
        }
    }

    #[test]
    fn unknown_fields_are_errors() {
        let err = serde_json::from_str::<SessionPersistenceConfig>(r#"{"cookei":{}}"#).unwrap_err();
        assert!(err.to_string().contains("cookei"), "{err}");
    }
}

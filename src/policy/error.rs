use std::error::Error;
use std::fmt;

/// A policy the Gateway API would not accept, with the field at fault and the rule it breaks
/// (GEP-1619's `Accepted=False`, reason `Invalid`).
///
/// ```
/// use tower_session_persistence::policy::SessionPolicy;
///
/// let err = SessionPolicy::header("").build().unwrap_err();
/// assert_eq!(err.field(), "header.name");
/// // Placed in the document it came from, for a status condition or a log line:
/// let err = err.within("spec.rules[0].sessionPersistence");
/// assert_eq!(err.field(), "spec.rules[0].sessionPersistence.header.name");
/// assert!(err.to_string().starts_with("spec.rules[0].sessionPersistence.header.name: "));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    field: String,
    rule: String,
}

impl PolicyError {
    /// A new error for `field` breaking `rule`.
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self { field: field.into(), rule: rule.into() }
    }

    /// The field at fault, in the Gateway API's JSON spelling (`cookie.name`, `absoluteTimeout`).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The rule the field breaks.
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// The same error with `prefix.` in front of the field, for errors found inside a larger
    /// document (`spec.rules[0].sessionPersistence.cookie.name`).
    #[must_use]
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}.{}", self.field);
        self
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.rule)
    }
}

impl Error for PolicyError {}

//! Learned sessions in the gateway: the top-level `store:` block, and a rule's
//! `x-session-persistence: {strategy: learn, learn: {...}}`.
//!
//! ```yaml
//! store:                                   # optional; where learned sessions live
//!   memory: {maxEntries: 1000000}          # the default: in this process, bounded
//!   # or: redis: {url: "redis://127.0.0.1:6379/0", timeout: 50ms, prefix: "tsp:learn:"}
//! routes:
//!   - ...
//!       rules:
//!         - sessionPersistence: {cookie: {name: JSESSIONID}}
//!           x-session-persistence:
//!             strategy: learn              # persist on the application's own session
//!             idleTimeout: 30m             # refreshed by use
//!             learn: {cookie: JSESSIONID}  # or {header: Mcp-Session-Id}; default: the
//!                                          # stanza's cookie.name / header.name
//!             # fromRequests: true         # also learn ids clients send first (HAProxy
//!                                          # `stick on req.cook(...)`)
//! ```
//!
//! The application's cookie or header is never changed; the gateway sets nothing. Mappings
//! live for `x-session-persistence.idleTimeout` (refreshed by use; the released stanza's
//! `idleTimeout` too) and the stanza's `absoluteTimeout` (from when learned); with neither, 30
//! minutes idle. Identifiers are stored as an HMAC-SHA256 keyed
//! with the first of `keys`: replicas sharing Redis need the same `keys`.
//!
//! The store is made once per process, on first use, and shared by every rule and serving
//! thread.

use std::fmt;
use std::sync::{Arc, OnceLock};

use http::HeaderName;
use serde::Deserialize;
use tower_session_persistence::learn::{Identifier, LearnLayer};
use tower_session_persistence::policy::{Carrier, SessionPersistenceConfig, SessionPolicy};
#[cfg(feature = "redis")]
use tower_session_persistence::store::RedisStore;
use tower_session_persistence::store::{Lifetime, MemoryStore, SessionStore};

#[cfg(feature = "redis")]
use crate::config::duration;
use crate::config::{ConfigError, Keys};

/// The default bound on the in-process store.
const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;

/// The top-level `store:` block: one of `memory` and `redis`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreConfig {
    memory: Option<MemoryConfig>,
    redis: Option<RedisConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MemoryConfig {
    max_entries: Option<u64>,
    max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
struct RedisConfig {
    url: String,
    timeout: Option<String>,
    prefix: Option<String>,
}

/// A rule's `learn:` block.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct LearnConfig {
    cookie: Option<String>,
    header: Option<String>,
    from_requests: Option<bool>,
}

/// What the store will be, made on first use.
enum StoreKind {
    Memory {
        max_entries: u64,
        max_bytes: u64,
    },
    /// The store, and what the file said (URL, timeout, prefix), to compare on reload.
    #[cfg(feature = "redis")]
    Redis(RedisStore, (String, std::time::Duration, Option<String>)),
}

/// The checked `store:` block; the store itself is made once, on first use, and shared.
pub(crate) struct Store {
    kind: StoreKind,
    made: OnceLock<Made>,
}

/// The process's store, once made; the in-process one also by its type, for live limits.
struct Made {
    store: Arc<dyn SessionStore>,
    memory: Option<MemoryStore>,
}

/// What a reload did with a `store:` block.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StoreReload {
    /// Nothing changed.
    Unchanged,
    /// The in-process store's limits changed, in place: learned sessions are kept (evicted
    /// down to the new limits when they are smaller).
    Resized { max_entries: u64, max_bytes: u64 },
    /// Another store (memory and Redis swapped, another Redis URL, prefix or timeout): it
    /// would start without the learned sessions, so it waits for a restart. Says what changed.
    NeedsRestart(String),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            StoreKind::Memory { max_entries, .. } => write!(f, "Store(memory, {max_entries})"),
            #[cfg(feature = "redis")]
            StoreKind::Redis(redis, _) => write!(f, "Store({redis:?})"),
        }
    }
}

impl Store {
    /// The process's store.
    fn get(&self) -> Arc<dyn SessionStore> {
        self.made
            .get_or_init(|| match &self.kind {
                StoreKind::Memory { max_entries, max_bytes } => {
                    let memory = MemoryStore::with_limits(*max_entries, *max_bytes);
                    Made { store: Arc::new(memory.clone()), memory: Some(memory) }
                }
                #[cfg(feature = "redis")]
                StoreKind::Redis(redis, _) => Made { store: Arc::new(redis.clone()), memory: None },
            })
            .store
            .clone()
    }

    /// Applies a reloaded `store:` block (`new`) to this running one. The in-process store's
    /// limits change in place; any other change needs a restart, because a new store would
    /// start empty and every learned session would be balanced anew.
    pub(crate) fn reload(&self, new: &Store) -> StoreReload {
        match (&self.kind, &new.kind) {
            (StoreKind::Memory { .. }, StoreKind::Memory { max_entries, max_bytes }) => {
                // Not made: no rule learns, and rules change only with a restart.
                let Some(memory) = self.made.get().and_then(|made| made.memory.as_ref()) else {
                    return StoreReload::Unchanged;
                };
                if (memory.max_entries(), memory.max_bytes()) == (*max_entries, *max_bytes) {
                    return StoreReload::Unchanged;
                }
                memory.set_limits(*max_entries, *max_bytes);
                StoreReload::Resized { max_entries: *max_entries, max_bytes: *max_bytes }
            }
            #[cfg(feature = "redis")]
            (StoreKind::Redis(_, old), StoreKind::Redis(_, new)) => {
                if old == new {
                    StoreReload::Unchanged
                } else {
                    // Not the URL: it may hold a password.
                    StoreReload::NeedsRestart("store.redis changed".to_owned())
                }
            }
            #[cfg(feature = "redis")]
            _ => StoreReload::NeedsRestart(format!(
                "store changed from {} to {}",
                self.kind(),
                new.kind()
            )),
        }
    }

    /// `memory` or `redis`, for the log.
    pub(crate) fn kind(&self) -> &'static str {
        match self.kind {
            StoreKind::Memory { .. } => "memory",
            #[cfg(feature = "redis")]
            StoreKind::Redis(..) => "redis",
        }
    }
}

/// Checks the `store:` block; `ephemeral_key` says that the file has no `keys`.
pub(crate) fn check(
    config: Option<&StoreConfig>,
    ephemeral_key: bool,
) -> Result<Store, ConfigError> {
    let memory = |max_entries: Option<u64>, max_bytes: Option<u64>| StoreKind::Memory {
        max_entries: max_entries.unwrap_or(DEFAULT_MAX_ENTRIES),
        max_bytes: max_bytes.unwrap_or(u64::MAX),
    };
    let kind = match config {
        None => memory(None, None),
        Some(StoreConfig { memory: Some(_), redis: Some(_) }) => {
            return Err(ConfigError::new("store", "set one of memory and redis, not both"));
        }
        Some(StoreConfig { memory: None, redis: None }) => {
            return Err(ConfigError::new("store", "set one of memory and redis"));
        }
        Some(StoreConfig { memory: Some(m), redis: None }) => {
            if m.max_entries == Some(0) {
                return Err(ConfigError::new("store.memory.maxEntries", "must be at least 1"));
            }
            if m.max_bytes == Some(0) {
                return Err(ConfigError::new("store.memory.maxBytes", "must be at least 1"));
            }
            memory(m.max_entries, m.max_bytes)
        }
        Some(StoreConfig { memory: None, redis: Some(r) }) => redis(r, ephemeral_key)?,
    };
    Ok(Store { kind, made: OnceLock::new() })
}

#[cfg(feature = "redis")]
fn redis(config: &RedisConfig, ephemeral_key: bool) -> Result<StoreKind, ConfigError> {
    if ephemeral_key {
        return Err(ConfigError::new(
            "store.redis",
            "needs `keys`: replicas sharing Redis must hash session identifiers with the same key",
        ));
    }
    let timeout = duration(config.timeout.as_deref(), "store.redis.timeout")?
        .unwrap_or(RedisStore::DEFAULT_TIMEOUT);
    if timeout.is_zero() {
        return Err(ConfigError::new("store.redis.timeout", "must be more than 0s"));
    }
    let mut store = RedisStore::new(&config.url).map_err(|_| {
        ConfigError::new("store.redis.url", "is not a Redis URL, e.g. redis://127.0.0.1:6379/0")
    })?;
    store = store.timeout(timeout);
    if let Some(prefix) = &config.prefix {
        store = store.prefix(prefix.clone());
    }
    Ok(StoreKind::Redis(store, (config.url.clone(), timeout, config.prefix.clone())))
}

#[cfg(not(feature = "redis"))]
fn redis(_: &RedisConfig, _: bool) -> Result<StoreKind, ConfigError> {
    Err(ConfigError::new(
        "store.redis",
        "this gateway was built without the `redis` feature (cargo run --features redis ...)",
    ))
}

/// A rule's checked `learn` strategy.
#[derive(Clone, Debug)]
pub(crate) struct Learning {
    identifier: Identifier,
    from_requests: bool,
    lifetime: Lifetime,
}

impl Learning {
    /// The layer for the rule `scope`, over the process's store.
    pub(crate) fn layer<K>(&self, store: &Store, keys: &Keys, scope: &str) -> LearnLayer<K> {
        let key = keys.0.first().expect("at least one key");
        let mut layer = LearnLayer::new(self.identifier.clone(), store.get(), key)
            .expect("keys checked when the file was read")
            .scope(scope)
            .learn_requests(self.from_requests);
        if let Some(idle) = self.lifetime.idle {
            layer = layer.idle_timeout(idle);
        }
        if let Some(absolute) = self.lifetime.absolute {
            layer = layer.absolute_timeout(absolute);
        }
        layer
    }

    /// The application's cookie or header.
    pub(crate) fn name(&self) -> &str {
        self.identifier.name()
    }
}

/// Checks a rule's `learn` strategy: `learn` is its block (at `at`), `policy` the stanza's
/// checked policy, `ignored` the extension's options that do not apply to learning and are
/// set.
pub(crate) fn check_learn(
    stanza: &SessionPersistenceConfig,
    policy: &SessionPolicy,
    learn: Option<&LearnConfig>,
    ignored: Option<&str>,
    at: &str,
) -> Result<Learning, ConfigError> {
    if let Some(option) = ignored {
        return Err(ConfigError::new(
            format!("{at}.{option}"),
            "does not apply to strategy learn (the application's cookie or header is never changed)",
        ));
    }
    let default = LearnConfig::default();
    let learn = learn.unwrap_or(&default);
    let identifier = match (&learn.cookie, &learn.header) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                format!("{at}.learn"),
                "set one of cookie and header, not both",
            ));
        }
        (Some(cookie), None) => cookie_identifier(cookie, &format!("{at}.learn.cookie"))?,
        (None, Some(header)) => header_identifier(header, &format!("{at}.learn.header"))?,
        (None, None) => {
            // The stanza's name, when it gives one: the application's cookie or header.
            let named = stanza.cookie.as_ref().and_then(|c| c.name.as_ref()).is_some()
                || stanza.header.as_ref().and_then(|h| h.name.as_ref()).is_some()
                || stanza.session_name.is_some();
            if !named {
                return Err(ConfigError::new(
                    format!("{at}.learn"),
                    "name the application's session: learn.cookie, learn.header, or the \
                     stanza's cookie.name or header.name",
                ));
            }
            match policy.carrier() {
                Carrier::Cookie(_) => Identifier::cookie(policy.name()),
                Carrier::Header(name) => Identifier::header(name.clone()),
            }
        }
    };
    Ok(Learning {
        identifier,
        from_requests: learn.from_requests.unwrap_or(false),
        lifetime: Lifetime { idle: policy.idle_timeout(), absolute: policy.absolute_timeout() },
    })
}

fn cookie_identifier(name: &str, at: &str) -> Result<Identifier, ConfigError> {
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
    if !valid {
        return Err(ConfigError::new(at, format!("{name:?} is not a cookie name")));
    }
    Ok(Identifier::cookie(name))
}

fn header_identifier(name: &str, at: &str) -> Result<Identifier, ConfigError> {
    HeaderName::from_bytes(name.as_bytes())
        .map(Identifier::header)
        .map_err(|_| ConfigError::new(at, format!("{name:?} is not a header name")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(yaml: &str) -> Store {
        let config: StoreConfig = serde_norway::from_str(yaml).unwrap();
        check(Some(&config), false).unwrap()
    }

    #[test]
    fn a_reload_resizes_the_memory_store_in_place() {
        let running = store("memory: {maxEntries: 1000}");
        let _in_use = running.get();
        assert_eq!(running.reload(&store("memory: {maxEntries: 1000}")), StoreReload::Unchanged);
        let reloaded = running.reload(&store("memory: {maxEntries: 50, maxBytes: 100000}"));
        assert_eq!(reloaded, StoreReload::Resized { max_entries: 50, max_bytes: 100_000 });
        let memory = running.made.get().and_then(|made| made.memory.clone()).unwrap();
        assert_eq!((memory.max_entries(), memory.max_bytes()), (50, 100_000));
        // The same file again: nothing more to do.
        let again = running.reload(&store("memory: {maxEntries: 50, maxBytes: 100000}"));
        assert_eq!(again, StoreReload::Unchanged);
    }

    #[test]
    fn a_store_that_no_rule_uses_is_left_alone() {
        let running = store("memory: {maxEntries: 1000}");
        assert_eq!(running.reload(&store("memory: {maxEntries: 5}")), StoreReload::Unchanged);
    }

    #[cfg(feature = "redis")]
    #[test]
    fn another_store_needs_a_restart() {
        let memory = store("memory: {maxEntries: 1000}");
        let _in_use = memory.get();
        let redis = "redis: {url: \"redis://127.0.0.1:1/0\"}";
        assert!(matches!(memory.reload(&store(redis)), StoreReload::NeedsRestart(_)));
        let running = store(redis);
        assert_eq!(running.reload(&store(redis)), StoreReload::Unchanged);
        for other in [
            "redis: {url: \"redis://127.0.0.1:2/0\"}",
            "redis: {url: \"redis://127.0.0.1:1/0\", timeout: 20ms}",
            "redis: {url: \"redis://127.0.0.1:1/0\", prefix: \"x:\"}",
            "memory: {maxEntries: 1000}",
        ] {
            let StoreReload::NeedsRestart(change) = running.reload(&store(other)) else {
                panic!("{other}: a restart expected");
            };
            assert!(!change.contains("127.0.0.1"), "the URL is not logged: {change}");
        }
    }
}

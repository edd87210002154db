//! The Redis (or Valkey) store: learned sessions shared by every replica that talks to the
//! same server.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Lifetime, SessionStore, StoreError, StoreFuture, StoreKey, millis, unix_millis};

/// At most one warning about an unreachable store in this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A lookup in one round trip: read the entry, end it if its absolute lifetime has passed,
/// otherwise extend its TTL to the idle timeout (capped by what is left of the absolute one).
/// The value is the store time, 16 decimal digits of Unix milliseconds, then the endpoint key.
/// `ARGV`: now, idle and absolute timeouts in milliseconds (0 = none).
const LOOKUP: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local first = tonumber(string.sub(v, 1, 16))
if first == nil then redis.call('DEL', KEYS[1]) return false end
local now, idle, abs = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl = idle
if abs > 0 then
  local left = first + abs - now
  if left <= 0 then redis.call('DEL', KEYS[1]) return false end
  if ttl <= 0 or left < ttl then ttl = left end
end
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return string.sub(v, 17)
";

/// A [`SessionStore`] in Redis or Valkey, for several gateway replicas.
///
/// * Keys: `<prefix><scope>:<hash>`, the prefix `tsp:learn:` by default, the hash 32
///   hexadecimal digits of the keyed hash of the identifier: a dump of the server shows
///   scopes and endpoint keys, never a session identifier.
/// * Values: the store time (16 decimal digits of Unix milliseconds) then the endpoint key.
/// * Expiry by Redis itself: `SET … PX` with the lifetime's first TTL; each lookup is one
///   round trip (a cached Lua script, `EVALSHA`) that reads the entry and extends its TTL by
///   the idle timeout, capped by the absolute one, or deletes it when that has passed.
/// * Every operation is bounded by a timeout (default 50 ms). A slow or unreachable server
///   answers [`StoreError`]: the layer balances the request as if the session were unknown.
///   A warning is logged at most every 10 s while it lasts, and an `info` line when the
///   server answers again. The connection is made on first use and remade in the background
///   (redis-rs's `ConnectionManager`), so the store can be created before the server is up.
///
/// Needs a tokio runtime (with its timer) where it is used. Cheap to clone.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_session_persistence::store::RedisStore;
///
/// let store = RedisStore::new("redis://127.0.0.1:6379/0")?
///     .timeout(Duration::from_millis(20))
///     .prefix("shop:sessions:");
/// # Ok::<(), tower_session_persistence::store::StoreError>(())
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    manager: OnceLock<Result<ConnectionManager, String>>,
    timeout: Duration,
    prefix: String,
    lookup: redis::Script,
    health: Health,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the URL: it may hold a password.
        f.debug_struct("RedisStore")
            .field("timeout", &self.inner.timeout)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// The default bound on one operation: 50 ms.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

    /// A store on the server at `url` (`redis://HOST:PORT/DB`, `rediss://` needs redis-rs's
    /// TLS features, `redis+unix:///path`). Nothing is connected yet.
    ///
    /// # Errors
    ///
    /// If `url` is not a Redis URL.
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|_| StoreError::unavailable("not a Redis URL (redis://HOST:PORT/DB)"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                manager: OnceLock::new(),
                timeout: RedisStore::DEFAULT_TIMEOUT,
                prefix: "tsp:learn:".to_owned(),
                lookup: redis::Script::new(LOOKUP),
                health: Health::default(),
            }),
        })
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("a store is configured before it is cloned")
    }

    /// Bounds every operation (default [`DEFAULT_TIMEOUT`](Self::DEFAULT_TIMEOUT), 50 ms): a request never waits
    /// longer for the store.
    ///
    /// # Panics
    ///
    /// If the store has been cloned already: configure it first.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.inner_mut().timeout = timeout;
        self
    }

    /// The prefix of every key (default `tsp:learn:`), to share a server with other data.
    ///
    /// # Panics
    ///
    /// If the store has been cloned already: configure it first.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.inner_mut().prefix = prefix.into();
        self
    }

    /// The Redis key of `key`.
    pub fn redis_key(&self, key: &StoreKey) -> String {
        format!("{}{}:{}", self.inner.prefix, key.scope(), key.hex())
    }
}

impl Inner {
    /// The connection manager, made on first use (it needs the runtime it is used from).
    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let manager = self.manager.get_or_init(|| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(Duration::from_secs(1)))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(500));
            ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                .map_err(|err| format!("cannot set up the connection: {:?}", err.kind()))
        });
        manager.clone().map_err(StoreError::unavailable)
    }

    /// Runs `op` with the timeout, and keeps the warnings' books.
    async fn run<T, F>(
        self: Arc<Self>,
        op: impl FnOnce(ConnectionManager) -> F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let result = match self.connection() {
            Ok(connection) => match tokio::time::timeout(self.timeout, op(connection)).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(err)) => Err(StoreError::unavailable(describe(&err))),
                Err(_) => Err(StoreError::timeout()),
            },
            Err(err) => Err(err),
        };
        match &result {
            Ok(_) => self.health.up(),
            Err(err) => self.health.down(err),
        }
        result
    }
}

/// A description of a Redis error without anything from the request or the server's data.
fn describe(err: &redis::RedisError) -> String {
    if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connection_refusal() {
        "connection refused".to_owned()
    } else if err.is_connection_dropped() || err.is_io_error() {
        "connection lost".to_owned()
    } else {
        format!("{:?}", err.kind())
    }
}

/// Rate-limited reports of the store's availability.
#[derive(Default)]
struct Health {
    down: AtomicBool,
    /// Unix milliseconds of the last warning.
    warned: AtomicU64,
    /// Failures since the last warning.
    failures: AtomicU64,
}

impl Health {
    fn up(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            self.failures.store(0, Ordering::Relaxed);
            tracing::info!("session store reachable again: learned sessions are honoured");
        }
    }

    fn down(&self, err: &StoreError) {
        self.down.store(true, Ordering::Relaxed);
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let now = unix_millis(SystemTime::now());
        let last = self.warned.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= millis(WARN_EVERY)
            && self.warned.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.failures.store(0, Ordering::Relaxed);
            tracing::warn!(
                error = %err,
                failures,
                "session store unavailable: requests with a learned session are balanced as unknown"
            );
        }
    }
}

impl SessionStore for RedisStore {
    fn lookup(
        &self,
        key: &StoreKey,
        lifetime: Lifetime,
        now: SystemTime,
    ) -> StoreFuture<Option<Arc<[u8]>>> {
        let redis_key = self.redis_key(key);
        let inner = self.inner.clone();
        let now = unix_millis(now);
        let idle = lifetime.effective_idle().map_or(0, millis);
        let absolute = lifetime.absolute.map_or(0, millis);
        StoreFuture::boxed(async move {
            let script = inner.lookup.clone();
            let found: Option<Vec<u8>> = inner
                .run(move |mut connection| async move {
                    script
                        .key(redis_key)
                        .arg(now)
                        .arg(idle)
                        .arg(absolute)
                        .invoke_async(&mut connection)
                        .await
                })
                .await?;
            Ok(found.filter(|endpoint| !endpoint.is_empty()).map(Arc::from))
        })
    }

    fn insert(
        &self,
        key: &StoreKey,
        endpoint: &[u8],
        lifetime: Lifetime,
        now: SystemTime,
    ) -> StoreFuture<()> {
        let redis_key = self.redis_key(key);
        let mut value = format!("{:016}", unix_millis(now)).into_bytes();
        value.extend_from_slice(endpoint);
        let ttl = millis(lifetime.ttl()).max(1);
        let inner = self.inner.clone();
        StoreFuture::boxed(async move {
            inner
                .run(move |mut connection| async move {
                    redis::cmd("SET")
                        .arg(redis_key)
                        .arg(value)
                        .arg("PX")
                        .arg(ttl)
                        .query_async::<()>(&mut connection)
                        .await
                })
                .await
        })
    }
}

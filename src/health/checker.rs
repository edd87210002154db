use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::AbortHandle;

use super::Probe;

/// An endpoint's health as the checks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Health {
    /// Takes traffic.
    Up,
    /// Failed `fall` checks in a row; takes nothing until `rise` checks in a row pass.
    Down,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

/// How endpoints are checked; HAProxy's defaults (`inter 2s rise 2 fall 3`, the probe bounded
/// by the interval).
#[derive(Clone, Copy, Debug, PartialEq)]
#[must_use]
pub struct HealthCheckConfig {
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
    jitter: f64,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthCheckConfig {
    /// Every 2 s, 1 s for a probe, down after 3 failures, up after 2 successes, ±10% jitter.
    pub fn new() -> Self {
        Self {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            jitter: 0.1,
        }
    }

    /// Time between two probes of one endpoint (at least 1 ms).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long a probe may take before it counts as failed (at least 1 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Good probes in a row that bring a down endpoint back (at least 1).
    pub fn rise(mut self, rise: u32) -> Self {
        self.rise = rise.max(1);
        self
    }

    /// Failed probes in a row that take an endpoint down (at least 1).
    pub fn fall(mut self, fall: u32) -> Self {
        self.fall = fall.max(1);
        self
    }

    /// How far each interval may stray, as a fraction of it (0 to 0.5).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() { jitter.clamp(0.0, 0.5) } else { 0.0 };
        self
    }

    /// The configured interval.
    pub fn get_interval(&self) -> Duration {
        self.interval
    }

    /// The configured probe timeout.
    pub fn get_timeout(&self) -> Duration {
        self.timeout
    }

    /// The configured rise.
    pub fn get_rise(&self) -> u32 {
        self.rise
    }

    /// The configured fall.
    pub fn get_fall(&self) -> u32 {
        self.fall
    }
}

/// Runs health checks for a set of endpoints; see the [module docs](super). Cheap to clone;
/// the checks stop when the last clone is dropped.
pub struct HealthChecker<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for HealthChecker<K> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<K> fmt::Debug for HealthChecker<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthChecker").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

type OnChange<K> = dyn Fn(&K, Health) + Send + Sync;
type ProbeFn<K> =
    dyn Fn(&K) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync;

struct Inner<K> {
    config: HealthCheckConfig,
    probe: Box<ProbeFn<K>>,
    on_change: Box<OnChange<K>>,
    endpoints: Mutex<HashMap<K, Checked>>,
}

struct Checked {
    health: Health,
    task: AbortHandle,
}

impl<K> Drop for Inner<K> {
    fn drop(&mut self) {
        let endpoints = self.endpoints.get_mut().unwrap_or_else(PoisonError::into_inner);
        for checked in endpoints.values() {
            checked.task.abort();
        }
    }
}

impl<K> HealthChecker<K>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    /// A checker that probes with `probe` and calls `on_change` on every change of an
    /// endpoint's health. Endpoints are added with [`add`](Self::add).
    pub fn start<P, F>(config: HealthCheckConfig, probe: P, on_change: F) -> Self
    where
        P: Probe<K>,
        F: Fn(&K, Health) + Send + Sync + 'static,
    {
        let probe = Arc::new(probe);
        let boxed: Box<ProbeFn<K>> = Box::new(move |key: &K| {
            let probe = probe.clone();
            Box::pin(probe.probe(key))
        });
        Self {
            inner: Arc::new(Inner {
                config,
                probe: boxed,
                on_change: Box::new(on_change),
                endpoints: Mutex::default(),
            }),
        }
    }

    /// Starts checking `key` (up until its checks say otherwise); nothing if it is checked
    /// already. Needs a tokio runtime: the checks run on the one this is called on.
    pub fn add(&self, key: K) {
        let mut endpoints = self.inner.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
        if endpoints.contains_key(&key) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(check_loop(weak, key.clone())).abort_handle();
        endpoints.insert(key, Checked { health: Health::Up, task });
    }

    /// Stops checking `key`.
    pub fn remove(&self, key: &K) {
        let mut endpoints = self.inner.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(checked) = endpoints.remove(key) {
            checked.task.abort();
        }
    }

    /// The health of `key`, if it is checked.
    pub fn health(&self, key: &K) -> Option<Health> {
        let endpoints = self.inner.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
        endpoints.get(key).map(|checked| checked.health)
    }

    /// The endpoints checked, with their health.
    pub fn endpoints(&self) -> Vec<(K, Health)> {
        let endpoints = self.inner.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
        endpoints.iter().map(|(key, checked)| (key.clone(), checked.health)).collect()
    }
}

/// A draw in [0, 1) for jitter; no cryptographic quality needed.
fn unit_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x9e37_79b9_7f4a_7c15);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

async fn check_loop<K>(inner: std::sync::Weak<Inner<K>>, key: K)
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    let Some(config) = inner.upgrade().map(|inner| inner.config) else { return };
    // First probe at a random point of the first interval: endpoints spread out.
    tokio::time::sleep(config.interval.mul_f64(unit_random())).await;
    let (mut good, mut bad) = (0u32, 0u32);
    loop {
        let Some(probe) = inner.upgrade().map(|inner| (inner.probe)(&key)) else { return };
        let healthy = tokio::time::timeout(config.timeout, probe).await.unwrap_or(false);
        if healthy {
            good = good.saturating_add(1);
            bad = 0;
        } else {
            bad = bad.saturating_add(1);
            good = 0;
        }
        {
            let Some(inner) = inner.upgrade() else { return };
            let changed = {
                let mut endpoints = inner.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(checked) = endpoints.get_mut(&key) else { return };
                let next = match checked.health {
                    Health::Up if bad >= config.fall => Health::Down,
                    Health::Down if good >= config.rise => Health::Up,
                    same => same,
                };
                let changed = next != checked.health;
                checked.health = next;
                changed.then_some(next)
            };
            // Outside the lock: the callback may ask the checker things.
            if let Some(health) = changed {
                (inner.on_change)(&key, health);
            }
        }
        let spread = config.jitter * (2.0 * unit_random() - 1.0);
        tokio::time::sleep(config.interval.mul_f64(1.0 + spread)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn down_after_fall_and_up_only_after_rise() {
        let healthy = Arc::new(AtomicBool::new(true));
        let flag = healthy.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let config =
            HealthCheckConfig::new().interval(Duration::from_secs(2)).jitter(0.0).fall(3).rise(2);
        let checker = HealthChecker::start(
            config,
            move |_: &&str| {
                let ok = flag.load(Ordering::SeqCst);
                async move { ok }
            },
            move |key: &&str, health| {
                let _ = tx.send((*key, health, Instant::now()));
            },
        );
        checker.add("a");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(rx.try_recv().is_err(), "healthy: no change");
        healthy.store(false, Ordering::SeqCst);
        let failing_from = Instant::now();
        let (key, health, at) = rx.recv().await.unwrap();
        assert_eq!((key, health), ("a", Health::Down));
        // Three failed probes, two seconds apart: between 4 and 6 s after the failure began.
        let took = at - failing_from;
        assert!(took >= Duration::from_secs(4) && took <= Duration::from_secs(6), "{took:?}");
        assert_eq!(checker.health(&"a"), Some(Health::Down));
        // Long down, no timer brings it back.
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(checker.health(&"a"), Some(Health::Down));
        healthy.store(true, Ordering::SeqCst);
        let healed_from = Instant::now();
        let (_, health, at) = rx.recv().await.unwrap();
        assert_eq!(health, Health::Up);
        let took = at - healed_from;
        assert!(took >= Duration::from_secs(2) && took <= Duration::from_secs(4), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_hangs_fails_and_removal_stops_the_checks() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let config = HealthCheckConfig::new().timeout(Duration::from_millis(500)).fall(1);
        let checker = HealthChecker::start(
            config,
            |_: &u8| std::future::pending::<bool>(),
            move |key: &u8, health| {
                let _ = tx.send((*key, health));
            },
        );
        checker.add(1);
        assert_eq!(rx.recv().await, Some((1, Health::Down)));
        checker.remove(&1);
        assert_eq!(checker.health(&1), None);
        assert!(checker.endpoints().is_empty());
    }
}

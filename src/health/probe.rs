use std::future::Future;
use std::net::SocketAddr;

/// What a health check does for one endpoint: `true` when the endpoint is healthy. The
/// checker bounds it with its timeout (a probe still running then failed).
///
/// Implemented for closures `Fn(&K) -> impl Future<Output = bool>`.
pub trait Probe<K>: Send + Sync + 'static {
    /// The probe's future.
    type Future: Future<Output = bool> + Send + 'static;

    /// Probes `endpoint`.
    fn probe(&self, endpoint: &K) -> Self::Future;
}

impl<K, F, Fut> Probe<K> for F
where
    F: Fn(&K) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    type Future = Fut;

    fn probe(&self, endpoint: &K) -> Fut {
        self(endpoint)
    }
}

/// A TCP connect check (HAProxy's `check` without `option httpchk`): healthy when a connection
/// to the endpoint's address opens; `address` gives it (`None`: unhealthy).
///
/// ```
/// use std::net::SocketAddr;
/// use tower_session_persistence::health::{Probe, tcp_probe};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let addr = listener.local_addr().unwrap();
/// let probe = tcp_probe(move |_key: &&str| Some(addr));
/// assert!(probe.probe(&"up").await);
/// drop(listener);
/// assert!(!probe.probe(&"up").await);
/// # }
/// ```
pub fn tcp_probe<K, A>(address: A) -> impl Probe<K>
where
    A: Fn(&K) -> Option<SocketAddr> + Send + Sync + 'static,
{
    move |key: &K| {
        let addr = address(key);
        async move {
            match addr {
                Some(addr) => tokio::net::TcpStream::connect(addr).await.is_ok(),
                None => false,
            }
        }
    }
}

//! A channel that is a tower `Discover`: send endpoint changes from anywhere, at any time.

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::mpsc;
use tower::discover::Change;

/// Creates a channel of endpoint changes. The receiver is a tower
/// [`Discover`](tower::discover::Discover); it ends when every sender is dropped.
///
/// ```
/// use tower_session_persistence::balance::discover_channel;
///
/// let (endpoints, discover) = discover_channel::<String, ()>();
/// endpoints.insert("pod-a".to_owned(), ());
/// endpoints.remove("pod-a".to_owned());
/// # drop(discover);
/// ```
pub fn discover_channel<K, S>() -> (DiscoverSender<K, S>, DiscoverReceiver<K, S>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (DiscoverSender { tx }, DiscoverReceiver { rx })
}

/// Sends endpoint changes; see [`discover_channel`].
pub struct DiscoverSender<K, S> {
    tx: mpsc::UnboundedSender<Change<K, S>>,
}

impl<K, S> Clone for DiscoverSender<K, S> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone() }
    }
}

impl<K, S> fmt::Debug for DiscoverSender<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscoverSender").finish_non_exhaustive()
    }
}

impl<K, S> DiscoverSender<K, S> {
    /// Adds an endpoint, or replaces the one with the same key. Returns `false` if the
    /// receiver is gone.
    pub fn insert(&self, key: K, service: S) -> bool {
        self.tx.send(Change::Insert(key, service)).is_ok()
    }

    /// Removes an endpoint. Returns `false` if the receiver is gone.
    pub fn remove(&self, key: K) -> bool {
        self.tx.send(Change::Remove(key)).is_ok()
    }

    /// Sends any change. Returns `false` if the receiver is gone.
    pub fn send(&self, change: Change<K, S>) -> bool {
        self.tx.send(change).is_ok()
    }
}

/// Receives endpoint changes; a tower [`Discover`](tower::discover::Discover). See
/// [`discover_channel`].
pub struct DiscoverReceiver<K, S> {
    rx: mpsc::UnboundedReceiver<Change<K, S>>,
}

impl<K, S> fmt::Debug for DiscoverReceiver<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscoverReceiver").finish_non_exhaustive()
    }
}

impl<K, S> Stream for DiscoverReceiver<K, S> {
    type Item = Result<Change<K, S>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|change| change.map(Ok))
    }
}

//! The channel from the table to a group's p2c balancer: a tower `Discover` that keeps at
//! most one pending change per key.
//!
//! p2c reads its changes only when it is polled, that is when balanced requests come. An
//! unbounded channel would pile up changes (an endpoint ejected and recovered every period,
//! with pinned traffic only) until then; here a newer change for a key replaces the one not
//! yet read, so what waits is bounded by the number of endpoints. The last change for a key is
//! the only one that matters to p2c: an Insert replaces the service, a Remove evicts it.
//!
//! The balancer's fast path skips p2c while no change waits ([`FeedSender::has_pending`]);
//! the first balanced request after a change goes through p2c, which reads the changes, so
//! removed endpoints leave p2c's cache however rarely requests must wait.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use futures_core::Stream;
use tower::discover::Change;

struct State<K, V> {
    /// Keys with a pending change, oldest first.
    order: VecDeque<K>,
    pending: HashMap<K, Change<K, V>>,
    waker: Option<Waker>,
    closed: bool,
}

/// The channel's state, and whether a change waits (read without the lock).
struct Channel<K, V> {
    state: Mutex<State<K, V>>,
    pending: AtomicBool,
}

type Shared<K, V> = Arc<Channel<K, V>>;

/// Creates a coalescing change channel.
pub(crate) fn feed<K, V>() -> (FeedSender<K, V>, FeedReceiver<K, V>) {
    let state = Arc::new(Channel {
        state: Mutex::new(State {
            order: VecDeque::new(),
            pending: HashMap::new(),
            waker: None,
            closed: false,
        }),
        pending: AtomicBool::new(false),
    });
    (FeedSender(state.clone()), FeedReceiver(state))
}

/// Sends changes to a group's p2c balancer.
pub(crate) struct FeedSender<K, V>(Shared<K, V>);

impl<K: Hash + Eq + Clone, V> FeedSender<K, V> {
    fn send(&self, key: K, change: Change<K, V>) {
        let waker = {
            let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.pending.insert(key.clone(), change).is_none() {
                state.order.push_back(key);
            }
            self.0.pending.store(true, Ordering::Release);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Adds the endpoint, or replaces the service under its key.
    pub(crate) fn insert(&self, key: K, value: V) {
        self.send(key.clone(), Change::Insert(key, value));
    }

    /// Removes the endpoint.
    pub(crate) fn remove(&self, key: K) {
        self.send(key.clone(), Change::Remove(key));
    }
}

impl<K, V> FeedSender<K, V> {
    /// Whether a change waits to be read by p2c.
    pub(crate) fn has_pending(&self) -> bool {
        self.0.pending.load(Ordering::Acquire)
    }
}

impl<K, V> Drop for FeedSender<K, V> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.closed = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A group's p2c balancer's `Discover`.
pub(crate) struct FeedReceiver<K, V>(Shared<K, V>);

impl<K, V> fmt::Debug for FeedReceiver<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedReceiver").finish_non_exhaustive()
    }
}

impl<K: Hash + Eq, V> Stream for FeedReceiver<K, V> {
    type Item = Result<Change<K, V>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(key) = state.order.pop_front() {
            if let Some(change) = state.pending.remove(&key) {
                return Poll::Ready(Some(Ok(change)));
            }
        }
        // Cleared under the lock a sender sets it under: no change is missed.
        self.0.pending.store(false, Ordering::Release);
        if state.closed {
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_newer_change_replaces_the_pending_one() {
        let (tx, mut rx) = feed::<&str, u8>();
        tx.insert("a", 1);
        tx.insert("b", 1);
        tx.remove("a");
        tx.insert("a", 2);
        tx.remove("b");
        let next = |c: Option<Result<Change<&str, u8>, Infallible>>| match c {
            Some(Ok(Change::Insert(k, v))) => format!("+{k}{v}"),
            Some(Ok(Change::Remove(k))) => format!("-{k}"),
            None => "end".to_owned(),
        };
        assert!(tx.has_pending());
        assert_eq!(next(rx.next().await), "+a2");
        assert_eq!(next(rx.next().await), "-b");
        assert!(tx.has_pending(), "not read to its end yet");
        assert!(futures_util::poll!(rx.next()).is_pending());
        assert!(!tx.has_pending());
        tx.remove("a");
        assert!(tx.has_pending());
        drop(tx);
        assert_eq!(next(rx.next().await), "-a");
        assert_eq!(next(rx.next().await), "end");
    }
}

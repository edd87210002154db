//! How an endpoint's key is written into a token and read back.

use std::borrow::Cow;
use std::fmt;
use std::hash::Hash;
use std::net::SocketAddr;

/// A stable identity of a backend endpoint, as the balancer knows it and as tokens carry it.
///
/// A key must mean the same endpoint on every gateway replica and across restarts: a pod name,
/// or an address together with a generation such as the pod UID. A bare address is not enough
/// when addresses are reused (GEP-1619 warns that a new pod on an old IP would inherit the old
/// pod's sessions). Tokens never show the key in clear, so a key may name internal topology.
///
/// Implemented for [`String`], [`SocketAddr`], [`u64`] and [`Vec<u8>`]; implement it for your
/// own key type with any stable byte encoding:
///
/// ```
/// use std::borrow::Cow;
/// use tower_session_persistence::EndpointKey;
///
/// #[derive(Clone, Debug, PartialEq, Eq, Hash)]
/// struct PodId(u32);
///
/// impl EndpointKey for PodId {
///     fn to_bytes(&self) -> Cow<'_, [u8]> {
///         Cow::Owned(self.0.to_be_bytes().to_vec())
///     }
///     fn from_bytes(bytes: &[u8]) -> Option<Self> {
///         Some(PodId(u32::from_be_bytes(bytes.try_into().ok()?)))
///     }
/// }
///
/// let key = PodId(7);
/// assert_eq!(PodId::from_bytes(&key.to_bytes()), Some(key));
/// ```
pub trait EndpointKey: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static {
    /// The key's bytes, as they go into a token.
    fn to_bytes(&self) -> Cow<'_, [u8]>;

    /// Reads a key back from a token's bytes; `None` if they are not a key of this type.
    fn from_bytes(bytes: &[u8]) -> Option<Self>;
}

impl EndpointKey for String {
    fn to_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        std::str::from_utf8(bytes).ok().map(str::to_owned)
    }
}

impl EndpointKey for Vec<u8> {
    fn to_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(bytes.to_vec())
    }
}

impl EndpointKey for u64 {
    fn to_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.to_be_bytes().to_vec())
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }
}

impl EndpointKey for SocketAddr {
    fn to_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.to_string().into_bytes())
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        std::str::from_utf8(bytes).ok()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let addr: SocketAddr = "[::1]:8080".parse().unwrap();
        assert_eq!(SocketAddr::from_bytes(&addr.to_bytes()), Some(addr));
        assert_eq!(u64::from_bytes(&42u64.to_bytes()), Some(42));
        assert_eq!(String::from_bytes(b"pod-a"), Some("pod-a".to_owned()));
        assert_eq!(String::from_bytes(&[0xff, 0xfe]), None);
        assert_eq!(u64::from_bytes(b"short"), None);
        assert_eq!(SocketAddr::from_bytes(b"not an address"), None);
    }
}

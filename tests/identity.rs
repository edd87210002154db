//! Endpoint identity and IP address reuse (GEP-1619: "If Kubernetes reuses an IP address of
//! previously shutdown pod, the new pod may receive session persistent traffic meant for the
//! old pod").
//!
//! A key that includes a generation (the pod UID) keeps a new pod on an old address from
//! inheriting the old pod's sessions: the session is re-pinned, with a new cookie. A bare
//! `SocketAddr` key cannot tell the two pods apart, so the new pod inherits the session. Both
//! run through the crate's real `Balancer`.

// Without its features this suite would compile to nothing and pass unseen: say so instead.
#[cfg(not(all(feature = "signed", feature = "sealed")))]
compile_error!(
    "tests/identity.rs needs the features signed, sealed (on by default): run it with default features"
);

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
use tower_session_persistence::balance::{BalancerBuilder, DiscoverSender, discover_channel};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::token::{SealedCodec, SignedCodec};
use tower_session_persistence::{Decision, EndpointKey, SessionPersistenceLayer};

/// A pod as Kubernetes names it: where it listens, and which pod it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PodKey {
    addr: SocketAddr,
    uid: String,
}

impl EndpointKey for PodKey {
    fn to_bytes(&self) -> Cow<'_, [u8]> {
        // UIDs are RFC 4122 UUIDs: never a '/'.
        Cow::Owned(format!("{}/{}", self.uid, self.addr).into_bytes())
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (uid, addr) = std::str::from_utf8(bytes).ok()?.split_once('/')?;
        Some(PodKey { addr: addr.parse().ok()?, uid: uid.to_owned() })
    }
}

const ADDR: &str = "10.0.0.5:80";
const UID_A: &str = "3f1c2d9e-0000-4000-8000-00000000000a";
const UID_B: &str = "7b6a5c4d-0000-4000-8000-00000000000b";

type Pod = BoxCloneSyncService<Request<()>, Response<String>, Infallible>;

/// A pod that answers with its name.
fn pod(name: &'static str) -> Pod {
    BoxCloneSyncService::new(service_fn(move |_req: Request<()>| async move {
        Ok::<_, Infallible>(Response::new(name.to_owned()))
    }))
}

/// Waits until the balancer has taken in the endpoint changes sent so far.
async fn settle<F: Fn() -> usize>(len: F, expected: usize) {
    for _ in 0..1000 {
        if len() == expected {
            // Let the p2c worker see the change too.
            tokio::time::sleep(Duration::from_millis(5)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the balancer never saw {expected} endpoints");
}

fn policy() -> SessionPolicy {
    SessionPolicy::cookie("sid").build().unwrap()
}

fn cookie_of(res: &Response<String>) -> Option<String> {
    let set = res.headers().get("set-cookie")?.to_str().unwrap();
    Some(set.split(';').next().unwrap().to_owned())
}

async fn get<S>(svc: &S, cookie: Option<&str>) -> Response<String>
where
    S: tower::Service<Request<()>, Response = Response<String>, Error = BoxError> + Clone,
{
    let mut req = Request::builder();
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    svc.clone().oneshot(req.body(()).unwrap()).await.unwrap()
}

/// The old pod goes away; later a new pod comes up on the same address.
async fn replace<K: Clone>(
    endpoints: &DiscoverSender<K, Pod>,
    len: impl Fn() -> usize,
    old: K,
    new: K,
) {
    endpoints.remove(old);
    settle(&len, 0).await;
    endpoints.insert(new, pod("pod-b"));
    settle(&len, 1).await;
}

#[tokio::test]
async fn a_key_with_the_pod_uid_keeps_a_new_pod_from_inheriting_sessions() {
    let addr: SocketAddr = ADDR.parse().unwrap();
    let (a, b) = (PodKey { addr, uid: UID_A.to_owned() }, PodKey { addr, uid: UID_B.to_owned() });
    let (endpoints, discover) = discover_channel::<PodKey, Pod>();
    endpoints.insert(a.clone(), pod("pod-a"));
    let balancer = BalancerBuilder::new().group(1, discover).build();
    let len = {
        let balancer = balancer.clone();
        move || balancer.len()
    };
    settle(&len, 1).await;
    let layer =
        SessionPersistenceLayer::<PodKey>::keyed(policy(), SealedCodec::new([[1; 32]]).unwrap());
    let app = ServiceBuilder::new().layer(layer).service(balancer);

    let first = get(&app, None).await;
    assert_eq!(first.body(), "pod-a");
    let session = cookie_of(&first).expect("a new session");
    let again = get(&app, Some(&session)).await;
    assert_eq!(again.extensions().get::<Decision>(), Some(&Decision::Pinned));

    replace(&endpoints, &len, a, b).await;

    // Same address, another pod: the session does not follow the address. It is re-pinned to
    // the pod that served it, and the client gets a cookie naming that pod.
    let after = get(&app, Some(&session)).await;
    assert_eq!(after.body(), "pod-b");
    assert_eq!(after.extensions().get::<Decision>(), Some(&Decision::Repinned));
    let repinned = cookie_of(&after).expect("a new cookie");
    assert_ne!(repinned, session);
    let next = get(&app, Some(&repinned)).await;
    assert_eq!(next.extensions().get::<Decision>(), Some(&Decision::Pinned));
    assert!(cookie_of(&next).is_none());
}

#[tokio::test]
async fn a_bare_address_key_lets_a_new_pod_inherit_sessions() {
    // The counter-example GEP-1619 warns about: keyed by address alone, the balancer cannot
    // tell the new pod from the old one.
    let addr: SocketAddr = ADDR.parse().unwrap();
    let (endpoints, discover) = discover_channel::<SocketAddr, Pod>();
    endpoints.insert(addr, pod("pod-a"));
    let balancer = BalancerBuilder::new().group(1, discover).build();
    let len = {
        let balancer = balancer.clone();
        move || balancer.len()
    };
    settle(&len, 1).await;
    let layer = SessionPersistenceLayer::<SocketAddr>::keyed(
        policy(),
        SealedCodec::new([[1; 32]]).unwrap(),
    );
    let app = ServiceBuilder::new().layer(layer).service(balancer);

    let first = get(&app, None).await;
    let session = cookie_of(&first).expect("a new session");

    replace(&endpoints, &len, addr, addr).await;

    let after = get(&app, Some(&session)).await;
    assert_eq!(after.body(), "pod-b", "the new pod gets the old pod's session");
    assert_eq!(after.extensions().get::<Decision>(), Some(&Decision::Pinned));
    assert!(cookie_of(&after).is_none(), "and nothing tells the client");
}

#[test]
fn pod_keys_round_trip_and_refuse_other_shapes() {
    let key = PodKey { addr: "[fd00::5]:8080".parse().unwrap(), uid: UID_A.to_owned() };
    assert_eq!(PodKey::from_bytes(&key.to_bytes()), Some(key));
    for bad in [&b""[..], b"10.0.0.5:80", b"uid/not-an-address", b"\xff/10.0.0.5:80"] {
        assert_eq!(PodKey::from_bytes(bad), None);
    }
}

#[tokio::test]
async fn sessions_hold_on_every_replica_that_shares_the_keys() {
    // Tokens are stateless: two gateway replicas (two layers, two balancers) with the same
    // keys and scope honour each other's sessions, and neither keeps anything per session.
    let addr: SocketAddr = ADDR.parse().unwrap();
    let key = PodKey { addr, uid: UID_A.to_owned() };
    let other = PodKey { addr: "10.0.0.6:80".parse().unwrap(), uid: UID_B.to_owned() };
    let mut replicas = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..2 {
        let (endpoints, discover) = discover_channel::<PodKey, Pod>();
        endpoints.insert(key.clone(), pod("pod-a"));
        endpoints.insert(other.clone(), pod("pod-b"));
        let balancer = BalancerBuilder::new().group(1, discover).build();
        let len = {
            let balancer = balancer.clone();
            move || balancer.len()
        };
        settle(&len, 2).await;
        let layer = SessionPersistenceLayer::<PodKey>::keyed(
            policy(),
            SignedCodec::new([[9; 32], [8; 32]]).unwrap(),
        )
        .scope("default/shop/0");
        replicas.push(ServiceBuilder::new().layer(layer).service(balancer));
        senders.push(endpoints);
    }
    for _ in 0..5 {
        let first = get(&replicas[0], None).await;
        let session = cookie_of(&first).unwrap();
        for replica in &replicas {
            let res = get(replica, Some(&session)).await;
            assert_eq!(res.body(), first.body());
            assert_eq!(res.extensions().get::<Decision>(), Some(&Decision::Pinned));
        }
    }
}

//! What persistence costs per request: the layer around a ready inner service, per codec and
//! per decision; token encode and decode; the Cookie header's parse and strip.
//!
//! `cargo bench --bench layer`. The inner service answers at once, so the difference between
//! `inner alone` and a layered case is the layer's own cost.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use http::header::{COOKIE, HeaderMap, HeaderValue};
use http::{Request, Response, request};
use tower::{Layer, Service, service_fn};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::strategy::{Insert, Passive, Strategy};
use tower_session_persistence::token::{
    Binding, Claims, Codec, Dates, PlainCodec, SealedCodec, SignedCodec,
};
use tower_session_persistence::{PinnedEndpoint, ServedBy, SessionPersistenceLayer};

const KEY: [u8; 32] = [7; 32];
const SCOPE: &str = "default/shop/0";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A balancer stand-in that answers at once: the pinned endpoint or "pod-a".
fn inner() -> impl Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone {
    service_fn(|mut req: Request<()>| {
        let key = PinnedEndpoint::<String>::take(req.extensions_mut())
            .map_or_else(|| "pod-a".to_owned(), |p| p.0);
        let mut res = Response::new(());
        ServedBy(key).insert(res.extensions_mut());
        std::future::ready(Ok(res))
    })
}

/// Makes a fresh codec: the layer takes its own, the benchmark keeps one to mint tokens.
type MakeCodec = Box<dyn Fn() -> Box<dyn Codec>>;

fn codecs() -> Vec<(&'static str, MakeCodec)> {
    vec![
        ("signed", Box::new(|| Box::new(SignedCodec::new([KEY]).unwrap()) as Box<dyn Codec>)),
        ("sealed", Box::new(|| Box::new(SealedCodec::new([KEY]).unwrap()) as Box<dyn Codec>)),
        ("plain", Box::new(|| Box::new(PlainCodec::new(Dates::None)) as Box<dyn Codec>)),
    ]
}

fn token(codec: &dyn Codec, endpoint: &str) -> String {
    let claims = Claims {
        endpoint: endpoint.as_bytes().to_vec(),
        issued: Some(now()),
        refreshed: Some(now()),
    };
    codec.encode(&claims, Binding { name: "sid", scope: SCOPE }).unwrap()
}

fn request(cookie: Option<&str>) -> Request<()> {
    let mut req = Request::new(());
    if let Some(cookie) = cookie {
        req.headers_mut().insert(COOKIE, HeaderValue::from_str(cookie).unwrap());
    }
    req
}

fn run<S: Service<Request<()>, Response = Response<()>>>(
    svc: &mut S,
    req: Request<()>,
) -> Response<()>
where
    S::Error: std::fmt::Debug,
{
    // Every future here is ready at its first poll.
    svc.call(req).now_or_never().expect("ready").expect("served")
}

fn layer_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("layer");
    let mut alone = inner();
    group.bench_function("inner alone", |b| {
        b.iter(|| black_box(run(&mut alone, request(Some("a=1; theme=dark")))))
    });
    for (name, make) in codecs() {
        let codec = make();
        let valid = format!("a=1; sid={}; theme=dark", token(&*codec, "pod-a"));
        let elsewhere = format!("a=1; sid={}; theme=dark", token(&*codec, "pod-gone"));
        let policy = SessionPolicy::cookie("sid").build().unwrap();
        let layer = SessionPersistenceLayer::new(policy, make()).scope(SCOPE);
        let mut svc = layer.layer(inner());
        group.bench_function(BenchmarkId::new("no session", name), |b| {
            b.iter(|| black_box(run(&mut svc, request(Some("a=1; theme=dark")))))
        });
        group.bench_function(BenchmarkId::new("valid session", name), |b| {
            b.iter(|| black_box(run(&mut svc, request(Some(&valid)))))
        });
        // The stand-in serves the pinned key; a balancer that cannot re-pins. Emulate that with
        // a pin to a key the inner service rewrites.
        let mut repin = layer.layer(service_fn(|mut req: Request<()>| {
            PinnedEndpoint::<String>::take(req.extensions_mut());
            let mut res = Response::new(());
            ServedBy("pod-a".to_owned()).insert(res.extensions_mut());
            std::future::ready(Ok::<_, Infallible>(res))
        }));
        group.bench_function(BenchmarkId::new("re-pin", name), |b| {
            b.iter(|| black_box(run(&mut repin, request(Some(&elsewhere)))))
        });
    }
    group.finish();
}

fn tokens(c: &mut Criterion) {
    let mut group = c.benchmark_group("token");
    let binding = Binding { name: "sid", scope: SCOPE };
    let claims = Claims {
        endpoint: b"shop-v1/10.0.3.17:8080".to_vec(),
        issued: Some(now()),
        refreshed: Some(now()),
    };
    for (name, make) in codecs() {
        let codec = make();
        let plain_claims = Claims { endpoint: b"s1".to_vec(), ..claims.clone() };
        let claims = if name == "plain" { &plain_claims } else { &claims };
        let token = codec.encode(claims, binding).unwrap();
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| black_box(codec.encode(black_box(claims), binding)))
        });
        group.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| black_box(codec.decode(black_box(&token), binding)))
        });
    }
    group.finish();
}

fn cookie_header(c: &mut Criterion) {
    // Through the public strategies: `Passive` finds our cookie and leaves it, `Insert` (with
    // `indirect`, the default) finds and removes it in one pass, as the layer does.
    let policy = SessionPolicy::cookie("sid").build().unwrap();
    let on_request = |strategy: &dyn Fn(&mut request::Parts) -> Option<String>,
                      headers: &HeaderMap| {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.headers = headers.clone();
        (strategy)(&mut parts)
    };
    let find = |parts: &mut request::Parts| Passive.on_request(&policy, parts).0;
    let take = |parts: &mut request::Parts| Insert::new().on_request(&policy, parts).0;
    let mut group = c.benchmark_group("cookie header");
    for n in [1usize, 10, 50] {
        // Ours sits in the middle of n cookies.
        let mut pairs: Vec<String> =
            (0..n.saturating_sub(1)).map(|i| format!("c{i}=value{i}")).collect();
        pairs.insert(
            pairs.len() / 2,
            "sid=AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
        );
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_str(&pairs.join("; ")).unwrap());
        // Each iteration includes cloning the headers into fresh request parts.
        group.bench_function(BenchmarkId::new("find", n), |b| {
            b.iter(|| black_box(on_request(&find, black_box(&headers)).is_some()))
        });
        group.bench_function(BenchmarkId::new("take", n), |b| {
            b.iter(|| black_box(on_request(&take, black_box(&headers))))
        });
        // A request without our cookie: nothing to take.
        let mut others = HeaderMap::new();
        let without: Vec<&String> = pairs.iter().filter(|p| !p.starts_with("sid=")).collect();
        if !without.is_empty() {
            let joined: Vec<&str> = without.iter().map(|p| p.as_str()).collect();
            others.insert(COOKIE, HeaderValue::from_str(&joined.join("; ")).unwrap());
            group.bench_function(BenchmarkId::new("take, not there", n), |b| {
                b.iter(|| black_box(on_request(&take, black_box(&others))))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, layer_cost, tokens, cookie_header);
criterion_main!(benches);

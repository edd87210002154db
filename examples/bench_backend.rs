//! `bench_backend`: the smallest useful HTTP/1.1 origin, for load tests of the gateway against
//! HAProxy (`benches/compare_haproxy.sh`): both proxies forward to the same processes, so the
//! backends cost the same whichever proxy is measured.
//!
//! ```text
//! cargo run --release --example bench_backend -- 127.0.0.1:9101 127.0.0.1:9102
//! ```
//!
//! Each address gets a thread of its own with a single-threaded runtime. Every request, whatever
//! its method and path, is answered `200` with `x-server: s<N>` and the body `s<N>\n`, `N`
//! counting the addresses from one; the request body is not read. Prints `ready` once every
//! address listens, and runs until killed.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn main() {
    let addrs: Vec<SocketAddr> = std::env::args()
        .skip(1)
        .map(|arg| arg.parse().unwrap_or_else(|_| panic!("not an IP:port: {arg}")))
        .collect();
    assert!(!addrs.is_empty(), "usage: bench_backend IP:PORT...");
    let (ready, listening) = std::sync::mpsc::channel();
    let threads: Vec<_> = addrs
        .into_iter()
        .enumerate()
        .map(|(i, addr)| {
            let ready = ready.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(serve(addr, format!("s{}", i + 1), ready));
            })
        })
        .collect();
    drop(ready);
    for _ in &threads {
        listening.recv().expect("every backend listens");
    }
    println!("ready");
    for thread in threads {
        let _ = thread.join();
    }
}

async fn serve(addr: SocketAddr, name: String, ready: std::sync::mpsc::Sender<()>) {
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|err| panic!("cannot listen on {addr}: {err}"));
    ready.send(()).expect("main waits");
    let body = Bytes::from(format!("{name}\n"));
    let server = http::HeaderValue::try_from(name).expect("a header value");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let (body, server) = (body.clone(), server.clone());
        tokio::spawn(async move {
            let service = service_fn(move |_: Request<Incoming>| {
                let mut res = Response::new(Full::new(body.clone()));
                res.headers_mut().insert("x-server", server.clone());
                std::future::ready(Ok::<_, Infallible>(res))
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

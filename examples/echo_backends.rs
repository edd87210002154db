//! `echo_backends`: small HTTP backends for trying the gateway's configurations by hand.
//!
//! ```text
//! cargo run --example echo_backends                  # s1, s2, s3 on 127.0.0.1:9001-9003
//! cargo run --example echo_backends -- 9101 9102     # s1, s2 on those ports
//! ```
//!
//! Each backend answers plain text naming itself and the `Cookie` header it received, with
//! `X-Server` and `X-Seen-Cookie` headers saying the same. Some paths make it behave like the
//! applications that HAProxy's cookie modes were built for (the origins of
//! `reference/haproxy/haproxy-sticky.cfg`):
//!
//! | path | the backend adds |
//! |---|---|
//! | `/app-srv` | `Set-Cookie: SRV=app-value; Path=/; Max-Age=3600` (rewrite, preserve) |
//! | `/app-jsession` | `Set-Cookie: JSESSIONID=abc123; Path=/; HttpOnly` (prefix) |
//! | `/login` | without a `JSESSIONID` cookie: `Set-Cookie: JSESSIONID=<name>-<n>; Path=/; HttpOnly`, a new session (learn) |
//! | `/mcp` | without an `Mcp-Session-Id` header: `Mcp-Session-Id: <name>-<n>`, a new session (learn) |
//! | `/logout` | `Set-Cookie: SRV=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/` (preserve) |
//! | `/etag` | `ETag: "v1"` (nocache) |
//! | `/redirect` | `302` to `/home` (URL sessions) |
//!
//! It runs until Ctrl-C.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A number for each new application session, unique in this process.
fn next_session() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn answer(name: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let seen = req
        .headers()
        .get_all("cookie")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join("; ");
    let mut res = Response::builder().header("x-server", name).header("x-seen-cookie", &seen);
    match req.uri().path() {
        p if p.starts_with("/app-srv") => {
            res = res.header("set-cookie", "SRV=app-value; Path=/; Max-Age=3600");
        }
        p if p.starts_with("/app-jsession") => {
            res = res.header("set-cookie", "JSESSIONID=abc123; Path=/; HttpOnly");
        }
        p if p.starts_with("/login") && !seen.contains("JSESSIONID=") => {
            let cookie = format!("JSESSIONID={name}-{}; Path=/; HttpOnly", next_session());
            res = res.header("set-cookie", cookie);
        }
        p if p.starts_with("/mcp") && !req.headers().contains_key("mcp-session-id") => {
            res = res.header("mcp-session-id", format!("{name}-{}", next_session()));
        }
        p if p.starts_with("/logout") => {
            res = res.header("set-cookie", "SRV=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/");
        }
        p if p.starts_with("/etag") => res = res.header("etag", "\"v1\""),
        p if p.starts_with("/redirect") => res = res.status(302).header("location", "/home"),
        _ => {}
    }
    let body = format!("{name} {} cookie: {seen}\n", req.uri());
    res.body(Full::new(Bytes::from(body))).expect("a valid response")
}

async fn serve(name: String, addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("{name} listening on http://{addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let res = answer(&name, &req);
                async move { Ok::<_, Infallible>(res) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[tokio::main]
async fn main() {
    let mut ports: Vec<u16> = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.parse() {
            Ok(port) => ports.push(port),
            Err(_) => {
                eprintln!("usage: echo_backends [PORT ...]   (default 9001 9002 9003)");
                std::process::exit(2);
            }
        }
    }
    if ports.is_empty() {
        ports = vec![9001, 9002, 9003];
    }
    let mut servers = tokio::task::JoinSet::new();
    for (i, port) in ports.into_iter().enumerate() {
        servers.spawn(serve(format!("s{}", i + 1), SocketAddr::from(([127, 0, 0, 1], port))));
    }
    tokio::select! {
        Some(Ok(Err(error))) = servers.join_next() => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
        _ = tokio::signal::ctrl_c() => {}
    }
}

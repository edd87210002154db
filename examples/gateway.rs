//! `gateway`: a reverse proxy with Gateway API session persistence (GEP-1619), configured by
//! `HTTPRoute` YAML and built only from this crate's public API, axum, hyper-util and
//! tower-http.
//!
//! Its command line and its configuration file are a stable interface: scripts and tests drive
//! them.
//!
//! # Command line
//!
//! ```text
//! gateway                          demo mode (below)
//! gateway --config FILE            run the routes of a YAML configuration file
//! gateway --config FILE --check    validate the file and exit (`config ok: N rule(s)`; with
//!                                  warnings, `, M warning(s)` and a `warning: <yaml path>:
//!                                  …` line each; they are logged at load too)
//! options:
//!   --listen ADDR                  listen on ADDR (IP:port); overrides the file and the
//!                                  demo's 127.0.0.1:8080; port 0 picks a free port. Refused
//!                                  (exit 1) when the file has `gateways:`: the listeners
//!                                  say where to listen
//!   -h, --help                     usage
//! ```
//!
//! Once it listens, the gateway prints exactly one line on stdout, and flushes it:
//! `listening on http://IP:PORT` (the actual port, also with `--listen 127.0.0.1:0`). With
//! `gateways:` it prints one such line per port, `listening on SCHEME://IP:PORT` (`http` or
//! `https`), in the order the ports first appear among the listeners in the file (listeners
//! that share an address and port share a line; a `port: 0` listener has a port, and a line,
//! of its own); the first line still names the first listener. With `admin:` one more line
//! follows: `admin on http://IP:PORT`. Nothing else comes before these lines. Logs go
//! to stderr, filtered by `RUST_LOG` (default `info`), with one access-log line per request on
//! the `access` target:
//! `127.0.0.1 "GET /cart HTTP/1.1" 200 3ms rule=default/shop/0 session=pinned endpoint=echo/127.0.0.1:9001 bytes=512 upstream=2ms id=<request id>`
//! (`session`: new, pinned, re-pinned, expired, invalid, rejected, or `-`; `endpoint`: the one
//! that served or failed; `bytes`: response body bytes sent, `(cut)` when the body ended
//! early; the line is written when the body is done; the path is logged without its query
//! and `;` parameters, in access lines and in debug spans, and no token is ever logged).
//!
//! Exit status: `0` after Ctrl-C or SIGTERM (idle connections and half-sent request heads are
//! closed at once; requests in flight are finished first, for up to `timeouts.shutdownGrace`)
//! or a passed `--check`; `1` for a configuration error, printed on stderr as
//! `config error: <yaml path>: <rule>` (for example
//! `config error: routes[0].spec.rules[1].sessionPersistence.absoluteTimeout: "1d" is not a
//! Gateway API duration (GEP-2257), e.g. 1h30m or 10s`), or a runtime error such as an address
//! in use; `2` for a usage error (unknown argument, missing value).
//!
//! # Demo mode
//!
//! `cargo run --example gateway` starts three backends, `demo-1` to `demo-3`, on loopback
//! ports, and the gateway on `127.0.0.1:8080` with one route, `PathPrefix /`, over the three,
//! with cookie session persistence (cookie `demo-session`). Each backend answers JSON with its
//! name, the path, a per-visitor visit counter (kept with its own `demo-visitor` cookie), and
//! the `Cookie` header it received. Try:
//!
//! ```text
//! rm -f jar; for i in 1 2 3 4 5; do curl -s -c jar -b jar http://127.0.0.1:8080/; echo; done
//! ```
//!
//! Every answer names the same backend and the counter grows; without `-c jar -b jar` the
//! requests spread over the backends. The session cookie keeps the GEP-1619 defaults (`Secure`,
//! `HttpOnly`, `SameSite=Strict`): curl, browsers and reqwest send `Secure` cookies over plain
//! `http://` to loopback addresses. With `--listen` on any other address, the demo route turns
//! `Secure` off in its extension block, and says so.
//!
//! # Configuration file
//!
//! ```yaml
//! listen: 127.0.0.1:8080           # optional, IP:port, default 127.0.0.1:8080
//! keys: ["<base64 of 32+ bytes>", "<older key>"]  # optional; the first signs, all verify.
//!                                  # Absent: a random key per process (sessions do not
//!                                  # survive a restart nor span replicas; a warning says so)
//! timeouts:                        # optional, GEP-2257 durations (HAProxy's equivalent)
//!   requestHeader: 10s             # a whole request head, from the connection's start or
//!                                  # its first byte (timeout http-request); then closed
//!   clientIdle: 60s                # keep-alive between requests, and a client that stops
//!                                  # reading (timeout http-keep-alive, timeout client)
//!   clientBody: 30s                # a pause in a request body (0s: none); then 408
//!   tunnelIdle: 1h                 # upgraded connections with no traffic (timeout tunnel)
//!   shutdownGrace: 10s             # how long requests in flight may finish on SIGTERM
//!   connect: 3s                    # opening a backend connection (timeout connect); then
//!                                  # 502, the endpoint ejected: the request was never sent
//!   backendResponse: 30s           # from the end of the request body to the response head
//!                                  # (0s: none); then 504. A steady upload of any length
//!                                  # is never cut
//!   backendIdle: 30s               # a pause in a response body (0s: none); then cut
//!                                  # (`timeout: 30s` at the top level, the older name of
//!                                  # backendResponse, still works; not both)
//! limits:                          # optional
//!   maxConnections: 10000          # client connections at once; beyond, the gateway stops
//!                                  # accepting. Default: half the file descriptors the
//!                                  # process may open (raised to the hard limit), less 64
//!   maxConnectionsPerEndpoint: 256 # requests in flight per endpoint, over all threads; the
//!                                  # rest queue (x-balancer failfast, endpointQueue).
//!                                  # Default: none
//!   maxRequestHeaderBytes: 16384   # a request head (8192 to 1048576); then 431
//!   maxRequestHeaders: 100         # header fields in a request head; then 431
//! trustedProxies: ["10.0.0.0/8"]   # optional: peers whose X-Forwarded-*/Forwarded are kept
//!                                  # and appended to; from anyone else they are replaced
//! services:                        # what a Kubernetes Service would resolve to
//!   - name: echo-v1
//!     endpoints: ["127.0.0.1:9001", "127.0.0.1:9002"]   # IP:port, at least one
//!   - name: echo-v2
//!     appProtocol: http               # or kubernetes.io/h2c: HTTP/2 to the endpoints (gRPC)
//!     endpoints: [{address: "127.0.0.1:9003", id: s3, draining: false}]
//!                                     # id: the endpoint's key in tokens (HAProxy's
//!                                     # `server … cookie s3`), default `<service>/<address>`;
//!                                     # draining: no new sessions, its sessions stay;
//!                                     # drainTimeout: 5m (with draining) then it is taken
//!                                     # out and its remaining sessions re-pin
//!     healthCheck:                    # optional: active checks, once per process
//!       path: /healthz                # HTTP GET (without a path: a TCP connect; for
//!                                     # kubernetes.io/h2c: grpc.health.v1 Check, SERVING)
//!       interval: 2s                  # between checks of one endpoint (±10% jitter)
//!       timeout: 1s                   # a check not answered by then failed
//!       fall: 3                       # failures in a row that take an endpoint down: its
//!                                     # sessions fail over, it takes no new ones
//!       rise: 2                       # successes in a row that bring it back (never a
//!                                     # timer alone)
//!       expectedStatuses: [200, "200-399"]  # healthy answers (default 200-399)
//! admin: {listen: 127.0.0.1:9901}  # optional (off when absent; loopback by default): GET
//!                                  # /metrics (Prometheus text), /healthz (alive), /readyz
//!                                  # (listeners serving, at least one endpoint not ejected)
//! gateways:                        # optional Gateway API Gateway manifests: the listeners.
//!                                  # Absent: one HTTP listener on `listen`
//!   - apiVersion: gateway.networking.k8s.io/v1
//!     kind: Gateway
//!     metadata: {name: edge, namespace: default}
//!     spec:
//!       addresses: [{type: IPAddress, value: 127.0.0.1}]  # else `listen`'s IP, else 0.0.0.0
//!       listeners:                    # listeners on one port: one protocol, distinct hostnames
//!         - {name: http, protocol: HTTP, port: 8080, hostname: shop.example}
//!         - name: https
//!           protocol: HTTPS           # TLS terminated here: ALPN h2 and http/1.1, TLS 1.2/1.3
//!           port: 8443                # 0: a free port (our extension, for tests)
//!           hostname: "*.shop.example" # optional; SNI and the request's host choose
//!           tls: {mode: Terminate, certificateRefs: [{kind: Secret, name: shop-tls}]}
//!           allowedRoutes: {namespaces: {from: Same}}  # Same (default) or All
//! secrets:                         # kind: Secret, type: kubernetes.io/tls, as kubectl takes it
//!   - apiVersion: v1
//!     kind: Secret
//!     type: kubernetes.io/tls
//!     metadata: {name: shop-tls}
//!     data: {tls.crt: "<base64 of the certificate PEM>", tls.key: "<base64 of the key PEM>"}
//!                                  # or stringData: the PEM text itself
//!                                  # several certificateRefs: SNI picks by the certificates'
//!                                  # names (exact, then wildcard); an expired one warns
//! routes:                          # Gateway API HTTPRoute and GRPCRoute manifests
//!   - apiVersion: gateway.networking.k8s.io/v1        # or v1beta1
//!     kind: HTTPRoute
//!     metadata: {name: shop, namespace: default}      # namespace optional ("default");
//!                                                     # labels, annotations ignored
//!     spec:
//!       hostnames: ["shop.example", "*.shop.example"] # optional: absent = any host
//!       parentRefs: [{name: edge, sectionName: https}] # with gateways: the listeners it
//!                                                     # attaches to (name, namespace,
//!                                                     # sectionName, port; absent: all);
//!                                                     # the listener's hostname meets the
//!                                                     # route's. Without gateways: ignored
//!       rules:
//!         - name: cart                                # optional (GEP-995); names the scope
//!           matches: [{path: {type: PathPrefix, value: /cart}}]  # Exact or PathPrefix;
//!                                                     # absent = PathPrefix /
//!         # filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 8443,
//!         #            statusCode: 301}}]             # instead of backendRefs: answer
//!                                                     # with a redirect (scheme, hostname,
//!                                                     # port; 302 by default)
//!           backendRefs:                              # weight default 1, 0 to 1000000;
//!             - {name: echo-v1, port: 80, weight: 70} # port ignored; kind Service only
//!             - {name: echo-v2, port: 80, weight: 30}
//!           sessionPersistence:                       # both Gateway API shapes: main's
//!             cookie: {name: shop-session, lifetimeType: Permanent}  # cookie/header, and
//!             absoluteTimeout: 1h                     # v1.6's sessionName/cookieConfig
//!           x-session-persistence:    # optional extension block, every field optional
//!             onUnavailable: rebalance # or reject: 503 when the session's endpoint is gone
//!             secure: true            # cookie attributes; GEP defaults: Secure, HttpOnly,
//!             httpOnly: true          # SameSite=Strict, no Domain, not Partitioned
//!             sameSite: Strict        # Strict | Lax | None | Omit
//!             domain: example.com     # or a list: [a.example, b.example] (repeated Domain)
//!             partitioned: false
//!             attributes: [Priority=High]   # written as they are
//!             strategy: insert        # cookie sessions (HAProxy's words): insert (default:
//!                                     # our own cookie), rewrite (the backend's cookie of
//!                                     # that name carries the token), prefix (`<token>~`
//!                                     # before the backend's value), passive (read only),
//!                                     # url (a URL parameter named like the cookie)
//!           # url: {parameter: path, strip: true, exposeHeader: x-session-token}
//!                                     # with strategy url only: path (`;name=TOKEN`) or
//!                                     # query (`name=TOKEN`); strip it before the backend
//!                                     # (default true); offer a valid token to the backend
//!                                     # in a header (default none)
//!             codec: signed           # signed (default; AES-SIV, endpoint hidden), sealed
//!                                     # (XChaCha20-Poly1305, hides even which sessions share
//!                                     # an endpoint), plain (HAProxy's values: the endpoint
//!                                     # id, `id|last|first` with idleTimeout/absoluteTimeout
//!                                     # as maxidle/maxlife; for migrating HAProxy clients)
//!             indirect: true          # insert, rewrite: remove the cookie before the backend
//!                                     # (default true for insert, false for rewrite)
//!             preserve: false         # insert: a backend's own cookie of our name wins
//!             nocache: false          # insert: Cache-Control: private on cacheable answers
//!             postonly: false         # insert: set the cookie on answers to POST only
//!             maxClockSkew: 60s       # how far in the future a token may be dated
//!             idleTimeout: 30m        # a session unused this long ends (GEP-2257); the
//!                                     # token carries its last use, so no server state.
//!                                     # Our field: Gateway API v1.6 and main dropped the
//!                                     # stanza's idleTimeout (still read there, with a
//!                                     # warning in the main shape; not both)
//!             refreshInterval: 15m    # how often a token is re-issued (default: a quarter
//!                                     # of idleTimeout, else never)
//!             scope: shop             # rules naming the same scope share their sessions
//!                                     # (and may then use the same cookie name and path)
//!           x-balancer:               # optional extension block, every field optional
//!             failfast: 1s            # how long a request waits for its endpoint to be ready
//!             endpointQueue: 128      # how many requests may wait for one endpoint (both
//!                                     # apply with limits.maxConnectionsPerEndpoint; without
//!                                     # it endpoints are always ready)
//!             ejectFor: 10s           # how long an endpoint that refused a connection (or
//!                                     # timed out connecting) is left out by every serving
//!                                     # thread (its sessions fail over); 0s: never
//!             redispatches: 3         # how many times a request its endpoint never got goes
//!                                     # to another endpoint, any method, body intact (the
//!                                     # session re-pins once); 0: never. Bounded by a retry
//!                                     # budget: 20% of requests plus 10 a second
//!             replay: false           # also retry, elsewhere, a bodiless idempotent request
//!                                     # (GET, HEAD, OPTIONS, PUT, DELETE) that failed after
//!                                     # it was sent
//!             consecutive5xx: 5       # eject an endpoint (for ejectFor, on every thread)
//!                                     # after this many 5xx answers in a row; absent: off
//!             affinity: {header: x-user}  # or {cookie: NAME} or {clientIP: true}: requests
//!                                     # without a session go where a hash of it points
//! ```
//!
//! Unknown fields are errors, and so are options that do not apply (cookie options on a header
//! session, `preserve` with `strategy: rewrite`, `x-session-persistence` without
//! `sessionPersistence`), and so is a file without routes. Configurations that could never
//! work are refused too: cookies browsers would drop (`__Host-` with a `Domain`, a path other
//! than `/` or without `Secure`; `__Secure-` without `Secure`; `SameSite=None` without
//! `Secure`), `attributes` that have a field of their own (`Max-Age`, `Expires`, `Domain`,
//! `Path`, `Secure`, `HttpOnly`, `SameSite`, `Partitioned`), session headers HTTP itself uses
//! (`cookie`, `host`, `content-length`, `transfer-encoding`, …), and two rules whose cookies
//! share a name, path and domain for the same hosts (a browser would keep one for both)
//! unless they share a `scope`. Each rule is its own persistence scope, `<namespace>/<route>/<rule
//! name>` (or `<rule index>` for a rule without a `name`), or `<namespace>/x-scope/<scope>`
//! with `x-session-persistence.scope`: rules never share sessions unless they name the same
//! `scope`. A cookie or header without a name is named `sp-<namespace>-<route>-<rule name or
//! index>`. Name the rules that have `sessionPersistence`: an unnamed rule's sessions (and
//! default cookie name) follow its index, so inserting a rule above it ends them. A rule without
//! `sessionPersistence` adds no cookie or header and leaves the backend's headers alone; a rule
//! without `backendRefs` answers 500.
//!
//! Learned sessions (`strategy: learn`, `examples/gateway/store.rs`): persistence on the
//! application's own cookie or header, learned from the backend's responses; the gateway adds
//! and changes nothing, and stores identifiers only as keyed hashes:
//!
//! ```yaml
//! store: {memory: {maxEntries: 1000000}}  # top level, optional: the default; or
//!                                         # {redis: {url: "redis://HOST:PORT/DB", timeout: 50ms,
//!                                         # prefix: "tsp:learn:"}} (the `redis` feature, on by default;
//!                                         # needs `keys`, the same on every replica)
//! # in a rule, next to sessionPersistence (its absoluteTimeout and x-session-persistence's
//! # idleTimeout bound the mapping):
//!           x-session-persistence:
//!             strategy: learn
//!             learn: {cookie: JSESSIONID, fromRequests: false}  # or {header: Mcp-Session-Id};
//!                                     # default the stanza's cookie.name / header.name;
//!                                     # fromRequests: also learn ids clients send first
//! ```
//!
//! A `kind: GRPCRoute` in `routes` has rules with `matches: [{method: {service: pkg.Svc,
//! method: Call}}]` (`Exact`; `service` alone matches all its methods; no matches: all),
//! `backendRefs` to Services with `appProtocol: kubernetes.io/h2c`, and `sessionPersistence`
//! (`type: Header` carries the session in the calls' metadata); a call no rule matches gets
//! `grpc-status: 12` (UNIMPLEMENTED).
//!
//! # Live changes
//!
//! With `--config`, the file is read again when it changes (checked once a second) and on
//! `SIGHUP`. Changes to `services` apply at once, without a restart: endpoints added, removed
//! (their sessions re-pin, per `onUnavailable`), marked `draining` or serving again, and
//! `backendRefs` weights. No session whose endpoint is unchanged moves. The in-process store's
//! limits (`store.memory`) change in place too, keeping the learned sessions. Other changes
//! (routes, matches, persistence, keys; another store: memory and Redis swapped, another Redis
//! URL, timeout or prefix, which would start without the learned sessions) are logged as
//! needing a restart and are not applied; a file that
//! fails its checks is logged and changes nothing. Certificates change live too: editing a
//! Secret swaps it for new TLS handshakes, and established connections keep going (listeners
//! themselves, their ports and hostnames, need a restart).
//!
//! # Routing and forwarding
//!
//! Among the rules matching a request, the one with the most specific hostname wins, then an
//! `Exact` path over a `PathPrefix`, then the longer prefix, then the earlier rule in the file.
//! `PathPrefix` matches whole segments (`/cart` matches `/cart/x`, not `/cartx`), on the path
//! without the session's path parameter (`strategy: url`: `/cart;jsessionid=T` matches
//! `/cart`). No match: `404`. With `gateways:`, only the rules attached to the listener a
//! request came in on match it. A request names one host: two `Host` headers, or an
//! absolute-form URI or HTTP/2 `:authority` that disagrees with `Host`, get `400`; `CONNECT`
//! gets `405`. The backend gets the client's host (`Host`; for h2c backends `:authority`),
//! `X-Forwarded-For`, `X-Forwarded-Proto` (`https` on HTTPS listeners), `X-Forwarded-Host`, RFC 7239 `Forwarded`, `Via:
//! 1.1 gateway` and `X-Request-Id` (a trusted proxy's, else a new one). From a peer outside
//! `trustedProxies` every forwarded header the client sent is replaced (as HAProxy's `option
//! forwardfor` with `http-request del-header` would); from a trusted one they are appended
//! to. Hop-by-hop headers are removed both ways (and an origin's `Content-Length` that comes
//! with `Transfer-Encoding`); bodies stream; HTTP/1.1 upgrades (WebSocket) are pinned like any
//! request and tunnelled after the backend's `101` (an unrequested `101` is a `502`). Errors:
//! the session's endpoint unavailable under `onUnavailable: reject` → `503`; no endpoint →
//! `503`; no response head within `backendResponse` → `504`; connection refused, connect
//! timeout or reset → `502`; a malformed request body → `400`, a stalled one → `408` (the
//! endpoint is not blamed). The access-log line names the endpoint that served or failed. Endpoints are keyed `<service>/<address>` in session tokens (signed and
//! encrypted: they never show it). Rules without `sessionPersistence` may still use
//! `x-balancer`.

// The crate root of an example looks for modules next to it (`examples/cli.rs`); these live in
// `examples/gateway/`, which cargo does not mistake for another example.
#[path = "gateway/access_log.rs"]
mod access_log;
#[path = "gateway/admin.rs"]
mod admin;
#[path = "gateway/balancing.rs"]
mod balancing;
#[path = "gateway/cli.rs"]
mod cli;
#[path = "gateway/client_body.rs"]
mod client_body;
#[path = "gateway/config.rs"]
mod config;
#[path = "gateway/connection.rs"]
mod connection;
#[path = "gateway/demo.rs"]
mod demo;
#[path = "gateway/edge.rs"]
mod edge;
#[path = "gateway/failure.rs"]
mod failure;
#[path = "gateway/grpc.rs"]
mod grpc;
#[path = "gateway/h2c.rs"]
mod h2c;
#[path = "gateway/health.rs"]
mod health;
#[path = "gateway/keep_alive.rs"]
mod keep_alive;
#[path = "gateway/listeners.rs"]
mod listeners;
#[path = "gateway/persistence.rs"]
mod persistence;
#[path = "gateway/pool.rs"]
mod pool;
#[path = "gateway/proxy.rs"]
mod proxy;
#[path = "gateway/redirect.rs"]
mod redirect;
#[path = "gateway/reload.rs"]
mod reload;
#[path = "gateway/routing.rs"]
mod routing;
#[path = "gateway/server.rs"]
mod server;
#[path = "gateway/stack.rs"]
mod stack;
#[path = "gateway/store.rs"]
mod store;
#[path = "gateway/tls.rs"]
mod tls;
#[path = "gateway/upgrade.rs"]
mod upgrade;

/// mimalloc rather than the system's allocator: the gateway allocates and frees small buffers
/// on every request, and with glibc's malloc that was 14% of its CPU (`docs/BENCHMARKS.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::config::Plan;
use crate::listeners::Protocol;
use crate::stack::Gateway;

fn main() -> ExitCode {
    // This thread runs the control runtime: startup, signals, configuration changes and the
    // demo's backends. Requests are served by one thread per core, each with a runtime of its
    // own (`server::Workers`).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(control())
}

async fn control() -> ExitCode {
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    if args.help {
        println!("{}", cli::USAGE);
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let (mut plan, demo_backends) = match load(&args).await {
        Ok(loaded) => loaded,
        Err(Failed::Config(message)) => {
            eprintln!("config error: {message}");
            return ExitCode::from(1);
        }
        Err(Failed::Runtime(message)) => {
            eprintln!("error: {message}");
            return ExitCode::from(1);
        }
    };
    for warning in &plan.warnings {
        tracing::warn!(field = %warning.path, "{}", warning.message);
    }
    if args.check {
        match plan.warnings.len() {
            0 => println!("config ok: {} rule(s)", plan.rules.len()),
            n => println!("config ok: {} rule(s), {n} warning(s)", plan.rules.len()),
        }
        for warning in &plan.warnings {
            println!("warning: {warning}");
        }
        return ExitCode::SUCCESS;
    }
    if let Some(listen) = args.listen {
        if plan.listeners.is_some() {
            // The Gateway's listeners say where to listen, each on its own port: one
            // address from the command line cannot stand for them.
            eprintln!(
                "config error: --listen: the file has gateways:, whose listeners say where to \
                 listen (spec.addresses and each listener's port; port 0 picks a free one)"
            );
            return ExitCode::from(1);
        }
        plan.listen = listen;
    }
    match run(plan, demo_backends, args.config.clone()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

enum Failed {
    Config(String),
    Runtime(String),
}

/// Reads the configuration file, or starts the demo backends and makes the demo's
/// configuration.
async fn load(args: &cli::Args) -> Result<(Plan, Option<demo::Demo>), Failed> {
    match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|err| Failed::Config(format!("cannot read {}: {err}", path.display())))?;
            let plan = config::parse(&text).map_err(|err| Failed::Config(err.to_string()))?;
            Ok((plan, None))
        }
        None => {
            let listen = match args.listen {
                Some(listen) => listen,
                None => config::parse_listen(config::DEFAULT_LISTEN).map_err(Failed::Runtime)?,
            };
            let demo = demo::Demo::start(listen).await.map_err(Failed::Runtime)?;
            let plan = config::parse(&demo.config(listen)).map_err(|err| {
                Failed::Runtime(format!("the demo configuration is invalid: {err}"))
            })?;
            Ok((plan, Some(demo)))
        }
    }
}

async fn run(
    plan: Plan,
    demo: Option<demo::Demo>,
    config: Option<std::path::PathBuf>,
) -> Result<(), String> {
    if plan.ephemeral_key && demo.is_none() {
        tracing::warn!(
            "no `keys` configured: signing sessions with a random key made up for this process; \
             sessions will not survive a restart or span replicas"
        );
    }
    if plan.rules.is_empty() {
        tracing::warn!("no routes configured: every request gets 404");
    }
    let ports: Vec<(std::net::SocketAddr, Protocol)> = match &plan.listeners {
        None => vec![(plan.listen, Protocol::Http)],
        Some(listeners) => listeners.ports.iter().map(|port| (port.addr, port.protocol)).collect(),
    };
    let tls = match &plan.listeners {
        Some(listeners) => tls::Tls::new(listeners)?,
        None => tls::Tls::default(),
    };
    let mut sockets: Vec<Vec<server::Socket>> = Vec::new();
    let mut urls = Vec::with_capacity(ports.len());
    for (port, (addr, protocol)) in ports.into_iter().enumerate() {
        let listeners = server::bind(addr, server::threads()).await?;
        let bound = listeners[0]
            .local_addr()
            .map_err(|err| format!("cannot read the listen address: {err}"))?;
        urls.push(format!("{}://{bound}", protocol.scheme()));
        sockets.resize_with(sockets.len().max(listeners.len()), Vec::new);
        for (thread, listener) in listeners.into_iter().enumerate() {
            sockets[thread].push(server::Socket { listener, port, tls: tls.acceptor(port) });
        }
    }
    let addr = urls[0].clone();
    // The admin port: its recorder before anything is measured, its socket bound before the
    // traffic ports serve (a bad address fails the start).
    let admin = match plan.admin {
        Some(listen) => {
            let handle = admin::install()?;
            Some(admin::AdminPort::bind(listen, handle).await?)
        }
        None => None,
    };
    let admin_url = admin.as_ref().map(admin::AdminPort::local_addr).transpose()?;
    let admin_ready = admin.map(admin::AdminPort::serve);
    let plan = Arc::new(plan);
    let shared = plan.clone();
    // One per process: the per-endpoint limits are shared by every serving thread.
    let upstreams = proxy::Upstreams::new(&plan.edge);
    let serving = server::Serving::new(plan.edge.timeouts, plan.edge.limits);
    let workers = server::Workers::start(
        sockets,
        move || Gateway::new(&shared, &upstreams),
        serving,
        Duration::from_secs(5),
    )
    .await?;
    let url = addr.clone();
    {
        // One stable line first: scripts wait for it (then one per further port, in the
        // file's order). Then, in demo mode, how to try it.
        let mut text: String = urls.iter().map(|url| format!("listening on {url}\n")).collect();
        if let Some(admin) = admin_url {
            text.push_str(&format!("admin on http://{admin}\n"));
        }
        if let Some(demo) = &demo {
            text.push('\n');
            text.push_str(&demo.instructions(&url));
            text.push('\n');
        }
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|err| format!("cannot write to stdout: {err}"))?;
    }
    if let Some(ready) = admin_ready {
        ready(workers.gateways.clone());
    }
    let threads = workers.gateways.len();
    tracing::info!(%addr, rules = plan.rules.len(), threads, "gateway started");
    // Checks run here, once per process, and move endpoints in every thread's balancers.
    let checks = Arc::new(health::HealthChecks::start(&plan, workers.gateways.clone()));
    if let Some(path) = config {
        tokio::spawn(reload::watch(
            path,
            workers.gateways.clone(),
            checks.clone(),
            tls.clone(),
            plan.clone(),
        ));
    }
    workers.serve_until(server::shutdown_signal()).await;
    Ok(())
}

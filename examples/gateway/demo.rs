//! Demo mode: three in-process backends and the configuration that puts the gateway in front
//! of them.
//!
//! Each backend answers JSON naming itself, the path, and a visit counter for the visitor it
//! recognises by its own `demo-visitor` cookie. The counter keeps growing only while a client
//! stays on one backend: that is what session persistence buys. The JSON also shows the
//! `Cookie` header the backend received, where the gateway's `demo-session` cookie never
//! appears (the route is `indirect`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::net::TcpListener;

/// The demo route's session cookie.
pub(crate) const COOKIE_NAME: &str = "demo-session";
/// The demo backends' own visitor cookie.
const VISITOR_COOKIE: &str = "demo-visitor";
/// A backend forgets its visitors beyond this many, so that a load test cannot exhaust memory.
const MAX_VISITORS: usize = 100_000;

/// One demo backend's state: its name and its visitors' counters.
struct Backend {
    name: String,
    visits: Mutex<HashMap<String, u64>>,
}

/// The running demo: its backends, and whether its session cookie is `Secure`.
pub(crate) struct Demo {
    backends: Vec<(String, SocketAddr)>,
    /// Clients send `Secure` cookies over plain http to loopback addresses only (curl, browsers
    /// and reqwest alike), so the demo keeps the GEP default there and drops it elsewhere.
    secure: bool,
}

impl Demo {
    /// Starts the three demo backends on loopback ports of the system's choosing, for a
    /// gateway that will listen on `listen`.
    pub(crate) async fn start(listen: SocketAddr) -> Result<Self, String> {
        let mut backends = Vec::new();
        for i in 1..=3 {
            let name = format!("demo-{i}");
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|err| format!("cannot start demo backend {name}: {err}"))?;
            let addr = listener.local_addr().map_err(|err| err.to_string())?;
            let state = Arc::new(Backend { name: name.clone(), visits: Mutex::default() });
            let app = axum::Router::new().fallback(answer).with_state(state);
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, app).await {
                    tracing::error!(%error, "demo backend stopped");
                }
            });
            backends.push((name, addr));
        }
        Ok(Self { backends, secure: listen.ip().is_loopback() })
    }

    /// The demo configuration, in the file format: one route, `PathPrefix /`, over the three
    /// backends, with cookie session persistence.
    pub(crate) fn config(&self, listen: SocketAddr) -> String {
        let mut yaml = format!("listen: \"{listen}\"\nservices:\n");
        for (name, addr) in &self.backends {
            yaml.push_str(&format!("  - name: {name}\n    endpoints: [\"{addr}\"]\n"));
        }
        let refs = self
            .backends
            .iter()
            .map(|(name, _)| format!("{{name: {name}, port: 80}}"))
            .collect::<Vec<_>>()
            .join(", ");
        yaml.push_str(&format!(
            "routes:
  - apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {{name: demo}}
    spec:
      rules:
        - matches: [{{path: {{type: PathPrefix, value: /}}}}]
          backendRefs: [{refs}]
          sessionPersistence: {{cookie: {{name: {COOKIE_NAME}}}}}
          x-session-persistence: {{secure: {secure}}}
",
            secure = self.secure
        ));
        yaml
    }

    /// What to print once the demo gateway listens on `url`.
    pub(crate) fn instructions(&self, url: &str) -> String {
        let list = self
            .backends
            .iter()
            .map(|(name, addr)| format!("{name} on {addr}"))
            .collect::<Vec<_>>()
            .join(", ");
        let secure = if self.secure {
            "It has the GEP-1619 defaults, Secure, HttpOnly and SameSite=Strict: curl and
browsers send Secure cookies over plain http to loopback addresses."
        } else {
            "Secure is off for this non-loopback address: clients send Secure cookies over
plain http to loopback addresses only."
        };
        format!(
            "\
demo mode: three backends behind one route (PathPrefix /):
    {list}
with cookie session persistence, cookie {COOKIE_NAME}.
{secure}

With a cookie jar, every request reaches the same backend and its visit
counter grows:

    rm -f jar; for i in 1 2 3 4 5; do curl -s -c jar -b jar {url}/; echo; done

Without a jar (or with a fresh one), each request is a new session, and
requests spread over the three backends with the counter at 1:

    for i in 1 2 3 4 5; do curl -s {url}/; echo; done

\"cookies_seen\" is the Cookie header the backend received: {COOKIE_NAME} is
never in it, because the gateway removes its own cookie before forwarding.
Ctrl-C stops the gateway."
        )
    }
}

async fn answer(State(backend): State<Arc<Backend>>, uri: Uri, headers: HeaderMap) -> Response {
    let cookies_seen = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join("; ");
    let presented = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(VISITOR_COOKIE)?.strip_prefix('='))
        .map(str::to_owned);

    let (visitor, visits, new_visitor) = {
        let mut visits = backend.visits.lock().unwrap_or_else(PoisonError::into_inner);
        match presented.filter(|id| visits.contains_key(id)) {
            Some(id) => {
                let count = visits.get_mut(&id).map_or(1, |n| {
                    *n += 1;
                    *n
                });
                (id, count, false)
            }
            None => {
                if visits.len() >= MAX_VISITORS {
                    visits.clear();
                }
                let id = visitor_id();
                visits.insert(id.clone(), 1);
                (id, 1, true)
            }
        }
    };

    let body = Json(json!({
        "backend": backend.name,
        "path": uri.path(),
        "visitor": visitor,
        "visits": visits,
        "cookies_seen": cookies_seen,
    }));
    let mut res = body.into_response();
    if new_visitor
        && let Ok(value) =
            HeaderValue::try_from(format!("{VISITOR_COOKIE}={visitor}; Path=/; HttpOnly"))
    {
        res.headers_mut().append(header::SET_COOKIE, value);
    }
    res
}

/// A random visitor id: 16 hex digits.
fn visitor_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Not worth failing a demo request over: fall back on the clock.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        bytes = u64::from(nanos).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! The YAML configuration: its shape, and its validation into a [`Plan`] the gateway runs.
//!
//! This module turns text into a checked plan and nothing else. Every error names the YAML
//! path of the field at fault (`routes[0].spec.rules[1].backendRefs[0].name`) and the rule it
//! breaks; parse errors add the line and column.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT};
use serde::Deserialize;
use serde::de::IgnoredAny;
use tower_session_persistence::OnUnavailable;
use tower_session_persistence::policy::{
    Carrier, CookieAttributes, PolicyError, SessionPersistenceConfig, parse_duration,
};
use tower_session_persistence::token::SignedCodec;

use crate::admin;
use crate::balancing::{self, Balancing};
use crate::edge::{self, Edge};
use crate::grpc;
use crate::health::{self, HealthPlan};
use crate::listeners::{self, Listeners};
use crate::persistence::{self, Extension, Persistence};
use crate::redirect::{self, Redirect};
use crate::routing::{Attachment, Hostname, PathMatch};
use crate::tls;

/// Where the gateway listens when neither the file nor `--listen` says.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The `apiVersion`s accepted for an `HTTPRoute`.
const API_VERSIONS: [&str; 2] =
    ["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"];
/// The Gateway API's largest `backendRef` weight.
const MAX_WEIGHT: u32 = 1_000_000;

// ----- The file's shape. -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<String>,
    keys: Option<Vec<String>>,
    timeout: Option<String>,
    timeouts: Option<edge::TimeoutsConfig>,
    limits: Option<edge::LimitsConfig>,
    #[serde(rename = "trustedProxies")]
    trusted_proxies: Option<Vec<String>>,
    #[serde(default)]
    services: Vec<ServiceConfig>,
    #[serde(default)]
    routes: Vec<RouteConfig>,
    /// Where learned sessions live (`strategy: learn`).
    store: Option<crate::store::StoreConfig>,
    /// Gateway API `kind: Gateway` manifests: the listeners (`listen` is their default
    /// address then).
    gateways: Option<Vec<listeners::GatewayConfig>>,
    /// `kind: Secret` manifests holding the listeners' certificates.
    #[serde(default)]
    secrets: Vec<tls::SecretConfig>,
    /// The admin port: metrics, health.
    admin: Option<admin::AdminConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceConfig {
    name: String,
    endpoints: Vec<EndpointConfig>,
    /// How the endpoints are spoken to, as a Kubernetes Service port's `appProtocol`:
    /// `http` (HTTP/1.1, the default) or `kubernetes.io/h2c` (HTTP/2 with prior knowledge).
    app_protocol: Option<String>,
    /// Active health checks of the endpoints.
    health_check: Option<health::HealthCheckYaml>,
}

/// An endpoint: `"IP:port"`, or `{address: "IP:port", id: s1}` to give it the id its
/// sessions carry (HAProxy's `server … cookie s1`, for the plain codec).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EndpointConfig {
    Address(String),
    Detailed(DetailedEndpoint),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetailedEndpoint {
    address: String,
    id: Option<String>,
    /// No new sessions; established ones keep reaching it until it is removed.
    draining: Option<bool>,
    /// With `draining`: removed (its sessions re-pinned) this long after the drain began.
    #[serde(rename = "drainTimeout")]
    drain_timeout: Option<String>,
}

impl EndpointConfig {
    fn address(&self) -> &str {
        match self {
            EndpointConfig::Address(address) => address,
            EndpointConfig::Detailed(detailed) => &detailed.address,
        }
    }

    fn id(&self) -> Option<&str> {
        match self {
            EndpointConfig::Address(_) => None,
            EndpointConfig::Detailed(detailed) => detailed.id.as_deref(),
        }
    }

    fn draining(&self) -> bool {
        match self {
            EndpointConfig::Address(_) => false,
            EndpointConfig::Detailed(detailed) => detailed.draining.unwrap_or(false),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RouteConfig {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: RouteSpec,
}

/// A manifest's `metadata`, as routes, Gateways and Secrets share it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Metadata {
    pub(crate) name: String,
    pub(crate) namespace: Option<String>,
    #[allow(dead_code)]
    labels: Option<IgnoredAny>,
    #[allow(dead_code)]
    annotations: Option<IgnoredAny>,
}

impl Metadata {
    /// Its namespace, `default` when none is given.
    pub(crate) fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }

    /// `namespace/name`, how manifests refer to each other.
    pub(crate) fn id(&self) -> String {
        format!("{}/{}", self.namespace(), self.name)
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RouteSpec {
    hostnames: Option<Vec<String>>,
    parent_refs: Option<Vec<listeners::ParentRef>>,
    rules: Vec<RuleConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleConfig {
    /// Gateway API's optional rule name (GEP-995): the rule's persistence scope when set.
    name: Option<String>,
    matches: Option<Vec<MatchConfig>>,
    #[serde(default)]
    backend_refs: Vec<BackendRef>,
    session_persistence: Option<SessionPersistenceConfig>,
    #[serde(rename = "x-session-persistence")]
    extension: Option<Extension>,
    #[serde(rename = "x-balancer")]
    balancer: Option<balancing::Extension>,
    filters: Option<Vec<redirect::FilterConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchConfig {
    path: Option<PathConfig>,
    /// `GRPCRoute` only.
    method: Option<grpc::MethodMatch>,
    /// Named so that the error says it is not supported.
    #[allow(dead_code)]
    headers: Option<IgnoredAny>,
    #[allow(dead_code)]
    #[serde(rename = "queryParams")]
    query_params: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathConfig {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendRef {
    name: String,
    #[allow(dead_code)]
    port: Option<u16>,
    weight: Option<u32>,
    group: Option<String>,
    kind: Option<String>,
}

// ----- The checked plan. -----

/// A configuration that passed every check: what the gateway runs.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Where to listen.
    pub(crate) listen: SocketAddr,
    /// The keys that sign, seal and verify session tokens.
    pub(crate) keys: Keys,
    /// Whether `keys` is a key made up for this process (no `keys` in the file).
    pub(crate) ephemeral_key: bool,
    /// Timeouts, limits and the forwarded-header policy.
    pub(crate) edge: Edge,
    /// Every rule of every route, in file order.
    pub(crate) rules: Vec<RulePlan>,
    /// Every service, in file order.
    pub(crate) services: Vec<ServicePlan>,
    /// Where learned sessions live; made on first use, shared by every rule and thread.
    pub(crate) store: crate::store::Store,
    /// The listeners of `gateways:`; `None` without it (one HTTP listener on `listen`).
    pub(crate) listeners: Option<Listeners>,
    /// Where the admin port listens, when there is one.
    pub(crate) admin: Option<SocketAddr>,
    /// What works but should change, in file order.
    pub(crate) warnings: Vec<ConfigWarning>,
}

/// One entry of `services:`.
#[derive(Debug)]
pub(crate) struct ServicePlan {
    pub(crate) name: String,
    pub(crate) endpoints: Vec<EndpointPlan>,
    /// Its active health checks, if it has them.
    pub(crate) health: Option<HealthPlan>,
}

/// One `HTTPRoute` rule.
#[derive(Debug)]
pub(crate) struct RulePlan {
    /// `<namespace>/<route>/<rule name>`, or `<namespace>/<route>/<rule index>` for a rule
    /// without a `name`: the rule's persistence scope and its name in logs.
    pub(crate) scope: String,
    /// The route's hostnames; empty for any host.
    pub(crate) hostnames: Vec<Hostname>,
    /// Where the rule is reachable: every port with the route's hostnames without
    /// `gateways:`, else each listener it attaches to.
    pub(crate) attachments: Vec<Attachment>,
    /// The rule's path matches (at least one).
    pub(crate) matches: Vec<PathMatch>,
    /// The rule's `backendRefs`, resolved to endpoints.
    pub(crate) backends: Vec<BackendPlan>,
    /// The session persistence, when the rule has `sessionPersistence`.
    pub(crate) persistence: Option<Persistence>,
    /// What to do when a session's endpoint is gone.
    pub(crate) on_unavailable: OnUnavailable,
    /// The `x-balancer` options.
    pub(crate) balancing: Balancing,
    /// A `RequestRedirect` filter: the rule answers with it and calls no backend.
    pub(crate) redirect: Option<Redirect>,
}

/// One `backendRef`, resolved.
#[derive(Debug)]
pub(crate) struct BackendPlan {
    /// The service's name.
    pub(crate) service: String,
    /// Its share of new sessions.
    pub(crate) weight: u32,
    /// Its endpoints.
    pub(crate) endpoints: Vec<EndpointPlan>,
}

/// One endpoint of a service.
#[derive(Clone, Debug)]
pub(crate) struct EndpointPlan {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Its key in the balancer and in session tokens: its `id`, or `<service>/<address>`.
    pub(crate) key: String,
    /// Whether it takes only the sessions it already has.
    pub(crate) draining: bool,
    /// Whether it speaks HTTP/2 with prior knowledge (h2c).
    pub(crate) h2c: bool,
    /// With `draining`: how long until it is taken out altogether.
    pub(crate) drain_timeout: Option<Duration>,
}

/// Token keys, decoded; the first signs or seals, all verify. Never printed.
#[derive(Clone)]
pub(crate) struct Keys(pub(crate) Vec<Vec<u8>>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} key(s))", self.0.len())
    }
}

/// A configuration error: the YAML path of the field at fault and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ConfigError {
    path: String,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

impl From<PolicyError> for ConfigError {
    fn from(err: PolicyError) -> Self {
        Self::new(err.field(), err.rule())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Something the file does that works but should change: logged at load, shown by `--check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ConfigWarning {
    /// The YAML path of the field.
    pub(crate) path: String,
    /// What to change, and why.
    pub(crate) message: String,
}

impl ConfigWarning {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Reads and checks a configuration file's text.
pub(crate) fn parse(text: &str) -> Result<Plan, ConfigError> {
    let file: File = serde_path_to_error::deserialize(serde_norway::Deserializer::from_str(text))
        .map_err(|err| {
        // `?` stands for a key serde_path_to_error could not read; the parent path says more.
        let path = err.path().to_string().trim_end_matches(".?").to_owned();
        let inner = err.into_inner();
        // serde_norway may put its own path (the enclosing map's) in front of the message:
        // keep ours only, which also names an unknown field itself.
        let mut message = inner.to_string();
        if let Some((theirs, rest)) = message.split_once(": ")
            && path.starts_with(theirs)
        {
            message = rest.to_owned();
        }
        if !message.contains(" at line ")
            && let Some(at) = inner.location()
        {
            message.push_str(&format!(" at line {} column {}", at.line(), at.column()));
        }
        ConfigError::new(if path == "." { String::new() } else { path }, message)
    })?;
    check(file)
}

fn check(file: File) -> Result<Plan, ConfigError> {
    let listen = parse_listen(file.listen.as_deref().unwrap_or(DEFAULT_LISTEN))
        .map_err(|message| ConfigError::new("listen", message))?;
    let edge = edge::check(
        file.timeouts.as_ref(),
        file.timeout.as_deref(),
        file.limits.as_ref(),
        file.trusted_proxies.as_deref(),
    )?;
    let (keys, ephemeral_key) = match &file.keys {
        Some(keys) => (decode_keys(keys)?, false),
        None => (random_key()?, true),
    };
    let store = crate::store::check(file.store.as_ref(), ephemeral_key)?;
    let admin = admin::check(file.admin.as_ref())?;
    let services = check_services(&file.services)?;
    let mut service_plans = Vec::with_capacity(services.len());
    for (s, ((name, endpoints), config)) in services.iter().zip(&file.services).enumerate() {
        let h2c = endpoints.first().is_some_and(|e| e.h2c);
        let health = config
            .health_check
            .as_ref()
            .map(|yaml| health::check(yaml, &format!("services[{s}].healthCheck"), h2c))
            .transpose()?;
        service_plans.push(ServicePlan {
            name: name.clone(),
            endpoints: endpoints.clone(),
            health,
        });
    }
    let secrets = tls::check_secrets(&file.secrets)?;
    let listeners = file
        .gateways
        .as_deref()
        .map(|gateways| {
            listeners::check(gateways, &secrets, file.listen.as_ref().map(|_| listen.ip()))
        })
        .transpose()?;
    if file.routes.is_empty() {
        // An empty file, or one that forgot its routes: every request would get 404.
        return Err(ConfigError::new(
            "routes",
            "must list at least one HTTPRoute (a gateway without routes answers 404 to everything)",
        ));
    }
    let mut rules = Vec::new();
    let mut seen_routes = HashSet::new();
    for (r, route) in file.routes.iter().enumerate() {
        let at = format!("routes[{r}]");
        let first = rules.len();
        check_route(route, &at, &services, &mut seen_routes, &mut rules)?;
        if let Some(listeners) = &listeners {
            let namespace = route.metadata.namespace();
            let attachments = listeners::attach(
                listeners,
                route.spec.parent_refs.as_deref(),
                namespace,
                &route.kind,
                &rules[first].hostnames,
                &at,
            )?;
            for rule in &mut rules[first..] {
                rule.attachments = attachments.clone();
            }
        }
    }
    let listener_warnings = listeners.iter().flat_map(|l| l.warnings.iter().cloned());
    let rule_warnings = rules
        .iter()
        .filter_map(|rule| rule.persistence.as_ref())
        .flat_map(|persistence| persistence.warnings().iter().cloned());
    let warnings = listener_warnings.chain(rule_warnings).collect();
    Ok(Plan {
        warnings,
        listen,
        keys,
        ephemeral_key,
        edge,
        rules,
        services: service_plans,
        store,
        listeners,
        admin,
    })
}

/// Parses an optional GEP-2257 duration found at `at`.
pub(crate) fn duration(text: Option<&str>, at: &str) -> Result<Option<Duration>, ConfigError> {
    text.map(|text| {
        parse_duration(text).ok_or_else(|| {
            ConfigError::new(
                at,
                format!("{text:?} is not a Gateway API duration (GEP-2257), e.g. 1h30m or 10s"),
            )
        })
    })
    .transpose()
}

/// Parses an `IP:port` listen address; shared with `--listen`.
pub(crate) fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an address of the form IP:port, e.g. 127.0.0.1:8080"))
}

fn decode_keys(keys: &[String]) -> Result<Keys, ConfigError> {
    let mut decoded = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let key = key.trim();
        let bytes = STANDARD_PAD_INDIFFERENT
            .decode(key)
            .or_else(|_| URL_SAFE_PAD_INDIFFERENT.decode(key))
            .map_err(|_| {
                ConfigError::new(format!("keys[{i}]"), "is not base64 (standard or URL-safe)")
            })?;
        decoded.push(bytes);
    }
    // The library's own check names the key at fault (`keys[i]`) and the rule.
    SignedCodec::new(&decoded)?;
    Ok(Keys(decoded))
}

fn random_key() -> Result<Keys, ConfigError> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|err| ConfigError::new("keys", format!("cannot make a random key: {err}")))?;
    Ok(Keys(vec![key.to_vec()]))
}

/// Service name → endpoints, in file order.
type Services = Vec<(String, Vec<EndpointPlan>)>;

/// An endpoint id must travel in any token, plain ones included: cookie octets without the
/// separators HAProxy's values and the prefix strategy use.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_graphic() && !b"|~;,\\\"".contains(&b))
}

fn check_services(services: &[ServiceConfig]) -> Result<Services, ConfigError> {
    let mut checked: Services = Vec::new();
    for (s, service) in services.iter().enumerate() {
        let at = format!("services[{s}]");
        if service.name.is_empty() {
            return Err(ConfigError::new(format!("{at}.name"), "must not be empty"));
        }
        if checked.iter().any(|(name, _)| *name == service.name) {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!("duplicate service name {:?}", service.name),
            ));
        }
        if service.endpoints.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.endpoints"),
                "must list at least one endpoint address",
            ));
        }
        let h2c = match service.app_protocol.as_deref() {
            None | Some("http") => false,
            Some("kubernetes.io/h2c" | "h2c") => true,
            Some(other) => {
                return Err(ConfigError::new(
                    format!("{at}.appProtocol"),
                    format!("{other:?} is not supported: http or kubernetes.io/h2c"),
                ));
            }
        };
        let mut endpoints: Vec<EndpointPlan> = Vec::new();
        for (e, entry) in service.endpoints.iter().enumerate() {
            let mut at = format!("{at}.endpoints[{e}]");
            let text = entry.address();
            if matches!(entry, EndpointConfig::Detailed(_)) {
                at.push_str(".address");
            }
            let addr = text.parse().map_err(|_| {
                ConfigError::new(
                    &at,
                    format!("{text:?} is not an address of the form IP:port, e.g. 10.0.0.7:8080"),
                )
            })?;
            if endpoints.iter().any(|endpoint| endpoint.addr == addr) {
                return Err(ConfigError::new(at, format!("duplicate endpoint {addr}")));
            }
            let key = match entry.id() {
                Some(id) => {
                    let at = format!("services[{s}].endpoints[{e}].id");
                    if !valid_id(id) {
                        return Err(ConfigError::new(
                            at,
                            "must be 1 to 64 visible ASCII characters without | ~ ; , \\ or \"",
                        ));
                    }
                    let taken = checked.iter().flat_map(|(_, list)| list).chain(&endpoints);
                    if taken.clone().any(|endpoint| endpoint.key == id) {
                        return Err(ConfigError::new(at, format!("duplicate endpoint id {id:?}")));
                    }
                    id.to_owned()
                }
                None => format!("{}/{addr}", service.name),
            };
            let drain_timeout = match entry {
                EndpointConfig::Detailed(DetailedEndpoint {
                    drain_timeout: Some(text), ..
                }) => {
                    let at = format!("services[{s}].endpoints[{e}].drainTimeout");
                    if !entry.draining() {
                        return Err(ConfigError::new(at, "applies to draining endpoints only"));
                    }
                    duration(Some(text), &at)?
                }
                _ => None,
            };
            endpoints.push(EndpointPlan {
                addr,
                key,
                draining: entry.draining(),
                h2c,
                drain_timeout,
            });
        }
        checked.push((service.name.clone(), endpoints));
    }
    Ok(checked)
}

fn check_route(
    route: &RouteConfig,
    at: &str,
    services: &Services,
    seen: &mut HashSet<(String, String)>,
    rules: &mut Vec<RulePlan>,
) -> Result<(), ConfigError> {
    if !API_VERSIONS.contains(&route.api_version.as_str()) {
        return Err(ConfigError::new(
            format!("{at}.apiVersion"),
            format!("{:?} is not {}", route.api_version, API_VERSIONS.join(" or ")),
        ));
    }
    let grpc = match route.kind.as_str() {
        "HTTPRoute" => false,
        "GRPCRoute" => true,
        other => {
            return Err(ConfigError::new(
                format!("{at}.kind"),
                format!("{other:?} is not HTTPRoute or GRPCRoute"),
            ));
        }
    };
    let name = &route.metadata.name;
    check_object_name(name, 253, '.')
        .map_err(|m| ConfigError::new(format!("{at}.metadata.name"), m))?;
    let namespace = route.metadata.namespace();
    check_object_name(namespace, 63, '-')
        .map_err(|m| ConfigError::new(format!("{at}.metadata.namespace"), m))?;
    if !seen.insert((namespace.to_owned(), name.clone())) {
        return Err(ConfigError::new(
            format!("{at}.metadata.name"),
            format!("another route is already named {namespace}/{name}"),
        ));
    }
    let mut hostnames = Vec::new();
    for (h, text) in route.spec.hostnames.iter().flatten().enumerate() {
        hostnames.push(
            Hostname::parse(text)
                .map_err(|m| ConfigError::new(format!("{at}.spec.hostnames[{h}]"), m))?,
        );
    }
    if route.spec.rules.is_empty() {
        return Err(ConfigError::new(format!("{at}.spec.rules"), "must list at least one rule"));
    }
    let mut rule_ids = HashSet::new();
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let rule_at = format!("{at}.spec.rules[{i}]");
        // A rule's sessions are scoped by its name when it has one, so that inserting or
        // reordering rules keeps them; by its index otherwise.
        let id = match &rule.name {
            Some(rule_name) => {
                check_object_name(rule_name, 253, '.')
                    .map_err(|m| ConfigError::new(format!("{rule_at}.name"), m))?;
                rule_name.clone()
            }
            None => i.to_string(),
        };
        if !rule_ids.insert(id.clone()) {
            return Err(ConfigError::new(
                format!("{rule_at}.name"),
                format!("{id:?} names another rule of this route (or is an unnamed rule's index)"),
            ));
        }
        let scope = format!("{namespace}/{name}/{id}");
        let default_name = format!("sp-{namespace}-{name}-{id}");
        let mut plan =
            check_rule(rule, &rule_at, scope, &default_name, hostnames.clone(), services, grpc)?;
        if let Some(persistence) = &mut plan.persistence {
            persistence.resolve_scope(namespace, &plan.scope);
        }
        check_cookie_clash(&plan, &rule_at, rules)?;
        rules.push(plan);
    }
    Ok(())
}

/// Two rules whose session cookies have the same name, path and domain, for hosts they share,
/// would have a browser keep one cookie for both: each rule would find the other's token and
/// re-pin on every request. An error, unless the rules share a scope on purpose
/// (`x-session-persistence.scope`): then one cookie is one session for both.
fn check_cookie_clash(rule: &RulePlan, at: &str, earlier: &[RulePlan]) -> Result<(), ConfigError> {
    let Some((persistence, cookie)) = session_cookie(rule) else { return Ok(()) };
    for other in earlier {
        let Some((theirs, their_cookie)) = session_cookie(other) else { continue };
        let same_cookie = persistence.policy().name() == theirs.policy().name()
            && cookie.path == their_cookie.path
            && cookie.domains == their_cookie.domains;
        if same_cookie
            && persistence.session_scope() != theirs.session_scope()
            && hosts_overlap(&rule.hostnames, &other.hostnames)
        {
            return Err(ConfigError::new(
                format!("{at}.sessionPersistence"),
                format!(
                    "cookie {:?} with Path={} is also the session cookie of rule {} for the same \
                     hosts: a browser keeps one of them and both rules would re-pin on every \
                     request; give it another name or path, or share the sessions on purpose \
                     with the same x-session-persistence.scope in both rules",
                    persistence.policy().name(),
                    cookie.path,
                    other.scope
                ),
            ));
        }
    }
    Ok(())
}

fn session_cookie(rule: &RulePlan) -> Option<(&Persistence, &CookieAttributes)> {
    // A learning rule's cookie is the application's, which the gateway never sets.
    let persistence = rule.persistence.as_ref().filter(|p| p.learning().is_none())?;
    match persistence.policy().carrier() {
        Carrier::Cookie(cookie) => Some((persistence, cookie)),
        Carrier::Header(_) => None,
    }
}

/// Whether some host is matched by both lists (an empty list matches any host).
fn hosts_overlap(a: &[Hostname], b: &[Hostname]) -> bool {
    a.is_empty() || b.is_empty() || a.iter().any(|x| b.iter().any(|y| x.overlaps(y)))
}

/// Kubernetes object names: lower-case alphanumerics and `-` (and `.` where `extra` says so),
/// starting and ending alphanumeric.
fn check_object_name(name: &str, max: usize, extra: char) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == extra)
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a Kubernetes name: 1 to {max} lower-case letters, digits, '-'{}",
            if extra == '.' { " or '.'" } else { "" }
        ))
    }
}

fn check_rule(
    rule: &RuleConfig,
    at: &str,
    scope: String,
    default_name: &str,
    hostnames: Vec<Hostname>,
    services: &Services,
    grpc: bool,
) -> Result<RulePlan, ConfigError> {
    let mut matches = Vec::new();
    for (m, config) in rule.matches.iter().flatten().enumerate() {
        let at = format!("{at}.matches[{m}]");
        if config.headers.is_some() || config.query_params.is_some() {
            let field = if config.headers.is_some() { "headers" } else { "queryParams" };
            return Err(ConfigError::new(
                format!("{at}.{field}"),
                "is not supported: rules match on the path (HTTPRoute) or the method (GRPCRoute)",
            ));
        }
        match (grpc, &config.path, &config.method) {
            (true, Some(_), _) => {
                return Err(ConfigError::new(format!("{at}.path"), "a GRPCRoute matches a method"));
            }
            (false, _, Some(_)) => {
                return Err(ConfigError::new(
                    format!("{at}.method"),
                    "an HTTPRoute matches a path (method matches are GRPCRoute's)",
                ));
            }
            (true, None, method) => {
                let any = grpc::MethodMatch::default();
                matches.push(grpc::path_match(
                    method.as_ref().unwrap_or(&any),
                    &format!("{at}.method"),
                )?);
                continue;
            }
            (false, _, None) => {}
        }
        let path = config.path.as_ref();
        let parsed = PathMatch::parse(
            path.and_then(|p| p.kind.as_deref()),
            path.and_then(|p| p.value.as_deref()),
        )
        .map_err(|(field, message)| ConfigError::new(format!("{at}.path.{field}"), message))?;
        matches.push(parsed);
    }
    if matches.is_empty() {
        matches.push(PathMatch::Prefix(String::new()));
    }

    let mut backends: Vec<BackendPlan> = Vec::new();
    for (b, backend) in rule.backend_refs.iter().enumerate() {
        let at = format!("{at}.backendRefs[{b}]");
        if let Some(group) = backend.group.as_deref().filter(|g| !g.is_empty() && *g != "core") {
            return Err(ConfigError::new(
                format!("{at}.group"),
                format!("{group:?} is not supported: only the core group (\"\") is"),
            ));
        }
        if let Some(kind) = backend.kind.as_deref().filter(|k| *k != "Service") {
            return Err(ConfigError::new(
                format!("{at}.kind"),
                format!("{kind:?} is not supported: only Service is"),
            ));
        }
        let Some((_, endpoints)) = services.iter().find(|(name, _)| *name == backend.name) else {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!("no service named {:?} in services", backend.name),
            ));
        };
        if let Some(first) = backends.iter().position(|p| p.service == backend.name) {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!("service {:?} is already referenced by backendRefs[{first}]", backend.name),
            ));
        }
        if grpc && endpoints.iter().any(|endpoint| !endpoint.h2c) {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!(
                    "service {:?} speaks HTTP/1.1; a GRPCRoute needs HTTP/2 to its backends: \
                     give the service appProtocol: kubernetes.io/h2c",
                    backend.name
                ),
            ));
        }
        let weight = backend.weight.unwrap_or(1);
        if weight > MAX_WEIGHT {
            return Err(ConfigError::new(
                format!("{at}.weight"),
                format!("must be between 0 and {MAX_WEIGHT}"),
            ));
        }
        backends.push(BackendPlan {
            service: backend.name.clone(),
            weight,
            endpoints: endpoints.clone(),
        });
    }

    let extension = rule.extension.as_ref();
    let persistence = match (&rule.session_persistence, extension) {
        (Some(stanza), extension) => Some(persistence::check(stanza, extension, default_name, at)?),
        (None, Some(_)) => {
            return Err(ConfigError::new(
                format!("{at}.x-session-persistence"),
                "needs a sessionPersistence stanza in the same rule",
            ));
        }
        (None, None) => None,
    };
    let on_unavailable = persistence::on_unavailable(extension);
    let balancing = balancing::check(rule.balancer.as_ref(), at)?;
    if grpc && rule.filters.is_some() {
        return Err(ConfigError::new(
            format!("{at}.filters"),
            "are not supported on a GRPCRoute rule",
        ));
    }
    let redirect = redirect::check(rule.filters.as_deref(), at)?;
    if redirect.is_some() && !backends.is_empty() {
        return Err(ConfigError::new(
            format!("{at}.backendRefs"),
            "a rule with a RequestRedirect filter answers itself: it has no backendRefs",
        ));
    }
    let attachments = vec![Attachment { port: None, hostnames: hostnames.clone() }];
    Ok(RulePlan {
        scope,
        hostnames,
        attachments,
        matches,
        backends,
        persistence,
        on_unavailable,
        balancing,
        redirect,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICES: &str = "services: [{name: a, endpoints: ['127.0.0.1:1']}]\n";

    fn route(rule: &str) -> String {
        format!(
            "{SERVICES}routes:\n- apiVersion: gateway.networking.k8s.io/v1\n  kind: HTTPRoute\n  \
             metadata: {{name: shop}}\n  spec:\n    rules:\n    - {rule}\n"
        )
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_plan_holds_its_warnings_in_file_order() {
        let gateway = "gateways:\n- apiVersion: gateway.networking.k8s.io/v1\n  kind: Gateway\n  \
                       metadata: {name: edge}\n  spec:\n    addresses: [{value: 127.0.0.1}, \
                       {value: 127.0.0.2}]\n    listeners: [{name: web, protocol: HTTP, port: 0}]\n";
        let rule = "{backendRefs: [{name: a}], sessionPersistence: {cookie: {}, idleTimeout: 5m}}";
        let plan = parse(&format!("{gateway}{}", route(rule))).unwrap();
        let paths: Vec<&str> = plan.warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "gateways[0].spec.addresses",
                "routes[0].spec.rules[0].sessionPersistence.idleTimeout"
            ]
        );
        assert!(parse(&route("{backendRefs: [{name: a}]}")).unwrap().warnings.is_empty());
    }

    #[test]
    fn errors_name_the_yaml_path() {
        let e = error(&route("{backendRefs: [{name: b}]}"));
        assert!(e.starts_with("routes[0].spec.rules[0].backendRefs[0].name: "), "{e}");
        let e =
            error(&route("{backendRefs: [{name: a}], sessionPersistence: {absoluteTimeout: 1d}}"));
        assert!(
            e.starts_with("routes[0].spec.rules[0].sessionPersistence.absoluteTimeout: "),
            "{e}"
        );
        let e = error(&route("{backendRefs: [{name: a, wieght: 1}]}"));
        assert!(e.starts_with("routes[0].spec.rules[0].backendRefs[0]"), "{e}");
        assert!(e.contains("wieght") && e.contains("line"), "{e}");
        let e = error("keys: ['c2hvcnQ=']\n");
        assert!(e.starts_with("keys[0]: "), "{e}");
        let e = error("services: [{name: a, endpoints: ['localhost']}]\n");
        assert!(e.starts_with("services[0].endpoints[0]: "), "{e}");
    }

    #[test]
    fn a_rule_gets_its_scope_default_name_and_extension() {
        let plan = parse(&route(
            "{backendRefs: [{name: a}], sessionPersistence: {cookie: {}}, \
             x-session-persistence: {onUnavailable: reject}}",
        ))
        .unwrap();
        let rule = &plan.rules[0];
        assert_eq!(rule.persistence.as_ref().unwrap().policy().name(), "sp-default-shop-0");
        assert_eq!(rule.on_unavailable, OnUnavailable::Reject);
        assert_eq!(rule.scope, "default/shop/0");
        let e = error(&route("{backendRefs: [{name: a}], x-session-persistence: {}}"));
        assert!(e.starts_with("routes[0].spec.rules[0].x-session-persistence: "), "{e}");
    }

    #[test]
    fn a_named_rule_keeps_its_scope_when_rules_are_inserted_above_it() {
        let cart = "{name: cart, backendRefs: [{name: a}], sessionPersistence: {cookie: {}}}";
        let other = "{backendRefs: [{name: a}]}";
        let before = parse(&route(cart)).unwrap();
        let after = parse(&route(&format!("{other}\n    - {cart}"))).unwrap();
        assert_eq!(before.rules[0].scope, "default/shop/cart");
        assert_eq!(after.rules[1].scope, "default/shop/cart", "same scope at another index");
        let name = |plan: &Plan, i: usize| {
            plan.rules[i].persistence.as_ref().unwrap().policy().name().to_owned()
        };
        assert_eq!(name(&before, 0), name(&after, 1), "and the same default cookie name");
        assert_eq!(after.rules[0].scope, "default/shop/0", "unnamed rules keep their index");
        // Names are Kubernetes names, unique within the route, never an unnamed rule's index.
        let e = error(&route("{name: Cart, backendRefs: [{name: a}]}"));
        assert!(e.starts_with("routes[0].spec.rules[0].name: "), "{e}");
        let e = error(&route(&format!("{cart}\n    - {cart}")));
        assert!(e.starts_with("routes[0].spec.rules[1].name: "), "{e}");
        let e = error(&route(&format!("{other}\n    - {{name: '0', backendRefs: [{{name: a}}]}}")));
        assert!(e.starts_with("routes[0].spec.rules[1].name: "), "{e}");
    }
}

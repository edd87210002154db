//! The file's `gateways:`: Gateway API `kind: Gateway` manifests checked into listeners and
//! the ports they are served on, and how each route attaches to them (`parentRefs`, hostname
//! intersection).
//!
//! What is read: `spec.addresses[0]` (`type: IPAddress`), and per listener `name`, `protocol`
//! (`HTTP`, `HTTPS`), `port`, `hostname`, `tls` (`mode: Terminate`, `certificateRefs` to
//! Secrets) and `allowedRoutes` (`namespaces.from: Same | All`, `kinds`). Routes attach through
//! `parentRefs` (`name`, `namespace`, `sectionName`, `port`); a route without `parentRefs`
//! attaches to every listener. Where a listener has a `hostname`, a route's `hostnames` are
//! intersected with it as the Gateway API says: a route whose hostnames do not meet the
//! listener's does not attach there, and a route that attaches nowhere is an error.
//!
//! Listeners on the same address and port share one socket: they must all be `HTTP` or all
//! `HTTPS` and have distinct hostnames (on HTTPS, SNI chooses among their certificates; on
//! both, the request's host chooses among their routes). `port: 0` is this gateway's extension
//! for tests: the system picks a free port, printed on the `listening on` line.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::config::{ConfigError, ConfigWarning, Metadata};
use crate::routing::{Attachment, Hostname};
use crate::tls::{Certificate, Secrets};

const GATEWAY_API: &str = "gateway.networking.k8s.io";

/// One entry of `gateways:`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct GatewayConfig {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: GatewaySpec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GatewaySpec {
    /// Which controller runs it: this gateway runs any.
    #[allow(dead_code)]
    gateway_class_name: Option<String>,
    addresses: Option<Vec<AddressConfig>>,
    listeners: Vec<ListenerConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddressConfig {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListenerConfig {
    name: String,
    hostname: Option<String>,
    port: u16,
    protocol: String,
    tls: Option<TlsConfig>,
    allowed_routes: Option<AllowedRoutes>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TlsConfig {
    mode: Option<String>,
    #[serde(default)]
    certificate_refs: Vec<ObjectRef>,
    /// Implementation-specific options: none are applied (a warning says so).
    options: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectRef {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowedRoutes {
    namespaces: Option<RouteNamespaces>,
    kinds: Option<Vec<RouteKind>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteNamespaces {
    from: Option<String>,
    #[allow(dead_code)]
    selector: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteKind {
    group: Option<String>,
    kind: String,
}

/// One of a route's `parentRefs`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ParentRef {
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: String,
    section_name: Option<String>,
    port: Option<u16>,
}

/// `HTTP` or `HTTPS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http,
    Https,
}

impl Protocol {
    /// The URL scheme.
    pub(crate) fn scheme(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }
}

/// A checked listener.
#[derive(Debug)]
pub(crate) struct ListenerPlan {
    /// `<namespace>/<gateway>`.
    pub(crate) gateway: String,
    pub(crate) name: String,
    pub(crate) protocol: Protocol,
    pub(crate) hostname: Option<Hostname>,
    /// Its certificates, in `certificateRefs` order (HTTPS only).
    pub(crate) certificates: Vec<Arc<Certificate>>,
    /// Which of [`Listeners::ports`] serves it.
    pub(crate) port: usize,
    /// The port number the file gave (0: picked by the system).
    number: u16,
    /// Route namespaces it takes: `None` for all.
    namespace: Option<String>,
    /// Route kinds it takes.
    kinds: Vec<String>,
}

/// One socket address the gateway listens on, and the listeners it serves.
#[derive(Debug)]
pub(crate) struct PortPlan {
    pub(crate) addr: SocketAddr,
    pub(crate) protocol: Protocol,
    /// Indexes into [`Listeners::listeners`], in file order.
    pub(crate) listeners: Vec<usize>,
}

/// Every listener of every Gateway, and the ports they are served on.
#[derive(Debug)]
pub(crate) struct Listeners {
    pub(crate) listeners: Vec<ListenerPlan>,
    pub(crate) ports: Vec<PortPlan>,
    /// Fields accepted but not applied (`tls.options`, addresses after the first).
    pub(crate) warnings: Vec<ConfigWarning>,
}

impl Listeners {
    /// Whether `other` listens on the same ports with the same listeners (only the
    /// certificates may differ): what a reload can apply without a restart.
    pub(crate) fn same_shape(&self, other: &Listeners) -> bool {
        self.ports.len() == other.ports.len()
            && self.ports.iter().zip(&other.ports).all(|(a, b)| {
                a.addr == b.addr && a.protocol == b.protocol && a.listeners == b.listeners
            })
            && self.listeners.iter().zip(&other.listeners).all(|(a, b)| {
                a.gateway == b.gateway && a.name == b.name && a.hostname == b.hostname
            })
    }
}

/// Checks `gateways:`; `default_ip` is the top-level `listen`'s address (else `0.0.0.0`).
pub(crate) fn check(
    gateways: &[GatewayConfig],
    secrets: &Secrets,
    default_ip: Option<IpAddr>,
) -> Result<Listeners, ConfigError> {
    if gateways.is_empty() {
        return Err(ConfigError::new("gateways", "must list at least one Gateway when present"));
    }
    let mut listeners: Vec<ListenerPlan> = Vec::new();
    let mut ports: Vec<PortPlan> = Vec::new();
    let mut warnings = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (g, gateway) in gateways.iter().enumerate() {
        let at = format!("gateways[{g}]");
        let version = gateway.api_version.strip_prefix(GATEWAY_API).unwrap_or("");
        if !matches!(version, "/v1" | "/v1beta1") {
            return Err(ConfigError::new(
                format!("{at}.apiVersion"),
                format!("{:?} is not {GATEWAY_API}/v1", gateway.api_version),
            ));
        }
        if gateway.kind != "Gateway" {
            return Err(ConfigError::new(
                format!("{at}.kind"),
                format!("{:?} is not Gateway", gateway.kind),
            ));
        }
        let namespace = gateway.metadata.namespace();
        let id = gateway.metadata.id();
        if !names.insert(id.clone()) {
            return Err(ConfigError::new(
                format!("{at}.metadata.name"),
                format!("another Gateway is already named {id}"),
            ));
        }
        if let Some([_, more @ ..]) = gateway.spec.addresses.as_deref()
            && !more.is_empty()
        {
            warnings.push(ConfigWarning::new(
                format!("{at}.spec.addresses"),
                "only the first address is listened on: the others are ignored",
            ));
        }
        let ip = match gateway.spec.addresses.as_deref() {
            Some([first, ..]) => {
                let at = format!("{at}.spec.addresses[0]");
                if let Some(kind) = first.kind.as_deref().filter(|k| *k != "IPAddress") {
                    return Err(ConfigError::new(
                        format!("{at}.type"),
                        format!("{kind:?} is not supported: IPAddress only"),
                    ));
                }
                first.value.parse::<IpAddr>().map_err(|_| {
                    ConfigError::new(
                        format!("{at}.value"),
                        format!("{:?} is not an IP address", first.value),
                    )
                })?
            }
            _ => default_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        };
        if gateway.spec.listeners.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.spec.listeners"),
                "must list at least one listener",
            ));
        }
        for (l, listener) in gateway.spec.listeners.iter().enumerate() {
            let at = format!("{at}.spec.listeners[{l}]");
            let plan = check_listener(listener, &at, &id, namespace, secrets)?;
            if listener.tls.as_ref().is_some_and(|tls| tls.options.is_some()) {
                warnings.push(ConfigWarning::new(
                    format!("{at}.tls.options"),
                    "is ignored: no implementation-specific TLS option is applied (the \
                     gateway's own TLS settings hold)",
                ));
            }
            if listeners[..].iter().any(|other| other.gateway == id && other.name == plan.name) {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!("another listener of {id} is already named {:?}", plan.name),
                ));
            }
            let addr = SocketAddr::new(ip, listener.port);
            let index = listeners.len();
            // Port 0 is a new port each time; others are shared by listeners that agree.
            let shared =
                (listener.port != 0).then(|| ports.iter().position(|p| p.addr == addr)).flatten();
            let port = match shared {
                Some(p) => {
                    let port = &mut ports[p];
                    if port.protocol != plan.protocol {
                        return Err(ConfigError::new(
                            format!("{at}.protocol"),
                            format!(
                                "{addr} is already an {} listener's port: one protocol per port",
                                port.protocol.scheme().to_ascii_uppercase()
                            ),
                        ));
                    }
                    if port.listeners.iter().any(|&o| listeners[o].hostname == plan.hostname) {
                        return Err(ConfigError::new(
                            format!("{at}.hostname"),
                            format!("another listener on {addr} has the same hostname"),
                        ));
                    }
                    port.listeners.push(index);
                    p
                }
                None => {
                    ports.push(PortPlan { addr, protocol: plan.protocol, listeners: vec![index] });
                    ports.len() - 1
                }
            };
            listeners.push(ListenerPlan { port, ..plan });
        }
    }
    Ok(Listeners { listeners, ports, warnings })
}

fn check_listener(
    listener: &ListenerConfig,
    at: &str,
    gateway: &str,
    namespace: &str,
    secrets: &Secrets,
) -> Result<ListenerPlan, ConfigError> {
    let name_ok = !listener.name.is_empty()
        && listener.name.len() <= 253
        && listener
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !name_ok {
        return Err(ConfigError::new(
            format!("{at}.name"),
            format!(
                "{:?} is not a section name: lower-case letters, digits, '-' or '.'",
                listener.name
            ),
        ));
    }
    let hostname = listener
        .hostname
        .as_deref()
        .map(Hostname::parse)
        .transpose()
        .map_err(|m| ConfigError::new(format!("{at}.hostname"), m))?;
    let protocol = match listener.protocol.as_str() {
        "HTTP" => Protocol::Http,
        "HTTPS" => Protocol::Https,
        other => {
            return Err(ConfigError::new(
                format!("{at}.protocol"),
                format!("{other:?} is not supported: HTTP or HTTPS"),
            ));
        }
    };
    let mut certificates = Vec::new();
    match (protocol, &listener.tls) {
        (Protocol::Http, None) => {}
        (Protocol::Http, Some(_)) => {
            return Err(ConfigError::new(format!("{at}.tls"), "only an HTTPS listener has tls"));
        }
        (Protocol::Https, None) => {
            return Err(ConfigError::new(
                format!("{at}.tls"),
                "an HTTPS listener needs tls: {mode: Terminate, certificateRefs: [...]}",
            ));
        }
        (Protocol::Https, Some(tls)) => {
            if let Some(mode) = tls.mode.as_deref().filter(|m| *m != "Terminate") {
                return Err(ConfigError::new(
                    format!("{at}.tls.mode"),
                    format!("{mode:?} is not supported: Terminate only"),
                ));
            }
            if tls.certificate_refs.is_empty() {
                return Err(ConfigError::new(
                    format!("{at}.tls.certificateRefs"),
                    "must name at least one Secret",
                ));
            }
            for (c, reference) in tls.certificate_refs.iter().enumerate() {
                let at = format!("{at}.tls.certificateRefs[{c}]");
                if let Some(group) = reference.group.as_deref().filter(|g| !g.is_empty()) {
                    return Err(ConfigError::new(
                        format!("{at}.group"),
                        format!("{group:?} is not supported: the core group (\"\") only"),
                    ));
                }
                if let Some(kind) = reference.kind.as_deref().filter(|k| *k != "Secret") {
                    return Err(ConfigError::new(
                        format!("{at}.kind"),
                        format!("{kind:?} is not supported: Secret only"),
                    ));
                }
                let secret_namespace = reference.namespace.as_deref().unwrap_or(namespace);
                let key = format!("{secret_namespace}/{}", reference.name);
                certificates.push(secrets.get(&key, &format!("{at}.name"))?);
            }
        }
    }
    let from = listener.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref());
    let route_namespace = match from.and_then(|n| n.from.as_deref()) {
        None | Some("Same") => Some(namespace.to_owned()),
        Some("All") => None,
        Some(other) => {
            return Err(ConfigError::new(
                format!("{at}.allowedRoutes.namespaces.from"),
                format!("{other:?} is not supported: Same or All"),
            ));
        }
    };
    let mut kinds = Vec::new();
    for (k, kind) in
        listener.allowed_routes.iter().flat_map(|a| a.kinds.iter().flatten()).enumerate()
    {
        let group_ok = kind.group.as_deref().is_none_or(|g| g == GATEWAY_API);
        if !group_ok || !matches!(kind.kind.as_str(), "HTTPRoute" | "GRPCRoute") {
            return Err(ConfigError::new(
                format!("{at}.allowedRoutes.kinds[{k}]"),
                format!("{:?} is not supported: HTTPRoute or GRPCRoute", kind.kind),
            ));
        }
        kinds.push(kind.kind.clone());
    }
    if kinds.is_empty() {
        kinds = vec!["HTTPRoute".into(), "GRPCRoute".into()];
    }
    Ok(ListenerPlan {
        gateway: gateway.to_owned(),
        name: listener.name.clone(),
        protocol,
        hostname,
        certificates,
        port: 0,
        number: listener.port,
        namespace: route_namespace,
        kinds,
    })
}

/// Where a route of `kind` in `namespace`, with `hostnames` and `parent_refs`, attaches: one
/// [`Attachment`] per listener it reaches, with the intersected hostnames. An error when a
/// reference names nothing, or the route attaches nowhere.
pub(crate) fn attach(
    listeners: &Listeners,
    parent_refs: Option<&[ParentRef]>,
    namespace: &str,
    kind: &str,
    hostnames: &[Hostname],
    at: &str,
) -> Result<Vec<Attachment>, ConfigError> {
    let mut reached: Vec<usize> = Vec::new();
    match parent_refs {
        None | Some([]) => reached.extend(0..listeners.listeners.len()),
        Some(refs) => {
            for (p, parent) in refs.iter().enumerate() {
                let at = format!("{at}.spec.parentRefs[{p}]");
                if parent.group.as_deref().is_some_and(|g| g != GATEWAY_API)
                    || parent.kind.as_deref().is_some_and(|k| k != "Gateway")
                {
                    return Err(ConfigError::new(
                        format!("{at}.kind"),
                        "only Gateways (group gateway.networking.k8s.io) are parents here",
                    ));
                }
                let id =
                    format!("{}/{}", parent.namespace.as_deref().unwrap_or(namespace), parent.name);
                let of_gateway: Vec<usize> = (0..listeners.listeners.len())
                    .filter(|&l| listeners.listeners[l].gateway == id)
                    .collect();
                if of_gateway.is_empty() {
                    return Err(ConfigError::new(
                        format!("{at}.name"),
                        format!("no Gateway named {id} in gateways"),
                    ));
                }
                let mut chosen = of_gateway;
                if let Some(section) = &parent.section_name {
                    chosen.retain(|&l| listeners.listeners[l].name == *section);
                    if chosen.is_empty() {
                        return Err(ConfigError::new(
                            format!("{at}.sectionName"),
                            format!("Gateway {id} has no listener named {section:?}"),
                        ));
                    }
                }
                if let Some(port) = parent.port {
                    chosen.retain(|&l| listeners.listeners[l].number == port);
                    if chosen.is_empty() {
                        return Err(ConfigError::new(
                            format!("{at}.port"),
                            format!(
                                "no listener of Gateway {id} (with that sectionName) has port {port}"
                            ),
                        ));
                    }
                }
                reached.extend(chosen);
            }
        }
    }
    reached.sort_unstable();
    reached.dedup();
    let mut attachments = Vec::new();
    let mut refused = Vec::new();
    for l in reached {
        let listener = &listeners.listeners[l];
        if listener.namespace.as_deref().is_some_and(|n| n != namespace)
            || !listener.kinds.iter().any(|k| k == kind)
        {
            refused.push(format!(
                "{}/{} does not allow this route (allowedRoutes)",
                listener.gateway, listener.name
            ));
            continue;
        }
        match intersect(listener.hostname.as_ref(), hostnames) {
            Some(hostnames) => {
                attachments.push(Attachment { port: Some(listener.port), hostnames })
            }
            None => refused.push(format!(
                "{}/{}'s hostname does not meet the route's hostnames",
                listener.gateway, listener.name
            )),
        }
    }
    if attachments.is_empty() {
        let why = if refused.is_empty() { "no listener".to_owned() } else { refused.join("; ") };
        return Err(ConfigError::new(
            format!("{at}.spec.parentRefs"),
            format!("the route attaches to no listener: {why}"),
        ));
    }
    Ok(attachments)
}

/// The hostnames a route serves on a listener (Gateway API "hostname intersection"): the
/// route's own where the listener has none; the listener's where the route has none; else
/// each pair that overlaps gives the more specific of the two. `None`: they do not meet.
pub(crate) fn intersect(listener: Option<&Hostname>, route: &[Hostname]) -> Option<Vec<Hostname>> {
    let Some(listener) = listener else { return Some(route.to_vec()) };
    if route.is_empty() {
        return Some(vec![listener.clone()]);
    }
    let met: Vec<Hostname> = route
        .iter()
        .filter(|host| host.overlaps(listener))
        .map(|host| match (host, listener) {
            (Hostname::Exact(_), _) => host.clone(),
            (Hostname::Wildcard(_), Hostname::Exact(_)) => listener.clone(),
            (Hostname::Wildcard(a), Hostname::Wildcard(b)) => {
                if a.len() >= b.len() {
                    host.clone()
                } else {
                    listener.clone()
                }
            }
        })
        .collect();
    (!met.is_empty()).then_some(met)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(text: &str) -> Hostname {
        Hostname::parse(text).unwrap()
    }

    #[test]
    fn hostnames_intersect_as_the_gateway_api_says() {
        assert_eq!(intersect(None, &[h("a.example")]), Some(vec![h("a.example")]));
        assert_eq!(intersect(Some(&h("a.example")), &[]), Some(vec![h("a.example")]));
        assert_eq!(intersect(Some(&h("*.example")), &[h("a.example")]), Some(vec![h("a.example")]));
        assert_eq!(intersect(Some(&h("a.example")), &[h("*.example")]), Some(vec![h("a.example")]));
        assert_eq!(
            intersect(Some(&h("*.example")), &[h("*.a.example"), h("b.other")]),
            Some(vec![h("*.a.example")])
        );
        assert_eq!(intersect(Some(&h("a.example")), &[h("b.example")]), None);
        assert_eq!(intersect(Some(&h("*.example")), &[h("example")]), None);
    }
}

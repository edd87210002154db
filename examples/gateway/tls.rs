//! TLS termination: the file's `secrets:` (Kubernetes `kind: Secret`, `type: kubernetes.io/tls`)
//! checked into certificates, and the rustls server side of every HTTPS listener: the
//! certificate chosen by SNI, ALPN `h2` and `http/1.1`, TLS 1.2 and 1.3 only.
//!
//! PEM, DER, keys and certificates are read by the maintained crates (rustls-pki-types,
//! rustls, x509-parser), never by hand. Every error names the YAML path of the field at fault.
//!
//! Certificates can change while the gateway runs: each HTTPS port's resolver holds its table
//! behind a lock that a reload swaps, so new handshakes get the new certificates and
//! established connections (whose handshake is over) are not touched.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, Metadata};
use crate::listeners::{Listeners, Protocol};
use crate::routing::Hostname;

/// The `type` of a Secret holding a certificate and its key.
const TLS_SECRET: &str = "kubernetes.io/tls";

/// One entry of `secrets:`, as `kubectl` takes it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SecretConfig {
    api_version: String,
    kind: String,
    #[serde(rename = "type")]
    secret_type: Option<String>,
    metadata: Metadata,
    /// Base64 of the PEM files.
    data: Option<BTreeMap<String, String>>,
    /// The PEM text itself.
    string_data: Option<BTreeMap<String, String>>,
    #[allow(dead_code)]
    immutable: Option<bool>,
}

/// A certificate chain with its key, checked, and the names it is valid for.
#[derive(Debug)]
pub(crate) struct Certificate {
    /// What rustls serves.
    pub(crate) key: Arc<CertifiedKey>,
    /// The end-entity certificate's DNS names (subjectAltName), lower case; `*.x` wildcards.
    names: Vec<String>,
    /// The Secret's bytes, to tell whether a reload changed it.
    source: (Vec<u8>, Vec<u8>),
}

impl Certificate {
    /// How well `sni` matches this certificate: 2 exact, 1 wildcard, `None` not at all. A
    /// certificate wildcard covers one label (RFC 6125 §6.4.3).
    fn matches(&self, sni: &str) -> Option<u8> {
        self.names
            .iter()
            .filter_map(|name| match name.strip_prefix("*.") {
                Some(suffix) => {
                    sni.split_once('.').is_some_and(|(_, rest)| rest == suffix).then_some(1)
                }
                None => (name == sni).then_some(2),
            })
            .max()
    }
}

/// The Secrets of the file that hold certificates, by `<namespace>/<name>`.
#[derive(Debug, Default)]
pub(crate) struct Secrets {
    by_name: HashMap<String, Result<Arc<Certificate>, ConfigError>>,
    /// For errors: where each Secret is in the file.
    paths: HashMap<String, String>,
}

impl Secrets {
    /// The certificate of the Secret `namespace/name`, checked; the error names the Secret's
    /// YAML path (or `at`, the reference, when there is no such Secret).
    pub(crate) fn get(&self, key: &str, at: &str) -> Result<Arc<Certificate>, ConfigError> {
        match self.by_name.get(key) {
            Some(Ok(certificate)) => Ok(certificate.clone()),
            Some(Err(err)) => Err(ConfigError::new(
                err_path(err),
                format!("{} (referenced by {at})", err_message(err)),
            )),
            None => Err(ConfigError::new(at, format!("no Secret named {key:?} in secrets"))),
        }
    }
}

fn err_path(err: &ConfigError) -> String {
    let text = err.to_string();
    text.split_once(": ").map_or(String::new(), |(path, _)| path.to_owned())
}

fn err_message(err: &ConfigError) -> String {
    let text = err.to_string();
    text.split_once(": ").map_or(text.clone(), |(_, message)| message.to_owned())
}

/// The crypto the gateway uses: rustls's ring provider with its default cipher suites, all
/// AEAD with forward secrecy (TLS 1.3: AES-GCM, ChaCha20-Poly1305; TLS 1.2: ECDHE with the
/// same).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every Secret. Those of type `kubernetes.io/tls` are checked when a listener refers to
/// them (an unused broken Secret is not an error, as in Kubernetes); a broken one is an error
/// only then, and names its own path.
pub(crate) fn check_secrets(secrets: &[SecretConfig]) -> Result<Secrets, ConfigError> {
    let provider = provider();
    let mut checked = Secrets::default();
    for (s, secret) in secrets.iter().enumerate() {
        let at = format!("secrets[{s}]");
        if secret.api_version != "v1" {
            return Err(ConfigError::new(
                format!("{at}.apiVersion"),
                format!("{:?} is not v1", secret.api_version),
            ));
        }
        if secret.kind != "Secret" {
            return Err(ConfigError::new(
                format!("{at}.kind"),
                format!("{:?} is not Secret", secret.kind),
            ));
        }
        let key = secret.metadata.id();
        if checked.paths.insert(key.clone(), at.clone()).is_some() {
            return Err(ConfigError::new(
                format!("{at}.metadata.name"),
                format!("another Secret is already named {key}"),
            ));
        }
        let loaded = load(secret, &at, &provider).map(Arc::new);
        checked.by_name.insert(key, loaded);
    }
    Ok(checked)
}

/// One field of the Secret (`tls.crt`, `tls.key`): its bytes and its YAML path.
fn field(secret: &SecretConfig, at: &str, name: &str) -> Result<(Vec<u8>, String), ConfigError> {
    // `stringData` wins over `data`, as the API server merges them.
    if let Some(text) = secret.string_data.as_ref().and_then(|d| d.get(name)) {
        return Ok((text.as_bytes().to_vec(), format!("{at}.stringData.{name}")));
    }
    if let Some(encoded) = secret.data.as_ref().and_then(|d| d.get(name)) {
        let path = format!("{at}.data.{name}");
        let compact: String = encoded.split_ascii_whitespace().collect();
        let bytes = STANDARD_PAD_INDIFFERENT
            .decode(compact)
            .map_err(|_| ConfigError::new(&path, "is not base64 (data holds base64 of the PEM file; use stringData for the PEM text)"))?;
        return Ok((bytes, path));
    }
    Err(ConfigError::new(
        format!("{at}.data"),
        format!(
            "has no {name} (a kubernetes.io/tls Secret holds tls.crt and tls.key, in data or stringData)"
        ),
    ))
}

fn load(
    secret: &SecretConfig,
    at: &str,
    provider: &CryptoProvider,
) -> Result<Certificate, ConfigError> {
    match secret.secret_type.as_deref() {
        Some(TLS_SECRET) => {}
        other => {
            return Err(ConfigError::new(
                format!("{at}.type"),
                format!("{:?} is not {TLS_SECRET}", other.unwrap_or("")),
            ));
        }
    }
    let (crt, crt_at) = field(secret, at, "tls.crt")?;
    let (key, key_at) = field(secret, at, "tls.key")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt)
        .collect::<Result<_, _>>()
        .map_err(|err| ConfigError::new(&crt_at, format!("is not PEM: {err}")))?;
    if chain.is_empty() {
        return Err(ConfigError::new(&crt_at, "holds no PEM CERTIFICATE block"));
    }
    let private = PrivateKeyDer::from_pem_slice(&key).map_err(|err| {
        ConfigError::new(
            &key_at,
            format!("holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {err}"),
        )
    })?;
    let (names, not_after) =
        read_certificate(&chain[0]).map_err(|m| ConfigError::new(&crt_at, m))?;
    let certified = CertifiedKey::from_der(chain, private, provider).map_err(|err| match err {
        rustls::Error::InconsistentKeys(_) => {
            ConfigError::new(&key_at, format!("is not the key of the certificate in {crt_at}"))
        }
        other => ConfigError::new(&key_at, format!("cannot be used: {other}")),
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if not_after < now {
        // Served all the same (replacing it is the operator's move), but said loudly.
        tracing::warn!(secret = %at, "the certificate in {crt_at} has expired: clients will refuse it");
    }
    Ok(Certificate { key: Arc::new(certified), names, source: (crt, key) })
}

/// The end-entity certificate's DNS names and its notAfter (Unix seconds).
fn read_certificate(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|err| format!("its first certificate is not X.509: {err}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// What one HTTPS port serves: for each of its listeners, the listener's hostname and its
/// certificates in `certificateRefs` order.
#[derive(Debug, Default)]
struct PortCertificates {
    listeners: Vec<(Option<Hostname>, Vec<Arc<Certificate>>)>,
}

impl PortCertificates {
    /// The listener a handshake for `sni` reaches: the most specific hostname that matches
    /// (exact, then the longest wildcard, then a listener without hostname); without SNI, a
    /// listener without hostname, else the first.
    fn listener(&self, sni: Option<&str>) -> Option<&[Arc<Certificate>]> {
        let Some(sni) = sni else {
            let any = self.listeners.iter().find(|(host, _)| host.is_none());
            return any.or(self.listeners.first()).map(|(_, certs)| certs.as_slice());
        };
        self.listeners
            .iter()
            .filter_map(|(host, certs)| {
                let rank = match host {
                    None => (0, 0),
                    Some(Hostname::Exact(name)) => (name == sni).then_some((2, name.len()))?,
                    Some(Hostname::Wildcard(suffix)) => (sni.len() > suffix.len()
                        && sni.ends_with(suffix.as_str()))
                    .then_some((1, suffix.len()))?,
                };
                Some((rank, certs))
            })
            // The first listener in the file among equals.
            .rev()
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, certs)| certs.as_slice())
    }

    fn same_as(&self, other: &PortCertificates) -> bool {
        self.listeners.len() == other.listeners.len()
            && self.listeners.iter().zip(&other.listeners).all(|((h1, c1), (h2, c2))| {
                h1 == h2
                    && c1.len() == c2.len()
                    && c1.iter().zip(c2).all(|(a, b)| a.source == b.source)
            })
    }
}

/// Chooses a certificate for each handshake on one HTTPS port; reloads swap its table.
#[derive(Debug, Default)]
pub(crate) struct Resolver {
    table: RwLock<Arc<PortCertificates>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        let certs = table.listener(sni.as_deref())?;
        let usable = |cert: &&Arc<Certificate>| {
            cert.key.key.choose_scheme(hello.signature_schemes()).is_some()
        };
        // The certificate whose names match best, among those the client can verify; else
        // the listener's first usable one (the client decides what to make of it).
        let best = sni.as_deref().and_then(|sni| {
            certs
                .iter()
                .filter(usable)
                .filter_map(|cert| cert.matches(sni).map(|rank| (rank, cert)))
                .rev()
                .max_by_key(|(rank, _)| *rank)
                .map(|(_, cert)| cert)
        });
        best.or_else(|| certs.iter().find(usable)).map(|cert| cert.key.clone())
    }
}

/// The TLS side of every port: an acceptor for each HTTPS port, `None` for HTTP ones.
#[derive(Clone, Default)]
pub(crate) struct Tls {
    ports: Vec<Option<(Arc<Resolver>, TlsAcceptor)>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let https = self.ports.iter().filter(|port| port.is_some()).count();
        write!(f, "Tls({https} HTTPS port(s))")
    }
}

impl Tls {
    /// Builds the acceptors of `listeners`' ports (checked already: every certificate loads).
    pub(crate) fn new(listeners: &Listeners) -> Result<Self, String> {
        let mut ports = Vec::with_capacity(listeners.ports.len());
        for port in 0..listeners.ports.len() {
            let Some(table) = port_certificates(listeners, port) else {
                ports.push(None);
                continue;
            };
            let resolver = Arc::new(Resolver { table: RwLock::new(Arc::new(table)) });
            let mut config = rustls::ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|err| format!("cannot configure TLS: {err}"))?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
            // HTTP/2 first: clients that speak it get it.
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            ports.push(Some((resolver, TlsAcceptor::from(Arc::new(config)))));
        }
        Ok(Self { ports })
    }

    /// The acceptor of port `index`, when it is an HTTPS port.
    pub(crate) fn acceptor(&self, index: usize) -> Option<TlsAcceptor> {
        self.ports.get(index)?.as_ref().map(|(_, acceptor)| acceptor.clone())
    }

    /// Swaps in the certificates of a new configuration, whose listeners are the running
    /// ones: new handshakes use them, established connections are untouched. Returns how many
    /// ports changed.
    pub(crate) fn apply(&self, listeners: &Listeners) -> usize {
        let mut changed = 0;
        for (index, port) in self.ports.iter().enumerate() {
            let (Some((resolver, _)), Some(table)) = (port, port_certificates(listeners, index))
            else {
                continue;
            };
            let mut current =
                resolver.table.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !current.same_as(&table) {
                *current = Arc::new(table);
                changed += 1;
            }
        }
        changed
    }
}

/// The certificates of port `index`, when it is an HTTPS port.
fn port_certificates(listeners: &Listeners, index: usize) -> Option<PortCertificates> {
    let port = &listeners.ports[index];
    if port.protocol != Protocol::Https {
        return None;
    }
    let table = port
        .listeners
        .iter()
        .map(|&l| {
            let listener = &listeners.listeners[l];
            (listener.hostname.clone(), listener.certificates.clone())
        })
        .collect();
    Some(PortCertificates { listeners: table })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(names: &[&str]) -> Arc<Certificate> {
        let made = rcgen::generate_simple_self_signed(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let yaml = format!(
            "[{{apiVersion: v1, kind: Secret, type: kubernetes.io/tls, metadata: {{name: s}}, \
             stringData: {{tls.crt: {:?}, tls.key: {:?}}}}}]",
            made.cert.pem(),
            made.signing_key.serialize_pem()
        );
        let secrets: Vec<SecretConfig> = serde_norway::from_str(&yaml).unwrap();
        check_secrets(&secrets).unwrap().get("default/s", "ref").unwrap()
    }

    #[test]
    fn certificate_names_match_exactly_or_one_label_under_a_wildcard() {
        let cert = certificate(&["shop.example", "*.api.example"]);
        assert_eq!(cert.matches("shop.example"), Some(2));
        assert_eq!(cert.matches("v1.api.example"), Some(1));
        assert_eq!(cert.matches("a.v1.api.example"), None, "a wildcard covers one label");
        assert_eq!(cert.matches("api.example"), None);
        assert_eq!(cert.matches("other.example"), None);
    }

    #[test]
    fn sni_picks_the_most_specific_listener() {
        let (exact, wild, any) = (certificate(&["a"]), certificate(&["b"]), certificate(&["c"]));
        let table = PortCertificates {
            listeners: vec![
                (None, vec![any.clone()]),
                (Some(Hostname::parse("*.example").unwrap()), vec![wild.clone()]),
                (Some(Hostname::parse("shop.example").unwrap()), vec![exact.clone()]),
            ],
        };
        let pick = |sni: Option<&str>| table.listener(sni).unwrap()[0].source.clone();
        assert_eq!(pick(Some("shop.example")), exact.source);
        assert_eq!(pick(Some("api.example")), wild.source);
        assert_eq!(pick(Some("elsewhere.test")), any.source);
        assert_eq!(pick(None), any.source);
        let only_named = PortCertificates {
            listeners: vec![(Some(Hostname::parse("shop.example").unwrap()), vec![exact])],
        };
        assert!(only_named.listener(Some("other.example")).is_none(), "no listener, no handshake");
    }
}

//! TLS: rustls configurations for peer and client traffic, built from PEM files (issue #7).
//!
//! - Peer traffic is **mutual TLS**: the acceptor requires a client certificate chaining to the
//!   cluster CA (`tls.ca`) and the connector verifies the acceptor's certificate against the
//!   same CA. Every node presents its own `tls.cert` / `tls.key` on both sides.
//! - Server name: connectors verify the acceptor's certificate for the fixed DNS name
//!   [`NODE_SERVER_NAME`] (`ringlog-node`), so every node certificate must carry
//!   `subjectAltName = DNS:ringlog-node` (it may carry its host names and IPs as well).
//! - Node identity: a node certificate also names its node, `DNS:node-<id>.ringlog`
//!   ([`node_identity_name`]). Once the TLS handshake has verified the chain against the
//!   cluster CA, [`verify_node_identity`] checks that the leaf names the node the peer is
//!   (the connector: the node it dialled; the acceptor: the node the peer handshake claims),
//!   so a node holding another node's certificate cannot pose as it.
//! - Client traffic: the node presents the same certificate; when `tls.client_ca` is set,
//!   clients must present a certificate chaining to it (else any client may connect).
//! - Provider: rustls' `ring` (no cmake/NASM at build time); TLS 1.3 and 1.2.
//!
//! Making a cluster's certificates with openssl (P-256 keys; one leaf per node, used for both
//! directions, so it carries both extended key usages):
//!
//! ```text
//! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
//!     -subj "/CN=ringlog cluster CA" -keyout ca.key -out ca.pem
//! openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=node-1" \
//!     -keyout node-1.key -out node-1.csr
//! printf 'subjectAltName=DNS:ringlog-node,DNS:node-1.ringlog\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' > node-1.ext
//! openssl x509 -req -in node-1.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
//!     -extfile node-1.ext -out node-1.pem
//! ```
//!
//! then `[tls] mode = "tls"`, `ca = "ca.pem"`, `cert = "node-1.pem"`, `key = "node-1.key"` on
//! node 1 (and likewise for each node); keep `ca.key` off the nodes.
//!
//! Reload (SIGHUP): the node's certificate and key sit in one [`NodeCertificate`] shared by
//! the three configurations (a rustls `ResolvesServerCert` and `ResolvesClientCert`), so
//! [`TlsConfig::reload_certificate`] swaps them for every handshake that starts afterwards;
//! connections already made keep the certificate they were made with. The CAs (`tls.ca`,
//! `tls.client_ca`) are read at start only.
//!
//! Invariants: a configuration is only built from certificates and a key that parsed and that
//! rustls accepted (a key that does not match its certificate is an error here, not at the
//! first handshake); every error names the config key and the path it came from; a reload
//! that fails any check leaves the certificate in use unchanged.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use ringlog_raft::NodeId;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use thiserror::Error;

/// The DNS name every node certificate must carry and every connector verifies.
pub const NODE_SERVER_NAME: &str = "ringlog-node";

/// The DNS name a node certificate carries to show it is node `node`: `node-<id>.ringlog`.
pub fn node_identity_name(node: NodeId) -> String {
    format!("node-{}.ringlog", node.0)
}

/// Why a peer's certificate does not prove it is the node it says it is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("node {} presented no certificate", node.0)]
    NoCertificate { node: NodeId },
    #[error("the certificate does not name node {} (no subjectAltName DNS:{name}): {detail}", node.0)]
    WrongNode { node: NodeId, name: String, detail: String },
}

/// Checks that `chain` (a peer's certificates as presented in a completed TLS handshake, leaf
/// first, already verified against the cluster CA) is a certificate of node `node`: its leaf
/// carries `DNS:node-<id>.ringlog`.
pub fn verify_node_identity(
    chain: Option<&[CertificateDer<'_>]>,
    node: NodeId,
) -> Result<(), IdentityError> {
    let leaf = chain.and_then(<[_]>::first).ok_or(IdentityError::NoCertificate { node })?;
    let name = node_identity_name(node);
    let wrong = |detail: String| IdentityError::WrongNode { node, name: name.clone(), detail };
    let dns = DnsName::try_from(name.clone()).map_err(|e| wrong(e.to_string()))?;
    let parsed = ParsedCertificate::try_from(leaf).map_err(|e| wrong(e.to_string()))?;
    rustls::client::verify_server_name(&parsed, &ServerName::DnsName(dns))
        .map_err(|e| wrong(e.to_string()))
}

/// Why a TLS configuration could not be built. Each variant names the config key and path.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{key} = {}: cannot read the file: {source}", path.display())]
    Read { key: &'static str, path: PathBuf, source: io::Error },
    #[error("{key} = {}: not a valid PEM {what}: {detail}", path.display())]
    Parse { key: &'static str, path: PathBuf, what: &'static str, detail: String },
    #[error("{key} = {}: no {what} found in the file", path.display())]
    Missing { key: &'static str, path: PathBuf, what: &'static str },
    #[error("{what}: {source}")]
    Rejected { what: String, source: rustls::Error },
    #[error("{what}: {detail}")]
    Verifier { what: String, detail: String },
}

/// Paths of a node's TLS material (the `[tls]` config section).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA: every node certificate must chain to it.
    pub ca: PathBuf,
    /// This node's certificate chain (leaf first).
    pub cert: PathBuf,
    /// This node's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate chaining to this CA.
    pub client_ca: Option<PathBuf>,
}

/// A node's built TLS configurations: peer acceptor, peer connector and client acceptor.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// Accepts peer connections: requires a client certificate of the cluster CA.
    pub peer_server: Arc<ServerConfig>,
    /// Connects to peers: verifies the acceptor against the cluster CA, presents our cert.
    pub peer_client: Arc<ClientConfig>,
    /// Accepts client connections (client certificates required iff `client_ca` was given).
    pub client_server: Arc<ServerConfig>,
    /// The name connectors verify ([`NODE_SERVER_NAME`]).
    pub server_name: ServerName<'static>,
    /// This node's certificate and key, shared by the three configurations (reloadable).
    certificate: Arc<NodeCertificate>,
    /// Checks a reloaded certificate against the cluster CA, as the other nodes will.
    ca_verifier: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
}

/// This node's certificate chain and key as every new handshake (as acceptor or connector)
/// takes them; [`TlsConfig::reload_certificate`] swaps them.
#[derive(Debug)]
pub struct NodeCertificate {
    current: RwLock<Arc<CertifiedKey>>,
}

impl NodeCertificate {
    fn new(key: CertifiedKey) -> NodeCertificate {
        NodeCertificate { current: RwLock::new(Arc::new(key)) }
    }

    /// The certificate and key handshakes use now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Swaps in `key`; returns whether the leaf differs from the one it replaces.
    fn replace(&self, key: CertifiedKey) -> bool {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let changed = current.cert.first() != key.cert.first();
        *current = Arc::new(key);
        changed
    }
}

impl ResolvesServerCert for NodeCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for NodeCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// What [`TlsConfig::reload_certificate`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateReload {
    /// A different certificate is now presented by new connections.
    Replaced,
    /// The files hold the certificate already in use (swapped in all the same).
    Unchanged,
}

impl TlsConfig {
    /// Reads and validates every file of `files`.
    pub fn from_files(files: &TlsFiles) -> Result<TlsConfig, TlsError> {
        let ca = read_certs("tls.ca", &files.ca)?;
        let chain = read_certs("tls.cert", &files.cert)?;
        let key = read_key("tls.key", &files.key)?;
        let client_ca = match &files.client_ca {
            Some(path) => Some(read_certs("tls.client_ca", path)?),
            None => None,
        };
        let context = format!(
            "tls.ca = {}, tls.cert = {}, tls.key = {}",
            files.ca.display(),
            files.cert.display(),
            files.key.display()
        );
        TlsConfig::new(ca, chain, key, client_ca).map_err(|error| match error {
            TlsError::Rejected { what, source } => {
                TlsError::Rejected { what: format!("{what} ({context})"), source }
            }
            TlsError::Verifier { what, detail } => {
                TlsError::Verifier { what: format!("{what} ({context})"), detail }
            }
            other => other,
        })
    }

    /// Builds the configurations from parsed material: the cluster CA certificates, this
    /// node's chain and key, and the optional client CA.
    pub fn new(
        ca: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        client_ca: Option<Vec<CertificateDer<'static>>>,
    ) -> Result<TlsConfig, TlsError> {
        let provider = provider();
        let roots = Arc::new(root_store("the cluster CA (tls.ca)", ca)?);
        let peer_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::Verifier { what: "tls.ca".into(), detail: e.to_string() })?;
        let ca_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::Verifier { what: "tls.ca".into(), detail: e.to_string() })?;
        let certified = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|source| TlsError::Rejected { what: "tls.cert/tls.key".into(), source })?;
        let certificate = Arc::new(NodeCertificate::new(certified));
        let peer_server = server_builder(&provider)?
            .with_client_cert_verifier(peer_verifier)
            .with_cert_resolver(certificate.clone());
        let peer_client = client_builder(&provider)?
            .with_root_certificates(roots)
            .with_client_cert_resolver(certificate.clone());
        let client_builder = server_builder(&provider)?;
        let client_builder = match client_ca {
            Some(client_ca) => {
                let roots = Arc::new(root_store("the client CA (tls.client_ca)", client_ca)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| TlsError::Verifier {
                        what: "tls.client_ca".into(),
                        detail: e.to_string(),
                    })?;
                client_builder.with_client_cert_verifier(verifier)
            }
            None => client_builder.with_no_client_auth(),
        };
        let mut client_server = client_builder.with_cert_resolver(certificate.clone());
        // No TLS 1.3 session tickets: the blocking client pools connections and treats
        // unsolicited bytes on an idle connection as "do not reuse".
        client_server.send_tls13_tickets = 0;
        Ok(TlsConfig {
            peer_server: Arc::new(peer_server),
            peer_client: Arc::new(peer_client),
            client_server: Arc::new(client_server),
            server_name: node_server_name(),
            certificate,
            ca_verifier,
            provider,
        })
    }

    /// The certificate and key new handshakes use.
    pub fn certificate(&self) -> Arc<CertifiedKey> {
        self.certificate.current()
    }

    /// Reads `cert` (`tls.cert`) and `key` (`tls.key`) again and makes them the certificate
    /// of every handshake from now on, after the checks of a start (PEM, the key matches the
    /// leaf) and one more: the leaf must chain to the cluster CA and carry
    /// [`NODE_SERVER_NAME`] now, as the other nodes will check. On any error the certificate
    /// in use is kept. Connections already made keep theirs.
    pub fn reload_certificate(
        &self,
        cert: &Path,
        key: &Path,
    ) -> Result<CertificateReload, TlsError> {
        let chain = read_certs("tls.cert", cert)?;
        let private_key = read_key("tls.key", key)?;
        let context = format!("tls.cert = {}, tls.key = {}", cert.display(), key.display());
        let certified = CertifiedKey::from_der(chain, private_key, &self.provider)
            .map_err(|source| TlsError::Rejected { what: context.clone(), source })?;
        let (leaf, intermediates) = certified.cert.split_first().ok_or_else(|| {
            TlsError::Missing { key: "tls.cert", path: cert.into(), what: "CERTIFICATE block" }
        })?;
        self.ca_verifier
            .verify_server_cert(leaf, intermediates, &self.server_name, &[], UnixTime::now())
            .map_err(|source| TlsError::Rejected {
                what: format!("{context}: not a certificate the cluster CA (tls.ca) accepts"),
                source,
            })?;
        Ok(if self.certificate.replace(certified) {
            CertificateReload::Replaced
        } else {
            CertificateReload::Unchanged
        })
    }
}

/// [`NODE_SERVER_NAME`] as a rustls server name.
pub fn node_server_name() -> ServerName<'static> {
    ServerName::try_from(NODE_SERVER_NAME).expect("a valid DNS name")
}

/// A rustls client configuration for the blocking client: trusts `ca` (the CA of the nodes'
/// certificates), and presents `identity` (chain, key) when the cluster requires client
/// certificates.
pub fn client_config(
    ca: Vec<CertificateDer<'static>>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let roots = Arc::new(root_store("the cluster CA", ca)?);
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier { what: "the cluster CA".into(), detail: e.to_string() })?;
    let builder = client_builder(&provider)?.with_webpki_verifier(verifier);
    let config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|source| TlsError::Rejected { what: "client certificate".into(), source })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Certificates of a PEM file (at least one). `key` is the config key, for errors.
pub fn read_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_error(key, path, "certificate", e))?;
    if certs.is_empty() {
        return Err(TlsError::Missing { key, path: path.into(), what: "CERTIFICATE block" });
    }
    Ok(certs)
}

/// The first private key of a PEM file.
pub fn read_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| match error {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError::Missing { key, path: path.into(), what: "PRIVATE KEY block" }
        }
        other => parse_error(key, path, "private key", other),
    })
}

/// Whether an IO error carries a rustls error (a failed handshake or a TLS alert), and which.
pub fn tls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// Whether a TLS failure is about the certificate (ours refused by the peer, or theirs by us)
/// rather than a protocol or transport problem.
pub fn is_certificate_error(error: &rustls::Error) -> bool {
    use rustls::AlertDescription as A;
    match error {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => true,
        rustls::Error::AlertReceived(alert) => matches!(
            alert,
            A::BadCertificate
                | A::UnknownCA
                | A::CertificateUnknown
                | A::CertificateRequired
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::UnsupportedCertificate
                | A::AccessDenied
        ),
        _ => false,
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_builder(
    provider: &Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, TlsError> {
    ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rejected { what: "TLS protocol versions".into(), source })
}

fn client_builder(
    provider: &Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rejected { what: "TLS protocol versions".into(), source })
}

fn root_store(what: &str, certs: Vec<CertificateDer<'static>>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|source| TlsError::Rejected {
            what: format!("{what}: not a usable CA"),
            source,
        })?;
    }
    Ok(roots)
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { key, path: path.into(), source })
}

fn parse_error(
    key: &'static str,
    path: &Path,
    what: &'static str,
    error: rustls::pki_types::pem::Error,
) -> TlsError {
    TlsError::Parse { key, path: path.into(), what, detail: format!("{error:?}") }
}

#[cfg(test)]
pub(crate) mod test_certs {
    //! Certificates generated at test time with rcgen.

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    /// A CA able to sign node certificates.
    pub struct TestCa {
        pub cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl TestCa {
        pub fn new(name: &str) -> TestCa {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = params.self_signed(&key).unwrap();
            TestCa { cert, key }
        }

        pub fn der(&self) -> CertificateDer<'static> {
            self.cert.der().clone()
        }

        /// A leaf for `ringlog-node`, `<name>.ringlog` (the identity of node N when `name` is
        /// `node-N`) and `localhost`, signed by this CA.
        pub fn node(&self, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
            let key = KeyPair::generate().unwrap();
            let sans = vec![
                super::NODE_SERVER_NAME.to_string(),
                format!("{name}.ringlog"),
                "localhost".to_string(),
            ];
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            (vec![cert.der().clone()], key)
        }

        /// PEM of a leaf and its key.
        pub fn node_pem(&self, name: &str) -> (String, String) {
            let key = KeyPair::generate().unwrap();
            let sans = vec![super::NODE_SERVER_NAME.to_string(), format!("{name}.ringlog")];
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_certs::TestCa;
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringlog-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_config_builds_from_pem_files_of_one_ca() {
        let dir = temp_dir("good");
        let ca = TestCa::new("cluster");
        let (cert, key) = ca.node_pem("node-1");
        let files = TlsFiles {
            ca: write(&dir, "ca.pem", &ca.cert.pem()),
            cert: write(&dir, "node.pem", &cert),
            key: write(&dir, "node.key", &key),
            client_ca: Some(dir.join("ca.pem")),
        };
        TlsConfig::from_files(&files).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_the_key_and_the_path() {
        let dir = temp_dir("bad");
        let ca = TestCa::new("cluster");
        let (cert, key) = ca.node_pem("node-1");
        let good = TlsFiles {
            ca: write(&dir, "ca.pem", &ca.cert.pem()),
            cert: write(&dir, "node.pem", &cert),
            key: write(&dir, "node.key", &key),
            client_ca: None,
        };
        let missing = TlsFiles { ca: dir.join("nope.pem"), ..good.clone() };
        let error = TlsConfig::from_files(&missing).unwrap_err().to_string();
        assert!(error.contains("tls.ca") && error.contains("nope.pem"), "{error}");

        let garbage = TlsFiles { cert: write(&dir, "garbage.pem", "hello"), ..good.clone() };
        let error = TlsConfig::from_files(&garbage).unwrap_err().to_string();
        assert!(error.contains("tls.cert") && error.contains("garbage.pem"), "{error}");

        let no_key = TlsFiles { key: dir.join("node.pem"), ..good.clone() };
        let error = TlsConfig::from_files(&no_key).unwrap_err().to_string();
        assert!(error.contains("tls.key") && error.contains("PRIVATE KEY"), "{error}");

        let (_, other_key) = ca.node_pem("node-2");
        let mismatch = TlsFiles { key: write(&dir, "other.key", &other_key), ..good };
        let error = TlsConfig::from_files(&mismatch).unwrap_err().to_string();
        assert!(error.contains("tls.cert/tls.key") && error.contains("other.key"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reload_certificate_swaps_the_certificate_of_new_handshakes_and_keeps_it_on_any_error() {
        let dir = temp_dir("reload");
        let ca = TestCa::new("cluster");
        let (cert, key) = ca.node_pem("node-1");
        let files = TlsFiles {
            ca: write(&dir, "ca.pem", &ca.cert.pem()),
            cert: write(&dir, "node.pem", &cert),
            key: write(&dir, "node.key", &key),
            client_ca: None,
        };
        let tls = TlsConfig::from_files(&files).unwrap();
        let first = tls.certificate().cert[0].clone();
        let reload = || tls.reload_certificate(&files.cert, &files.key);
        assert_eq!(reload().unwrap(), CertificateReload::Unchanged);

        let (cert, key) = ca.node_pem("node-1");
        write(&dir, "node.pem", &cert);
        write(&dir, "node.key", &key);
        assert_eq!(reload().unwrap(), CertificateReload::Replaced);
        let second = tls.certificate().cert[0].clone();
        assert_ne!(second, first);

        // Refused, the second certificate stays: garbage, a key of another certificate, a
        // certificate of another CA (the other nodes would refuse it).
        write(&dir, "node.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n");
        let error = reload().unwrap_err().to_string();
        assert!(error.contains("tls.cert") && error.contains("node.pem"), "{error}");
        assert_eq!(tls.certificate().cert[0], second);
        let (_, other_key) = ca.node_pem("node-1");
        write(&dir, "node.pem", &cert);
        write(&dir, "node.key", &other_key);
        assert!(reload().is_err());
        assert_eq!(tls.certificate().cert[0], second);
        let (foreign_cert, foreign_key) = TestCa::new("another cluster").node_pem("node-1");
        write(&dir, "node.pem", &foreign_cert);
        write(&dir, "node.key", &foreign_key);
        let error = reload().unwrap_err().to_string();
        assert!(error.contains("cluster CA"), "{error}");
        assert_eq!(tls.certificate().cert[0], second);
        // The three configurations resolve through the same certificate.
        assert!(tls.peer_client.client_auth_cert_resolver.has_certs());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_node_certificate_proves_only_its_own_node_id() {
        let ca = TestCa::new("cluster");
        let (chain, _) = ca.node("node-2");
        assert_eq!(node_identity_name(NodeId(2)), "node-2.ringlog");
        verify_node_identity(Some(&chain), NodeId(2)).unwrap();
        let error = verify_node_identity(Some(&chain), NodeId(3)).unwrap_err();
        assert!(matches!(error, IdentityError::WrongNode { node: NodeId(3), .. }), "{error}");
        assert!(error.to_string().contains("DNS:node-3.ringlog"), "{error}");
        // `node-2` must not pass for `node-22` or `node-2x` by prefix.
        assert!(verify_node_identity(Some(&chain), NodeId(22)).is_err());
        assert_eq!(
            verify_node_identity(None, NodeId(2)),
            Err(IdentityError::NoCertificate { node: NodeId(2) })
        );
        assert!(verify_node_identity(Some(&[]), NodeId(2)).is_err());
    }
}

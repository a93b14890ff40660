//! The node's admin policy (`[admin]`, issue 18 authorization): who may send the requests that
//! change a group's leadership or membership (`TransferLeader`, `ChangeMembership`) to its
//! client port. Produce, fetch, metadata and status need no identity; peer (node-to-node)
//! traffic is not client traffic and is unaffected.
//!
//! A client connection becomes an admin's in one of two ways:
//! - **certificate**: with `tls.mode = "tls"` and `tls.client_ca`, its verified client
//!   certificate's leaf carries one of `admin.certificate_names` as a DNS subject alternative
//!   name (decided once, right after the TLS handshake);
//! - **token**: it sent an `Authenticate` request whose token equals the one in
//!   `admin.token_file` (read at start; rules in `ringlog_net::admin`). A refused token is
//!   answered `Unauthorized` and the connection is closed.
//!
//! Secure by default: with neither configured, no connection is an admin's and every admin
//! request is refused, with a reason saying how to configure one (`config check` and the
//! node's start log warn about it). `admin.open = true` makes every client an admin — explicit
//! only, refused together with a token or names, and warned about at start.
//!
//! Embedded nodes (`NodeHandle`, the C ABI) call the node in-process: the embedder owns the
//! node and needs no identity.
//!
//! Invariants: an admin request without an admin identity changes nothing and is answered
//! `ErrorReply::Unauthorized`; the policy is fixed for the life of the node (no reload).

#![forbid(unsafe_code)]

use std::fmt;

use ringlog_net::admin::{
    certificate_admin_name, parse_certificate_name, AdminToken, CertificateNameError,
    TokenFileError,
};
use rustls::pki_types::{CertificateDer, DnsName};

use crate::config::{NodeConfig, TlsMode};

/// Most names `admin.certificate_names` may list.
pub const ADMIN_CERTIFICATE_NAMES_MAX: usize = 64;

/// Who is an admin on this node's client ports (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct AdminPolicy {
    /// `admin.token_file`, read.
    pub token: Option<AdminToken>,
    /// `admin.certificate_names`, checked.
    pub certificate_names: Vec<DnsName<'static>>,
    /// `admin.open = true`: every client is an admin.
    pub open: bool,
}

/// How a connection proved it is an admin's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminIdentity {
    /// `admin.open = true`.
    Open,
    /// Its client certificate carries this admin name.
    Certificate(String),
    /// It presented the admin token.
    Token,
}

/// Why `[admin]` gives no policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminConfigError {
    #[error(
        "admin.open = true cannot be combined with admin.token_file or \
         admin.certificate_names (open makes every client an admin)"
    )]
    OpenWithIdentity,
    #[error(
        "admin.certificate_names needs verified client certificates: set tls.mode = \"tls\" \
         and tls.client_ca (or use admin.token_file)"
    )]
    NamesWithoutClientCertificates,
    #[error("admin.certificate_names lists {count} names; at most {ADMIN_CERTIFICATE_NAMES_MAX}")]
    TooManyNames { count: usize },
    #[error("admin.certificate_names: {0}")]
    BadName(#[from] CertificateNameError),
    #[error("admin.token_file: {0}")]
    Token(#[from] TokenFileError),
}

impl AdminPolicy {
    /// The policy of `config`'s `[admin]` section; reads `admin.token_file`.
    pub fn from_config(config: &NodeConfig) -> Result<AdminPolicy, AdminConfigError> {
        let admin = &config.admin;
        if admin.open && (admin.token_file.is_some() || !admin.certificate_names.is_empty()) {
            return Err(AdminConfigError::OpenWithIdentity);
        }
        let names = &admin.certificate_names;
        if !names.is_empty()
            && (config.tls.mode != Some(TlsMode::Tls) || config.tls.client_ca.is_none())
        {
            return Err(AdminConfigError::NamesWithoutClientCertificates);
        }
        if names.len() > ADMIN_CERTIFICATE_NAMES_MAX {
            return Err(AdminConfigError::TooManyNames { count: names.len() });
        }
        let certificate_names =
            names.iter().map(|name| parse_certificate_name(name)).collect::<Result<_, _>>()?;
        let token = match &admin.token_file {
            Some(path) => Some(AdminToken::from_file(path)?),
            None => None,
        };
        Ok(AdminPolicy { token, certificate_names, open: admin.open })
    }

    /// Whether no client can ever be an admin (nothing configured).
    pub fn is_closed(&self) -> bool {
        !self.open && self.token.is_none() && self.certificate_names.is_empty()
    }

    /// The identity a new connection has before it sends anything: open mode, or an admin
    /// name in its verified client certificate chain (`None`: plain, or none presented).
    pub fn connection_identity(
        &self,
        chain: Option<&[CertificateDer<'_>]>,
    ) -> Option<AdminIdentity> {
        if self.open {
            return Some(AdminIdentity::Open);
        }
        certificate_admin_name(chain, &self.certificate_names)
            .map(|name| AdminIdentity::Certificate(name.as_ref().to_string()))
    }

    /// Checks a presented token; the error is the `Unauthorized` reason.
    pub fn authenticate(&self, presented: &[u8]) -> Result<AdminIdentity, String> {
        match &self.token {
            Some(token) if token.matches(presented) => Ok(AdminIdentity::Token),
            Some(_) => Err("the admin token was refused (it does not match admin.token_file \
                            on this node); the connection is closed"
                .to_string()),
            None => Err("this node takes no admin token (admin.token_file is not set); the \
                         connection is closed"
                .to_string()),
        }
    }

    /// Why an admin request on a connection without an identity is refused: what this node
    /// would accept.
    pub fn refusal(&self) -> String {
        let mut ways = Vec::new();
        if !self.certificate_names.is_empty() {
            let names: Vec<&str> = self.certificate_names.iter().map(|n| n.as_ref()).collect();
            ways.push(format!(
                "a client certificate naming one of [{}] (admin.certificate_names)",
                names.join(", ")
            ));
        }
        if self.token.is_some() {
            ways.push("the admin token (admin.token_file; CLI: --admin-token-file)".to_string());
        }
        if ways.is_empty() {
            return "leadership transfers and membership changes need an admin identity, and \
                    this node has none configured: set admin.token_file or \
                    admin.certificate_names in its [admin] section"
                .to_string();
        }
        format!(
            "leadership transfers and membership changes need an admin identity; this \
             connection has none (this node accepts {})",
            ways.join(" or ")
        )
    }
}

impl fmt::Display for AdminIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminIdentity::Open => f.write_str("open (admin.open = true)"),
            AdminIdentity::Certificate(name) => write!(f, "certificate {name}"),
            AdminIdentity::Token => f.write_str("admin token"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::config::AdminSection;

    const TOKEN: &str = "an-admin-token-of-some-length";

    fn config(admin: AdminSection) -> NodeConfig {
        let text = "node_id = 1\ncluster_id = 7\ndata_dir = \"d\"\n\
                    [[peers]]\nid = 1\npeer = \"127.0.0.1:7000\"\nclient = \"127.0.0.1:7100\"\n\
                    [tls]\nmode = \"plaintext\"\n";
        let mut config = NodeConfig::parse(text, Path::new("node.toml")).unwrap();
        config.admin = admin;
        config
    }

    fn token_file(dir: &Path, mode: u32) -> PathBuf {
        let path = dir.join("admin.token");
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn nothing_configured_is_closed_and_the_refusal_says_how_to_configure() {
        let policy = AdminPolicy::from_config(&config(AdminSection::default())).unwrap();
        assert!(policy.is_closed());
        assert_eq!(policy.connection_identity(None), None);
        assert!(policy.authenticate(TOKEN.as_bytes()).is_err());
        let reason = policy.refusal();
        assert!(reason.contains("admin.token_file") && reason.contains("none configured"));
    }

    #[test]
    fn the_token_from_the_file_authenticates_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let admin = AdminSection {
            token_file: Some(token_file(dir.path(), 0o600)),
            ..AdminSection::default()
        };
        let policy = AdminPolicy::from_config(&config(admin)).unwrap();
        assert!(!policy.is_closed());
        assert_eq!(policy.authenticate(TOKEN.as_bytes()), Ok(AdminIdentity::Token));
        let refused = policy.authenticate(b"an-admin-token-of-some-lengtH").unwrap_err();
        assert!(refused.contains("refused"), "{refused}");
        assert!(policy.authenticate(b"").is_err());
        // A plain connection is no admin until it authenticates.
        assert_eq!(policy.connection_identity(None), None);
        assert!(policy.refusal().contains("--admin-token-file"));
    }

    #[test]
    fn a_world_readable_or_empty_token_file_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_file(dir.path(), 0o644);
        let admin = AdminSection { token_file: Some(path), ..AdminSection::default() };
        let error = AdminPolicy::from_config(&config(admin.clone())).unwrap_err();
        assert!(matches!(error, AdminConfigError::Token(TokenFileError::WorldAccessible { .. })));
        assert!(error.to_string().starts_with("admin.token_file: "), "{error}");
        // validate() refuses it too, naming the key.
        let problems = config(admin).validate().unwrap_err();
        assert!(
            problems.iter().any(|p| p.to_string().contains("admin.token_file")),
            "{problems:?}"
        );

        let empty = dir.path().join("empty.token");
        std::fs::write(&empty, "\n").unwrap();
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
        let admin = AdminSection { token_file: Some(empty), ..AdminSection::default() };
        let error = AdminPolicy::from_config(&config(admin)).unwrap_err();
        assert!(error.to_string().contains("empty"), "{error}");
    }

    #[test]
    fn open_mode_is_explicit_and_exclusive() {
        let open = AdminSection { open: true, ..AdminSection::default() };
        let policy = AdminPolicy::from_config(&config(open)).unwrap();
        assert_eq!(policy.connection_identity(None), Some(AdminIdentity::Open));
        let dir = tempfile::tempdir().unwrap();
        let both = AdminSection {
            open: true,
            token_file: Some(token_file(dir.path(), 0o600)),
            ..AdminSection::default()
        };
        let error = AdminPolicy::from_config(&config(both)).unwrap_err();
        assert!(matches!(error, AdminConfigError::OpenWithIdentity), "{error}");
    }

    #[test]
    fn certificate_names_need_client_certificates_and_valid_names() {
        let names = AdminSection {
            certificate_names: vec!["ops-admin".to_string()],
            ..AdminSection::default()
        };
        let error = AdminPolicy::from_config(&config(names)).unwrap_err();
        assert!(matches!(error, AdminConfigError::NamesWithoutClientCertificates), "{error}");
        let mut tls = config(AdminSection {
            certificate_names: vec!["*.admins".to_string()],
            ..AdminSection::default()
        });
        tls.tls.mode = Some(TlsMode::Tls);
        tls.tls.client_ca = Some("clients.pem".into());
        let error = AdminPolicy::from_config(&tls).unwrap_err();
        assert!(matches!(error, AdminConfigError::BadName(_)), "{error}");
        tls.admin.certificate_names = vec!["ops".to_string(); ADMIN_CERTIFICATE_NAMES_MAX + 1];
        let error = AdminPolicy::from_config(&tls).unwrap_err();
        assert!(matches!(error, AdminConfigError::TooManyNames { count: 65 }), "{error}");
        tls.admin.certificate_names = vec!["ops-admin".to_string()];
        let policy = AdminPolicy::from_config(&tls).unwrap();
        assert!(policy.refusal().contains("[ops-admin]"), "{}", policy.refusal());
        // Without a certificate, no identity.
        assert_eq!(policy.connection_identity(None), None);
    }
}

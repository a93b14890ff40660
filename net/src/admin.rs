//! Admin identity: what a client shows to change a group's membership or move its leadership
//! (issue 18, authorization). docs/format.md#authenticate has the wire side; docs/config.md the
//! node's `[admin]` keys.
//!
//! Two kinds of identity:
//! - **Token** (plaintext clusters, or TLS without client certificates): a secret shared by the
//!   node (`admin.token_file`) and the operator's client (`--admin-token-file`), presented once
//!   per connection in an `Authenticate` request. [`AdminToken`] holds it; it is compared in
//!   constant time ([`AdminToken::matches`], `subtle`) and never printed (its `Debug` is
//!   redacted).
//! - **Certificate** (mutual TLS, `tls.client_ca` set): a client certificate, already verified
//!   against the client CA by the TLS handshake, whose leaf carries one of the configured
//!   admin names as a DNS subject alternative name ([`certificate_admin_name`]). The name is
//!   matched as TLS matches a server name (webpki's rules: the subject CN is not consulted;
//!   a wildcard SAN `*.example` matches exactly one label).
//!
//! Token file rules, the same for the node and the CLI ([`AdminToken::from_file`]): a regular
//! file with no permission bits for others (neither world-readable nor world-writable), at
//! most [`ADMIN_TOKEN_FILE_BYTES_MAX`] bytes; its content with surrounding ASCII whitespace
//! trimmed is the token: [`ADMIN_TOKEN_BYTES_MIN`]..=[`ADMIN_TOKEN_BYTES_MAX`] bytes of
//! visible ASCII (`!`..=`~`). Anything else is a [`TokenFileError`] naming the file and the
//! rule. Reading the file is the module's only IO.
//!
//! Invariants: an `AdminToken` always satisfies the length and character rules; no function
//! here panics on any input.

#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, DnsName, ServerName};
use rustls::server::ParsedCertificate;
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::limits::{ADMIN_TOKEN_BYTES_MAX, ADMIN_TOKEN_BYTES_MIN, ADMIN_TOKEN_FILE_BYTES_MAX};

/// Permission bits of a token file that refuse it: any access for others.
pub const TOKEN_FILE_OTHERS_MASK: u32 = 0o007;

/// A valid admin token (see the module docs for the rules). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    bytes: Vec<u8>,
}

/// Why bytes are not a valid admin token.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AdminTokenError {
    #[error("the admin token is empty")]
    Empty,
    #[error(
        "the admin token is {len} bytes; at least {ADMIN_TOKEN_BYTES_MIN} are needed (a short \
         token is guessable)"
    )]
    TooShort { len: usize },
    #[error("the admin token is {len} bytes; at most {ADMIN_TOKEN_BYTES_MAX} are accepted")]
    TooLong { len: usize },
    #[error(
        "the admin token has a byte outside visible ASCII (0x21..=0x7e) at position {position}"
    )]
    BadCharacter { position: usize },
}

/// Why a token file gives no admin token. Every variant names the file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TokenFileError {
    #[error("admin token file {}: cannot read it: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("admin token file {}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error(
        "admin token file {}: mode {mode:04o} lets other users read or write it; \
         run `chmod o-rwx {}` (0600 or 0640 are fine)",
        path.display(),
        path.display()
    )]
    WorldAccessible { path: PathBuf, mode: u32 },
    #[error(
        "admin token file {}: {len} bytes; a token file holds at most \
         {ADMIN_TOKEN_FILE_BYTES_MAX} bytes",
        path.display()
    )]
    FileTooLong { path: PathBuf, len: u64 },
    #[error("admin token file {}: {source}", path.display())]
    Token { path: PathBuf, source: AdminTokenError },
}

impl AdminToken {
    /// `bytes` as a token, if they follow the rules (no trimming here).
    pub fn new(bytes: &[u8]) -> Result<AdminToken, AdminTokenError> {
        let len = bytes.len();
        if len == 0 {
            return Err(AdminTokenError::Empty);
        }
        if len < ADMIN_TOKEN_BYTES_MIN {
            return Err(AdminTokenError::TooShort { len });
        }
        if len > ADMIN_TOKEN_BYTES_MAX {
            return Err(AdminTokenError::TooLong { len });
        }
        if let Some(position) = bytes.iter().position(|b| !(0x21..=0x7e).contains(b)) {
            return Err(AdminTokenError::BadCharacter { position });
        }
        Ok(AdminToken { bytes: bytes.to_vec() })
    }

    /// Reads the token from the file at `path` (rules in the module docs).
    pub fn from_file(path: &Path) -> Result<AdminToken, TokenFileError> {
        let read_error = |source| TokenFileError::Read { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let metadata = file.metadata().map_err(read_error)?;
        if !metadata.is_file() {
            return Err(TokenFileError::NotAFile { path: path.to_path_buf() });
        }
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & TOKEN_FILE_OTHERS_MASK != 0 {
            return Err(TokenFileError::WorldAccessible { path: path.to_path_buf(), mode });
        }
        if metadata.len() > ADMIN_TOKEN_FILE_BYTES_MAX {
            let len = metadata.len();
            return Err(TokenFileError::FileTooLong { path: path.to_path_buf(), len });
        }
        // Bounded again while reading: the file may have grown since the stat.
        let mut content = Vec::with_capacity(metadata.len() as usize);
        file.take(ADMIN_TOKEN_FILE_BYTES_MAX + 1).read_to_end(&mut content).map_err(read_error)?;
        if content.len() as u64 > ADMIN_TOKEN_FILE_BYTES_MAX {
            let len = content.len() as u64;
            return Err(TokenFileError::FileTooLong { path: path.to_path_buf(), len });
        }
        AdminToken::new(content.trim_ascii())
            .map_err(|source| TokenFileError::Token { path: path.to_path_buf(), source })
    }

    /// The token's bytes (to send it).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether `presented` is this token. Constant time in the token's content: equal lengths
    /// are compared byte for byte without an early exit (a length mismatch returns at once;
    /// the length is bounded and not secret enough to matter).
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.bytes.len() == presented.len() && bool::from(self.bytes.ct_eq(presented))
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminToken(<redacted, {} bytes>)", self.bytes.len())
    }
}

/// Why an admin certificate name is not usable.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{name:?} is not a DNS name a certificate can carry as subjectAltName: {reason}")]
pub struct CertificateNameError {
    pub name: String,
    pub reason: String,
}

/// Checks that `name` can be matched against a certificate's DNS subject alternative names.
pub fn parse_certificate_name(name: &str) -> Result<DnsName<'static>, CertificateNameError> {
    let error = |reason: String| CertificateNameError { name: name.to_string(), reason };
    if name.starts_with("*.") {
        return Err(error("a wildcard is for certificates, not for the name required".into()));
    }
    DnsName::try_from(name.to_string()).map_err(|e| error(e.to_string()))
}

/// The first of `names` that the leaf of `chain` (a client's certificates as presented in a
/// completed TLS handshake, leaf first, already verified against the client CA) carries as a
/// DNS subject alternative name; `None` when there is no certificate or no name matches.
pub fn certificate_admin_name<'n>(
    chain: Option<&[CertificateDer<'_>]>,
    names: &'n [DnsName<'static>],
) -> Option<&'n DnsName<'static>> {
    let leaf = chain.and_then(<[_]>::first)?;
    let parsed = ParsedCertificate::try_from(leaf).ok()?;
    names.iter().find(|name| {
        rustls::client::verify_server_name(&parsed, &ServerName::DnsName((*name).clone())).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::test_certs::TestCa;

    const GOOD: &str = "0123456789abcdef-token";

    fn write_token(dir: &Path, text: &[u8], mode: u32) -> PathBuf {
        let path = dir.join("admin.token");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_token_must_be_long_enough_short_enough_and_visible_ascii() {
        assert_eq!(AdminToken::new(b""), Err(AdminTokenError::Empty));
        assert_eq!(AdminToken::new(b"short"), Err(AdminTokenError::TooShort { len: 5 }));
        let min = vec![b'a'; ADMIN_TOKEN_BYTES_MIN];
        assert!(AdminToken::new(&min).is_ok());
        let max = vec![b'a'; ADMIN_TOKEN_BYTES_MAX];
        assert!(AdminToken::new(&max).is_ok());
        let over = vec![b'a'; ADMIN_TOKEN_BYTES_MAX + 1];
        let len = ADMIN_TOKEN_BYTES_MAX + 1;
        assert_eq!(AdminToken::new(&over), Err(AdminTokenError::TooLong { len }));
        let spaced = b"0123456789 abcdef";
        assert_eq!(AdminToken::new(spaced), Err(AdminTokenError::BadCharacter { position: 10 }));
        let binary = b"0123456789abcdef\xff";
        assert_eq!(AdminToken::new(binary), Err(AdminTokenError::BadCharacter { position: 16 }));
    }

    #[test]
    fn a_token_matches_only_itself_and_never_prints() {
        let token = AdminToken::new(GOOD.as_bytes()).unwrap();
        assert!(token.matches(GOOD.as_bytes()));
        assert!(!token.matches(b"0123456789abcdef-tokeN"));
        assert!(!token.matches(b"0123456789abcdef-toke"));
        assert!(!token.matches(b""));
        let shown = format!("{token:?}");
        assert!(!shown.contains("0123"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn a_token_file_is_trimmed_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_token(dir.path(), format!("  {GOOD}\n").as_bytes(), 0o600);
        let token = AdminToken::from_file(&path).unwrap();
        assert!(token.matches(GOOD.as_bytes()));
        // Group access is the operator's choice.
        let path = write_token(dir.path(), GOOD.as_bytes(), 0o640);
        assert!(AdminToken::from_file(&path).is_ok());
    }

    #[test]
    fn a_token_file_others_can_read_or_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o604, 0o602, 0o601, 0o666] {
            let path = write_token(dir.path(), GOOD.as_bytes(), mode);
            let error = AdminToken::from_file(&path).unwrap_err();
            assert!(
                matches!(error, TokenFileError::WorldAccessible { mode: m, .. } if m == mode),
                "{mode:o}: {error}"
            );
            let text = error.to_string();
            assert!(text.contains("chmod o-rwx") && text.contains("admin.token"), "{text}");
        }
    }

    #[test]
    fn an_empty_short_oversize_or_missing_token_file_is_refused_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_token(dir.path(), b" \n\t\n", 0o600);
        let error = AdminToken::from_file(&path).unwrap_err();
        assert!(
            matches!(error, TokenFileError::Token { source: AdminTokenError::Empty, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("empty"), "{error}");

        let path = write_token(dir.path(), b"tiny", 0o600);
        let error = AdminToken::from_file(&path).unwrap_err();
        assert!(error.to_string().contains("at least 16"), "{error}");

        let long = vec![b'x'; ADMIN_TOKEN_BYTES_MAX + 1];
        let path = write_token(dir.path(), &long, 0o600);
        let error = AdminToken::from_file(&path).unwrap_err();
        assert!(error.to_string().contains("at most 512"), "{error}");

        let huge = vec![b'x'; ADMIN_TOKEN_FILE_BYTES_MAX as usize + 1];
        let path = write_token(dir.path(), &huge, 0o600);
        let error = AdminToken::from_file(&path).unwrap_err();
        assert!(matches!(error, TokenFileError::FileTooLong { len: 4097, .. }), "{error}");

        let error = AdminToken::from_file(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(error, TokenFileError::Read { .. }), "{error}");
        let error = AdminToken::from_file(dir.path()).unwrap_err();
        assert!(matches!(error, TokenFileError::NotAFile { .. }), "{error}");
    }

    #[test]
    fn certificate_names_are_plain_dns_names() {
        assert!(parse_certificate_name("ops-admin").is_ok());
        assert!(parse_certificate_name("admin.ringlog").is_ok());
        assert!(parse_certificate_name("*.ringlog").is_err());
        assert!(parse_certificate_name("not a name").is_err());
        assert!(parse_certificate_name("").is_err());
    }

    #[test]
    fn a_certificate_is_admin_only_when_its_leaf_carries_a_configured_name() {
        let ca = TestCa::new("clients");
        let (admin, _) = ca.node("ops-admin");
        let (other, _) = ca.node("producer");
        let names = vec![parse_certificate_name("ops-admin.ringlog").unwrap()];
        let found = certificate_admin_name(Some(&admin), &names);
        assert_eq!(found.map(|n| n.as_ref().to_string()), Some("ops-admin.ringlog".into()));
        assert!(certificate_admin_name(Some(&other), &names).is_none());
        assert!(certificate_admin_name(None, &names).is_none());
        assert!(certificate_admin_name(Some(&[]), &names).is_none());
        assert!(certificate_admin_name(Some(&admin), &[]).is_none());
        // Garbage instead of a certificate is no identity, never a panic.
        let junk = [CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])];
        assert!(certificate_admin_name(Some(&junk), &names).is_none());
    }
}

//! TLS through rustls: loading PEM files, building the client's connector,
//! and turning TLS failures into messages that say what to do. The server's
//! acceptor is built from the same pieces in `server/tls.rs`.
//!
//! The protocol is the same inside TLS as outside it; TLS only wraps the
//! byte stream. Mutual TLS (client certificates) is on when the server is
//! given a client CA.
//!
//! The crypto provider is named explicitly (ring) rather than taken from a
//! process-wide default, so that another crate enabling a second provider
//! cannot make building a config panic.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, AlertDescription, CertificateError, RootCertStore};
use tokio_rustls::TlsConnector;

pub use tokio_rustls::rustls::pki_types::CertificateDer;

/// Why TLS could not be set up or failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} file {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the {what} file {} holds no PEM certificate (a block starting with -----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("the key file {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    /// The files were read but rustls refused what they hold, or the
    /// settings do not fit together; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// The TLS handshake itself failed; the message says why and what to do.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
}

/// The client's TLS setting.
///
/// The server's certificate must be signed by one of the CAs in `ca_file`
/// or `ca_certs` (at least one must be given), and be valid for
/// `server_name`, which defaults to the host part of the address connected
/// to (`localhost` for `localhost:7070`, `127.0.0.1` for `127.0.0.1:7070`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientTlsConfig {
    /// A PEM file of the CA certificate(s) to trust (`--tls-ca`).
    pub ca_file: Option<PathBuf>,
    /// CA certificates already in memory, trusted as well as `ca_file`.
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// For mutual TLS: this client's certificate chain, PEM (`--tls-cert`).
    pub client_cert: Option<PathBuf>,
    /// For mutual TLS: this client's private key, PEM (`--tls-key`).
    pub client_key: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the
    /// host of the address (connecting by IP to a certificate for a name,
    /// say).
    pub server_name: Option<String>,
}

impl ClientTlsConfig {
    /// Trusts the CA certificate(s) in the PEM file `ca_file`.
    pub fn with_ca_file(ca_file: impl Into<PathBuf>) -> ClientTlsConfig {
        ClientTlsConfig {
            ca_file: Some(ca_file.into()),
            ..ClientTlsConfig::default()
        }
    }

    /// Trusts the given CA certificates (DER).
    pub fn with_ca_certs(ca_certs: Vec<CertificateDer<'static>>) -> ClientTlsConfig {
        ClientTlsConfig {
            ca_certs,
            ..ClientTlsConfig::default()
        }
    }

    /// Presents this certificate and key to servers that require one.
    pub fn with_client_cert(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> ClientTlsConfig {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }

    fn connector(&self) -> Result<TlsConnector, TlsError> {
        let mut certs = self.ca_certs.clone();
        if let Some(ca) = &self.ca_file {
            certs.extend(load_certs(ca, "CA")?);
        }
        if certs.is_empty() {
            return Err(TlsError::Invalid(
                "no CA to check the server's certificate against: pass the CA that signed it (--tls-ca FILE)".into(),
            ));
        }
        let source = self.ca_file.as_deref().unwrap_or(Path::new("ca_certs"));
        let roots = root_store(certs, source)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&self.client_cert, &self.client_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(load_certs(cert, "client certificate")?, load_key(key)?)
                .map_err(|e| {
                    TlsError::Invalid(format!(
                        "the client certificate {} and key {} cannot be used together: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?,
            _ => {
                return Err(TlsError::Invalid(
                    "a client certificate needs its key and the reverse: pass both --tls-cert and --tls-key".into(),
                ))
            }
        };
        Ok(TlsConnector::from(Arc::new(config)))
    }

    /// The name to check the server's certificate against: the override, or
    /// the host part of `addr` (`host:port`, `[v6]:port`, or a bare host).
    fn server_name_for(&self, addr: &str) -> Result<ServerName<'static>, TlsError> {
        let name = match &self.server_name {
            Some(name) => name.as_str(),
            None => host_of(addr),
        };
        ServerName::try_from(name.to_string()).map_err(|_| {
            TlsError::Invalid(format!(
                "{name:?} is not a name a TLS certificate can carry; set the TLS server name explicitly"
            ))
        })
    }

    /// Runs the client side of the TLS handshake over `stream`, connected to
    /// `addr`. The caller bounds the time.
    pub async fn connect(
        &self,
        stream: TcpStream,
        addr: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError> {
        let connector = self.connector()?;
        let name = self.server_name_for(addr)?;
        connector
            .connect(name, stream)
            .await
            .map_err(|e| TlsError::Handshake(explain(&e)))
    }
}

fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        // A bare IPv6 address has colons but no port.
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => addr,
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path, what)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path, "key")?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsError::Read {
            what: "key",
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: path.to_owned(),
        })
}

pub(crate) fn root_store(
    certs: Vec<CertificateDer<'static>>,
    source: &Path,
) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            TlsError::Invalid(format!(
                "a CA certificate in {} cannot be used: {e}",
                source.display()
            ))
        })?;
    }
    Ok(roots)
}

/// Turns a TLS failure seen by the client into what happened and what to
/// do. Also used for failures that surface on the first read after the
/// handshake, as a refused client certificate does under TLS 1.3.
pub(crate) fn explain(error: &io::Error) -> String {
    let tls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls_error {
        Some(rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. }) => {
            "the server does not speak TLS (its answer is not TLS); connect without TLS, or check that this is the server's TLS address".into()
        }
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            "the server's certificate is not signed by a CA this client trusts; pass the CA that signed it (--tls-ca FILE)".into()
        }
        Some(rustls::Error::InvalidCertificate(
            e @ (CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }),
        )) => format!(
            "the server's certificate is not valid for the name connected to ({e}); connect by a name the certificate carries, or set the TLS server name"
        ),
        Some(rustls::Error::InvalidCertificate(e)) => {
            format!("the server's certificate was refused: {e}")
        }
        Some(rustls::Error::AlertReceived(AlertDescription::CertificateRequired)) => {
            "the server requires a client certificate (mutual TLS); pass one with --tls-cert and --tls-key".into()
        }
        Some(rustls::Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied),
        )) => format!(
            "the server refused this client's certificate ({alert:?}); use one signed by the CA the server trusts for clients"
        ),
        Some(other) => other.to_string(),
        None if error.kind() == io::ErrorKind::UnexpectedEof => {
            "the server closed the connection during the TLS handshake; it may not speak TLS, or it refused this client".into()
        }
        None => error.to_string(),
    }
}

/// Whether `io_error` came out of rustls (as opposed to the socket).
pub(crate) fn is_tls_error(io_error: &io::Error) -> bool {
    io_error
        .get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>())
}

/// Whether the first bytes a plaintext client received look like a TLS
/// record (a handshake or an alert, TLS 1.0 to 1.3): the server speaks TLS.
pub(crate) fn looks_like_tls(first_bytes: &[u8]) -> bool {
    first_bytes.len() >= 2 && matches!(first_bytes[0], 0x15 | 0x16) && first_bytes[1] == 0x03
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_part_of_an_address() {
        assert_eq!(host_of("localhost:7070"), "localhost");
        assert_eq!(host_of("127.0.0.1:7070"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7070"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("example.org"), "example.org");
    }

    #[test]
    fn a_client_without_a_ca_is_told_to_pass_one() {
        let err = ClientTlsConfig::default()
            .connector()
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--tls-ca"), "{err}");
    }
}

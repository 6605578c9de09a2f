//! The server's side of TLS: its certificate and key (and, for mutual TLS,
//! the CA its clients' certificates must be signed by), the acceptor built
//! from them, and the handshake that tells a plaintext client apart.

use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use crate::tls::{load_certs, load_key, provider, root_store, TlsError};

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The server's TLS setting: its certificate chain and key, and optionally
/// the CA whose certificates clients must present (mutual TLS).
///
/// All three are PEM files. `cert` may hold the whole chain, leaf first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, only clients with a certificate signed by this CA get past
    /// the TLS handshake.
    pub client_ca: Option<PathBuf>,
}

impl TlsConfig {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsConfig {
        TlsConfig {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
        }
    }

    /// Requires client certificates signed by the CA in `client_ca`.
    pub fn with_client_ca(mut self, client_ca: impl Into<PathBuf>) -> TlsConfig {
        self.client_ca = Some(client_ca.into());
        self
    }

    /// Reads the files and builds what accepts TLS connections.
    pub(crate) fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let provider = provider();
        let certs = load_certs(&self.cert, "certificate")?;
        let key = load_key(&self.key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = root_store(load_certs(ca, "client CA")?, ca)?;
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| {
                        TlsError::Invalid(format!(
                            "cannot verify clients against the CA in {}: {e}",
                            ca.display()
                        ))
                    })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(certs, key).map_err(|e| {
            TlsError::Invalid(format!(
                "the certificate {} and the key {} cannot be used together: {e}; check that the key is the certificate's",
                self.cert.display(),
                self.key.display()
            ))
        })?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// How the server side of a TLS handshake ended, short of success.
pub(crate) enum Refused {
    /// The client's first byte is not TLS: it speaks plaintext. The socket
    /// comes back so that the client can be told so in its own language.
    Plaintext(TcpStream),
    /// The handshake failed; the reason, for the log.
    Failed(String),
}

/// Runs the server side of the TLS handshake. The caller bounds the time.
pub(crate) async fn accept(
    acceptor: &TlsAcceptor,
    socket: TcpStream,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, Refused> {
    let mut first = [0u8; 1];
    match socket.peek(&mut first).await {
        Ok(0) => return Err(Refused::Failed("closed before the TLS handshake".into())),
        Ok(_) if first[0] != TLS_HANDSHAKE_RECORD => return Err(Refused::Plaintext(socket)),
        Ok(_) => {}
        Err(e) => return Err(Refused::Failed(e.to_string())),
    }
    match acceptor.accept(socket).into_fallible().await {
        Ok(stream) => Ok(stream),
        Err((error, mut socket)) => {
            // rustls has sent its alert. Read what the client still sends
            // (its first frame, typically) until it closes: closing with
            // unread bytes would reset the connection, and a reset can
            // destroy the alert before the client reads it.
            let mut sink = [0u8; 4096];
            while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
            Err(Refused::Failed(error.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_named_in_the_error() {
        let config = TlsConfig::new("/nonexistent/cert.pem", "/nonexistent/key.pem");
        let err = config.acceptor().err().unwrap().to_string();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
        assert!(err.contains("certificate file"), "{err}");
    }
}

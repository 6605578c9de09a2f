//! TLS over loopback with certificates made at run time: server-only TLS,
//! mutual TLS, certificates the other side must refuse, and the two
//! plaintext/TLS mismatches, which must fail fast and say what is wrong.
//! Tasks run in the scripted test executor (tests/script), not in Docker.

mod script;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use script::{script, ScriptExecutor};
use std::path::PathBuf;
use std::time::Duration;
use tcp_task::protocol::ErrorKind;
use tcp_task::tls::CertificateDer;
use tcp_task::{
    Client, ClientTlsConfig, ConnectOptions, Error, RunningServer, Server, ServerConfig, TlsConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A certificate authority made for one test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    pem: PathBuf,
}

/// The files of one test: a CA, a server certificate for localhost and
/// 127.0.0.1, a client certificate, and a second CA that signed nothing the
/// server has, plus a client certificate of that second CA.
struct Pki {
    _dir: tempfile::TempDir,
    ca: Ca,
    other_ca: Ca,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    stranger_cert: PathBuf,
    stranger_key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let ca = make_ca("tcp-task test CA", path("ca.pem"));
        let other_ca = make_ca("some other CA", path("other-ca.pem"));
        let (server_cert, server_key) = (path("server.pem"), path("server.key"));
        make_leaf(
            &ca,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &server_cert,
            &server_key,
        );
        let (client_cert, client_key) = (path("client.pem"), path("client.key"));
        make_leaf(
            &ca,
            &["client.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &client_cert,
            &client_key,
        );
        let (stranger_cert, stranger_key) = (path("stranger.pem"), path("stranger.key"));
        make_leaf(
            &other_ca,
            &["stranger.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &stranger_cert,
            &stranger_key,
        );
        Pki {
            _dir: dir,
            ca,
            other_ca,
            server_cert,
            server_key,
            client_cert,
            client_key,
            stranger_cert,
            stranger_key,
        }
    }

    fn server_tls(&self) -> TlsConfig {
        TlsConfig::new(&self.server_cert, &self.server_key)
    }

    fn mutual_server_tls(&self) -> TlsConfig {
        self.server_tls().with_client_ca(&self.ca.pem)
    }

    fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::with_ca_file(&self.ca.pem)
    }
}

fn make_ca(name: &str, pem: PathBuf) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(&pem, cert.pem()).unwrap();
    Ca {
        issuer: Issuer::new(params, key),
        cert_der: cert.der().clone(),
        pem,
    }
}

fn make_leaf(
    ca: &Ca,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    cert_path: &PathBuf,
    key_path: &PathBuf,
) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, &names[0]);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    std::fs::write(cert_path, cert.pem()).unwrap();
    std::fs::write(key_path, key.serialize_pem()).unwrap();
}

/// Long timeouts on both sides: the mismatch tests prove that the errors
/// come from recognising the mismatch, not from a timeout firing.
const PATIENT: Duration = Duration::from_secs(30);

/// How long a refusal may take before the test calls it a hang: far below
/// [`PATIENT`].
const PROMPT: Duration = Duration::from_secs(5);

fn patient_config() -> ServerConfig {
    ServerConfig {
        handshake_timeout: PATIENT,
        ..ServerConfig::default()
    }
}

async fn start(config: ServerConfig, tls: Option<&TlsConfig>) -> RunningServer {
    let mut server = Server::new(config, ScriptExecutor::default());
    if let Some(tls) = tls {
        server = server.with_tls(tls).unwrap();
    }
    server.spawn("127.0.0.1:0").await.unwrap()
}

fn options(tls: Option<ClientTlsConfig>) -> ConnectOptions {
    ConnectOptions {
        tls,
        connect_timeout: PATIENT,
        ..ConnectOptions::default()
    }
}

/// Connects, failing the test if the answer takes longer than [`PROMPT`].
async fn connect(addr: impl Into<String>, options: ConnectOptions) -> Result<Client, Error> {
    tokio::time::timeout(PROMPT, Client::connect_with(addr.into(), options))
        .await
        .expect("no answer in time: the connection hangs")
}

#[tokio::test]
async fn ping_and_a_task_work_over_tls_by_ip_by_name_and_with_in_memory_roots() {
    let pki = Pki::new();
    let config = ServerConfig {
        tokens: vec!["tls-token".into()],
        ..patient_config()
    };
    let server = start(config, Some(&pki.server_tls())).await;
    let port = server.local_addr().port();
    let in_memory = ClientTlsConfig::with_ca_certs(vec![pki.ca.cert_der.clone()]);
    for (addr, tls) in [
        (format!("127.0.0.1:{port}"), pki.client_tls()),
        (format!("localhost:{port}"), pki.client_tls()),
        (format!("127.0.0.1:{port}"), in_memory),
    ] {
        let options = ConnectOptions {
            token: Some("tls-token".into()),
            ..options(Some(tls))
        };
        let client = connect(addr, options).await.unwrap();
        client.ping().await.unwrap();
        let output = client
            .run(script(["echo", "over tls"]))
            .await
            .unwrap()
            .output()
            .await
            .unwrap();
        assert_eq!(output.stdout, b"over tls");
        assert!(output.outcome.success());
    }
}

#[tokio::test]
async fn mutual_tls_admits_the_cas_clients_and_refuses_the_others() {
    let pki = Pki::new();
    let server = start(patient_config(), Some(&pki.mutual_server_tls())).await;
    let addr = server.local_addr().to_string();

    let with_cert = pki
        .client_tls()
        .with_client_cert(&pki.client_cert, &pki.client_key);
    let client = connect(&addr, options(Some(with_cert))).await.unwrap();
    client.ping().await.unwrap();

    let err = connect(&addr, options(Some(pki.client_tls())))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    assert!(
        err.to_string().contains("requires a client certificate"),
        "{err}"
    );

    let stranger = pki
        .client_tls()
        .with_client_cert(&pki.stranger_cert, &pki.stranger_key);
    let err = connect(&addr, options(Some(stranger))).await.unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("refused this client's certificate"),
        "{err}"
    );

    // The refusals did not disturb the admitted client.
    client.ping().await.unwrap();
}

#[tokio::test]
async fn a_server_certificate_from_an_unknown_ca_or_for_another_name_is_refused() {
    let pki = Pki::new();
    let server = start(patient_config(), Some(&pki.server_tls())).await;
    let addr = server.local_addr().to_string();

    let wrong_ca = ClientTlsConfig::with_ca_file(&pki.other_ca.pem);
    let err = connect(&addr, options(Some(wrong_ca))).await.unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("not signed by a CA this client trusts"),
        "{err}"
    );

    let wrong_name = ClientTlsConfig {
        server_name: Some("elsewhere.test".into()),
        ..pki.client_tls()
    };
    let err = connect(&addr, options(Some(wrong_name))).await.unwrap_err();
    assert!(err.to_string().contains("not valid for the name"), "{err}");
}

#[tokio::test]
async fn a_plaintext_client_at_a_tls_server_is_told_so_at_once() {
    let pki = Pki::new();
    let server = start(patient_config(), Some(&pki.server_tls())).await;
    let err = connect(server.local_addr().to_string(), options(None))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::Protocol), "{err:?}");
    assert!(err.to_string().contains("speaks TLS only"), "{err}");
    assert!(err.to_string().contains("--tls-ca"), "{err}");
}

#[tokio::test]
async fn a_tls_client_at_a_plaintext_server_is_told_so_at_once() {
    let pki = Pki::new();
    let server = start(patient_config(), None).await;
    let err = connect(
        server.local_addr().to_string(),
        options(Some(pki.client_tls())),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    assert!(err.to_string().contains("does not speak TLS"), "{err}");
}

/// A client that starts a TLS handshake and stalls holds only its own
/// connection: others are accepted and served meanwhile, and the staller is
/// closed at the handshake timeout.
#[tokio::test]
async fn stalled_tls_handshakes_do_not_hold_up_other_clients() {
    let pki = Pki::new();
    let config = ServerConfig {
        handshake_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let server = start(config, Some(&pki.server_tls())).await;
    let addr = server.local_addr();
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        // The first bytes of a TLS record header, and nothing more.
        socket.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        stalled.push(socket);
    }
    let client = connect(addr.to_string(), options(Some(pki.client_tls())))
        .await
        .unwrap();
    client.ping().await.unwrap();
    for mut socket in stalled {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(PROMPT, socket.read(&mut buf))
            .await
            .expect("a stalled TLS handshake outlived the handshake timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    client.ping().await.unwrap();
}

#[tokio::test]
async fn connections_over_the_maximum_are_refused_in_tls() {
    let pki = Pki::new();
    let config = ServerConfig {
        max_connections: 1,
        ..patient_config()
    };
    let server = start(config, Some(&pki.server_tls())).await;
    let addr = server.local_addr().to_string();
    let first = connect(&addr, options(Some(pki.client_tls())))
        .await
        .unwrap();
    let err = connect(&addr, options(Some(pki.client_tls())))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::Busy), "{err:?}");
    first.ping().await.unwrap();
}

#[tokio::test]
async fn unusable_tls_files_are_refused_when_the_server_is_built() {
    let pki = Pki::new();
    // The key of another certificate.
    let mismatched = TlsConfig::new(&pki.server_cert, &pki.client_key);
    let err = Server::new(ServerConfig::default(), ScriptExecutor::default())
        .with_tls(&mismatched)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cannot be used together"), "{err}");
    // A key where the certificate should be.
    let swapped = TlsConfig::new(&pki.server_key, &pki.server_key);
    let err = Server::new(ServerConfig::default(), ScriptExecutor::default())
        .with_tls(&swapped)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("holds no PEM certificate"), "{err}");
}

//! Authentication over loopback: token files and rotation, what a client
//! without a valid token can do (nothing), the per-address brake on
//! guessing, and tokens kept out of logs, errors, status and `Debug`.
//! Tasks run in the scripted test executor (tests/script), not in Docker.

mod script;

use bytes::Bytes;
use script::raw::{frame, RawPeer};
use script::{script, ScriptExecutor};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tcp_task::protocol::{ClientMessage, ErrorKind, Hello, ServerMessage};
use tcp_task::{
    Client, ClientTlsConfig, ConnectOptions, Error, RunningServer, Server, ServerConfig,
};
use tokio::net::TcpSocket;

async fn start(config: ServerConfig) -> RunningServer {
    Server::new(config, ScriptExecutor::default())
        .spawn("127.0.0.1:0")
        .await
        .unwrap()
}

fn with_token(token: &str) -> ConnectOptions {
    ConnectOptions {
        token: Some(token.into()),
        ..ConnectOptions::default()
    }
}

/// Connects from a chosen loopback address (Linux routes all of
/// 127.0.0.0/8 to the loopback interface), to act as a second machine.
async fn connect_from(
    local: &str,
    server: SocketAddr,
    options: ConnectOptions,
) -> Result<Client, Error> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(server).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    Client::handshake(stream, options, deadline).await
}

#[tokio::test]
async fn every_token_of_a_token_file_is_valid_so_tokens_can_be_rotated() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(
        &file,
        "# the old token, until every client has the new one\nold-7f3a9c\n\nnew-b81e44\n",
    )
    .unwrap();
    let config = ServerConfig::default().with_token_file(&file).unwrap();
    assert_eq!(config.tokens.len(), 2);
    let server = start(config).await;
    for token in ["old-7f3a9c", "new-b81e44"] {
        let client = Client::connect_with(server.local_addr(), with_token(token))
            .await
            .unwrap();
        client.ping().await.unwrap();
    }
    let err = Client::connect_with(server.local_addr(), with_token("# the old token"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::Unauthorized));

    let missing = dir.path().join("no-such-file");
    let err = ServerConfig::default()
        .with_token_file(&missing)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&missing.display().to_string()), "{err}");
}

/// A wrong token gets one error frame and a close: a ping, a status request
/// and a task sent right behind the hello are never answered.
#[tokio::test]
async fn a_connection_without_a_valid_token_gets_one_error_and_nothing_else() {
    let config = ServerConfig {
        tokens: vec!["right".into()],
        ..ServerConfig::default()
    };
    let server = start(config).await;
    for token in [None, Some("wrong".to_string())] {
        let mut peer = RawPeer::connect(server.local_addr()).await;
        let mut bytes = frame(&Hello::new("raw", token));
        bytes.extend(frame(&ClientMessage::Ping {
            id: 1,
            payload: Bytes::new(),
        }));
        bytes.extend(frame(&ClientMessage::Status { id: 2 }));
        bytes.extend(frame(&ClientMessage::Submit {
            id: 3,
            spec: Box::new(script(["echo", "x"])),
            detach: false,
        }));
        peer.send_raw(&bytes).await;
        match peer.frames_until_closed().await.as_slice() {
            [ServerMessage::Error { id: None, error }] => {
                assert_eq!(error.kind, ErrorKind::Unauthorized)
            }
            other => panic!("expected exactly one Unauthorized error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_address_that_keeps_failing_is_blocked_for_a_while_without_its_token_being_checked() {
    const WINDOW: Duration = Duration::from_secs(1);
    let config = ServerConfig {
        tokens: vec!["right".into()],
        max_auth_failures: 3,
        auth_failure_window: WINDOW,
        ..ServerConfig::default()
    };
    let server = start(config).await;
    let addr = server.local_addr();
    for _ in 0..3 {
        let err = connect_from("127.0.0.1", addr, with_token("guess"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), Some(ErrorKind::Unauthorized));
        assert!(err.to_string().contains("authentication failed"), "{err}");
    }
    // Blocked: even the right token is refused, and the error says why.
    let err = connect_from("127.0.0.1", addr, with_token("right"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::Unauthorized));
    assert!(err.to_string().contains("temporarily blocked"), "{err}");
    // Another address is not.
    let other = connect_from("127.0.0.2", addr, with_token("right"))
        .await
        .unwrap();
    other.ping().await.unwrap();
    // Once the window has passed, the first address is admitted again.
    // Attempts while blocked do not count, so polling does not prolong it.
    let started = Instant::now();
    loop {
        match connect_from("127.0.0.1", addr, with_token("right")).await {
            Ok(client) => {
                client.ping().await.unwrap();
                break;
            }
            Err(err) => {
                assert!(err.to_string().contains("temporarily blocked"), "{err}");
                assert!(
                    started.elapsed() < WINDOW * 10,
                    "the address stayed blocked long after the window"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A `tracing` writer that keeps everything written to it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Every log line at every level, the errors the client sees, the status
/// reply and the `Debug` output of the settings and the hello: the tokens,
/// right or wrong, appear in none of them. (The test's runtime runs on one
/// thread, so the thread's log subscriber sees the server's tasks too.)
#[tokio::test]
async fn tokens_appear_in_no_log_error_status_or_debug_output() {
    const RIGHT: &str = "right-SECRET-4c1d9e";
    const WRONG: &str = "wrong-SECRET-77a0b2";
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let config = ServerConfig {
        tokens: vec![RIGHT.into()],
        max_auth_failures: 2,
        ..ServerConfig::default()
    };
    let config_debug = format!("{config:?}");
    let server = start(config).await;
    let addr = server.local_addr();

    let mut seen = vec![config_debug];
    for _ in 0..3 {
        // The second failure starts a block; the third is refused by it.
        let err = Client::connect_with(addr, with_token(WRONG))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), Some(ErrorKind::Unauthorized));
        seen.push(err.to_string());
        seen.push(format!("{err:?}"));
    }
    assert!(seen.last().unwrap().contains("temporarily blocked"));
    let admitted = connect_from("127.0.0.3", addr, with_token(RIGHT))
        .await
        .unwrap();
    seen.push(format!("{:?}", admitted.status().await.unwrap()));
    let options = ConnectOptions {
        tls: Some(ClientTlsConfig::with_ca_file("/etc/ca.pem")),
        ..with_token(RIGHT)
    };
    seen.push(format!("{options:?}"));
    seen.push(format!("{:?}", Hello::new("client", Some(RIGHT.into()))));
    drop(admitted);
    server.shutdown().await;

    let logs = captured.text();
    assert!(logs.contains("authentication failed"), "{logs}");
    assert!(
        logs.contains("127.0.0.1"),
        "failures are logged with the peer: {logs}"
    );
    assert!(logs.contains("blocking the address"), "{logs}");
    seen.push(logs);
    for text in seen {
        assert!(!text.contains("SECRET"), "a token leaked into: {text}");
    }
}

/// A named client's token admits it like any token, and its
/// `max_concurrent_tasks` quota holds across its connections, while a plain
/// token is not bound by it.
#[tokio::test]
async fn a_named_clients_quota_holds_across_its_connections() {
    use tcp_task::access::{ClientPolicy, Credential};
    let quota = ClientPolicy {
        max_concurrent_tasks: Some(2),
        ..ClientPolicy::default()
    };
    let config = ServerConfig {
        tokens: vec!["plain-token".into()],
        clients: vec![Arc::new(Credential::new("ci", "ci-token", quota))],
        ..ServerConfig::default()
    };
    let server = start(config).await;
    let addr = server.local_addr();
    let first = Client::connect_with(addr, with_token("ci-token"))
        .await
        .unwrap();
    let second = Client::connect_with(addr, with_token("ci-token"))
        .await
        .unwrap();
    let _a = first.run(script(["sleep", "60000"])).await.unwrap();
    let _b = second.run(script(["sleep", "60000"])).await.unwrap();
    let refused = first
        .run(script(["echo", "x"]))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), Some(ErrorKind::Busy));
    assert!(
        refused
            .to_string()
            .contains("the client `ci` already runs 2 tasks"),
        "{refused}"
    );
    assert!(!refused.to_string().contains("ci-token"));

    let plain = Client::connect_with(addr, with_token("plain-token"))
        .await
        .unwrap();
    let output = plain
        .run(script(["echo", "free"]))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(output.stdout, b"free");

    drop(_a);
    // The slot comes back once the cancelled task has ended.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match first
            .run(script(["echo", "again"]))
            .await
            .unwrap()
            .wait()
            .await
        {
            Ok(outcome) => break assert!(outcome.success()),
            Err(e) => assert!(
                Instant::now() < deadline,
                "the quota slot never came back: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! The connection layer over real loopback sockets: multiplexing, bounds,
//! bad input, flow control, cancellation, connection loss and shutdown.
//! Tasks run in a scripted test executor (tests/script), not in Docker.

mod script;

use bytes::Bytes;
use futures::future::join_all;
use script::raw::{frame, framed, RawPeer};
use script::{chunk_bytes, script, Counters, ScriptExecutor};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tcp_task::protocol::{ClientMessage, Ending, ErrorKind, Hello, ServerMessage, STDIN_WINDOW};
use tcp_task::{Client, ConnectOptions, Error, RunningServer, Server, ServerConfig, TaskEvent};
use tokio::net::TcpStream;

async fn start(config: ServerConfig) -> (RunningServer, Arc<Counters>) {
    let executor = ScriptExecutor::default();
    let counters = executor.counters.clone();
    let server = Server::new(config, executor)
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    (server, counters)
}

/// Polls `check` until it holds, for at most 10 s.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tasks_share_one_connection_and_each_gets_its_own_bytes_in_order() {
    let (server, _) = start(ServerConfig::default()).await;
    let client = Client::connect(server.local_addr()).await.unwrap();
    let tasks = (0..1000).map(|t| {
        let client = client.clone();
        tokio::spawn(async move {
            let tag = format!("task{t}");
            let output = client
                .run(script(["chunks", "20", "50", &tag]))
                .await
                .unwrap()
                .output()
                .await
                .unwrap();
            let expected: Vec<u8> = (0..20).flat_map(|i| chunk_bytes(&tag, i, 50)).collect();
            assert_eq!(
                output.stdout, expected,
                "{tag} got someone else's bytes or out of order"
            );
            assert!(output.outcome.success());
        })
    });
    for task in join_all(tasks).await {
        task.unwrap();
    }
    server.shutdown().await;
}

#[tokio::test]
async fn stdout_and_stderr_stay_apart_and_in_order() {
    let (server, _) = start(ServerConfig::default()).await;
    let client = Client::connect(server.local_addr()).await.unwrap();
    let output = client
        .run(script(["interleave", "100"]))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    let stdout: String = (0..100).map(|i| format!("o{i}")).collect();
    let stderr: String = (0..100).map(|i| format!("e{i}")).collect();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), stdout);
    assert_eq!(String::from_utf8(output.stderr).unwrap(), stderr);
}

#[tokio::test]
async fn accepted_comes_first_and_stdin_round_trips() {
    let (server, _) = start(ServerConfig::default()).await;
    let client = Client::connect(server.local_addr()).await.unwrap();
    let mut spec = script(["cat"]);
    spec.stdin = true;
    let mut handle = client.run(spec).await.unwrap();
    assert!(matches!(handle.next().await, Some(TaskEvent::Accepted(_))));
    let stdin = handle.stdin();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let writer = tokio::spawn(async move {
        stdin.write(Bytes::from(data)).await.unwrap();
        stdin.close().await.unwrap();
    });
    let output = handle.output().await.unwrap();
    writer.await.unwrap();
    let expected: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(output.stdout, expected);
}

#[tokio::test]
async fn stdin_on_a_task_that_did_not_ask_for_it_is_refused_by_the_library() {
    let (server, _) = start(ServerConfig::default()).await;
    let client = Client::connect(server.local_addr()).await.unwrap();
    let handle = client.run(script(["echo", "x"])).await.unwrap();
    let err = handle
        .stdin()
        .write(Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::BadRequest));
}

#[tokio::test]
async fn cancel_ends_the_task_as_cancelled() {
    let (server, counters) = start(ServerConfig::default()).await;
    let client = Client::connect(server.local_addr()).await.unwrap();
    let mut handle = client.run(script(["sleep", "60000"])).await.unwrap();
    assert!(matches!(handle.next().await, Some(TaskEvent::Accepted(_))));
    handle.cancel().await.unwrap();
    let outcome = handle.wait().await.unwrap();
    assert_eq!(outcome.ending, Ending::Cancelled);
    assert_eq!(Counters::get(&counters.cancelled), 1);
}

#[tokio::test]
async fn dropping_a_handle_cancels_its_task() {
    let (server, counters) = start(ServerConfig::default()).await;
    let client = Client::connect(server.local_addr()).await.unwrap();
    let mut handle = client.run(script(["sleep", "60000"])).await.unwrap();
    assert!(matches!(handle.next().await, Some(TaskEvent::Accepted(_))));
    drop(handle);
    eventually("the server cancels the dropped task", || {
        Counters::get(&counters.cancelled) == 1
    })
    .await;
    // The connection still serves.
    client.ping().await.unwrap();
}

#[tokio::test]
async fn dropping_the_client_closes_the_connection_and_cancels_its_tasks() {
    let (server, counters) = start(ServerConfig::default()).await;
    let client = Client::connect(server.local_addr()).await.unwrap();
    let mut handle = client.run(script(["sleep", "60000"])).await.unwrap();
    assert!(matches!(handle.next().await, Some(TaskEvent::Accepted(_))));
    drop(client);
    drop(handle);
    eventually("the server cancels the task", || {
        Counters::get(&counters.cancelled) == 1
    })
    .await;
    let observer = Client::connect(server.local_addr()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while observer.status().await.unwrap().connections != 1 {
        assert!(
            Instant::now() < deadline,
            "the dropped client's connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A proxy between client and server that the test can cut, to lose the
/// connection without either end closing it politely.
async fn cuttable_proxy(server: SocketAddr) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cut, cut_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut inbound, _) = listener.accept().await.unwrap();
        let mut outbound = TcpStream::connect(server).await.unwrap();
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            _ = cut_rx => {}
        }
        // Dropping both sockets resets the two connections.
    });
    (addr, cut)
}

#[tokio::test]
async fn without_a_reattach_grace_connection_loss_ends_every_handle_and_cancels_the_tasks() {
    let config = ServerConfig {
        reattach_grace: Duration::ZERO,
        ..ServerConfig::default()
    };
    let (server, counters) = start(config).await;
    let (proxy, cut) = cuttable_proxy(server.local_addr()).await;
    let options = ConnectOptions {
        resume: None,
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(proxy, options).await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..5 {
        let mut handle = client.run(script(["sleep", "60000"])).await.unwrap();
        assert!(matches!(handle.next().await, Some(TaskEvent::Accepted(_))));
        handles.push(handle);
    }
    cut.send(()).unwrap();
    for handle in handles {
        let err = tokio::time::timeout(Duration::from_secs(10), handle.wait())
            .await
            .expect("a pending handle hung after the connection was lost")
            .unwrap_err();
        assert!(matches!(err, Error::Disconnected(_)), "{err:?}");
    }
    assert!(matches!(client.ping().await, Err(Error::Disconnected(_))));
    eventually("the server cancels all five tasks", || {
        Counters::get(&counters.cancelled) == 5
    })
    .await;
}

#[tokio::test]
async fn graceful_shutdown_lets_short_tasks_finish_and_cancels_the_rest_after_the_grace() {
    let config = ServerConfig {
        shutdown_grace: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let (server, _) = start(config).await;
    let client = Client::connect(server.local_addr()).await.unwrap();
    let mut short = client.run(script(["sleep", "200"])).await.unwrap();
    let mut long = client.run(script(["sleep", "60000"])).await.unwrap();
    assert!(matches!(short.next().await, Some(TaskEvent::Accepted(_))));
    assert!(matches!(long.next().await, Some(TaskEvent::Accepted(_))));
    let shutdown = tokio::spawn(server.shutdown());
    // Once draining, the server refuses new tasks but still ends old ones.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = client
        .run(script(["echo", "late"]))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), Some(ErrorKind::ShuttingDown));
    assert_eq!(short.wait().await.unwrap().ending, Ending::Exited);
    assert_eq!(long.wait().await.unwrap().ending, Ending::Cancelled);
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_duplicate_id_during_shutdown_is_a_duplicate_not_the_running_tasks_end() {
    let config = ServerConfig {
        shutdown_grace: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    let (server, _) = start(config).await;
    let mut peer = RawPeer::handshaken(server.local_addr()).await;
    let submit = |id| ClientMessage::Submit {
        id,
        spec: Box::new(script(["sleep", "60000"])),
        detach: false,
    };
    peer.send(&submit(1)).await;
    assert!(matches!(
        peer.read().await,
        Some(ServerMessage::Accepted { id: 1, .. })
    ));
    let shutdown = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Draining now: a new id is refused as shutting down, the running id
    // as a duplicate (a Failed under id 1 would read as task 1's end).
    peer.send(&submit(1)).await;
    match peer.read().await {
        Some(ServerMessage::Error { id: Some(1), error }) => {
            assert_eq!(error.kind, ErrorKind::DuplicateId)
        }
        other => panic!("expected Error(DuplicateId) for id 1, got {other:?}"),
    }
    peer.send(&submit(2)).await;
    match peer.read().await {
        Some(ServerMessage::Failed { id: 2, error }) => {
            assert_eq!(error.kind, ErrorKind::ShuttingDown)
        }
        other => panic!("expected Failed(ShuttingDown) for id 2, got {other:?}"),
    }
    peer.send(&ClientMessage::Cancel { id: 1 }).await;
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn per_connection_and_global_bounds_refuse_at_once_and_the_connection_keeps_serving() {
    let config = ServerConfig {
        max_tasks_per_connection: 2,
        max_tasks: 3,
        ..ServerConfig::default()
    };
    let (server, _) = start(config).await;
    let first = Client::connect(server.local_addr()).await.unwrap();
    let second = Client::connect(server.local_addr()).await.unwrap();
    let _a = first.run(script(["sleep", "60000"])).await.unwrap();
    let _b = first.run(script(["sleep", "60000"])).await.unwrap();
    let over_connection = first
        .run(script(["echo", "x"]))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert_eq!(over_connection.kind(), Some(ErrorKind::Busy));
    assert!(over_connection
        .to_string()
        .contains("this connection already runs 2 tasks"));
    let _c = second.run(script(["sleep", "60000"])).await.unwrap();
    let over_server = second
        .run(script(["echo", "x"]))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert_eq!(over_server.kind(), Some(ErrorKind::Busy));
    assert!(over_server
        .to_string()
        .contains("the server already runs 3 tasks"));
    first.ping().await.unwrap();
    second.ping().await.unwrap();
}

#[tokio::test]
async fn connections_over_the_maximum_are_refused_with_a_reason() {
    let config = ServerConfig {
        max_connections: 2,
        ..ServerConfig::default()
    };
    let (server, _) = start(config).await;
    let _one = Client::connect(server.local_addr()).await.unwrap();
    let _two = Client::connect(server.local_addr()).await.unwrap();
    let err = Client::connect(server.local_addr()).await.unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::Busy), "{err}");
    _one.ping().await.unwrap();
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_handshake_timeout() {
    let config = ServerConfig {
        handshake_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let (server, _) = start(config).await;
    let mut silent = RawPeer::connect(server.local_addr()).await;
    assert_eq!(silent.errors_until_closed().await, vec![ErrorKind::Timeout]);
}

#[tokio::test]
async fn an_idle_connection_is_closed_but_one_with_a_running_task_is_not() {
    let config = ServerConfig {
        idle_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let (server, _) = start(config).await;
    let mut idle = RawPeer::handshaken(server.local_addr()).await;
    let busy = Client::connect(server.local_addr()).await.unwrap();
    let task = busy.run(script(["sleep", "600"])).await.unwrap();
    assert_eq!(idle.errors_until_closed().await, vec![ErrorKind::Timeout]);
    assert!(task.wait().await.unwrap().success());
}

/// Frames keep a connection open past the idle timeout, however many of
/// them arrive together; the timeout counts from the last one.
#[tokio::test]
async fn frames_keep_a_connection_open_and_the_idle_timeout_counts_from_the_last() {
    let idle_timeout = Duration::from_millis(300);
    let config = ServerConfig {
        idle_timeout,
        ..ServerConfig::default()
    };
    let (server, _) = start(config).await;
    let mut peer = RawPeer::handshaken(server.local_addr()).await;
    let started = Instant::now();
    let mut id = 0;
    let mut last_sent = started;
    while started.elapsed() < 3 * idle_timeout {
        // Several pings in one write: one batch for the reader.
        let mut bytes = Vec::new();
        for _ in 0..3 {
            id += 1;
            bytes.extend(frame(&ClientMessage::Ping {
                id,
                payload: Bytes::new(),
            }));
        }
        peer.send_raw(&bytes).await;
        last_sent = Instant::now();
        for _ in 0..3 {
            assert!(matches!(
                peer.read().await,
                Some(ServerMessage::Pong { .. })
            ));
        }
        tokio::time::sleep(idle_timeout / 4).await;
    }
    assert_eq!(peer.errors_until_closed().await, vec![ErrorKind::Timeout]);
    let quiet = last_sent.elapsed();
    assert!(
        quiet >= idle_timeout - Duration::from_millis(50) && quiet < 3 * idle_timeout,
        "closed {quiet:?} after the last frame, with an idle timeout of {idle_timeout:?}"
    );
}

/// Each kind of bad input gets an error frame (or a close) and never
/// disturbs the server's other connections.
#[tokio::test]
async fn bad_input_is_answered_with_an_error_and_other_connections_keep_working() {
    let (server, _) = start(ServerConfig::default()).await;
    let addr = server.local_addr();
    let bystander = Client::connect(addr).await.unwrap();

    let hello_with = |change: fn(&mut Hello)| {
        let mut hello = Hello::new("raw", None);
        change(&mut hello);
        frame(&hello)
    };
    // (what, sent after a good handshake?, bytes sent, the one error frame
    // expected before the close, or `None` for a peer that hangs up
    // mid-frame without reading)
    let cases = [
        (
            "a 4 GiB frame header instead of a hello",
            false,
            vec![0xFF, 0xFF, 0xFF, 0xFF],
            Some(ErrorKind::FrameTooLarge),
        ),
        (
            "a 4 GiB frame header after the handshake",
            true,
            vec![0xFF, 0xFF, 0xFF, 0xFF],
            Some(ErrorKind::FrameTooLarge),
        ),
        (
            "a garbage body",
            true,
            framed(&[0xC3, 0x28, 0xA0, 0xA1, 0x00, 0xFF, 0x13]),
            Some(ErrorKind::Protocol),
        ),
        (
            "an unknown message tag",
            true,
            framed(&[200]),
            Some(ErrorKind::Protocol),
        ),
        (
            "a hello with the wrong magic",
            false,
            hello_with(|hello| hello.magic = *b"HTTP"),
            Some(ErrorKind::Protocol),
        ),
        (
            "a hello from a future version",
            false,
            hello_with(|hello| hello.version = 99),
            Some(ErrorKind::VersionMismatch),
        ),
        (
            "an HTTP request",
            false,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Some(ErrorKind::Protocol),
        ),
        ("a frame cut off", true, vec![0, 0, 0, 100, 1, 2, 3], None),
    ];
    for (what, after_handshake, bytes, answer) in cases {
        let mut peer = if after_handshake {
            RawPeer::handshaken(addr).await
        } else {
            RawPeer::connect(addr).await
        };
        peer.send_raw(&bytes).await;
        if let Some(kind) = answer {
            assert_eq!(peer.errors_until_closed().await, vec![kind], "{what}");
        }
    }

    // Stdin for a request that does not exist: an error, and the connection
    // stays usable.
    let mut stray = RawPeer::handshaken(addr).await;
    let chunk = Bytes::from_static(b"hello");
    stray.send(&ClientMessage::Stdin { id: 77, chunk }).await;
    match stray.read().await {
        Some(ServerMessage::Error {
            id: Some(77),
            error,
        }) => assert_eq!(error.kind, ErrorKind::UnknownRequest),
        other => panic!("expected an UnknownRequest error, got {other:?}"),
    }
    let payload = Bytes::from_static(b"still here");
    stray
        .send(&ClientMessage::Ping {
            id: 1,
            payload: payload.clone(),
        })
        .await;
    assert_eq!(
        stray.read().await,
        Some(ServerMessage::Pong { id: 1, payload })
    );

    bystander.ping().await.unwrap();
    let output = bystander
        .run(script(["echo", "fine"]))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(output.stdout, b"fine");
}

#[tokio::test]
async fn a_duplicate_request_id_is_an_error_that_leaves_the_running_task_alone() {
    let (server, _) = start(ServerConfig::default()).await;
    let mut peer = RawPeer::handshaken(server.local_addr()).await;
    let spec = Box::new(script(["sleep", "300"]));
    peer.send(&ClientMessage::Submit {
        id: 5,
        spec: spec.clone(),
        detach: false,
    })
    .await;
    assert!(matches!(
        peer.read().await,
        Some(ServerMessage::Accepted { id: 5, .. })
    ));
    peer.send(&ClientMessage::Submit {
        id: 5,
        spec,
        detach: false,
    })
    .await;
    match peer.read().await {
        Some(ServerMessage::Error { id: Some(5), error }) => {
            assert_eq!(error.kind, ErrorKind::DuplicateId)
        }
        other => panic!("expected a DuplicateId error, got {other:?}"),
    }
    match peer.read().await {
        Some(ServerMessage::Exited { id: 5, outcome }) => assert!(outcome.success()),
        other => panic!("expected the first task to end normally, got {other:?}"),
    }
}

/// A client that stops reading while its task writes 256 MiB: the server
/// stops taking output once its per-connection budget and the kernel's
/// socket buffers are full, instead of buffering the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_bounds_what_the_server_buffers() {
    const BUDGET: usize = 256 * 1024;
    const FLOOD: u64 = 256 * 1024 * 1024;
    // The socket buffers of both ends on loopback (autotuned up to a few
    // MiB each) hold what the budget does not.
    const KERNEL_SLACK: u64 = 16 * 1024 * 1024;
    let config = ServerConfig {
        max_buffered_output: BUDGET,
        ..ServerConfig::default()
    };
    let (server, counters) = start(config).await;
    let mut peer = RawPeer::handshaken(server.local_addr()).await;
    let spec = Box::new(script(["flood", &FLOOD.to_string()]));
    peer.send(&ClientMessage::Submit {
        id: 1,
        spec,
        detach: false,
    })
    .await;
    // Not reading from here on. Wait until the output stalls.
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = Counters::get(&counters.bytes_accepted);
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    assert!(
        last <= BUDGET as u64 + KERNEL_SLACK,
        "the server took {last} bytes of output for a client that reads nothing"
    );
    assert!(last < FLOOD);
    assert_eq!(
        Counters::get(&counters.finished),
        0,
        "the task must be paused, not finished"
    );
    // Reading again resumes the task.
    let mut received = 0u64;
    while let Some(message) = peer.read().await {
        match message {
            ServerMessage::Output { chunk, .. } => received += chunk.len() as u64,
            ServerMessage::Exited { .. } => break,
            _ => {}
        }
    }
    assert_eq!(received, FLOOD);
}

#[tokio::test]
async fn an_engine_failure_is_the_tasks_only_terminal_frame() {
    let (server, _) = start(ServerConfig::default()).await;
    let client = Client::connect(server.local_addr()).await.unwrap();
    let mut handle = client.run(script(["fail"])).await.unwrap();
    assert!(matches!(handle.next().await, Some(TaskEvent::Accepted(_))));
    assert_eq!(handle.next().await, None);
    let err = handle.wait().await.unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::Engine));
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_a_right_one_admitted() {
    let config = ServerConfig {
        tokens: vec!["old-token".into(), "new-token".into()],
        ..ServerConfig::default()
    };
    let (server, _) = start(config).await;
    let options = |token: Option<&str>| tcp_task::ConnectOptions {
        token: token.map(String::from),
        ..Default::default()
    };
    let addr = server.local_addr();
    for token in [None, Some("wrong")] {
        let err = Client::connect_with(addr, options(token))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), Some(ErrorKind::Unauthorized));
        assert!(!err.to_string().contains("token\""));
    }
    for token in ["old-token", "new-token"] {
        let client = Client::connect_with(addr, options(Some(token)))
            .await
            .unwrap();
        client.ping().await.unwrap();
    }
}

/// A client that sends stdin past its window without waiting for credit
/// breaks the protocol for that task only: one error naming the window,
/// the task cancelled (its input would have a hole), and the connection
/// still serving. The server never held more than the window.
#[tokio::test]
async fn stdin_past_its_window_cancels_that_task_and_nothing_else() {
    let (server, _) = start(ServerConfig::default()).await;
    let mut peer = RawPeer::handshaken(server.local_addr()).await;
    let mut spec = script(["sleep", "60000"]);
    spec.stdin = true;
    let spec = Box::new(spec);
    peer.send(&ClientMessage::Submit {
        id: 1,
        spec,
        detach: false,
    })
    .await;
    // The task reads none of it: the server takes the window, plus one
    // chunk handed on to the task, and no more.
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let sent = STDIN_WINDOW as usize + 2 * chunk.len();
    for _ in 0..sent / chunk.len() {
        let chunk = chunk.clone();
        peer.send(&ClientMessage::Stdin { id: 1, chunk }).await;
    }
    let payload = Bytes::from_static(b"still reading");
    peer.send(&ClientMessage::Ping { id: 2, payload }).await;

    let (mut errors, mut credit, mut outcome, mut pong) = (Vec::new(), 0, None, false);
    while outcome.is_none() || !pong {
        match peer.read().await.expect("the connection stays open") {
            ServerMessage::Accepted { id: 1, .. } | ServerMessage::Progress { id: 1, .. } => {}
            ServerMessage::Error { id: Some(1), error } => errors.push(error),
            ServerMessage::StdinCredit { id: 1, bytes } => credit += bytes as usize,
            ServerMessage::Exited { id: 1, outcome: o } => outcome = Some(o),
            ServerMessage::Pong { id: 2, .. } => pong = true,
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].kind, ErrorKind::BadRequest);
    assert!(errors[0].message.contains("window"), "{}", errors[0]);
    assert_eq!(outcome.unwrap().ending, Ending::Cancelled);
    assert!(credit <= chunk.len(), "credit for {credit} bytes");
}

/// A client that submits a task and then reads nothing: the task's output
/// fills the connection's budget and the socket, the writer makes no
/// progress for `write_timeout`, and the connection is closed, so the task
/// ends (no reattach grace here: cancelled, or its output refused once
/// nobody follows it) instead of waiting for a reader for ever, and a
/// well-behaved client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_is_closed_after_the_write_timeout() {
    let config = ServerConfig {
        write_timeout: Duration::from_secs(1),
        reattach_grace: Duration::ZERO,
        ..ServerConfig::default()
    };
    let (server, counters) = start(config).await;
    let mut silent = RawPeer::handshaken(server.local_addr()).await;
    let spec = Box::new(script(["flood", "100000000000"]));
    silent
        .send(&ClientMessage::Submit {
            id: 1,
            spec,
            detach: false,
        })
        .await;
    eventually(
        "the task of the client that reads nothing is let go",
        || Counters::get(&counters.finished) == 1,
    )
    .await;

    let bystander = Client::connect(server.local_addr()).await.unwrap();
    let output = bystander
        .run(script(["echo", "served"]))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(output.stdout, b"served");
    // What the silent client finds when it reads at last: the frames sent
    // before the stall, then the end of the connection.
    let frames = silent.frames_until_closed().await;
    assert!(!frames.is_empty());
}

/// A followed replay can end while its task runs on (the engine ends a
/// follow at once on a container created and not yet started): the attach
/// reads on from where it stopped, and gets every byte.
#[tokio::test]
async fn an_attach_whose_log_ends_early_still_gets_all_the_output() {
    let executor = ScriptExecutor::default();
    executor
        .replay_ends_early_once
        .store(true, std::sync::atomic::Ordering::SeqCst);
    attach_gets_every_tick(executor).await;
}

/// The engine lists a container a moment before it can read the
/// container's log (404): an attach that meets that while the task runs
/// reads again, and gets every byte (server-kills.sh lost a resumed run's
/// whole output to it).
#[tokio::test]
async fn an_attach_whose_log_is_not_there_yet_still_gets_all_the_output() {
    let executor = ScriptExecutor::default();
    executor
        .replay_fails_once
        .store(true, std::sync::atomic::Ordering::SeqCst);
    attach_gets_every_tick(executor).await;
}

/// The server relays a task's output as it comes, and the engine writes
/// its log a moment later: `logs` of a task that has just ended waits for
/// the log to catch up and gets every byte (tests/durable.rs once got a
/// warm task's log without its last line, and a "short log" error).
#[tokio::test]
async fn logs_of_a_task_that_just_ended_wait_for_the_log_to_catch_up() {
    let executor = ScriptExecutor::default();
    let lags = executor.replay_lags.clone();
    let (_server, client, task) = detached_ticks(executor, "5", "10").await;
    assert_eq!(client.wait(&task).await.unwrap().exit_code, Some(0));
    lags.store(3, std::sync::atomic::Ordering::SeqCst);
    let output = client.logs(&task).await.unwrap().output().await.unwrap();
    let expected: String = (0..5).map(|i| format!("t{i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
    assert_eq!(lags.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// A log that never catches up is waited for a bounded time, and the
/// replay then ends with the error that says it is short.
#[tokio::test]
async fn logs_of_a_log_that_never_catches_up_say_it_is_short() {
    let executor = ScriptExecutor::default();
    let lags = executor.replay_lags.clone();
    let (_server, client, task) = detached_ticks(executor, "5", "10").await;
    assert_eq!(client.wait(&task).await.unwrap().exit_code, Some(0));
    lags.store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    let error = client
        .logs(&task)
        .await
        .unwrap()
        .output()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), Some(ErrorKind::Engine), "{error}");
    assert!(
        error
            .to_string()
            .contains("holds 12 of the 15 output bytes"),
        "{error}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(15),
        "gave up after {waited:?}"
    );
}

/// A server on `executor`, a client, and a detached `ticks N MS` task.
async fn detached_ticks(
    executor: ScriptExecutor,
    n: &str,
    ms: &str,
) -> (RunningServer, Client, tcp_task::TaskId) {
    let server = Server::new(ServerConfig::default(), executor)
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::connect(server.local_addr()).await.unwrap();
    let task = client.run_detached(script(["ticks", n, ms])).await.unwrap();
    (server, client, task)
}

async fn attach_gets_every_tick(executor: ScriptExecutor) {
    let (_server, client, task) = detached_ticks(executor, "10", "30").await;
    let output = client.attach(&task).await.unwrap().output().await.unwrap();
    let expected: String = (0..10).map(|i| format!("t{i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
    assert_eq!(output.outcome.exit_code, Some(0));
}

/// The protocol lets a client send its first requests right behind the
/// hello, in the same write, without waiting for the welcome: they are
/// answered once the hello is accepted, with nothing more sent after them.
#[tokio::test]
async fn requests_in_the_same_write_as_the_hello_are_answered() {
    let (server, _) = start(ServerConfig::default()).await;
    let mut peer = RawPeer::connect(server.local_addr()).await;
    let mut bytes = frame(&Hello::new("raw", None));
    bytes.extend(frame(&ClientMessage::Ping {
        id: 1,
        payload: Bytes::from_static(b"behind the hello"),
    }));
    bytes.extend(frame(&ClientMessage::Ping {
        id: 2,
        payload: Bytes::new(),
    }));
    peer.send_raw(&bytes).await;
    assert!(matches!(peer.read().await, Some(ServerMessage::Welcome(_))));
    match peer.read().await {
        Some(ServerMessage::Pong { id: 1, payload }) => {
            assert_eq!(&payload[..], b"behind the hello")
        }
        other => panic!("expected the first pong, got {other:?}"),
    }
    assert!(matches!(
        peer.read().await,
        Some(ServerMessage::Pong { id: 2, .. })
    ));
}

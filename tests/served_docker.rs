//! The served path with the real Docker executor (not the scripted test
//! executor): a client, a server on a loopback port, and containers on the
//! engine. Output and stdin byte for byte, cancel and disconnect ending in
//! a removed container, and a named client's rule refusing a task before
//! any container is created (watched through the engine's event log).

mod common;

use bollard::query_parameters::EventsOptions;
use bollard::Docker;
use bytes::Bytes;
use common::engine::{container_running, wait_until_none, RemoveOnPanic};
use common::{Harness, EXAMPLES_IMAGE};
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tcp_task::access::{ClientPolicy, Credential};
use tcp_task::executor::{label_filter, ExecutorConfig};
use tcp_task::{
    Client, ConnectOptions, Ending, ErrorKind, ProgressEvent, RunningServer, Server, ServerConfig,
    TaskEvent, TaskHandle, TaskSpec,
};

/// A cold-path executor on the real engine, served on a loopback port.
async fn serve(config: ServerConfig) -> (Harness, RunningServer) {
    let h = Harness::new(ExecutorConfig::default()).await;
    let server = Server::new(config, h.exec.clone())
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    (h, server)
}

fn spec(command: &[&str]) -> TaskSpec {
    TaskSpec::image(EXAMPLES_IMAGE, command.iter().copied())
}

/// What one task sent, event by event.
#[derive(Debug, Default)]
struct Seen {
    progress: Vec<ProgressEvent>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Seen {
    fn container(&self) -> &str {
        self.progress
            .iter()
            .find_map(|p| match p {
                ProgressEvent::Created { container } => Some(container.as_str()),
                _ => None,
            })
            .expect("a Created event: the task had a container")
    }
}

/// Reads every event of `handle` until its end.
async fn events(handle: &mut TaskHandle) -> Seen {
    let mut seen = Seen::default();
    while let Some(event) = handle.next().await {
        match event {
            TaskEvent::Accepted(_) => {}
            TaskEvent::Progress(p) => seen.progress.push(p),
            TaskEvent::Stdout(chunk) => seen.stdout.extend_from_slice(&chunk),
            TaskEvent::Stderr(chunk) => seen.stderr.extend_from_slice(&chunk),
        }
    }
    seen
}

/// `len` bytes of a fixed xorshift sequence: every byte value, no pattern
/// a relay could get right by accident.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_and_stdin_are_byte_exact_through_the_server_and_docker() {
    let (h, server) = serve(ServerConfig::default()).await;
    let _cleanup = RemoveOnPanic::new(h.exec.instance_id());
    let client = Client::connect(server.local_addr()).await.unwrap();

    // Stdin in, stdout out: 1 MiB of noise round trips unchanged.
    let data = noise(1024 * 1024);
    let mut cat = spec(&["cat"]);
    cat.stdin = true;
    let mut handle = client.run(cat).await.unwrap();
    let stdin = handle.stdin();
    let input = Bytes::from(data.clone());
    let writer = tokio::spawn(async move {
        stdin.write(input).await.unwrap();
        stdin.close().await.unwrap();
    });
    let seen = events(&mut handle).await;
    writer.await.unwrap();
    let outcome = handle.wait().await.unwrap();
    assert!(outcome.success(), "{outcome:?}");
    assert!(!seen.container().is_empty());
    assert!(seen.progress.contains(&ProgressEvent::Started));
    assert_eq!(seen.stdout.len(), data.len());
    assert!(seen.stdout == data, "stdout differs from stdin");
    assert!(seen.stderr.is_empty(), "{:?}", seen.stderr);

    // Both streams, apart and in order.
    let mixed = client
        .run(spec(&["mixed", "500"]))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    let stdout: String = (0..500).map(|i| format!("out {i}\n")).collect();
    let stderr: String = (0..500).map(|i| format!("err {i}\n")).collect();
    assert_eq!(String::from_utf8(mixed.stdout).unwrap(), stdout);
    assert_eq!(String::from_utf8(mixed.stderr).unwrap(), stderr);
    assert!(mixed.outcome.success());

    // The exit code is the task's.
    let exit = client
        .run(spec(&["exit", "42"]))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(exit.ending, Ending::Exited);
    assert_eq!(exit.exit_code, Some(42));

    drop(client);
    // Before the shutdown, whose safety net would hide leftovers.
    h.assert_clean().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_through_the_server_ends_cancelled_and_removes_the_container() {
    let (h, server) = serve(ServerConfig::default()).await;
    let _cleanup = RemoveOnPanic::new(h.exec.instance_id());
    let client = Client::connect(server.local_addr()).await.unwrap();
    let handle = client.run(spec(&["sleep", "60.75"])).await.unwrap();
    let running = container_running(&h.docker, h.exec.instance_id(), "sleep 60.75").await;
    let id = running.id.expect("an id");

    handle.cancel().await.unwrap();
    let outcome = handle.wait().await.unwrap();
    assert_eq!(outcome.ending, Ending::Cancelled, "{outcome:?}");
    // The container is removed right after the outcome is sent (while the
    // task still holds its slot): gone within the removal's time.
    assert!(
        gone_within(&h.docker, &id, Duration::from_secs(10)).await,
        "container {id} is still there 10 s after the outcome"
    );
    h.assert_clean().await;

    // The connection still serves.
    let after = client.run(spec(&["echo", "after"])).await.unwrap();
    assert_eq!(after.output().await.unwrap().stdout, b"after\n");
    drop(client);
    h.assert_clean().await;
    server.shutdown().await;
}

/// A task that reads none of its stdin holds back its own writer and
/// nothing else: another task on the same connection runs to its end, and
/// a cancel of the stalled task gets through (before stdin had flow
/// control, the connection stopped reading until the task read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_does_not_read_its_stdin_stalls_only_its_own_writer() {
    let (h, server) = serve(ServerConfig::default()).await;
    let _cleanup = RemoveOnPanic::new(h.exec.instance_id());
    let client = Client::connect(server.local_addr()).await.unwrap();
    let mut sleeper = spec(&["sleep", "60.25"]);
    sleeper.stdin = true;
    let stalled = client.run(sleeper).await.unwrap();
    container_running(&h.docker, h.exec.instance_id(), "sleep 60.25").await;

    let stdin = stalled.stdin();
    let writer = tokio::spawn(async move { stdin.write(Bytes::from(vec![b'x'; 8 << 20])).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !writer.is_finished(),
        "8 MiB of stdin went in, though the task reads none"
    );

    let beside = tokio::time::timeout(Duration::from_secs(120), async {
        let task = client.run(spec(&["echo", "beside"])).await.unwrap();
        task.output().await.unwrap()
    })
    .await
    .expect("a task beside the stalled one runs to its end");
    assert_eq!(beside.stdout, b"beside\n");

    stalled.cancel().await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), stalled.wait())
        .await
        .expect("the cancel reaches the stalled task")
        .unwrap();
    assert_eq!(outcome.ending, Ending::Cancelled, "{outcome:?}");
    // Its writer stops waiting for credit: the task has ended.
    let written = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("the writer stops waiting once the task ended")
        .unwrap();
    assert!(written.is_err(), "{written:?}");

    drop(client);
    h.assert_clean().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_has_its_container_removed() {
    let (h, server) = serve(ServerConfig::default()).await;
    let _cleanup = RemoveOnPanic::new(h.exec.instance_id());
    let client = Client::connect(server.local_addr()).await.unwrap();
    let handle = client.run(spec(&["sleep", "60.5"])).await.unwrap();
    container_running(&h.docker, h.exec.instance_id(), "sleep 60.5").await;

    drop(handle);
    drop(client);
    // No outcome to wait for: the engine must come to list no container
    // of the instance at all, running or not.
    wait_until_none(&h.docker, h.exec.instance_id()).await;
    h.assert_clean().await;
    server.shutdown().await;
}

/// Now, as the engine's event filters take it: seconds.nanoseconds.
/// Whether container `id` is gone (or goes) within `limit`.
async fn gone_within(docker: &Docker, id: &str, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while docker.inspect_container(id, None).await.is_ok() {
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn engine_time(at: SystemTime) -> String {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap();
    format!(
        "{}.{:09}",
        since_epoch.as_secs(),
        since_epoch.subsec_nanos()
    )
}

/// The ids of the containers of `instance` the engine created between
/// `since` and `until`, from its event log.
async fn created(
    docker: &Docker,
    instance: &str,
    since: SystemTime,
    until: SystemTime,
) -> Vec<String> {
    let mut filters = label_filter(Some(instance));
    filters.insert("type".into(), vec!["container".into()]);
    filters.insert("event".into(), vec!["create".into()]);
    let options = EventsOptions {
        since: Some(engine_time(since)),
        until: Some(engine_time(until)),
        filters: Some(filters),
    };
    // With `until`, the engine sends what it logged and ends the stream.
    let mut events = docker.events(Some(options));
    let mut ids = Vec::new();
    let read = async {
        while let Some(event) = events.next().await {
            let event = event.expect("the engine's event log");
            ids.push(event.actor.and_then(|a| a.id).unwrap_or_default());
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the engine ended the event stream");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_clients_rule_refuses_before_any_container_is_created() {
    let rules = ClientPolicy {
        images: vec!["tcp-task-examples:*".into()],
        max_nano_cpus: Some(500_000_000),
        ..ClientPolicy::default()
    };
    let config = ServerConfig {
        clients: vec![Arc::new(Credential::new("ci", "ci-token", rules))],
        ..ServerConfig::default()
    };
    let (h, server) = serve(config).await;
    let _cleanup = RemoveOnPanic::new(h.exec.instance_id());
    let options = ConnectOptions {
        token: Some("ci-token".into()),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(server.local_addr(), options)
        .await
        .unwrap();
    // The engine's clock and ours are the same machine's; a second's margin
    // for the event log's rounding.
    let since = SystemTime::now() - Duration::from_secs(1);

    // Within the server's policy (two CPUs), over the client's (half).
    let mut greedy = spec(&["true"]);
    greedy.nano_cpus = Some(1_000_000_000);
    let err = client.run(greedy).await.unwrap().wait().await.unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::PolicyDenied), "{err}");
    let message = err.to_string();
    assert!(message.contains("[clients.ci] max_nano_cpus"), "{message}");
    assert!(message.contains("the client `ci`'s maximum"), "{message}");

    let elsewhere = TaskSpec::image("alpine:3.20", ["true"]);
    let err = client
        .run(elsewhere)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::PolicyDenied), "{err}");
    assert!(err.to_string().contains("`images` rule"), "{err}");

    // What the rules allow runs, and shows in the event log: the log is
    // read right, so an empty one above would mean something.
    let mut modest = spec(&["echo", "allowed"]);
    modest.nano_cpus = Some(250_000_000);
    let mut handle = client.run(modest).await.unwrap();
    let seen = events(&mut handle).await;
    assert!(handle.wait().await.unwrap().success());
    assert_eq!(seen.stdout, b"allowed\n");
    let until = SystemTime::now() + Duration::from_secs(1);
    // Past `until`, so the engine has logged everything up to it.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let ids = created(&h.docker, h.exec.instance_id(), since, until).await;
    assert_eq!(
        ids.len(),
        1,
        "containers created: {ids:?}; only the allowed task should have one"
    );
    assert!(
        ids[0].starts_with(seen.container()),
        "{ids:?} is not the allowed task's {}",
        seen.container()
    );
    drop(client);
    h.assert_clean().await;
    server.shutdown().await;
}

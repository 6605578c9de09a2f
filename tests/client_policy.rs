//! Per-client policy end to end: a named client's token, a real server and
//! the Docker executor. Its rules refuse before any container exists and
//! name the rule; what they allow runs.

mod common;

use common::{Harness, EXAMPLES_IMAGE};
use std::sync::Arc;
use tcp_task::access::{ClientPolicy, Credential};
use tcp_task::executor::ExecutorConfig;
use tcp_task::{Client, ConnectOptions, ErrorKind, Server, ServerConfig, TaskSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_rules_refuse_before_any_container_and_allow_the_rest() {
    let h = Harness::new(ExecutorConfig::default()).await;
    let rules = ClientPolicy {
        images: vec!["tcp-task-examples:*".into()],
        max_memory_bytes: Some(32 * 1024 * 1024),
        ..ClientPolicy::default()
    };
    let config = ServerConfig {
        clients: vec![Arc::new(Credential::new("ci", "ci-token", rules))],
        ..ServerConfig::default()
    };
    let server = Server::new(config, h.exec.clone())
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let options = ConnectOptions {
        token: Some("ci-token".into()),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(server.local_addr(), options)
        .await
        .unwrap();

    let other_image = TaskSpec::image("alpine:3.20", ["true"]);
    let err = client
        .run(other_image)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::PolicyDenied));
    assert!(err.to_string().contains("`images` rule"), "{err}");

    let mut too_big = TaskSpec::image(EXAMPLES_IMAGE, ["true"]);
    too_big.memory_bytes = Some(64 * 1024 * 1024);
    let err = client.run(too_big).await.unwrap().wait().await.unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::PolicyDenied));
    assert!(
        err.to_string().contains("[clients.ci] max_memory_bytes"),
        "{err}"
    );

    // Allowed, and its memory defaults to the client's maximum, not the
    // server's larger default: 40 MiB does not fit in 32.
    let fits = client
        .run(TaskSpec::image(EXAMPLES_IMAGE, ["alloc", "8"]))
        .await
        .unwrap();
    assert!(fits.wait().await.unwrap().success());
    let too_much = client
        .run(TaskSpec::image(EXAMPLES_IMAGE, ["alloc", "40"]))
        .await
        .unwrap();
    assert!(too_much.wait().await.unwrap().oom_killed());

    drop(client);
    // Before the shutdown, whose safety net would hide leftovers.
    h.assert_clean().await;
    server.shutdown().await;
}

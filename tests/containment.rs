//! A task that prints, forks or allocates without end, writes to its root
//! filesystem or looks for a network is contained and reported, and the next
//! task on the same connection runs normally. End to end: client, server and
//! the Docker executor on the real engine.

mod common;

use common::{Harness, EXAMPLES_IMAGE};
use tcp_task::executor::ExecutorConfig;
use tcp_task::{Client, Ending, Server, ServerConfig, TaskOutput, TaskSpec};

async fn run(client: &Client, spec: TaskSpec) -> TaskOutput {
    client.run(spec).await.unwrap().output().await.unwrap()
}

/// The task after each bad one: it must run as if nothing happened.
async fn assert_next_task_runs(client: &Client, after: &str) {
    let output = run(client, TaskSpec::image(EXAMPLES_IMAGE, ["echo", "fine"])).await;
    assert!(
        output.outcome.success(),
        "the task after {after} failed: {output:?}"
    );
    assert_eq!(output.stdout, b"fine\n", "after {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_tasks_are_contained_and_the_next_task_runs_normally() {
    let h = Harness::new(ExecutorConfig {
        output_limit_bytes: 1024 * 1024,
        ..ExecutorConfig::default()
    })
    .await;
    let server = Server::new(ServerConfig::default(), h.exec.clone())
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::connect(server.local_addr()).await.unwrap();
    let task = |command: &[&str]| TaskSpec::image(EXAMPLES_IMAGE, command.iter().copied());

    let flood = run(&client, task(&["flood"])).await;
    assert_eq!(flood.outcome.ending, Ending::OutputLimit);
    assert!(flood.outcome.output_truncated);
    assert!(flood.stdout.len() <= 1024 * 1024);
    assert_next_task_runs(&client, "an output flood").await;

    let mut forks = task(&["forkbomb"]);
    forks.pids_limit = Some(32);
    let forks = run(&client, forks).await;
    assert_eq!(forks.outcome.exit_code, Some(3), "{forks:?}");
    assert!(String::from_utf8_lossy(&forks.stderr).contains("fork failed"));
    assert_next_task_runs(&client, "a fork bomb").await;

    let mut hog = task(&["alloc", "256"]);
    hog.memory_bytes = Some(32 * 1024 * 1024);
    let hog = run(&client, hog).await;
    assert_ne!(
        hog.outcome.exit_code,
        Some(0),
        "256 MiB fitted in 32: {hog:?}"
    );
    assert!(
        matches!(hog.outcome.ending, Ending::OomKilled | Ending::Signaled),
        "{:?}",
        hog.outcome
    );
    assert_next_task_runs(&client, "a memory hog").await;

    let mut writer = task(&["writefile", "/bin/evil"]);
    writer.read_only_root = true;
    let writer = run(&client, writer).await;
    assert_eq!(writer.outcome.exit_code, Some(1));
    assert!(
        String::from_utf8_lossy(&writer.stderr).contains("Read-only file system"),
        "{writer:?}"
    );
    assert_next_task_runs(&client, "a write to the root filesystem").await;

    // Only the loopback interface: there is nothing to reach a network with
    // (checked without sending any traffic).
    let ifaces = run(&client, task(&["ifaces"])).await;
    assert_eq!(String::from_utf8_lossy(&ifaces.stdout), "lo\n");
    assert_next_task_runs(&client, "a look for a network").await;

    drop(client);
    // Before the shutdown, whose safety net would hide leftovers.
    h.assert_clean().await;
    server.shutdown().await;
}

//! The cold path's endings on the warm path: timeout, cancel, OOM, output
//! limit, stdin, a missing command; hardening (read-only root, user). Each
//! task must have run warm (a pool hit) and its container must be gone after.

mod common;

use common::{Harness, Run, EXAMPLES_IMAGE};
use std::time::Duration;
use tcp_task::catalog::Catalog;
use tcp_task::executor::{ExecutorConfig, WarmConfig};
use tcp_task::protocol::{Ending, ErrorKind, TaskSpec};

const CATALOG: &str = r#"
[sleep]
image = "IMAGE"
command = ["sleep"]
timeout_ms = 500
warm = 1

[alloc]
image = "IMAGE"
command = ["alloc"]
memory_bytes = 33554432
warm = 1

[flood]
image = "IMAGE"
command = ["flood"]
warm = 1

[cat]
image = "IMAGE"
command = ["cat"]
warm = 1
"#;

async fn harness() -> Harness {
    let config = ExecutorConfig {
        output_limit_bytes: 200_000,
        warm: WarmConfig {
            demand_threshold: 0,
            ..WarmConfig::default()
        },
        ..ExecutorConfig::default()
    };
    let catalog = Catalog::from_toml(&CATALOG.replace("IMAGE", EXAMPLES_IMAGE)).expect("parses");
    let h = Harness::warm(config, catalog).await;
    h.wait_warm(4).await;
    h
}

/// Runs `spec`, asserting it was a hit, and that its container is removed
/// once the pool's background work settles.
async fn run_warm(h: &Harness, spec: TaskSpec) -> Run {
    let hits = h.hits().await;
    let run = h.run(spec).await;
    assert_eq!(h.hits().await, hits + 1, "not a warm run: {:?}", run.result);
    h.exec.settle().await;
    let id = run.container();
    assert!(
        h.docker.inspect_container(&id, None).await.is_err(),
        "container {id} is still there"
    );
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_oom_and_output_limit_on_the_warm_path() {
    let h = harness().await;
    let timed_out = run_warm(&h, TaskSpec::named("sleep", ["30"])).await;
    assert_eq!(timed_out.outcome().ending, Ending::TimedOut);
    assert!(timed_out.outcome().duration() < Duration::from_secs(5));

    let oom = run_warm(&h, TaskSpec::named("alloc", ["200"])).await;
    assert_eq!(oom.outcome().ending, Ending::OomKilled, "{:?}", oom.result);

    let flood = run_warm(&h, TaskSpec::named("flood", Vec::<String>::new())).await;
    assert_eq!(flood.outcome().ending, Ending::OutputLimit);
    assert!(flood.outcome().output_truncated);
    assert_eq!(flood.stdout.len(), 200_000);
    h.drain_and_assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_stdin_on_the_warm_path() {
    let h = harness().await;
    let hits = h.hits().await;
    let running = h.start(TaskSpec::named("sleep", ["30"]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.cancel.cancel();
    let cancelled = running.finish().await;
    assert_eq!(cancelled.outcome().ending, Ending::Cancelled);
    assert_eq!(h.hits().await, hits + 1);

    let mut spec = TaskSpec::named("cat", Vec::<String>::new());
    spec.stdin = true;
    let hits = h.hits().await;
    let mut running = h.start(spec);
    let data: Vec<u8> = (0..=255u8).cycle().take(150_000).collect();
    running.send(&data).await;
    running.close_stdin();
    let echoed = running.finish().await;
    assert!(echoed.outcome().success(), "{:?}", echoed.result);
    assert_eq!(echoed.stdout, data, "stdin round trip is byte-exact");
    assert_eq!(h.hits().await, hits + 1);
    h.drain_and_assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_root_user_and_missing_command_on_the_warm_path() {
    let config = ExecutorConfig {
        warm: WarmConfig {
            demand_threshold: 1,
            on_demand: 1,
            ..WarmConfig::default()
        },
        ..ExecutorConfig::default()
    };
    let h = Harness::warm(config, Catalog::default()).await;
    let locked = |command: &[&str]| TaskSpec {
        read_only_root: true,
        user: Some("65534:65534".into()),
        ..TaskSpec::image(EXAMPLES_IMAGE, command.to_vec())
    };
    // The first request warms the key up (it runs cold).
    assert!(h.run(locked(&["true"])).await.outcome().success());
    h.exec.settle().await;
    h.wait_warm(1).await;
    let id = run_warm(&h, locked(&["id"])).await;
    assert_eq!(id.stdout_text(), "uid=65534 gid=65534\n");
    h.wait_warm(1).await;
    let denied = run_warm(&h, locked(&["writefile", "/etc/x"])).await;
    assert!(!denied.outcome().success(), "the root is read-only");
    h.wait_warm(1).await;
    let missing = h.run(locked(&["no-such-command"])).await;
    assert_eq!(missing.error().kind, ErrorKind::CommandNotFound);
    h.drain_and_assert_clean().await;
}

//! `reset = true` against a real engine: a task leaves files in `/tmp` and
//! `/dev/shm`, a background process, System V and POSIX IPC objects, a
//! working directory of its own; the next task in the same container sees
//! what a task in a fresh container sees. A container whose reset cannot
//! be completed is discarded, and two named clients never share one.
//!
//! Each test runs `look` (tools/src/leftovers.rs) first, in a fresh
//! container, then `leave …`, then `look` again, and checks that all three
//! ran in one container and that both looks agree.

mod common;

use common::{Harness, Run, EXAMPLES_IMAGE};
use tcp_task::catalog::Catalog;
use tcp_task::executor::{ExecutorConfig, WarmConfig};
use tcp_task::protocol::TaskSpec;

/// Only the catalog's pools, so that the counts are the test's.
fn catalog_only() -> ExecutorConfig {
    ExecutorConfig {
        warm: WarmConfig {
            demand_threshold: 0,
            ..WarmConfig::default()
        },
        ..ExecutorConfig::default()
    }
}

/// One entry whose args pick the applet, so that `leave` and `look` share
/// a pool: `tcp-task-tools APPLET ARGS…`.
fn catalog() -> Catalog {
    Catalog::from_toml(&format!(
        r#"
        [t]
        image = "{EXAMPLES_IMAGE}"
        command = ["tcp-task-tools"]
        timeout_ms = 20000
        warm = 1
        reuse = 10
        reset = true
        "#
    ))
    .expect("catalog parses")
}

fn t(args: &[&str]) -> TaskSpec {
    TaskSpec::named("t", args.iter().copied())
}

/// Waits for the pool's container to be ready again, then runs `spec`.
async fn next(h: &Harness, spec: TaskSpec) -> Run {
    h.wait_warm(1).await;
    let run = h.run(spec).await;
    assert!(
        run.outcome().success(),
        "{:?} {}",
        run.result,
        run.stderr_text()
    );
    run
}

/// `look`, `leave` (the spec given), `look` in one container: the second
/// look must read as the first.
async fn leaves_nothing_behind(leave: TaskSpec, left: &str) {
    let h = Harness::warm(catalog_only(), catalog()).await;
    let fresh = next(&h, t(&["look"])).await;
    let container = fresh.container();
    let before = fresh.stdout_text();
    assert!(before.contains("processes=0\n"), "{before}");
    let leaving = next(&h, leave).await;
    assert_eq!(leaving.stdout_text(), left);
    let after = next(&h, t(&["look"])).await;
    assert_eq!(leaving.container(), container, "not the same container");
    assert_eq!(after.container(), container, "not the same container");
    assert_eq!(after.stdout_text(), before, "the next task saw leftovers");
    h.drain_and_assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_in_tmp_and_dev_shm_are_gone_for_the_next_task() {
    leaves_nothing_behind(t(&["leave", "files"]), "left files\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_process_is_gone_for_the_next_task() {
    leaves_nothing_behind(t(&["leave", "process"]), "left process\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_v_and_posix_ipc_objects_are_gone_for_the_next_task() {
    leaves_nothing_behind(t(&["leave", "sysv", "posix"]), "left sysv\nleft posix\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_directory_of_its_own_is_gone_for_the_next_task() {
    let mut spec = t(&["leave", "workdir"]);
    spec.workdir = Some("/tmp/work".into());
    leaves_nothing_behind(spec, "left workdir\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_cannot_be_put_back_is_discarded() {
    let h = Harness::warm(catalog_only(), catalog()).await;
    let first = next(&h, t(&["leave", "devnull"])).await;
    assert_eq!(first.stdout_text(), "left devnull\n");
    h.exec.settle().await;
    let second = next(&h, t(&["look"])).await;
    assert_ne!(
        second.container(),
        first.container(),
        "a container without /dev/null was reused"
    );
    h.drain_and_assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_named_clients_never_share_a_container() {
    let h = Harness::warm(catalog_only(), catalog()).await;
    h.wait_warm(1).await;
    // Alice takes the catalog's fresh container, and it is hers from then.
    let alice = h.run_as("alice", t(&["look"])).await;
    assert!(alice.outcome().success(), "{:?}", alice.result);
    h.exec.settle().await;
    h.wait_warm(1).await;
    let bob = h.run_as("bob", t(&["look"])).await;
    assert!(bob.outcome().success(), "{:?}", bob.result);
    assert_ne!(
        bob.container(),
        alice.container(),
        "bob got alice's container"
    );
    h.exec.settle().await;
    let again = h.run_as("alice", t(&["look"])).await;
    assert_eq!(
        again.container(),
        alice.container(),
        "alice's container was not reused"
    );
    let pools = h.pools().await;
    assert!(
        pools.iter().any(|p| p.key.ends_with("reset client=alice")),
        "{pools:?}"
    );
    h.drain_and_assert_clean().await;
}

/// A burst on an empty `reuse` pool: every task waits for a warm container
/// (none runs cold), the pool grows for it and no further than the burst,
/// then shrinks back to nothing once the misses stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_grows_an_empty_pool_and_quiet_shrinks_it() {
    let catalog = Catalog::from_toml(&format!(
        r#"
        [t]
        image = "{EXAMPLES_IMAGE}"
        command = ["tcp-task-tools"]
        reuse = 100
        reset = true
        "#
    ))
    .expect("catalog parses");
    let h = Harness::warm(catalog_only(), catalog).await;
    let burst: Vec<_> = (0..12).map(|_| h.start(t(&["true"]))).collect();
    let mut containers = std::collections::BTreeSet::new();
    for running in burst {
        let run = running.finish().await;
        assert!(run.outcome().success(), "{:?}", run.result);
        containers.insert(run.container());
    }
    let pools = h.pools().await;
    assert_eq!(pools[0].misses, 0, "a task ran cold: {pools:?}");
    assert_eq!(pools[0].hits, 12, "{pools:?}");
    // max_concurrent (8) tasks at once, so at most 8 containers.
    assert!(containers.len() <= 8, "{containers:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while h.pools().await.iter().map(|p| p.warm).sum::<u64>() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool never shrank"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    h.drain_and_assert_clean().await;
}

//! The limits a task asks for are the limits its container gets: while the
//! task runs, the test finds the container of this executor's instance that
//! runs the task's command line and reads its HostConfig from the engine.
//! Once on the cold path (limits in the request), once on a warm container
//! (limits in a catalog entry with `warm = 1`). The values differ from the
//! policy's defaults, so a limit that is dropped on the way shows.

mod common;

use bollard::models::{ContainerInspectResponse, HostConfig};
use common::engine::{container_running, RemoveOnPanic};
use common::{task, Harness, Run, EXAMPLES_IMAGE};
use tcp_task::admission::Policy;
use tcp_task::catalog::Catalog;
use tcp_task::executor::{ExecutorConfig, WarmConfig, LABEL_INSTANCE, LABEL_WARM};
use tcp_task::protocol::{Ending, TaskSpec};

const PIDS: i64 = 77;
const MEMORY: u64 = 48 * 1024 * 1024;
const NANO_CPUS: u64 = 700_000_000;

/// Asserts the three limits (and no swap beyond memory) on `host`.
fn assert_limits(host: &HostConfig) {
    assert_eq!(host.pids_limit, Some(PIDS), "PidsLimit");
    assert_eq!(host.memory, Some(MEMORY as i64), "Memory");
    assert_eq!(host.memory_swap, Some(MEMORY as i64), "MemorySwap");
    assert_eq!(host.nano_cpus, Some(NANO_CPUS as i64), "NanoCpus");
}

/// The request's limits are not the server's defaults (else a dropped
/// limit would pass unnoticed).
#[test]
fn the_asked_limits_differ_from_the_defaults() {
    let policy = Policy::default();
    assert_ne!(PIDS, policy.default_pids_limit);
    assert_ne!(MEMORY, policy.default_memory_bytes);
    assert_ne!(NANO_CPUS, policy.default_nano_cpus);
}

/// The container the task ran in, by its `Created` event, is the one that
/// was inspected.
fn assert_same_container(run: &Run, inspected: &ContainerInspectResponse) {
    let id = inspected.id.as_deref().expect("an id");
    let created = run.container();
    assert!(
        id.starts_with(&created),
        "inspected {id}, but the task ran in {created}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_limits_reach_a_cold_container() {
    let h = Harness::new(ExecutorConfig::default()).await;
    let _cleanup = RemoveOnPanic::new(h.exec.instance_id());
    let running = h.start(TaskSpec {
        pids_limit: Some(PIDS),
        memory_bytes: Some(MEMORY),
        nano_cpus: Some(NANO_CPUS),
        ..task(["sleep", "61.25"])
    });
    let inspected = container_running(&h.docker, h.exec.instance_id(), "sleep 61.25").await;
    running.cancel.cancel();
    let run = running.finish().await;
    // Clean first, so that a failed check below leaves nothing behind.
    h.assert_clean().await;
    assert_eq!(run.outcome().ending, Ending::Cancelled);
    assert_same_container(&run, &inspected);

    let labels = inspected.config.as_ref().and_then(|c| c.labels.clone());
    let labels = labels.expect("labels");
    assert_eq!(
        labels.get(LABEL_INSTANCE).map(String::as_str),
        Some(h.exec.instance_id())
    );
    assert!(!labels.contains_key(LABEL_WARM), "a cold task, not warm");
    assert_limits(inspected.host_config.as_ref().expect("a HostConfig"));
}

const CATALOG: &str = r#"
[hold]
image = "IMAGE"
command = ["sleep"]
pids_limit = PIDS
memory_bytes = MEMORY
nano_cpus = NANO_CPUS
warm = 1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_limits_reach_a_warm_container() {
    let catalog = CATALOG
        .replace("IMAGE", EXAMPLES_IMAGE)
        .replace("PIDS", &PIDS.to_string())
        .replace("MEMORY", &MEMORY.to_string())
        .replace("NANO_CPUS", &NANO_CPUS.to_string());
    let catalog = Catalog::from_toml(&catalog).expect("the catalog parses");
    let config = ExecutorConfig {
        // Only the entry's pool: no pool warms up on demand.
        warm: WarmConfig {
            demand_threshold: 0,
            ..WarmConfig::default()
        },
        ..ExecutorConfig::default()
    };
    let h = Harness::warm(config, catalog).await;
    let _cleanup = RemoveOnPanic::new(h.exec.instance_id());
    h.wait_warm(1).await;
    let hits = h.hits().await;
    let running = h.start(TaskSpec::named("hold", ["62.5"]));
    let inspected = container_running(&h.docker, h.exec.instance_id(), "sleep 62.5").await;
    let hits_while_running = h.hits().await;
    running.cancel.cancel();
    let run = running.finish().await;
    // Clean first, so that a failed check below leaves nothing behind.
    h.exec.settle().await;
    h.drain_and_assert_clean().await;
    assert_eq!(run.outcome().ending, Ending::Cancelled);
    assert_same_container(&run, &inspected);

    assert_eq!(hits_while_running, hits + 1, "the task was not a pool hit");
    let labels = inspected.config.as_ref().and_then(|c| c.labels.clone());
    let warm_key = labels.and_then(|mut l| l.remove(LABEL_WARM));
    assert!(
        warm_key.is_some(),
        "the task's container has no {LABEL_WARM} label: it is not a warm container"
    );
    assert_limits(inspected.host_config.as_ref().expect("a HostConfig"));
}

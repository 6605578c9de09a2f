//! The warm pools against a real engine: refill after use, a container
//! killed while idle is never handed out, the reuse limit, status, and no
//! container left once the pools are drained.

mod common;

use bollard::query_parameters::{KillContainerOptions, ListContainersOptions};
use common::{Harness, EXAMPLES_IMAGE};
use std::collections::HashMap;
use tcp_task::catalog::Catalog;
use tcp_task::executor::{ExecutorConfig, WarmConfig, LABEL_INSTANCE, LABEL_WARM};
use tcp_task::protocol::TaskSpec;

/// Only the catalog's pools: no on-demand warm-up to muddle the counts.
fn catalog_only() -> ExecutorConfig {
    ExecutorConfig {
        warm: WarmConfig {
            demand_threshold: 0,
            ..WarmConfig::default()
        },
        ..ExecutorConfig::default()
    }
}

fn catalog(warm: u32, reuse: u32) -> Catalog {
    Catalog::from_toml(&format!(
        r#"
        [echo]
        image = "{EXAMPLES_IMAGE}"
        command = ["echo"]
        warm = {warm}
        reuse = {reuse}
        "#
    ))
    .expect("catalog parses")
}

fn echo(word: &str) -> TaskSpec {
    TaskSpec::named("echo", [word])
}

/// The short ids of this executor's warm containers on the engine.
async fn warm_containers(h: &Harness) -> Vec<String> {
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![
            LABEL_WARM.to_owned(),
            format!("{LABEL_INSTANCE}={}", h.exec.instance_id()),
        ],
    )]);
    let options = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..ListContainersOptions::default()
    };
    let listed = h
        .docker
        .list_containers(Some(options))
        .await
        .expect("the engine lists containers");
    listed
        .into_iter()
        .filter_map(|c| c.id)
        .map(|id| id.chars().take(12).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_container_is_removed_and_the_pool_refilled() {
    let h = Harness::warm(catalog_only(), catalog(2, 1)).await;
    h.wait_warm(2).await;
    let before = warm_containers(&h).await;
    let run = h.run(echo("hello")).await;
    assert!(run.outcome().success());
    assert_eq!(run.stdout_text(), "hello\n");
    let used = run.container();
    assert!(before.contains(&used), "{used} not among {before:?}");
    h.exec.settle().await;
    h.wait_warm(2).await;
    let after = warm_containers(&h).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        !after.contains(&used),
        "a used container came back: {after:?}"
    );
    let pools = h.pools().await;
    assert_eq!((pools[0].hits, pools[0].misses, pools[0].in_use), (1, 0, 0));
    assert!(pools[0].key.contains(EXAMPLES_IMAGE), "{pools:?}");
    h.drain_and_assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_killed_while_idle_is_never_handed_out() {
    let h = Harness::warm(catalog_only(), catalog(1, 1)).await;
    h.wait_warm(1).await;
    let killed = warm_containers(&h).await.pop().expect("a warm container");
    h.docker
        .kill_container(&killed, None::<KillContainerOptions>)
        .await
        .expect("docker kill");
    // Right after the kill: either the pool already dropped it (a miss, run
    // cold) or the task finds it dead before starting and moves on.
    let run = h.run(echo("still works")).await;
    assert!(run.outcome().success(), "{:?}", run.result);
    assert_eq!(run.stdout_text(), "still works\n");
    assert_ne!(run.container(), killed);
    // And it is replaced by a live one.
    h.exec.settle().await;
    h.wait_warm(1).await;
    let now = warm_containers(&h).await;
    assert!(
        !now.contains(&killed),
        "the killed container is still there: {now:?}"
    );
    let run = h.run(echo("warm again")).await;
    assert!(run.outcome().success());
    assert!(now.contains(&run.container()));
    h.drain_and_assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_three_serves_three_tasks_then_a_new_container() {
    let h = Harness::warm(catalog_only(), catalog(1, 3)).await;
    let mut containers = Vec::new();
    for i in 0..4 {
        h.exec.settle().await;
        h.wait_warm(1).await;
        let run = h.run(echo(&format!("task {i}"))).await;
        assert!(run.outcome().success());
        assert_eq!(run.stdout_text(), format!("task {i}\n"));
        containers.push(run.container());
    }
    assert_eq!(containers[0], containers[1]);
    assert_eq!(containers[1], containers[2]);
    assert_ne!(containers[2], containers[3]);
    let pools = h.pools().await;
    assert_eq!(pools[0].hits, 4, "{pools:?}");
    assert!(pools[0].key.ends_with("entry=echo reuse=3"), "{pools:?}");
    h.drain_and_assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_images_warm_up_on_demand_within_the_budget() {
    let config = ExecutorConfig {
        warm: WarmConfig {
            demand_threshold: 2,
            on_demand: 3,
            max_containers: 2,
            ..WarmConfig::default()
        },
        ..ExecutorConfig::default()
    };
    let h = Harness::warm(config, Catalog::default()).await;
    let spec = TaskSpec::image(EXAMPLES_IMAGE, ["true"]);
    assert!(h.run(spec.clone()).await.outcome().success());
    h.exec.settle().await;
    assert!(
        warm_containers(&h).await.is_empty(),
        "one request is not demand"
    );
    assert!(h.run(spec.clone()).await.outcome().success());
    h.exec.settle().await;
    // on_demand is 3, but the budget allows 2.
    assert_eq!(warm_containers(&h).await.len(), 2);
    let run = h.run(spec).await;
    assert!(run.outcome().success());
    let pools = h.pools().await;
    assert_eq!((pools[0].hits, pools[0].misses), (1, 2), "{pools:?}");
    h.drain_and_assert_clean().await;
}

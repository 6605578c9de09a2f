//! Endings we cause or the kernel causes (timeout, cancel, client gone,
//! OOM, fork bomb, output flood), hardening settings on the container,
//! concurrency with the FIFO queue, status, and the orphan sweep. Every
//! test ends by checking that none of its containers is left.

mod common;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};
use bollard::Docker;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use common::{task, Harness, EXAMPLES_IMAGE};
use tcp_task::executor::{
    label_filter, Delivery, Disconnected, Events, Executor, ExecutorConfig, Owner, TaskIo,
    LABEL_INSTANCE, LABEL_MANAGED,
};
use tcp_task::images::TOOLS_DIGEST;
use tcp_task::protocol::{Ending, ErrorKind, OutputStream, ProgressEvent, TaskSpec};

/// Waits until the engine runs a container of `instance`; returns its id.
async fn running_container(docker: &Docker, instance: &str) -> String {
    for _ in 0..600 {
        let mut filters = label_filter(Some(instance));
        filters.insert("status".into(), vec!["running".into()]);
        let options = ListContainersOptions {
            filters: Some(filters),
            ..ListContainersOptions::default()
        };
        let list = docker.list_containers(Some(options)).await.expect("list");
        if let Some(id) = list.into_iter().find_map(|c| c.id) {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no container of {instance} started within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_and_says_timed_out() {
    let h = Harness::standard().await;
    let run = h
        .run(TaskSpec {
            timeout_ms: Some(1000),
            ..task(["sleep", "60"])
        })
        .await;
    let outcome = run.outcome();
    assert_eq!(outcome.ending, Ending::TimedOut);
    assert_eq!(outcome.exit_status(), 124);
    assert!(outcome.duration_ms < 60_000);
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_a_running_task() {
    let h = Harness::standard().await;
    let running = h.start(task(["sleep", "60"]));
    running_container(&h.docker, h.exec.instance_id()).await;
    running.cancel.cancel();
    let run = running.finish().await;
    assert_eq!(run.outcome().ending, Ending::Cancelled);
    assert!(run.progress().contains(&ProgressEvent::Started));
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_is_gone_ends_the_task() {
    let h = Harness::standard().await;
    // Events for a client that is already gone.
    struct Gone;
    impl Events for Gone {
        fn progress(&self, _: ProgressEvent) -> Delivery<'_> {
            Box::pin(async { Err(Disconnected) })
        }
        fn output(&self, _: OutputStream, _: Bytes) -> Delivery<'_> {
            Box::pin(async { Err(Disconnected) })
        }
    }
    let (_stdin_tx, stdin) = mpsc::channel(1);
    let io = TaskIo {
        events: Arc::new(Gone),
        stdin,
        cancel: CancellationToken::new(),
    };
    let plan = h
        .admission
        .plan(task(["lines", "1000", "20"]), None)
        .unwrap();
    let outcome = h.exec.run(plan, io).await.expect("the task ran");
    assert_eq!(outcome.ending, Ending::Cancelled);
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_is_reported_as_oom_not_as_137() {
    let h = Harness::standard().await;
    let run = h
        .run(TaskSpec {
            memory_bytes: Some(32 << 20),
            ..task(["alloc", "256"])
        })
        .await;
    let outcome = run.outcome();
    assert_eq!(outcome.ending, Ending::OomKilled, "{outcome:?}");
    assert!(outcome.oom_killed());
    h.assert_clean().await;
}

/// The engine can miss an OOM kill under load (its `oom` event lost, the
/// flag unset: a plain 137). `measure`, between docker-init and the task,
/// reads the cgroup's own count after the task ended, and the server
/// believes that: here the count must be in its report, read off a
/// container run by hand with the same tools mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure_reports_the_cgroups_count_of_oom_kills() {
    let scratch = tempfile::tempdir().unwrap();
    let tools = scratch.path().join("tools");
    let h = Harness::new(ExecutorConfig {
        tools_dir: Some(tools.clone()),
        ..ExecutorConfig::default()
    })
    .await;
    let image = h.docker.inspect_image(EXAMPLES_IMAGE).await.unwrap();
    let entrypoint = image.config.and_then(|c| c.entrypoint).unwrap_or_default();
    let mount = format!("{}:/.tcp-task:ro", tools.join(TOOLS_DIGEST).display());
    let run = |command: &[&str]| {
        std::process::Command::new("docker")
            .args(["run", "--rm", "--memory", "32m", "--memory-swap", "32m"])
            .args(["--network", "none", "-v", &mount])
            .args(["--entrypoint", "/.tcp-task/measure", EXAMPLES_IMAGE])
            .args(&entrypoint)
            .args(command)
            .output()
            .unwrap()
    };
    let oom = run(&["alloc", "256"]);
    let report = String::from_utf8_lossy(&oom.stderr);
    assert_eq!(oom.status.code(), Some(137), "{report}");
    assert!(
        report.contains(" oom_kills=1\n"),
        "no OOM kill counted: {report:?}"
    );
    let fine = run(&["alloc", "1"]);
    let report = String::from_utf8_lossy(&fine.stderr);
    assert_eq!(fine.status.code(), Some(0), "{report}");
    assert!(report.contains(" oom_kills=0\n"), "{report:?}");
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_contained_by_the_pids_limit() {
    let h = Harness::standard().await;
    let run = h
        .run(TaskSpec {
            pids_limit: Some(32),
            timeout_ms: Some(120_000),
            ..task(["forkbomb"])
        })
        .await;
    // It ends by itself (it cannot fork past the limit), not by our timeout.
    let outcome = run.outcome();
    assert_ne!(outcome.ending, Ending::TimedOut, "{outcome:?}");
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_flood_stops_at_the_output_limit() {
    const LIMIT: u64 = 1 << 20;
    let h = Harness::new(ExecutorConfig {
        output_limit_bytes: LIMIT,
        ..ExecutorConfig::default()
    })
    .await;
    let run = h.run(task(["flood"])).await;
    let outcome = run.outcome();
    assert_eq!(outcome.ending, Ending::OutputLimit);
    assert!(outcome.output_truncated);
    assert_eq!(run.stdout.len() + run.stderr.len(), LIMIT as usize);
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_get_the_hardening_defaults() {
    let h = Harness::standard().await;
    let running = h.start(task(["sleep", "60"]));
    let id = running_container(&h.docker, h.exec.instance_id()).await;
    let inspected = h
        .docker
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
        .expect("inspect");
    running.cancel.cancel();
    running.finish().await;
    let host = inspected.host_config.expect("host config");
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges".to_owned()])
    );
    assert_eq!(host.pids_limit, Some(256));
    assert_eq!(host.memory, Some(256 << 20));
    assert_eq!(host.memory_swap, host.memory);
    assert_eq!(host.nano_cpus, Some(1_000_000_000));
    assert_eq!(host.init, Some(true));
    assert_eq!(host.auto_remove, Some(false));
    let log = host.log_config.expect("log config");
    assert_eq!(log.typ.as_deref(), Some("local"));
    let log_options = log.config.expect("log options");
    assert_eq!(log_options.get("max-size").map(String::as_str), Some("64m"));
    assert_eq!(log_options.get("max-file").map(String::as_str), Some("2"));
    assert_eq!(
        log_options.get("compress").map(String::as_str),
        Some("false")
    );
    let labels = inspected.config.and_then(|c| c.labels).expect("labels");
    assert_eq!(labels.get(LABEL_MANAGED).map(String::as_str), Some("true"));
    assert_eq!(
        labels.get(LABEL_INSTANCE).map(String::as_str),
        Some(h.exec.instance_id())
    );
    assert!(labels.contains_key("tcp-task.task"));
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_tasks_all_complete_through_the_queue() {
    let h = Harness::new(ExecutorConfig {
        max_concurrent: 4,
        ..ExecutorConfig::default()
    })
    .await;
    let runs: Vec<_> = (0..50)
        .map(|i| h.start(task(["echo", &format!("task {i}")])))
        .collect();
    let mut queued = 0;
    for (i, running) in runs.into_iter().enumerate() {
        let run = running.finish().await;
        assert!(run.outcome().success(), "task {i}: {:?}", run.result);
        assert_eq!(run.stdout_text(), format!("task {i}\n"));
        if run
            .progress()
            .iter()
            .any(|p| matches!(p, ProgressEvent::Queued { .. }))
        {
            queued += 1;
        }
    }
    assert!(queued > 0, "with 4 slots some of 50 tasks must have queued");
    // A slot is held until its container is removed, after the outcome.
    h.exec.settle().await;
    let status = h.exec.stats().await;
    assert_eq!((status.running, status.queued), (0, 0));
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_fifo_reports_positions_and_refuses_when_full() {
    let h = Harness::new(ExecutorConfig {
        max_concurrent: 1,
        max_queue: 2,
        ..ExecutorConfig::default()
    })
    .await;
    let holder = h.start(task(["sleep", "60"]));
    running_container(&h.docker, h.exec.instance_id()).await;
    let first = h.start(task(["echo", "first"]));
    wait_for_queued(&h, 1).await;
    let second = h.start(task(["echo", "second"]));
    wait_for_queued(&h, 2).await;
    let refused = h.run(task(["true"])).await;
    assert_eq!(refused.error().kind, ErrorKind::Busy);
    assert!(refused.error().message.contains("max_queue"));

    holder.cancel.cancel();
    assert_eq!(holder.finish().await.outcome().ending, Ending::Cancelled);
    let first = first.finish().await;
    let second = second.finish().await;
    assert_eq!(first.stdout_text(), "first\n");
    assert_eq!(second.stdout_text(), "second\n");
    let queued = |run: &common::Run| -> Vec<u32> {
        run.progress()
            .iter()
            .filter_map(|p| match p {
                ProgressEvent::Queued { position } => Some(*position),
                _ => None,
            })
            .collect()
    };
    assert_eq!(queued(&first), vec![1]);
    assert_eq!(queued(&second), vec![2, 1], "the second moved up");
    let status = h.exec.stats().await;
    assert!(status.engine.reachable);
    assert_eq!(status.engine.api_version.as_deref(), Some("1.41"));
    h.assert_clean().await;
}

async fn wait_for_queued(h: &Harness, n: u64) {
    for _ in 0..600 {
        if h.exec.stats().await.queued == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{n} tasks never queued");
}

/// Creates (without starting) a container labelled as owned by `owner`.
async fn labelled_container(docker: &Docker, owner: &Owner) -> String {
    let labels: HashMap<String, String> = owner.labels().into_iter().collect();
    let body = ContainerCreateBody {
        image: Some(EXAMPLES_IMAGE.to_owned()),
        cmd: Some(vec!["true".to_owned()]),
        labels: Some(labels),
        ..ContainerCreateBody::default()
    };
    docker
        .create_container(None, body)
        .await
        .expect("create")
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_of_dead_servers_are_reaped_live_ones_kept() {
    let h = Harness::standard().await;
    let me = h.exec.owner().clone();
    let dead = Owner {
        instance: format!("{}-dead", me.instance),
        pid: u32::MAX - 1,
        ..me.clone()
    };
    let alive = Owner {
        instance: format!("{}-alive", me.instance),
        ..me.clone()
    };
    let orphan = labelled_container(&h.docker, &dead).await;
    let sibling = labelled_container(&h.docker, &alive).await;
    let removed = h.exec.reap_orphans().await.expect("reap");
    assert!(removed >= 1);
    common::assert_no_containers(&h.docker, &dead.instance).await;
    let kept = h
        .docker
        .inspect_container(&sibling, None::<InspectContainerOptions>)
        .await;
    assert!(kept.is_ok(), "a live server's container was removed");
    h.docker
        .remove_container(
            &sibling,
            None::<bollard::query_parameters::RemoveContainerOptions>,
        )
        .await
        .expect("remove the sibling");
    let _ = orphan;
    h.assert_clean().await;
}

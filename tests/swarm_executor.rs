//! The Swarm backend on a real swarm: the two-node swarm of
//! scripts/swarm.sh (its own engines in network namespaces, never the
//! machine's), found through TCP_TASK_SWARM_HOST (the manager) and
//! TCP_TASK_SWARM_NODES (every node). Without them each test says
//! `skipped:` and returns; scripts/test.sh sets the swarm up.

mod common;

use bollard::query_parameters::{ListContainersOptions, ListNetworksOptions, ListServicesOptions};
use bollard::Docker;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Harness, EXAMPLES_IMAGE};
use tcp_task::admission::{Admission, Policy};
use tcp_task::catalog::Catalog;
use tcp_task::executor::{
    label_filter, Backend, DockerExecutor, Executor, ExecutorConfig, LABEL_INSTANCE, LABEL_SERVICE,
};
use tcp_task::protocol::{Ending, ErrorKind, ProgressEvent, TaskSpec};

/// The swarm's engines: the manager first.
struct Swarm {
    manager: Docker,
    nodes: Vec<Docker>,
}

async fn swarm() -> Option<Swarm> {
    let Ok(manager) = std::env::var("TCP_TASK_SWARM_HOST") else {
        eprintln!("skipped: TCP_TASK_SWARM_HOST is not set (scripts/test.sh sets up a test swarm with scripts/swarm.sh)");
        return None;
    };
    let hosts = std::env::var("TCP_TASK_SWARM_NODES").unwrap_or_else(|_| manager.clone());
    let mut nodes = Vec::new();
    for host in hosts.split_whitespace() {
        let docker = tcp_task::docker::connect_docker_at(host)
            .await
            .unwrap_or_else(|e| panic!("the swarm node at {host} answers: {e}"));
        // Each node runs tasks from its own images: nothing is pulled.
        tcp_task::images::ensure_examples_image(&docker)
            .await
            .expect("the examples image builds on every node");
        nodes.push(docker);
    }
    let manager = tcp_task::docker::connect_docker_at(&manager)
        .await
        .expect("the swarm manager answers");
    Some(Swarm { manager, nodes })
}

/// An executor on the swarm, with a policy that lets a test ask for more
/// than any node has.
async fn harness(swarm: &Swarm, tune: impl FnOnce(&mut ExecutorConfig)) -> Harness {
    let mut config = ExecutorConfig {
        backend: Backend::Swarm,
        ..ExecutorConfig::default()
    };
    config.warm.enabled = false;
    config.swarm.schedule_timeout_ms = 5_000;
    tune(&mut config);
    let policy = Policy {
        max_memory_bytes: u64::MAX / 2,
        max_nano_cpus: 1_000_000_000_000,
        ..Policy::default()
    };
    Harness {
        docker: swarm.manager.clone(),
        exec: Arc::new(DockerExecutor::new(swarm.manager.clone(), config)),
        admission: Arc::new(Admission::new(policy, Catalog::default())),
    }
}

fn spec(command: &[&str]) -> TaskSpec {
    TaskSpec::image(EXAMPLES_IMAGE, command.iter().copied())
}

/// Nothing of `h`'s executor is left: no service, no network on the
/// manager, no container on any node. A removed service's container goes
/// on its node a moment later, so that is waited for (boundedly).
async fn assert_clean(swarm: &Swarm, h: &Harness) {
    h.exec.settle().await;
    let instance = h.exec.instance_id().to_owned();
    let filters = Some(label_filter(Some(&instance)));
    let services = swarm
        .manager
        .list_services(Some(ListServicesOptions {
            filters: filters.clone(),
            ..ListServicesOptions::default()
        }))
        .await
        .expect("services list");
    assert!(services.is_empty(), "services left: {services:?}");
    let networks = swarm
        .manager
        .list_networks(Some(ListNetworksOptions { filters }))
        .await
        .expect("networks list");
    assert!(networks.is_empty(), "networks left: {networks:?}");
    let by_instance = HashMap::from([(
        "label".to_owned(),
        vec![format!("{LABEL_INSTANCE}={instance}")],
    )]);
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in &swarm.nodes {
        loop {
            let left = node
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(by_instance.clone()),
                    ..ListContainersOptions::default()
                }))
                .await
                .expect("containers list");
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containers left on a node 30 s after their service went: {:?}",
                left.iter().map(|c| &c.names).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The nodes a run was placed on, from its `Scheduling` events.
fn placed_on(progress: &[ProgressEvent]) -> Option<String> {
    progress.iter().rev().find_map(|p| match p {
        ProgressEvent::Scheduling { node, .. } => node.clone(),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_exit_codes_and_signals_come_back_from_the_swarm() {
    let Some(swarm) = swarm().await else { return };
    let h = harness(&swarm, |_| {}).await;
    let runs = futures::future::join_all([
        h.run(spec(&["mixed", "3"])),
        h.run(spec(&["exit", "42"])),
        h.run(spec(&["killself", "15"])),
        h.run(spec(&["randbytes", "300000", "7"])),
    ])
    .await;
    let mixed = &runs[0];
    assert_eq!(mixed.stdout_text(), "out 0\nout 1\nout 2\n");
    assert_eq!(mixed.stderr_text(), "err 0\nerr 1\nerr 2\n");
    assert!(mixed.outcome().success(), "{:?}", mixed.result);
    let progress = mixed.progress();
    assert!(
        progress
            .iter()
            .any(|p| matches!(p, ProgressEvent::Scheduling { node: Some(_), .. })),
        "a Scheduling event names the node: {progress:?}"
    );
    assert!(progress.contains(&ProgressEvent::Started), "{progress:?}");
    assert_eq!(runs[1].outcome().exit_code, Some(42));
    let signaled = runs[2].outcome();
    assert_eq!(
        (signaled.ending, signaled.signal),
        (Ending::Signaled, Some(15))
    );
    let local = h.run(spec(&["randbytes", "300000", "7"])).await;
    assert_eq!(runs[3].stdout.len(), 300_000);
    assert_eq!(runs[3].stdout, local.stdout, "the same bytes twice");
    assert_clean(&swarm, &h).await;
}

/// The local backend's differential corpus (tests/common/corpus.rs) gives
/// the same stdout, stderr and exit status on the swarm as `docker run`
/// gives on the local engine. The swarm's tasks run at once: each waits
/// mostly for its network and service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_differential_corpus_gives_the_same_bytes_and_exit_codes_on_the_swarm() {
    use common::corpus::{corpus, docker_run, mismatches, observe, spec_of};
    let Some(swarm) = swarm().await else { return };
    let h = harness(&swarm, |_| {}).await;
    let cases = corpus();
    let runs = futures::future::join_all(cases.iter().map(|case| h.run(spec_of(case)))).await;
    let mut found = Vec::new();
    for (case, run) in cases.iter().zip(runs) {
        let reference = docker_run(case).await;
        found.extend(mismatches(case, reference, observe(run)));
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
    assert_clean(&swarm, &h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_placed_on_both_nodes() {
    let Some(swarm) = swarm().await else { return };
    if swarm.nodes.len() < 2 {
        eprintln!("skipped: the test swarm has one node (TCP_TASK_SWARM_NODES)");
        return;
    }
    let h = harness(&swarm, |_| {}).await;
    // Swarm spreads the tasks of services over the nodes; a few at once
    // land on both.
    let runs = futures::future::join_all((0..4).map(|i| {
        let code = (10 + i).to_string();
        h.run(spec(&["ticks", "2", "300", &code]))
    }))
    .await;
    let mut nodes = HashSet::new();
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run.outcome().exit_code, Some(10 + i as i32));
        assert_eq!(
            run.stdout_text().lines().count(),
            2,
            "{:?}",
            run.stdout_text()
        );
        nodes.insert(placed_on(&run.progress()).expect("a node"));
    }
    assert_eq!(nodes.len(), 2, "placed on {nodes:?}");
    let status = h.exec.stats().await;
    assert_eq!(status.nodes.len(), 2, "{:?}", status.nodes);
    assert!(status.nodes.iter().any(|n| n.manager));
    assert!(status
        .nodes
        .iter()
        .all(|n| n.state == "ready" && n.memory_bytes > 0));
    assert_clean(&swarm, &h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_cancel_and_output_limit_remove_the_service() {
    let Some(swarm) = swarm().await else { return };
    let h = harness(&swarm, |c| c.output_limit_bytes = 10_000).await;
    let timed = h.start(TaskSpec {
        timeout_ms: Some(1_500),
        ..spec(&["sleep", "60"])
    });
    let cancelled = h.start(spec(&["sleep", "60"]));
    let flood = h.start(spec(&["flood"]));
    tokio::time::sleep(Duration::from_secs(4)).await;
    cancelled.cancel.cancel();
    let (timed, cancelled, flood) =
        tokio::join!(timed.finish(), cancelled.finish(), flood.finish());
    assert_eq!(timed.outcome().ending, Ending::TimedOut);
    assert_eq!(cancelled.outcome().ending, Ending::Cancelled);
    assert_eq!(flood.outcome().ending, Ending::OutputLimit);
    assert_eq!(flood.stdout.len(), 10_000);
    assert_clean(&swarm, &h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_swarm_cannot_do_fails_clearly() {
    let Some(swarm) = swarm().await else { return };
    let h = harness(&swarm, |_| {}).await;
    let stdin = h
        .run(TaskSpec {
            stdin: true,
            ..spec(&["cat"])
        })
        .await;
    assert_eq!(
        stdin.error().kind,
        ErrorKind::Unsupported,
        "{:?}",
        stdin.result
    );
    assert!(
        stdin.error().message.contains("stdin"),
        "{}",
        stdin.error().message
    );
    let began = Instant::now();
    let huge = h
        .run(TaskSpec {
            memory_bytes: Some(1 << 50),
            ..spec(&["true"])
        })
        .await;
    assert_eq!(
        huge.error().kind,
        ErrorKind::Unschedulable,
        "{:?}",
        huge.result
    );
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "bounded: {:?}",
        began.elapsed()
    );
    assert!(
        huge.progress().contains(&ProgressEvent::Scheduling {
            state: "pending".into(),
            node: None
        }),
        "{:?}",
        huge.progress()
    );
    let missing = h.run(spec(&["no-such-command"])).await;
    assert_eq!(
        missing.error().kind,
        ErrorKind::CommandNotFound,
        "{:?}",
        missing.result
    );
    let no_image = h
        .run(TaskSpec::image("tcp-task-no-such-image:1", ["true"]))
        .await;
    assert_eq!(
        no_image.error().kind,
        ErrorKind::ImageNotFound,
        "{:?}",
        no_image.result
    );
    assert_clean(&swarm, &h).await;
}

/// A task sees only its own network: no default route, one interface
/// besides loopback, and another task's address (on its own network) is
/// out of reach. No packet goes anywhere but to the test's own tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_reaches_neither_a_route_out_nor_another_task() {
    let Some(swarm) = swarm().await else { return };
    let h = harness(&swarm, |_| {}).await;
    let routes = h.run(spec(&["routes"])).await;
    let table = routes.stdout_text();
    assert!(
        routes.outcome().success(),
        "{:?} {}",
        routes.result,
        routes.stderr_text()
    );
    assert!(!table.contains("default"), "no default route: {table}");
    assert_eq!(
        table.lines().count(),
        1,
        "one route, its own subnet: {table}"
    );
    let ifaces = h.run(spec(&["ifaces"])).await;
    assert_eq!(ifaces.stdout_text(), "eth0\nlo\n");
    // A listener task on its own network, and a second task that tries
    // to reach it.
    let listener = h.start(spec(&["http-tasks", "8080"]));
    let address = task_address(&swarm, h.exec.instance_id()).await;
    let probe = h.run(spec(&["netcheck", &format!("{address}:8080")])).await;
    assert_ne!(
        probe.outcome().exit_code,
        Some(0),
        "reached another task: {}",
        probe.stdout_text()
    );
    listener.cancel.cancel();
    listener.finish().await;
    assert_clean(&swarm, &h).await;
}

/// The address of the one running task of `instance`, read from its
/// container on whichever node runs it.
async fn task_address(swarm: &Swarm, instance: &str) -> String {
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![
            format!("{LABEL_INSTANCE}={instance}"),
            LABEL_SERVICE.to_owned(),
        ],
    )]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for node in &swarm.nodes {
            let running = node
                .list_containers(Some(ListContainersOptions {
                    filters: Some(filters.clone()),
                    ..ListContainersOptions::default()
                }))
                .await
                .expect("containers list");
            let address = running
                .into_iter()
                .filter_map(|c| c.network_settings?.networks)
                .flat_map(|n| n.into_values())
                .find_map(|n| n.ip_address.filter(|a| !a.is_empty()));
            if let Some(address) = address {
                return address;
            }
        }
        assert!(Instant::now() < deadline, "the listener task never ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

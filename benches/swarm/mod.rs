//! The Swarm backend's benchmarks, called from `benches/tasks.rs`, on the
//! swarm whose manager TCP_TASK_SWARM_HOST names (scripts/swarm.sh sets up
//! a test one; TCP_TASK_SWARM_NODES lists every node, so that each gets
//! the examples image):
//!
//! - `task_latency/swarm_cli`: what a user would type to run a task on a
//!   swarm: `docker -H MANAGER service create --mode replicated-job
//!   --detach=false IMAGE echo swarm`, then `docker service logs` for its
//!   output, then `docker service rm` (labels aside, to find its
//!   containers by);
//! - `task_latency/tcp_task_swarm`: the same image and command through
//!   Client → Server → DockerExecutor with the Swarm backend, its output
//!   read from the task's events.
//!
//! The goal (issue 11): `tcp_task_swarm` ≤ 0.7 × `swarm_cli`. Without
//! TCP_TASK_SWARM_HOST (or the `docker` command) both are skipped with
//! the reason.

use criterion::Criterion;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::process::Command;
use tokio::runtime::Runtime;

use tcp_task::executor::{Backend, DockerExecutor, ExecutorConfig};
use tcp_task::images::EXAMPLES_IMAGE;
use tcp_task::{Client, RunningServer, Server, ServerConfig, TaskEvent, TaskSpec};

/// The task both peers run, and what it prints.
const COMMAND: [&str; 2] = ["echo", "swarm"];
const OUTPUT: &str = "swarm\n";

/// The label on the CLI peer's services and their containers. Swarm
/// (20.10) leaves a removed job's exited container on its node, so the
/// bench removes them by this label when it is done.
const BENCH_LABEL: &str = "tcp-task-bench=swarm_cli";

struct Setup {
    manager: String,
    nodes: Vec<bollard::Docker>,
    server: RunningServer,
    client: Client,
}

pub fn swarm_benches(c: &mut Criterion, rt: &Runtime) {
    let setup = match rt.block_on(Setup::start()) {
        Ok(setup) => setup,
        Err(why) => return eprintln!("benches/tasks: swarm benchmarks skipped: {why}"),
    };
    let mut group = crate::container_group(c, "task_latency", Duration::from_secs(30));
    group.bench_function("swarm_cli", |b| {
        b.to_async(rt).iter(|| swarm_cli(&setup.manager));
    });
    group.bench_function("tcp_task_swarm", |b| {
        b.to_async(rt).iter(|| tcp_task_swarm(&setup.client));
    });
    group.finish();
    rt.block_on(setup.server.shutdown());
    rt.block_on(remove_cli_containers(&setup.nodes));
}

/// Removes the containers the CLI peer's jobs left on every node.
async fn remove_cli_containers(nodes: &[bollard::Docker]) {
    use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
    let filters =
        std::collections::HashMap::from([("label".to_owned(), vec![BENCH_LABEL.to_owned()])]);
    for node in nodes {
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..ListContainersOptions::default()
        };
        let Ok(left) = node.list_containers(Some(options)).await else {
            continue;
        };
        for id in left.into_iter().filter_map(|c| c.id) {
            let options = RemoveContainerOptions {
                force: true,
                ..RemoveContainerOptions::default()
            };
            if let Err(e) = node.remove_container(&id, Some(options)).await {
                eprintln!("benches/tasks: cannot remove the CLI peer's container {id}: {e}");
            }
        }
    }
}

impl Setup {
    async fn start() -> Result<Setup, String> {
        let manager = std::env::var("TCP_TASK_SWARM_HOST").map_err(|_| {
            "TCP_TASK_SWARM_HOST is not set (`bash scripts/swarm.sh up` prints a test swarm's)"
                .to_owned()
        })?;
        let hosts = std::env::var("TCP_TASK_SWARM_NODES").unwrap_or_else(|_| manager.clone());
        let mut nodes = Vec::new();
        for host in hosts.split_whitespace() {
            let docker = tcp_task::docker::connect_docker_at(host)
                .await
                .map_err(|e| format!("the swarm node at {host}: {e}"))?;
            // Nothing is pulled: every node runs the task from its own copy.
            tcp_task::images::ensure_examples_image(&docker)
                .await
                .map_err(|e| format!("the examples image on {host}: {e}"))?;
            nodes.push(docker);
        }
        let docker = tcp_task::docker::connect_docker_at(&manager)
            .await
            .map_err(|e| format!("the swarm manager at {manager}: {e}"))?;
        let mut config = ExecutorConfig {
            backend: Backend::Swarm,
            ..ExecutorConfig::default()
        };
        config.warm.enabled = false;
        let server = Server::new(ServerConfig::default(), DockerExecutor::new(docker, config))
            .spawn("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot start a server on loopback: {e}"))?;
        let client = Client::connect(server.local_addr())
            .await
            .map_err(|e| format!("cannot connect to the bench's own server: {e}"))?;
        let cli = docker_cli(&manager, &["version"]).await;
        if !cli.status.success() {
            return Err(format!(
                "`docker -H {manager} version` failed: {}",
                String::from_utf8_lossy(&cli.stderr)
            ));
        }
        Ok(Setup {
            manager,
            nodes,
            server,
            client,
        })
    }
}

async fn docker_cli(manager: &str, args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .arg("-H")
        .arg(manager)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("the docker command starts")
}

/// One task the way a user would run it with the docker CLI alone.
async fn swarm_cli(manager: &str) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "bench-swarm-cli-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut create = vec![
        "service",
        "create",
        "--mode",
        "replicated-job",
        "--detach=false",
        "--label",
        BENCH_LABEL,
        "--container-label",
        BENCH_LABEL,
        "--name",
        &name,
        EXAMPLES_IMAGE,
    ];
    create.extend(COMMAND);
    let created = docker_cli(manager, &create).await;
    let check = |step: &str, out: &std::process::Output| {
        assert!(
            out.status.success(),
            "docker service {step} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    check("create", &created);
    let logs = docker_cli(manager, &["service", "logs", "--raw", &name]).await;
    check("logs", &logs);
    let removed = docker_cli(manager, &["service", "rm", &name]).await;
    check("rm", &removed);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), OUTPUT);
}

async fn tcp_task_swarm(client: &Client) {
    let mut handle = client
        .run(TaskSpec::image(EXAMPLES_IMAGE, COMMAND))
        .await
        .expect("submit");
    let mut stdout = Vec::new();
    while let Some(event) = handle.next().await {
        if let TaskEvent::Stdout(chunk) = event {
            stdout.extend_from_slice(&chunk);
        }
    }
    let outcome = handle.wait().await.expect("the task runs");
    assert!(outcome.success(), "{outcome:?}");
    assert_eq!(String::from_utf8_lossy(&stdout), OUTPUT);
}

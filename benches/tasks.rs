//! Running a container task, measured against the ways a user could run the
//! same container without tcp-task, all in one run so that the ratios hold
//! on a noisy machine:
//!
//! - `task_latency/docker_cli`: `docker run --rm --network none IMAGE true`
//!   as a child process (what a user would type);
//! - `task_latency/engine_api`: create → start → wait → remove straight over
//!   bollard, with the executor's hardening `HostConfig` (dockerd's floor);
//! - `task_latency/tcp_task_cold`: the same task through Client → Server →
//!   DockerExecutor, on one persistent connection;
//! - `stream/docker_cli`: `docker run --rm --network none IMAGE zeros
//!   268435456` (the network as tcp-task's tasks have it), stdout read to
//!   the end; `stream/tcp_task`: the same task through tcp-task, its output
//!   events consumed. Throughput in bytes of stdout.
//! - `durable/attach_finished` and `durable/docker_logs`: a finished
//!   detached task's output, through `Client::attach` and through
//!   `docker logs` on its container (benches/durable/mod.rs).
//! - `http_task/…`: an HTTP task (the original task service's contract)
//!   warm and cold, against `docker run`, the image's start-up to
//!   listening, and the original service's way (benches/http_task/mod.rs).
//!
//! The goals (issue 3): `tcp_task_cold` ≤ 0.8 × `docker_cli` and ≤ 1.1 ×
//! `engine_api`; `stream/tcp_task` throughput ≥ 1.0 × `stream/docker_cli`.
//! Issue 10: `durable/attach_finished` ≤ 2 × `durable/docker_logs`.
//! Issue 12: `http_task/tcp_task_warm` ≤ 0.05 × `http_task/docker_cli`,
//! `http_task/tcp_task_cold` ≤ 1.2 × (`docker_cli` + `image_listening`)
//! (benches/http_task/mod.rs).
//! Issue 11: `task_latency/tcp_task_swarm` ≤ 0.7 × `task_latency/swarm_cli`
//! (benches/swarm/mod.rs; only when TCP_TASK_SWARM_HOST names a swarm).
//!
//! Needs a Docker engine (`DOCKER_HOST` or the local socket) and builds the
//! examples image itself; without an engine it says why and exits 0. The
//! `docker_cli` peers also need the `docker` command. A container task takes
//! ~0.3–0.5 s, so the samples are few and flat: the whole bench takes a few
//! minutes. `RUST_LOG=tcp_task=debug` logs the executor's lifecycle steps
//! (created, attached, started, output-ended, exit-status, removed) with
//! timestamps, to see where a task's time goes.

// The durable tasks' benchmarks (`durable/…`), the HTTP tasks'
// (`http_task/…`), the warm pool's (`task_latency/tcp_task_warm`,
// `throughput/warm_reuse`) and the Swarm backend's (`task_latency/swarm_cli`,
// `task_latency/tcp_task_swarm`) live in modules of their own.
mod durable;
mod http_task;
mod swarm;
mod warm;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, StartContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use futures::StreamExt;
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::runtime::Runtime;

use tcp_task::admission::Policy;
use tcp_task::executor::{DockerExecutor, ExecutorConfig};
use tcp_task::images::EXAMPLES_IMAGE;
use tcp_task::{Client, RunningServer, Server, ServerConfig, TaskEvent, TaskSpec};

/// What the stream benches write and read: 256 MiB.
const STREAM_BYTES: u64 = 256 * 1024 * 1024;

/// The label on the `engine_api` bench's containers, to find strays by.
const BENCH_LABEL: &str = "tcp-task-bench";

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let setup = match rt.block_on(Setup::new()) {
        Ok(setup) => setup,
        Err(why) => {
            eprintln!("benches/tasks: skipped: {why}");
            return;
        }
    };
    let mut c = Criterion::default().configure_from_args();
    task_latency(&mut c, &rt, &setup);
    swarm::swarm_benches(&mut c, &rt);
    stream(&mut c, &rt, &setup);
    durable::durable_benches(&mut c, &rt, &setup);
    http_task::http_task_benches(&mut c, &rt, &setup);
    rt.block_on(setup.server.shutdown());
    // The warm pool's benchmarks, after the cold path's, so that all of them
    // share this run's noise.
    warm::warm_benches(&mut c);
    c.final_summary();
}

/// What every bench shares: the engine, the image, a tcp-task server on
/// loopback and one client connection to it.
struct Setup {
    docker: Docker,
    server: RunningServer,
    client: Client,
    /// Whether the `docker` command works; without it the CLI peers skip.
    cli: bool,
}

impl Setup {
    async fn new() -> Result<Setup, String> {
        let docker = engine_with_examples().await?;
        let executor = DockerExecutor::new(docker.clone(), executor_config());
        let server = Server::new(ServerConfig::default(), executor)
            .spawn("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot start a server on loopback: {e}"))?;
        let client = Client::connect(server.local_addr())
            .await
            .map_err(|e| format!("cannot connect to the bench's own server: {e}"))?;
        let cli = Command::new("docker")
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if !cli {
            eprintln!(
                "benches/tasks: the `docker` command does not work; skipping the docker_cli peers"
            );
        }
        Ok(Setup {
            docker,
            server,
            client,
            cli,
        })
    }
}

/// The defaults, except that the output limit lets the stream task's
/// 256 MiB through, and no warm pool: repeated requests for one image would
/// otherwise warm one up on demand, and this is the cold path's measure.
fn executor_config() -> ExecutorConfig {
    let mut config = ExecutorConfig {
        output_limit_bytes: 2 * STREAM_BYTES,
        ..ExecutorConfig::default()
    };
    config.warm.enabled = false;
    config
}

/// The engine, with the examples image built on it: what every container
/// benchmark starts from.
pub(crate) async fn engine_with_examples() -> Result<Docker, String> {
    let docker = tcp_task::docker::connect_docker()
        .await
        .map_err(|e| format!("no Docker engine: {e}"))?;
    tcp_task::images::ensure_examples_image(&docker)
        .await
        .map_err(|e| format!("no examples image: {e}"))?;
    Ok(docker)
}

/// A group of benchmarks that each run a container: few samples, each
/// timed once (flat), a short warm-up, and `measurement` to spend.
pub(crate) fn container_group<'a>(
    c: &'a mut Criterion,
    name: &str,
    measurement: Duration,
) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(measurement);
    group
}

fn task_latency(c: &mut Criterion, rt: &Runtime, setup: &Setup) {
    let mut group = container_group(c, "task_latency", Duration::from_secs(12));
    if setup.cli {
        group.bench_function("docker_cli", |b| {
            b.to_async(rt).iter(docker_cli_true);
        });
    }
    let body = engine_api_body();
    group.bench_function("engine_api", |b| {
        b.to_async(rt)
            .iter(|| engine_api_true(&setup.docker, body.clone()));
    });
    group.bench_function("tcp_task_cold", |b| {
        b.to_async(rt).iter(|| tcp_task_true(&setup.client));
    });
    group.finish();
}

fn stream(c: &mut Criterion, rt: &Runtime, setup: &Setup) {
    let mut group = container_group(c, "stream", Duration::from_secs(15));
    group.throughput(Throughput::Bytes(STREAM_BYTES));
    if setup.cli {
        group.bench_function("docker_cli", |b| {
            b.to_async(rt).iter(docker_cli_zeros);
        });
    }
    group.bench_function("tcp_task", |b| {
        b.to_async(rt).iter(|| tcp_task_zeros(&setup.client));
    });
    group.finish();
}

async fn docker_cli_true() {
    let out = Command::new("docker")
        .args(["run", "--rm", "--network", "none", EXAMPLES_IMAGE, "true"])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("docker run starts");
    assert!(
        out.status.success(),
        "docker run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The container the executor would create for `true` with the default
/// policy: the same hardening `HostConfig` (no network, no capabilities,
/// no-new-privileges, pids, memory = swap, CPU quota, docker-init, bounded
/// `local` log, uncompressed), attached streams, no TTY. Written out here because the
/// executor's is private; `containers_get_the_hardening_defaults` in
/// tests/executor_limits.rs pins the same values.
fn engine_api_body() -> ContainerCreateBody {
    let config = executor_config();
    let policy = &Policy::default();
    let memory = policy.default_memory_bytes as i64;
    let log_options = HashMap::from([
        ("max-size".to_owned(), config.log_max_size.clone()),
        ("max-file".to_owned(), config.log_max_file.to_string()),
        ("compress".to_owned(), "false".to_owned()),
    ]);
    ContainerCreateBody {
        image: Some(EXAMPLES_IMAGE.to_owned()),
        cmd: Some(vec!["true".to_owned()]),
        labels: Some(HashMap::from([(
            BENCH_LABEL.to_owned(),
            "engine_api".to_owned(),
        )])),
        tty: Some(false),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(HostConfig {
            network_mode: Some("none".to_owned()),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            pids_limit: Some(policy.default_pids_limit),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some(policy.default_nano_cpus as i64),
            init: Some(true),
            log_config: Some(HostConfigLogConfig {
                typ: Some("local".to_owned()),
                config: Some(log_options),
            }),
            readonly_rootfs: Some(false),
            auto_remove: Some(false),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    }
}

async fn engine_api_true(docker: &Docker, body: ContainerCreateBody) {
    let created = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .expect("create");
    let id = created.id;
    docker
        .start_container(&id, None::<StartContainerOptions>)
        .await
        .expect("start");
    let options = WaitContainerOptions {
        condition: "not-running".to_owned(),
    };
    let status = docker
        .wait_container(&id, Some(options))
        .next()
        .await
        .expect("a wait answer")
        .expect("exit status 0");
    assert_eq!(status.status_code, 0);
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..RemoveContainerOptions::default()
    };
    docker
        .remove_container(&id, Some(options))
        .await
        .expect("remove");
}

async fn tcp_task_true(client: &Client) {
    let outcome = client
        .run(TaskSpec::image(EXAMPLES_IMAGE, ["true"]))
        .await
        .expect("submit")
        .wait()
        .await
        .expect("the task runs");
    assert!(outcome.success(), "{outcome:?}");
}

async fn docker_cli_zeros() {
    let mut child = Command::new("docker")
        .args(["run", "--rm", "--network", "none", EXAMPLES_IMAGE, "zeros"])
        .arg(STREAM_BYTES.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("docker run starts");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = stdout.read(&mut buf).await.expect("read docker's stdout");
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let status = child.wait().await.expect("docker run ends");
    assert!(status.success(), "docker run failed: {status}");
    assert_eq!(total, STREAM_BYTES);
}

async fn tcp_task_zeros(client: &Client) {
    let spec = TaskSpec::image(
        EXAMPLES_IMAGE,
        ["zeros".to_owned(), STREAM_BYTES.to_string()],
    );
    let mut handle = client.run(spec).await.expect("submit");
    let mut total = 0u64;
    while let Some(event) = handle.next().await {
        if let TaskEvent::Stdout(chunk) = event {
            total += chunk.len() as u64;
        }
    }
    let outcome = handle.wait().await.expect("the task runs");
    assert!(outcome.success(), "{outcome:?}");
    assert_eq!(total, STREAM_BYTES);
}

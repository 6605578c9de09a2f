//! Bursts (issue 14): [`TASKS`] catalog tasks `sum 1 2 3` submitted at once,
//! Throughput::Elements, each peer in the same run:
//!
//! - `burst/docker_run_parallel`: the same tasks as `docker run --rm
//!   --network none IMAGE sum 1 2 3`, [`CLI_PARALLEL`] at a time;
//! - `burst/tcp_task_single_use`: through a server with the default
//!   configuration, over [`CONNECTIONS`] connections, on a catalog entry
//!   with a fresh container per task (`reuse = 1`);
//! - `burst/tcp_task_reset`: the same on the example catalog's `sum`
//!   (`reset = true`): a warm container serves one task after another,
//!   reset between them.
//!
//! Each tcp-task peer has a server of its own, shut down (its pools
//! drained) after it, so that one peer's containers do not take the
//! other's budget. Each iteration is a whole burst; the pools it grew are
//! there for the next one, as for bursts that come back to back. The goals:
//! `tcp_task_reset` ≥ 20 × `docker_run_parallel` throughput,
//! `tcp_task_single_use` ≥ 1.2 ×.

use criterion::{Criterion, SamplingMode, Throughput};
use futures::StreamExt;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;
use tokio::runtime::Runtime;

use tcp_task::config::examples_catalog;
use tcp_task::executor::{DockerExecutor, ExecutorConfig};
use tcp_task::images::EXAMPLES_IMAGE;
use tcp_task::{Client, RunningServer, Server, ServerConfig, TaskSpec};

/// Tasks in one burst.
const TASKS: usize = 200;
/// Connections the burst is spread over.
const CONNECTIONS: usize = 16;
/// `docker run`s at once.
const CLI_PARALLEL: usize = 8;

pub fn burst_benches(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("burst");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(TASKS as u64));
    if cli_works() {
        group.bench_function("docker_run_parallel", |b| {
            b.to_async(rt).iter(docker_run_burst);
        });
    } else {
        eprintln!("burst/docker_run_parallel skipped: no working `docker` command");
    }
    for (name, entry) in [
        ("tcp_task_single_use", "sum-single"),
        ("tcp_task_reset", "sum"),
    ] {
        let server = match rt.block_on(BurstServer::start()) {
            Ok(server) => server,
            Err(why) => {
                eprintln!("burst/{name} skipped: {why}");
                continue;
            }
        };
        group.bench_function(name, |b| {
            b.to_async(rt).iter(|| server.burst(entry));
        });
        rt.block_on(server.server.shutdown());
    }
    group.finish();
}

fn cli_works() -> bool {
    std::process::Command::new("docker")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn docker_run_burst() {
    futures::stream::iter(0..TASKS)
        .map(|_| docker_run_sum())
        .buffer_unordered(CLI_PARALLEL)
        .collect::<Vec<()>>()
        .await;
}

async fn docker_run_sum() {
    let out = Command::new("docker")
        .args(["run", "--rm", "--network", "none", EXAMPLES_IMAGE])
        .args(["sum", "1", "2", "3"])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("docker run starts");
    assert!(
        out.status.success() && out.stdout == b"6\n",
        "docker run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A server with the default configuration and the example catalog, plus
/// `sum-single` (the same task, a fresh container each time), and
/// [`CONNECTIONS`] clients.
struct BurstServer {
    server: RunningServer,
    clients: Vec<Client>,
}

impl BurstServer {
    async fn start() -> Result<BurstServer, String> {
        let docker = crate::engine_with_examples().await?;
        let executor = DockerExecutor::new(docker, ExecutorConfig::default());
        let mut catalog = examples_catalog();
        let mut single = catalog.entries["sum"].clone();
        single.reuse = 1;
        single.reset = false;
        catalog.entries.insert("sum-single".into(), single);
        let server = Server::new(ServerConfig::default(), executor).with_catalog(catalog);
        server.warm_up();
        let server = server
            .spawn("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot listen: {e}"))?;
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            let client = Client::connect(server.local_addr())
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            clients.push(client);
        }
        Ok(BurstServer { server, clients })
    }

    /// [`TASKS`] tasks of `entry` at once, round robin over the clients.
    async fn burst(&self, entry: &str) {
        let tasks = (0..TASKS).map(|i| sum(&self.clients[i % CONNECTIONS], entry));
        futures::future::join_all(tasks).await;
    }
}

async fn sum(client: &Client, entry: &str) {
    let handle = client
        .run(TaskSpec::named(entry, ["1", "2", "3"]))
        .await
        .expect("the server takes the task");
    let outcome = handle.wait().await.expect("the task ends");
    assert!(outcome.success(), "{entry}: {outcome:?}");
}

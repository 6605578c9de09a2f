//! The warm path's benchmarks, called from `benches/tasks.rs`:
//!
//! - `task_latency/tcp_task_warm`: the task `true` through Client → Server →
//!   DockerExecutor on a single-use warm pool. Each timed task starts on a
//!   settled pool: the refill of the container the previous task used (a
//!   container start, ~0.5 s of dockerd's CPU) runs outside the timed part,
//!   and so does the removal of the used container (the engine lists only
//!   the pools' containers again). So at most `PER_SAMPLE` tasks are timed
//!   per sample, and the sample's time is scaled to the iterations
//!   criterion asked for.
//! - `throughput/warm_reuse`: batches of 32 concurrent `true` tasks on a
//!   catalog entry with `reuse` (32 warm containers, each serving many tasks),
//!   Throughput::Elements.
//! - `task_latency/tcp_task_warm_attach`, `throughput/warm_reuse_attach`:
//!   the same two with `data_plane = "attach"`, the peer of the default
//!   (the agents' own sockets on a local engine): frames through dockerd's
//!   attach relay (docs/WARM.md, "The data plane").
//!
//! - `burst/…`: 200 tasks at once, on a `reset = true` entry, on a
//!   single-use one, and as parallel `docker run`s (benches/warm/burst.rs).
//!
//! With no reachable engine (or no way to build the examples image) both
//! print why and are skipped.
//!
//! [`WarmServer`] and its way of timing a task on a settled pool are shared
//! with `http_task/tcp_task_warm` (benches/http_task/mod.rs).

mod burst;

use criterion::{Criterion, SamplingMode, Throughput};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;
use tcp_task::catalog::Catalog;
use tcp_task::executor::{label_filter, DataPlane, DockerExecutor, ExecutorConfig, WarmConfig};
use tcp_task::images::EXAMPLES_IMAGE;
use tcp_task::{Client, RunningServer, Server, ServerConfig, TaskSpec};

/// Concurrent tasks per batch in `throughput/warm_reuse`.
const CONCURRENT: usize = 32;
/// Single-use containers kept warm for the latency benchmark.
const SINGLE_USE: u32 = 4;
/// Tasks timed per latency sample (each waits for a settled pool first).
const PER_SAMPLE: u64 = 3;

/// A server whose catalog keeps warm pools, a client, and the engine's
/// view of the server's containers.
pub(crate) struct WarmServer {
    pub server: RunningServer,
    pub client: Client,
    docker: Docker,
    instance: String,
    /// The containers the catalog's pools hold when full.
    pooled: u64,
}

pub fn warm_benches(c: &mut Criterion) {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return eprintln!("warm benchmarks skipped: no runtime: {e}"),
    };
    // The default data plane (the agents' sockets, on a local engine),
    // then the attach stream as the peer, in the same run.
    for (plane, suffix) in [(DataPlane::Auto, ""), (DataPlane::Attach, "_attach")] {
        let pooled = u64::from(SINGLE_USE) + CONCURRENT as u64;
        let started = catalog().map(|catalog| WarmServer::start(config(plane), catalog, pooled));
        let setup = match started {
            Ok(start) => match rt.block_on(start) {
                Ok(setup) => setup,
                Err(why) => return eprintln!("warm benchmarks skipped: {why}"),
            },
            Err(why) => return eprintln!("warm benchmarks skipped: {why}"),
        };
        latency(c, &rt, &setup, suffix);
        throughput(c, &rt, &setup, suffix);
        rt.block_on(setup.server.shutdown());
    }
    burst::burst_benches(c, &rt);
}

impl WarmServer {
    /// A server with `catalog`, on loopback, once its pools hold `pooled`
    /// ready containers.
    pub async fn start(
        config: ExecutorConfig,
        catalog: Catalog,
        pooled: u64,
    ) -> Result<WarmServer, String> {
        let docker = crate::engine_with_examples().await?;
        let executor = DockerExecutor::new(docker.clone(), config);
        let instance = executor.instance_id().to_owned();
        executor
            .reap_orphans()
            .await
            .map_err(|e| format!("cannot sweep the engine: {e}"))?;
        let server = Server::new(ServerConfig::default(), executor).with_catalog(catalog);
        server.warm_up();
        let server = server
            .spawn("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot listen: {e}"))?;
        let client = Client::connect(server.local_addr())
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let setup = WarmServer {
            server,
            client,
            docker,
            instance,
            pooled,
        };
        setup.wait_ready().await?;
        Ok(setup)
    }

    /// Times `task` on settled pools, as criterion's `iter_custom` wants:
    /// at most [`PER_SAMPLE`] of the `iters` runs, each after the pools
    /// are full again, the used containers are gone, and the engine has
    /// caught up; the time is scaled to `iters`.
    pub async fn time_settled<F, Fut>(&self, iters: u64, mut task: F) -> Duration
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let timed = iters.min(PER_SAMPLE);
        let mut total = Duration::ZERO;
        for _ in 0..timed {
            self.wait_ready().await.expect("the pools refill");
            self.wait_quiet().await.expect("removals end");
            settle_engine().await;
            let start = Instant::now();
            task().await;
            total += start.elapsed();
        }
        total.mul_f64(iters as f64 / timed as f64)
    }

    /// Waits until the pools hold all their ready containers.
    async fn wait_ready(&self) -> Result<(), String> {
        let n = self.pooled;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = self.client.status().await.map_err(|e| e.to_string())?;
            let warm: u64 = status.pools.iter().map(|p| p.warm).sum();
            if warm >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the pools never filled: {:?}", status.pools));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the engine holds exactly the pools' containers: no used
    /// container is still being removed.
    async fn wait_quiet(&self) -> Result<(), String> {
        let n = self.pooled as usize;
        let options = ListContainersOptions {
            all: true,
            filters: Some(label_filter(Some(&self.instance))),
            ..ListContainersOptions::default()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let listed = self
                .docker
                .list_containers(Some(options.clone()))
                .await
                .map_err(|e| e.to_string())?;
            if listed.len() <= n {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("used containers were never removed".into())
    }

    async fn run(&self, name: &str) {
        let handle = self
            .client
            .run(TaskSpec::named(name, Vec::<String>::new()))
            .await
            .expect("the server takes the task");
        let outcome = handle.wait().await.expect("the task ends");
        assert!(outcome.success(), "{name}: {outcome:?}");
    }
}

fn config(data_plane: DataPlane) -> ExecutorConfig {
    ExecutorConfig {
        max_concurrent: 2 * CONCURRENT,
        warm: WarmConfig {
            data_plane,
            max_containers: 2 * CONCURRENT as u32,
            max_memory_bytes: 16 << 30,
            // Only the catalog's pools: `true` as an image task would
            // otherwise warm up a third pool.
            demand_threshold: 0,
            ..WarmConfig::default()
        },
        ..ExecutorConfig::default()
    }
}

fn catalog() -> Result<Catalog, String> {
    Catalog::from_toml(&format!(
        r#"
        [true-warm]
        image = "{EXAMPLES_IMAGE}"
        command = ["true"]
        memory_bytes = 67108864
        warm = {SINGLE_USE}

        [true-reuse]
        image = "{EXAMPLES_IMAGE}"
        command = ["true"]
        memory_bytes = 67108864
        warm = {CONCURRENT}
        reuse = 1000000
        "#
    ))
    .map_err(|e| format!("bad benchmark catalog: {e}"))
}

fn latency(c: &mut Criterion, rt: &Runtime, setup: &WarmServer, suffix: &str) {
    let mut group = c.benchmark_group("task_latency");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(1));
    group.bench_function(format!("tcp_task_warm{suffix}"), |b| {
        b.iter_custom(|iters| rt.block_on(setup.time_settled(iters, || setup.run("true-warm"))))
    });
    group.finish();
}

/// The refill's create/start has returned once the pool counts it ready,
/// but dockerd and containerd may still be busy with it for a moment.
async fn settle_engine() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

fn throughput(c: &mut Criterion, rt: &Runtime, setup: &WarmServer, suffix: &str) {
    let mut group = c.benchmark_group("throughput");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(CONCURRENT as u64))
        .measurement_time(Duration::from_secs(5));
    group.bench_function(format!("warm_reuse{suffix}"), |b| {
        b.to_async(rt).iter(|| async {
            let batch = (0..CONCURRENT).map(|_| setup.run("true-reuse"));
            futures::future::join_all(batch).await;
        })
    });
    group.finish();
}

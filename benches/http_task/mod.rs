//! HTTP tasks' benchmarks (issue 12), called from `benches/tasks.rs`: the
//! example HTTP task (`POST /task/sum` with `{"params": [1, 2, 3]}` to the
//! `tcp-task-http-examples` image's own server, answer `{"result": 6}`)
//! through tcp-task, and what it costs without tcp-task, in one group:
//!
//! - `http_task/tcp_task_warm`: the task as a catalog entry with a warm
//!   pool, answered by a container whose server already listens. Timed on
//!   a settled pool, as `task_latency/tcp_task_warm` is (benches/warm).
//! - `http_task/tcp_task_cold`: the same task as `TaskSpec::http` on the
//!   cold server of benches/tasks.rs (no warm pool): a container launched
//!   for it, the wait for its port, the call through the relay.
//! - `http_task/docker_cli`: `docker run --rm --network none IMAGE true`,
//!   `task_latency/docker_cli`'s peer, measured again here so that all the
//!   ratios come from one stretch of time.
//! - `http_task/image_listening`: the image's start-up to listening, as a
//!   user would see it: `docker run -d --network NET` of the HTTP image,
//!   then TCP connects from the bench to the container's address on NET
//!   until one is accepted. NET is an internal bridge network the bench
//!   creates and removes; nothing is published. The removal is not timed.
//! - `http_task/original`: what the original task service did for a call,
//!   without its fixed 20 s wait: create and start the container on NET
//!   through the Engine API, wait until its port accepts, POST the task,
//!   read the answer. The removal (after the answer, as tcp-task's) is not
//!   timed.
//!
//! The goals (issue 12): `tcp_task_warm` ≤ 0.05 × `docker_cli`;
//! `tcp_task_cold` ≤ 1.2 × (`docker_cli` + `image_listening`).
//! `image_listening` includes dockerd's create and start of the container,
//! which `docker_cli` also counts: `original` is the stricter peer of
//! `tcp_task_cold`.
//!
//! Alone: `cargo bench --bench tasks -- http_task` (README.md has the
//! figures). The peers' containers carry the bench's label, so a stray is easy to
//! find; a panic on the way leaves at most one, and the network.

use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, RemoveContainerOptions, StartContainerOptions,
};
use bollard::Docker;
use criterion::Criterion;
use serde_json::Value;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::runtime::Runtime;

use tcp_task::catalog::Catalog;
use tcp_task::executor::{ExecutorConfig, WarmConfig};
use tcp_task::images::{HTTP_EXAMPLES_IMAGE, HTTP_EXAMPLES_PORT};
use tcp_task::protocol::Task;
use tcp_task::{Client, TaskEvent, TaskSpec};

use super::warm::WarmServer;
use super::{docker_cli_true, Setup, BENCH_LABEL};

/// The task's parameters, and its answer's `result`.
const PARAMS: &str = "[1, 2, 3]";
const RESULT: i64 = 6;
/// Warm containers kept for `tcp_task_warm`.
const WARM: u32 = 2;
/// The peers' network: internal (no way out), created and removed here.
const NETWORK: &str = "tcp-task-bench-http";
/// How long a peer's container may take to listen before the bench fails.
const LISTEN_DEADLINE: Duration = Duration::from_secs(30);
/// Between two connection attempts to a port not listening yet.
const POLL_EVERY: Duration = Duration::from_millis(1);

pub fn http_task_benches(c: &mut Criterion, rt: &Runtime, setup: &Setup) {
    let warm = match rt.block_on(warm_server()) {
        Ok(warm) => warm,
        Err(why) => return eprintln!("http_task benchmarks skipped: {why}"),
    };
    let network = match rt.block_on(create_network(&setup.docker)) {
        Ok(()) => true,
        Err(why) => {
            eprintln!("http_task: no network for the peers ({why}); skipping image_listening and original");
            false
        }
    };
    let mut group = crate::container_group(c, "http_task", Duration::from_secs(12));
    if setup.cli {
        group.bench_function("docker_cli", |b| {
            b.to_async(rt).iter(docker_cli_true);
        });
    }
    if setup.cli && network {
        group.bench_function("image_listening", |b| {
            b.iter_custom(|iters| rt.block_on(image_listening(&setup.docker, iters)));
        });
    }
    if network {
        group.bench_function("original", |b| {
            b.iter_custom(|iters| rt.block_on(original(&setup.docker, iters)));
        });
    }
    group.bench_function("tcp_task_cold", |b| {
        b.to_async(rt).iter(|| cold_call(&setup.client));
    });
    group.bench_function("tcp_task_warm", |b| {
        b.iter_custom(|iters| rt.block_on(warm.time_settled(iters, || warm_call(&warm.client))));
    });
    group.finish();
    rt.block_on(warm.server.shutdown());
    if network {
        if let Err(e) = rt.block_on(setup.docker.remove_network(NETWORK)) {
            eprintln!("http_task: could not remove the network {NETWORK}: {e}");
        }
    }
}

/// A server whose catalog names the HTTP task with a warm pool.
async fn warm_server() -> Result<WarmServer, String> {
    let catalog = Catalog::from_toml(&format!(
        r#"
        [sum-warm]
        image = "{HTTP_EXAMPLES_IMAGE}"
        port = {HTTP_EXAMPLES_PORT}
        task = "sum"
        warm = {WARM}
        "#
    ))
    .map_err(|e| format!("bad benchmark catalog: {e}"))?;
    let config = ExecutorConfig {
        warm: WarmConfig {
            // Only the catalog's pool.
            demand_threshold: 0,
            ..WarmConfig::default()
        },
        ..ExecutorConfig::default()
    };
    WarmServer::start(config, catalog, u64::from(WARM)).await
}

async fn warm_call(client: &Client) {
    let spec = TaskSpec {
        task: Task::Named {
            name: "sum-warm".to_owned(),
            args: Vec::new(),
            params: Some(PARAMS.to_owned()),
        },
        ..TaskSpec::default()
    };
    check_answer(call(client, spec).await);
}

async fn cold_call(client: &Client) {
    let spec = TaskSpec::http(
        HTTP_EXAMPLES_IMAGE,
        HTTP_EXAMPLES_PORT,
        "sum",
        Some(PARAMS.to_owned()),
    );
    check_answer(call(client, spec).await);
}

/// Runs an HTTP task; its answer's body (the task's stdout).
async fn call(client: &Client, spec: TaskSpec) -> Vec<u8> {
    let mut handle = client.run(spec).await.expect("the server takes the task");
    let mut body = Vec::new();
    while let Some(event) = handle.next().await {
        if let TaskEvent::Stdout(chunk) = event {
            body.extend_from_slice(&chunk);
        }
    }
    let outcome = handle.wait().await.expect("the task answers");
    assert!(outcome.success(), "{outcome:?}");
    body
}

fn check_answer(body: Vec<u8>) {
    let answer: Value = serde_json::from_slice(&body).expect("the answer is JSON");
    assert_eq!(answer["result"], RESULT, "{answer}");
}

async fn create_network(docker: &Docker) -> Result<(), String> {
    // A network left by an interrupted run is reused.
    if docker
        .inspect_network(
            NETWORK,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .is_ok()
    {
        return Ok(());
    }
    let request = NetworkCreateRequest {
        name: NETWORK.to_owned(),
        driver: Some("bridge".to_owned()),
        internal: Some(true),
        labels: Some(HashMap::from([(
            BENCH_LABEL.to_owned(),
            "http_task".to_owned(),
        )])),
        ..NetworkCreateRequest::default()
    };
    docker
        .create_network(request)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// `docker run -d` of the HTTP image on the bench's network until its
/// port accepts, `iters` times; the removals are not timed.
async fn image_listening(docker: &Docker, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let out = Command::new("docker")
            .args(["run", "-d", "--network", NETWORK, "--label"])
            .arg(format!("{BENCH_LABEL}=image_listening"))
            .arg(HTTP_EXAMPLES_IMAGE)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("docker run starts");
        assert!(
            out.status.success(),
            "docker run -d failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        wait_listening(docker, &id).await;
        total += start.elapsed();
        remove(docker, &id).await;
    }
    total
}

/// The original service's call, `iters` times; the removals are not timed.
async fn original(docker: &Docker, iters: u64) -> Duration {
    let body = ContainerCreateBody {
        image: Some(HTTP_EXAMPLES_IMAGE.to_owned()),
        labels: Some(HashMap::from([(
            BENCH_LABEL.to_owned(),
            "original".to_owned(),
        )])),
        host_config: Some(HostConfig {
            network_mode: Some(NETWORK.to_owned()),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    };
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let id = docker
            .create_container(None::<CreateContainerOptions>, body.clone())
            .await
            .expect("create")
            .id;
        docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
            .expect("start");
        let addr = wait_listening(docker, &id).await;
        let answer = post_task(addr).await;
        total += start.elapsed();
        check_answer(answer);
        remove(docker, &id).await;
    }
    total
}

/// Connects to the container's port on the bench's network until a
/// connection is accepted; its address.
async fn wait_listening(docker: &Docker, id: &str) -> SocketAddr {
    let inspected = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .expect("inspect");
    let ip: IpAddr = inspected
        .network_settings
        .and_then(|s| s.networks)
        .and_then(|mut n| n.remove(NETWORK))
        .and_then(|e| e.ip_address)
        .and_then(|ip| ip.parse().ok())
        .expect("the container has an address on the bench's network");
    let addr = SocketAddr::new(ip, HTTP_EXAMPLES_PORT);
    let deadline = Instant::now() + LISTEN_DEADLINE;
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{id} never listened on {addr}");
        tokio::time::sleep(POLL_EVERY).await;
    }
    addr
}

/// `POST /task/sum` with the parameters, as the original service sent it;
/// the answer's body.
async fn post_task(addr: SocketAddr) -> Vec<u8> {
    let body = format!("{{\"params\": {PARAMS}}}");
    let request = format!(
        "POST /task/sum HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .expect("read the answer");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let (_, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    body.as_bytes().to_vec()
}

async fn remove(docker: &Docker, id: &str) {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..RemoveContainerOptions::default()
    };
    docker
        .remove_container(id, Some(options))
        .await
        .expect("remove");
}

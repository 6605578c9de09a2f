//! `tcp-task demo`: the whole path on this machine, in one command.
//!
//! Builds the examples image if it is missing, starts a server on a free
//! loopback port, runs catalog tasks and generic tasks through the client
//! library, and prints each result with its latency as the client saw it.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use std::time::Instant;
use tcp_task::config::Config;
use tcp_task::docker::connect_docker;
use tcp_task::executor::DockerExecutor;
use tcp_task::images::{ensure_examples_image, EXAMPLES_IMAGE};
use tcp_task::{Client, Server, TaskSpec};

/// A 16×16 colour PNG for the grayscale task.
const DEMO_PNG: &[u8] = include_bytes!("demo.png");

pub async fn demo() -> Result<()> {
    let docker = connect_docker().await?;
    println!("Checking the examples image {EXAMPLES_IMAGE} …");
    if ensure_examples_image(&docker).await? {
        println!("  built it (FROM scratch, one static binary)");
    }
    let config = Config::default();
    // One warm container per catalog task, so that they start in
    // milliseconds; the generic tasks below take the cold path.
    let mut catalog = config.catalog();
    for entry in catalog.entries.values_mut() {
        entry.warm = 1;
    }
    let warm = catalog.len() as u64;
    let executor = DockerExecutor::new(docker, config.executor.runtime.clone());
    let server = Server::new(config.server, executor)
        .with_policy(config.executor.policy)
        .with_catalog(catalog);
    server.warm_up();
    let server = server.spawn("127.0.0.1:0").await?;
    println!("Server listening on {}", server.local_addr());
    let client = Client::connect(server.local_addr()).await?;
    wait_for_warm_pools(&client, warm).await?;

    let result = run_all(&client).await;
    drop(client);
    server.shutdown().await;
    result
}

async fn run_all(client: &Client) -> Result<()> {
    println!("{:<44} {:>9}  RESULT", "TASK", "LATENCY");
    let catalog_tasks: [&[&str]; 7] = [
        &["sum", "1", "2", "3", "4.5"],
        &["multiply", "6", "7"],
        &["random", "1", "6"],
        &["isprime", "2147483647"],
        &["primes", "--count", "1000000"],
        &["pi", "60"],
        &["isprime", "91"],
    ];
    for task in catalog_tasks {
        let spec = TaskSpec::named(task[0], task[1..].iter().copied());
        show(client, &format!("task {}", task.join(" ")), spec, None).await?;
    }
    let mut params = TaskSpec::named("sum", Vec::<String>::new());
    if let tcp_task::protocol::Task::Named { params: p, .. } = &mut params.task {
        *p = Some(r#"{"numbers": [10, 20, 30]}"#.into());
    }
    show(
        client,
        r#"task sum --params {"numbers":[10,20,30]}"#,
        params,
        None,
    )
    .await?;
    let mut grayscale = TaskSpec::named("grayscale", Vec::<String>::new());
    grayscale.stdin = true;
    show(
        client,
        "task grayscale < 16x16.png",
        grayscale,
        Some(DEMO_PNG),
    )
    .await?;

    let image = |command: &[&str]| TaskSpec::image(EXAMPLES_IMAGE, command.iter().copied());
    show(
        client,
        "run echo hello from a container",
        image(&["echo", "hello", "from", "a", "container"]),
        None,
    )
    .await?;
    let mut env = image(&["env"]);
    env.env = vec![("GREETING".into(), "hi".into())];
    show(client, "run -e GREETING=hi env", env, None).await?;
    show(client, "run exit 42", image(&["exit", "42"]), None).await?;

    println!("\nTen tasks at once on the same connection:");
    let started = Instant::now();
    let runs = (0..10).map(|i| {
        let spec = TaskSpec::named("sum", [i.to_string(), "1".to_string()]);
        async move { client.run(spec).await?.output().await }
    });
    for output in futures::future::join_all(runs).await {
        output.context("a concurrent task failed")?;
    }
    println!(
        "  all 10 done in {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );

    let status = client.status().await?;
    println!(
        "\nServer status: {} finished, {} failed, engine {} (API {})",
        status.finished,
        status.failed,
        status.engine.version.unwrap_or_default(),
        status.engine.api_version.unwrap_or_default()
    );
    for pool in status.pools {
        println!(
            "Warm pool {}: {} hits, {} misses (a miss ran cold)",
            pool.key, pool.hits, pool.misses
        );
    }
    Ok(())
}

/// Waits (up to a minute) until `count` warm containers are ready.
async fn wait_for_warm_pools(client: &Client, count: u64) -> Result<()> {
    let started = Instant::now();
    loop {
        let status = client.status().await?;
        if status.pools.iter().map(|p| p.warm).sum::<u64>() >= count {
            println!(
                "Warm containers ready after {:.1} s\n",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed().as_secs() > 60 {
            println!("Warm containers not ready after a minute; the tasks run cold\n");
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Runs one task and prints a line: name, latency, and its stdout (or how it
/// ended).
async fn show(
    client: &Client,
    name: &str,
    spec: TaskSpec,
    stdin: Option<&'static [u8]>,
) -> Result<()> {
    let started = Instant::now();
    let handle = client.run(spec).await?;
    if let Some(data) = stdin {
        let writer = handle.stdin();
        writer.write(Bytes::from_static(data)).await?;
        writer.close().await?;
    }
    let output = handle
        .output()
        .await
        .with_context(|| format!("`{name}` failed"))?;
    let latency = started.elapsed();
    let result = if name.contains("grayscale") {
        if !output.stdout.starts_with(b"\x89PNG") {
            bail!("grayscale did not return a PNG");
        }
        format!("a {}-byte grayscale PNG", output.stdout.len())
    } else {
        let text = String::from_utf8_lossy(&output.stdout);
        let mut lines: Vec<&str> = text.lines().collect();
        if lines.len() > 3 {
            lines.truncate(3);
            lines.push("…");
        }
        lines.join(" | ")
    };
    let ending = if output.outcome.success() {
        String::new()
    } else {
        format!("  (exit status {})", output.outcome.exit_status())
    };
    println!(
        "{name:<44} {:>7.0}ms  {result}{ending}",
        latency.as_secs_f64() * 1000.0
    );
    Ok(())
}

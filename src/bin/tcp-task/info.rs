//! `tcp-task tasks` and `tcp-task status`: what the server offers and how it
//! is doing.

use anyhow::Result;
use std::time::Duration;

use crate::args::{ConnectionArgs, JsonArgs};
use crate::run::connect;

pub async fn tasks(connection: &ConnectionArgs, args: JsonArgs) -> Result<()> {
    let entries = connect(connection).await?.catalog().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("The server has no pre-compiled tasks (its config has no [catalog] entries).");
        return Ok(());
    }
    println!(
        "{:<12} {:<28} {:<10} {:<6} {:<8} DESCRIPTION",
        "NAME", "IMAGE", "MEMORY", "CPUS", "TIMEOUT"
    );
    for entry in entries {
        let memory = entry
            .memory_bytes
            .map(|m| format!("{}m", m >> 20))
            .unwrap_or("-".into());
        let cpus = entry
            .nano_cpus
            .map(|c| format!("{}", c as f64 / 1e9))
            .unwrap_or("-".into());
        let timeout = entry
            .timeout_ms
            .map(|t| format!("{:?}", Duration::from_millis(t)))
            .unwrap_or("-".into());
        println!(
            "{:<12} {:<28} {:<10} {:<6} {:<8} {}",
            entry.name, entry.image, memory, cpus, timeout, entry.description
        );
    }
    Ok(())
}

pub async fn status(connection: &ConnectionArgs, args: JsonArgs) -> Result<()> {
    let status = connect(connection).await?.status().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let engine = if status.engine.reachable {
        format!(
            "reachable, version {} (API {})",
            status.engine.version.as_deref().unwrap_or("?"),
            status.engine.api_version.as_deref().unwrap_or("?")
        )
    } else {
        format!(
            "UNREACHABLE: {}",
            status.engine.error.as_deref().unwrap_or("unknown error")
        )
    };
    println!(
        "server:      {} (protocol {})",
        status.server, status.protocol_version
    );
    println!(
        "uptime:      {:?}",
        Duration::from_secs(status.uptime_ms / 1000)
    );
    println!("engine:      {engine}");
    println!("connections: {}", status.connections);
    println!(
        "tasks:       {} running, {} queued, {} finished, {} failed",
        status.running, status.queued, status.finished, status.failed
    );
    println!("catalog:     {} pre-compiled tasks", status.catalog_size);
    if !status.pools.is_empty() {
        println!("warm pools:");
        println!(
            "  {:<40} {:>5} {:>6} {:>8} {:>8}",
            "KEY", "WARM", "IN USE", "HITS", "MISSES"
        );
        for pool in &status.pools {
            println!(
                "  {:<40} {:>5} {:>6} {:>8} {:>8}",
                pool.key, pool.warm, pool.in_use, pool.hits, pool.misses
            );
        }
    }
    Ok(())
}

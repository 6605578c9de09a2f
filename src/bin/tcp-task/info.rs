//! `tcp-task tasks` and `tcp-task status`: what the server offers and how it
//! is doing.

use anyhow::Result;
use std::time::Duration;

use crate::args::ConnectionArgs;
use crate::run::connect;

pub async fn tasks(connection: &ConnectionArgs, json: bool) -> Result<()> {
    let entries = connect(connection).await?.catalog().await?;
    if json {
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

pub async fn status(connection: &ConnectionArgs, json: bool) -> Result<()> {
    let status = connect(connection).await?.status().await?;
    if json {
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
    println!("uptime:      {}", human_duration(status.uptime_ms / 1000));
    println!("engine:      {engine}");
    println!("connections: {}", status.connections);
    println!(
        "tasks:       {} running, {} queued, {} finished, {} failed",
        status.running, status.queued, status.finished, status.failed
    );
    println!(
        "kept:        {} ended tasks' results, {} output bytes in their logs (tcp-task ps -a)",
        status.retained, status.retained_bytes
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
    if !status.nodes.is_empty() {
        println!("swarm nodes:");
        println!(
            "  {:<24} {:<8} {:<12} {:<8} {:>5} {:>10} {:>6}",
            "NAME", "ROLE", "STATE", "AVAIL", "CPUS", "MEMORY", "TASKS"
        );
        for node in &status.nodes {
            let role = if node.manager { "manager" } else { "worker" };
            println!(
                "  {:<24} {:<8} {:<12} {:<8} {:>5} {:>6} MiB {:>6}",
                node.name,
                role,
                node.state,
                node.availability,
                node.nano_cpus as f64 / 1e9,
                node.memory_bytes / (1024 * 1024),
                node.tasks
            );
        }
    }
    Ok(())
}

/// `3h 2m 5s`, `12s`: an uptime for people.
fn human_duration(seconds: u64) -> String {
    let (days, hours, minutes, secs) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    let parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")];
    let text: Vec<String> = parts
        .iter()
        .skip_while(|(n, _)| *n == 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if text.is_empty() {
        "0s".to_string()
    } else {
        text.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn uptimes_read_well() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(3725), "1h 2m 5s");
        assert_eq!(human_duration(90_000), "1d 1h 0m 0s");
    }
}

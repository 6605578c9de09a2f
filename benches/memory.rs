//! What a connection and a task cost a real `tcp-task serve` in memory
//! (issue 14): its resident set (`VmRSS` in /proc/PID/status) read before
//! and after opening idle connections, then before and after starting
//! tasks that sleep. Not criterion: memory is not a time. Prints
//!
//! - `memory/idle_connection_bytes`: per connection that finished its
//!   handshake and sends nothing (goal: ≤ 16 KiB);
//! - `memory/idle_after_traffic_bytes`: per connection idle again after
//!   one 64 KiB ping and its pong (what a big frame grew its buffers to
//!   is given back);
//! - `memory/running_task_bytes`: per cold task running in its container,
//!   its output streams attached;
//!
//! and checks that with all those idle connections open, a new client's
//! ping is still answered. `TCP_TASK_BENCH_IDLE` (default 10,000),
//! `TCP_TASK_BENCH_CARRIED` (default 2,000) and `TCP_TASK_BENCH_RUNNING`
//! (default 20) set the counts. Needs a Docker
//! engine for the tasks; the connections alone need none.
//!
//! ```sh
//! cargo bench --bench memory
//! ```

#[path = "../tests/cli_server/mod.rs"]
mod cli_server;

use bytes::Bytes;
use std::time::{Duration, Instant};
use tcp_task::images::EXAMPLES_IMAGE;
use tcp_task::{Client, ProgressEvent, TaskEvent, TaskSpec};

const DEFAULT_IDLE: usize = 10_000;
const DEFAULT_RUNNING: usize = 20;
const DEFAULT_CARRIED: usize = 2_000;
/// The payload of the one ping each of those connections carries: a
/// frame as big as an output chunk.
const BIG_PING: usize = 64 * 1024;

/// Connections first opened and closed, so that the allocator's arenas and
/// the runtime's worker state exist before the baseline is read.
const WARM_UP: usize = 200;

fn main() {
    let idle = count("TCP_TASK_BENCH_IDLE", DEFAULT_IDLE);
    let running = count("TCP_TASK_BENCH_RUNNING", DEFAULT_RUNNING);
    let carried = count("TCP_TASK_BENCH_CARRIED", DEFAULT_CARRIED);
    raise_open_files((idle + carried) as u64 * 2 + 1024);
    let server = cli_server::Server::with_config(
        &[],
        &format!(
            "[server]\nmax_connections = {}\n",
            idle + carried + WARM_UP + 64
        ),
        &format!("max_concurrent = {}\n", running.max(1)),
    );
    let pid = server.child.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");

    rt.block_on(async {
        drop(connect_many(&server.addr, WARM_UP).await);
        tokio::time::sleep(Duration::from_millis(500)).await;

        let before = rss(pid);
        let busy = connect_many(&server.addr, carried).await;
        let big = Bytes::from(vec![0x5A; BIG_PING]);
        for client in &busy {
            client.ping_with(big.clone()).await.expect("a big ping is answered");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss(pid);
        let per_connection = after.saturating_sub(before) / carried as u64;
        println!("memory/idle_after_traffic_bytes: {per_connection} ({carried} connections, each idle after a {BIG_PING}-byte ping and its pong; RSS {before} -> {after} bytes)");
        // Kept open: what they hold stays counted, and memory they freed
        // is not there for the idle ones below to reuse.

        let before = rss(pid);
        let clients = connect_many(&server.addr, idle).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss(pid);
        let per_connection = after.saturating_sub(before) / idle as u64;
        println!("memory/idle_connection_bytes: {per_connection} ({idle} connections, RSS {before} -> {after} bytes)");

        let started = Instant::now();
        let probe = Client::connect(&server.addr).await.expect("a client beside them connects");
        let rtt = tokio::time::timeout(Duration::from_secs(10), probe.ping())
            .await
            .expect("a ping is answered with all of them open")
            .expect("the ping succeeds");
        println!(
            "memory/ping_beside_idle: answered, connect + ping {:?} (ping {rtt:?})",
            started.elapsed()
        );
        drop((clients, busy));
        tokio::time::sleep(Duration::from_secs(1)).await;

        let before = rss(pid);
        let handles = start_sleepers(&probe, running).await;
        let after = rss(pid);
        let per_task = after.saturating_sub(before) / running as u64;
        println!("memory/running_task_bytes: {per_task} ({running} tasks, RSS {before} -> {after} bytes)");
        for handle in &handles {
            let _ = handle.cancel().await;
        }
        for handle in handles {
            let _ = handle.wait().await;
        }
    });
    server.assert_clean();
}

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// The server child inherits this process's limit on open files.
fn raise_open_files(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = wanted.min(limit.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    if limit.rlim_cur < wanted {
        eprintln!(
            "memory: reduced: only {} open files allowed",
            limit.rlim_cur
        );
    }
}

/// The server's resident set, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server runs");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a VmRSS line");
    kib * 1024
}

/// `n` handshaken connections, each a library client that sends nothing.
async fn connect_many(addr: &str, n: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        match Client::connect(addr).await {
            Ok(client) => clients.push(client),
            Err(e) => panic!("connection {i} of {n} failed: {e}"),
        }
    }
    clients
}

/// `n` cold tasks that sleep, each read until its `Started` event.
async fn start_sleepers(client: &Client, n: usize) -> Vec<tcp_task::TaskHandle> {
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let spec = TaskSpec::image(EXAMPLES_IMAGE, ["sleep", "120"]);
        handles.push(client.run(spec).await.expect("the task is submitted"));
    }
    for handle in &mut handles {
        loop {
            match handle.next().await {
                Some(TaskEvent::Progress(ProgressEvent::Started)) => break,
                Some(_) => {}
                None => panic!("a sleeping task ended before it started"),
            }
        }
    }
    handles
}

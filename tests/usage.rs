//! What each task used — CPU time in user and kernel mode, peak memory —
//! against tasks of known usage, on both paths, through the CLI's
//! `--json` (which shows the library's `Outcome::usage`) and the metrics.
//!
//! The known tasks: `spin MS` burns MS ms of user CPU time, counted by its
//! own accounting (so a busy machine stretches its wall time, not its CPU
//! time); `alloc MB` touches MB MiB. Tolerances: the CPU time is at least
//! 95% of MS (the kernel counts in ticks) and at most MS + 300 ms (start-up
//! and the measuring itself); the system time stays under 300 ms; the peak
//! memory is at least MB MiB and at most MB + 24 MiB (the binary, its
//! stacks, the page cache of a fresh container).

mod cli_server;
mod curl;

use cli_server::Server;
use serde_json::Value;
use std::ffi::OsStr;
use std::time::{Duration, Instant};
use tcp_task::images::EXAMPLES_IMAGE;

const MIB: u64 = 1024 * 1024;
const SPIN_MS: u64 = 800;
const ALLOC_MB: u64 = 64;

/// The `exited` line of `--json` output, and its usage.
fn usage_of(out: &cli_server::Out) -> Value {
    assert_eq!(out.code, 0, "{out:?}");
    let lines = out.json_lines();
    let exited = lines.last().expect("a last line");
    assert_eq!(exited["event"], "exited", "{exited}");
    exited["usage"].clone()
}

fn assert_spin(usage: &Value, path: &str) {
    let user = usage["cpu_user_us"]
        .as_u64()
        .unwrap_or_else(|| panic!("{path}: {usage}"));
    let system = usage["cpu_system_us"].as_u64().unwrap();
    let target = SPIN_MS * 1000;
    assert!(
        user >= target * 95 / 100 && user <= target + 300_000,
        "{path}: spin {SPIN_MS} ms reported {user} µs of user time"
    );
    assert!(
        system < 300_000,
        "{path}: {system} µs of system time for a busy loop"
    );
}

fn assert_alloc(usage: &Value, path: &str) {
    let peak = usage["peak_memory_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("{path}: {usage}"));
    assert!(
        (ALLOC_MB * MIB..=(ALLOC_MB + 24) * MIB).contains(&peak),
        "{path}: alloc {ALLOC_MB} MiB reported a peak of {} KiB",
        peak / 1024
    );
}

#[test]
fn cold_tasks_report_their_containers_cpu_and_memory() {
    let server = Server::start();
    let spin = server.run(&[
        "run",
        "--json",
        EXAMPLES_IMAGE,
        "spin",
        &SPIN_MS.to_string(),
    ]);
    assert_spin(&usage_of(&spin), "cold");
    let alloc = server.run(&[
        "run",
        "--json",
        "--memory",
        "256m",
        EXAMPLES_IMAGE,
        "alloc",
        &ALLOC_MB.to_string(),
    ]);
    assert_alloc(&usage_of(&alloc), "cold");
    // The measuring changes nothing the task sees: its output, its exit
    // code, a missing command's 127.
    let out = server.run(&["run", EXAMPLES_IMAGE, "echoerr", "to", "stderr"]);
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (0, "to stderr\n"),
        "{out:?}"
    );
    assert_eq!(server.run(&["run", EXAMPLES_IMAGE, "exit", "7"]).code, 7);
    let missing = server.run(&["run", EXAMPLES_IMAGE, "no-such-program"]);
    assert_eq!(missing.code, 127, "{missing:?}");
    server.assert_clean();
}

#[test]
fn warm_tasks_report_their_process_cpu_and_memory_and_the_metrics_count_them() {
    let catalog = format!(
        "[catalog.spin]\nimage = \"{EXAMPLES_IMAGE}\"\ncommand = [\"spin\"]\nwarm = 1\nmemory_bytes = 268435456\n\
         [catalog.alloc]\nimage = \"{EXAMPLES_IMAGE}\"\ncommand = [\"alloc\"]\nwarm = 1\nmemory_bytes = 268435456\n"
    );
    let args = [OsStr::new("--http"), OsStr::new("127.0.0.1:0")];
    let server = Server::with_config(&args, &catalog, "");
    let metrics_url = format!("http://{}/metrics", server.http.as_deref().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while curl::sample(
        &curl::curl(&[&metrics_url]).body,
        "tcptask_warm_ready_containers",
    ) != Some(2.0)
    {
        assert!(Instant::now() < deadline, "the warm pools never filled");
        std::thread::sleep(Duration::from_millis(100));
    }
    let spin = server.run(&["task", "--json", "spin", &SPIN_MS.to_string()]);
    assert_spin(&usage_of(&spin), "warm");
    let alloc = server.run(&["task", "--json", "alloc", &ALLOC_MB.to_string()]);
    assert_alloc(&usage_of(&alloc), "warm");
    let metrics = curl::curl(&[&metrics_url]).body;
    let warm = r#"tcptask_tasks_total{outcome="exited",path="warm"}"#;
    assert_eq!(
        curl::sample(&metrics, warm),
        Some(2.0),
        "both ran warm:\n{metrics}"
    );
    let user = r#"tcptask_task_cpu_seconds_count{mode="user"}"#;
    assert_eq!(curl::sample(&metrics, user), Some(2.0), "{metrics}");
    let sum = curl::sample(&metrics, r#"tcptask_task_cpu_seconds_sum{mode="user"}"#).unwrap();
    assert!(
        sum >= SPIN_MS as f64 / 1000.0 * 0.95,
        "{sum} s of user CPU in the metrics"
    );
    assert_eq!(
        curl::sample(&metrics, "tcptask_task_peak_memory_bytes_count"),
        Some(2.0)
    );
    server.assert_clean();
}

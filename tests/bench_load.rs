//! `tcp-task bench load` against a real `tcp-task serve` (the harness of
//! tests/cli.rs: a server child process with its own instance id, and no
//! container of it left behind).
//!
//! The default runs are small, to keep the test run short on a shared
//! machine: TCP_TASK_BENCH_TASKS sets the number of tasks of the passing
//! runs (default 48; e.g. 200 or 10000 for a longer run).

mod cli_server;

use cli_server::*;
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};

const IMAGE: &str = tcp_task::images::EXAMPLES_IMAGE;

fn tasks() -> String {
    std::env::var("TCP_TASK_BENCH_TASKS").unwrap_or_else(|_| "48".into())
}

/// The one JSON object a `--json` run prints.
fn report(out: &Out) -> Value {
    out.assert_no_panic();
    let text = out.stdout_text();
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not one JSON object: {e}: {out:?}"))
}

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a count in {report}"))
}

#[test]
fn a_catalog_task_and_an_image_task_complete_once_each_with_the_same_output() {
    let server = Server::start();
    let tasks = tasks();
    let n: u64 = tasks.parse().unwrap();
    let common = [
        "bench",
        "load",
        "--connections",
        "8",
        "--tasks",
        tasks.as_str(),
        "--json",
    ];
    let mut named = common.to_vec();
    named.extend(["--task", "sum", "1", "2", "3"]);
    let mut image = common.to_vec();
    image.extend([IMAGE, "echo", "hello"]);
    for args in [named, image] {
        let out = server.run(&args);
        let report = report(&out);
        eprintln!("{report}");
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(count(&report, "tasks"), n);
        assert_eq!(count(&report, "completed"), n, "{report}");
        for zero in ["lost", "duplicated", "wrong", "stray", "not_submitted"] {
            assert_eq!(count(&report, zero), 0, "{zero}: {report}");
        }
        assert_eq!(report["errors"], serde_json::json!({}), "{report}");
        for field in ["tasks_per_second", "p50_ms", "p90_ms", "p99_ms", "max_ms"] {
            assert!(report[field].as_f64().unwrap() > 0.0, "{field}: {report}");
        }
        assert!(report["p50_ms"].as_f64() <= report["p99_ms"].as_f64());
        // A pipe gets no progress bar.
        assert!(out.stderr.is_empty(), "{out:?}");
    }
    server.assert_clean();
}

#[test]
fn different_outputs_count_as_wrong_and_fail_the_run() {
    let server = Server::start();
    let out = server.run(&[
        "bench",
        "load",
        "--connections",
        "4",
        "--tasks",
        "16",
        "--json",
        "--task",
        "random",
        "1",
        "1000000000",
    ]);
    let report = report(&out);
    eprintln!("{report}");
    assert_eq!(count(&report, "completed"), 16, "{report}");
    assert!(count(&report, "wrong") > 0, "{report}");
    assert_eq!(count(&report, "lost"), 0, "{report}");
    assert_eq!(out.code, 1, "{out:?}");
    server.assert_clean();
}

#[test]
fn a_server_killed_mid_run_loses_tasks_and_fails_the_run() {
    let mut server = Server::start();
    // Long tasks, so that some are surely in flight when the server dies.
    let mut command = server.cli([
        "bench",
        "load",
        "--connections",
        "4",
        "--tasks",
        "40",
        "--json",
        IMAGE,
        "sleep",
        "30",
    ]);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().expect("tcp-task starts");
    let started = Instant::now();
    server.wait_for_running(2);
    // SIGKILL: no graceful drain, the connections simply break.
    let _ = server.child.kill();
    let _ = server.child.wait();
    let out = Out::wait(child, started);
    let report = report(&out);
    eprintln!("{report}");
    assert!(count(&report, "lost") > 0, "{report}");
    assert_eq!(count(&report, "duplicated"), 0, "{report}");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.took < Duration::from_secs(30), "{out:?}");
    // A killed server removes nothing: the test does, by its instance label.
    remove_containers(&server);
}

/// Removes the containers a killed server left behind (they carry its
/// instance label), so the test leaves the engine as it found it.
fn remove_containers(server: &Server) {
    let (runtime, docker) = engine();
    // A create the server asked for just before it died may still land.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for container in server.containers() {
            let id = container.id.unwrap_or_default();
            let options = bollard::query_parameters::RemoveContainerOptions {
                force: true,
                ..Default::default()
            };
            let _ = runtime.block_on(docker.remove_container(&id, Some(options)));
            eprintln!("removed container {id} of the killed server");
        }
        std::thread::sleep(Duration::from_secs(1));
        if server.containers().is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "containers stay behind");
    }
}

//! A real Prometheus (Debian's `prometheus`, started here on loopback with
//! a generated config and a data directory of its own) scrapes a live
//! `tcp-task serve --http`; the test runs tasks and asks Prometheus's own
//! query API whether the counters it scraped equal what was run.

mod cli_server;

use cli_server::Server;
use serde_json::Value;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tcp_task::images::EXAMPLES_IMAGE;

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A Prometheus server; killed (by its PID, through `Child`) on drop.
struct Prometheus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installs Debian's prometheus when it is missing (scripts/test.sh does
/// too), so the test runs rather than skips.
fn ensure_prometheus() {
    if Path::new(PROMETHEUS).exists() {
        return;
    }
    let apt = |args: &[&str]| {
        // Two tests of this file may install at once: the second waits
        // for the package lock instead of failing on it.
        let status = Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .expect("apt-get runs");
        assert!(
            status.success(),
            "apt-get {args:?} failed: install prometheus"
        );
    };
    apt(&["update", "-qq"]);
    apt(&[
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "prometheus",
    ]);
}

impl Prometheus {
    /// Scrapes `target` (HOST:PORT) every second, as job `tcptask`.
    fn start(target: &str) -> Prometheus {
        ensure_prometheus();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: tcptask\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // A free port, then released for Prometheus; a clash is retried.
        for _ in 0..5 {
            let address = format!("127.0.0.1:{}", cli_server::closed_port());
            let mut child = Command::new(PROMETHEUS)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={address}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("prometheus starts");
            if wait_ready(&address, &mut child) {
                return Prometheus {
                    child,
                    address,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("prometheus did not become ready on any of 5 ports");
    }

    /// The value of a PromQL expression that gives one sample, `None`
    /// when it gives none.
    fn query(&self, promql: &str) -> Option<f64> {
        let url = format!("http://{}/api/v1/query", self.address);
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--get", &url, "--data-urlencode"])
            .arg(format!("query={promql}"))
            .output()
            .expect("curl runs");
        let answer: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("Prometheus answered no JSON ({e}): {out:?}"));
        assert_eq!(answer["status"], "success", "{answer}");
        let result = answer["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{promql} gives several series: {answer}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits (up to 60 s: a few scrapes) until `promql` equals `expected`.
    fn wait_for(&self, promql: &str, expected: f64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let value = self.query(promql);
            if value == Some(expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus says {promql} = {value:?}, expected {expected}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn wait_ready(address: &str, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let ready = Command::new("curl")
            .args([
                "-sf",
                "--max-time",
                "2",
                &format!("http://{address}/-/ready"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn prometheus_scrapes_what_the_server_ran() {
    let args = [OsStr::new("--http"), OsStr::new("127.0.0.1:0")];
    // No catalog warm-up: every task is a cold one the test counts.
    let server = Server::with_config(
        &args,
        "[catalog.sum]\nimage = \"tcp-task-examples:0.1.0\"\ncommand = [\"sum\"]\n",
        "",
    );
    let prometheus = Prometheus::start(server.http.as_deref().unwrap());
    prometheus.wait_for(r#"up{job="tcptask"}"#, 1.0);
    let exited = r#"sum(tcptask_tasks_total{job="tcptask",outcome="exited"})"#;
    prometheus.wait_for(exited, 0.0);

    // Tasks that ran: two that exit 0, one that exits 3, one named task.
    for command in [&["echo", "hi"][..], &["true"], &["exit", "3"]] {
        let mut args = vec!["run", EXAMPLES_IMAGE];
        args.extend_from_slice(command);
        let out = server.run(&args);
        assert!(out.code == 0 || out.code == 3, "{out:?}");
    }
    let out = server.run(&["task", "sum", "1", "2"]);
    assert_eq!(out.stdout_text().trim(), "3", "{out:?}");
    // Refused by policy before anything ran, twice.
    for _ in 0..2 {
        let out = server.run(&["run", "--memory", "100g", EXAMPLES_IMAGE, "true"]);
        assert_eq!(out.code, 125, "{out:?}");
    }
    // One that could not run: an image that does not exist.
    let out = server.run(&["run", "tcp-task-no-such-image:0", "true"]);
    assert_eq!(out.code, 125, "{out:?}");

    prometheus.wait_for(exited, 4.0);
    prometheus.wait_for(r#"sum(tcptask_tasks_total{outcome="failed"})"#, 1.0);
    prometheus.wait_for(r#"tcptask_task_errors_total{kind="image_not_found"}"#, 1.0);
    prometheus.wait_for(
        r#"tcptask_requests_refused_total{kind="policy_denied"}"#,
        2.0,
    );
    prometheus.wait_for(r#"sum(tcptask_task_start_latency_seconds_count)"#, 4.0);
    prometheus.wait_for(r#"sum(tcptask_task_duration_seconds_count)"#, 4.0);
    prometheus.wait_for("tcptask_tasks_running", 0.0);
    prometheus.wait_for("tcptask_engine_up", 1.0);
    // Six CLI runs, one connection each, all closed by now.
    prometheus.wait_for(r#"tcptask_connections_open{listener="tcp"}"#, 0.0);
    let frames = prometheus
        .query("tcptask_frames_received_total")
        .unwrap_or(0.0);
    assert!(frames >= 7.0, "at least a Submit per run: {frames}");
    server.assert_clean();
}

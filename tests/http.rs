//! The HTTP listener of a real `tcp-task serve --http`, driven with curl
//! and with raw sockets: health, readiness, the original service's
//! `/api/status`, the metrics text, tokens, TLS, every bound the listener
//! keeps, and log lines that carry spans and never a token.

mod cli_server;

use cli_server::Server;
use serde_json::Value;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// A server with an HTTP listener on a free loopback port, `[http]`
/// settings `http_toml`, and `args` added to `serve`.
fn start(args: &[&str], http_toml: &str) -> Server {
    let mut all: Vec<&OsStr> = vec![OsStr::new("--http"), OsStr::new("127.0.0.1:0")];
    all.extend(args.iter().map(OsStr::new));
    Server::with_config(&all, &format!("[http]\n{http_toml}\n"), "")
}

fn url(server: &Server, path: &str) -> String {
    format!(
        "http://{}{path}",
        server.http.as_deref().expect("an HTTP address")
    )
}

/// What curl got: the status, the headers (lower-cased names) and the body.
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `curl -sS -i ARGS…`, split into status, headers and body.
fn curl(args: &[&str]) -> Answer {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl runs (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or_else(|| {
        panic!(
            "curl {args:?} got no HTTP answer: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    Answer {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// One sample's value in a metrics text, `None` when the series is absent.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

#[test]
fn health_readiness_status_and_metrics_answer() {
    let server = start(&[], "");
    let health = curl(&[&url(&server, "/healthz")]);
    assert_eq!(
        (health.status, health.json()["status"].as_str()),
        (200, Some("alive"))
    );

    let ready = curl(&[&url(&server, "/readyz")]);
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json()["status"], "ready");

    // The original service's shape: time, service, status "OK", message.
    let status = curl(&[&url(&server, "/api/status")]);
    assert_eq!(status.status, 200, "{}", status.body);
    assert!(status.headers.contains("content-type: application/json"));
    let body = status.json();
    assert_eq!(body["status"], "OK");
    assert_eq!(body["service"], "tcp-task");
    let message = body["message"].as_str().expect("a message");
    assert!(message.contains("engine"), "{message}");
    let time = body["time"].as_str().expect("a time");
    assert!(
        time.len() == 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "RFC 3339 UTC: {time}"
    );

    // A task over the binary protocol shows in the metrics.
    let out = server.run(&["run", tcp_task::images::EXAMPLES_IMAGE, "echo", "hi"]);
    assert_eq!(out.code, 0, "{out:?}");
    let metrics = curl(&[&url(&server, "/metrics")]);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.headers.contains("application/openmetrics-text"),
        "{}",
        metrics.headers
    );
    assert!(
        metrics.body.ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF"
    );
    let text = &metrics.body;
    let exited = r#"tcptask_tasks_total{outcome="exited",path="cold"}"#;
    assert_eq!(sample(text, exited), Some(1.0), "{text}");
    assert_eq!(sample(text, "tcptask_engine_up"), Some(1.0));
    assert!(sample(text, "tcptask_frames_received_total").unwrap() >= 1.0);
    assert!(sample(text, "tcptask_sent_bytes_total").unwrap() > 0.0);
    let count = r#"tcptask_task_start_latency_seconds_count{path="cold"}"#;
    assert_eq!(sample(text, count), Some(1.0), "{text}");
    // The HTTP requests so far, by endpoint and status.
    let healthz = r#"tcptask_http_requests_total{endpoint="/healthz",code="200"}"#;
    assert_eq!(sample(text, healthz), Some(1.0), "{text}");

    let missing = curl(&[&url(&server, "/nope")]);
    assert_eq!(missing.status, 404);
    assert!(missing.json()["message"]
        .as_str()
        .unwrap()
        .contains("/api/status"));
    let wrong = curl(&["-X", "DELETE", &url(&server, "/metrics")]);
    assert_eq!(wrong.status, 405);
    assert!(wrong.headers.contains("allow: get"), "{}", wrong.headers);
    server.assert_clean();
}

#[test]
fn tokens_guard_the_api_not_the_probes_and_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let token = "s3cret-token-that-must-never-be-logged";
    let file = dir.path().join("tokens");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let token_file = file.to_str().unwrap();
    let server = start(
        &["--token-file", token_file, "--log-format", "json", "-vv"],
        "",
    );
    let status = url(&server, "/api/status");

    let refused = curl(&[&status]);
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.headers.contains("www-authenticate: bearer"));
    assert_eq!(refused.json()["kind"], "unauthorized");
    assert!(refused.json()["message"]
        .as_str()
        .unwrap()
        .contains("Authorization: Bearer"));
    let wrong = curl(&["-H", "Authorization: Bearer not-it", &status]);
    assert_eq!(wrong.status, 401);
    let bearer = format!("Authorization: Bearer {token}");
    let allowed = curl(&["-H", &bearer, &status]);
    assert_eq!(allowed.status, 200, "{}", allowed.body);

    // The probes and the metrics need no token.
    assert_eq!(curl(&[&url(&server, "/healthz")]).status, 200);
    assert_eq!(curl(&[&url(&server, "/readyz")]).status, 200);
    let metrics = curl(&[&url(&server, "/metrics")]).body;
    let failures = r#"tcptask_auth_failures_total{listener="http"}"#;
    assert_eq!(sample(&metrics, failures), Some(2.0), "{metrics}");

    // A task with the token over the binary protocol, at trace level.
    let out = server.run(&[
        "--token",
        token,
        "run",
        tcp_task::images::EXAMPLES_IMAGE,
        "echo",
        "hi",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    server.assert_clean();
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.contains("authentication failed"),
        "the failures are logged"
    );
    assert!(!log.contains(token), "the token is in the log:\n{log}");
}

#[test]
fn json_logs_carry_the_connection_and_task_spans() {
    let server = start(&["--log-format", "json", "-v"], "");
    let out = server.run(&["run", tcp_task::images::EXAMPLES_IMAGE, "echo", "hi"]);
    assert_eq!(out.code, 0, "{out:?}");
    server.assert_clean();
    let log = server.log.lock().unwrap().clone();
    let ended: Value = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["fields"]["message"] == "task ended")
        .unwrap_or_else(|| panic!("no `task ended` line in\n{log}"));
    let spans = ended["spans"].as_array().expect("the spans of the line");
    let connection = spans
        .iter()
        .find(|s| s["name"] == "connection")
        .expect("a connection span");
    assert!(connection["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let task = spans
        .iter()
        .find(|s| s["name"] == "task")
        .expect("a task span");
    assert_eq!(task["image"], tcp_task::images::EXAMPLES_IMAGE);
    assert_eq!(task["path"], "cold");
    // The task's server-wide id, which `tcp-task ps`, `logs` and `wait` take.
    let id = task["task"].as_str().unwrap_or_default();
    assert!(tcp_task::TaskId::parse(id).is_ok(), "{task}");
    assert_eq!(ended["fields"]["ending"], "exited");
}

#[test]
fn the_listener_keeps_its_bounds() {
    let server = start(
        &[],
        "header_read_timeout = 1\nmax_connections = 2\nmax_header_bytes = 8192",
    );
    let addr = server.http.clone().unwrap();

    // Headers that never end: closed at the header timeout.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    assert_closed(&mut slow, Duration::from_secs(10));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before the timeout"
    );

    // A kept-alive connection idle past the same timeout is closed too.
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 512];
    let n = idle.read(&mut answer).unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    assert_closed(&mut idle, Duration::from_secs(10));

    // Headers larger than max_header_bytes: refused, not buffered.
    let mut huge = TcpStream::connect(&addr).unwrap();
    let header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = huge.write_all(header.as_bytes());
    let mut reply = Vec::new();
    huge.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = huge.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "{reply}"
    );

    // Two connections held open: a third is closed at once.
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(&addr).unwrap();
    let started = Instant::now();
    assert_closed(&mut third, Duration::from_secs(10));
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "not at once: {:?}",
        started.elapsed()
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    let metrics = curl(&[&url(&server, "/metrics")]).body;
    let refused = r#"tcptask_connections_refused_total{listener="http",reason="max_connections"}"#;
    assert!(sample(&metrics, refused).unwrap_or(0.0) >= 1.0, "{metrics}");
}

/// Waits until the server closes `stream` (a read gives end of file or a
/// reset), failing after `within`.
fn assert_closed(stream: &mut TcpStream, within: Duration) {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the connection was still open after {within:?}")
            }
            Err(_) => return,
        }
    }
}

#[test]
fn tls_applies_to_the_http_listener() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let server = start(
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        "",
    );
    let port = server
        .http
        .as_deref()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let https = format!("https://localhost:{port}/healthz");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let answer = curl(&[
        "--cacert",
        cert.to_str().unwrap(),
        "--resolve",
        &resolve,
        &https,
    ]);
    assert_eq!(answer.status, 200, "{}", answer.body);
    // Plain HTTP at the TLS listener gets no answer.
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "10", &url(&server, "/healthz")])
        .output()
        .unwrap();
    assert!(
        !plain.status.success(),
        "plain HTTP was answered by a TLS listener"
    );
}

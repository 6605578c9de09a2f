//! `tcp-task bench load` against a real `tcp-task serve` (the harness of
//! tests/cli.rs: a server child process with its own instance id, and no
//! container of it left behind).
//!
//! The default runs are small, to keep the test run short on a shared
//! machine: TCP_TASK_BENCH_TASKS sets the number of tasks of the passing
//! runs (default 48; e.g. 200 or 10000 for a longer run).
//!
//! A real server keeps its promises, so the counts of duplicated and
//! forgotten tasks are shown against a fake server that breaks them on
//! purpose (the last tests; they need no engine).

mod cli_server;

use cli_server::*;
use serde_json::Value;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    server.wait_for_running(2);
    // SIGKILL: no graceful drain, the connections simply break.
    let _ = server.child.kill();
    let _ = server.child.wait();
    let out = Out::wait(child, Instant::now());
    let report = report(&out);
    eprintln!("{report}");
    assert!(count(&report, "lost") > 0, "{report}");
    assert_eq!(count(&report, "duplicated"), 0, "{report}");
    assert_eq!(out.code, 1, "{out:?}");
    // It saw the connections break: it did not wait for the tasks' end.
    assert!(out.took < Duration::from_secs(25), "{out:?}");
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

// ---------------------------------------------------------------------------
// Promises broken on purpose, by a fake server (no engine needed)
// ---------------------------------------------------------------------------

/// How the fake server misbehaves.
#[derive(Clone, Copy)]
enum Fault {
    /// Every 5th task gets its terminal frame twice.
    Duplicate,
    /// Task 3 of each connection never gets an answer at all.
    Forget,
    /// Every task is answered, each 50 ms after the one before on its
    /// connection.
    Slow,
    /// Every task is answered at once.
    None,
}

/// A server that speaks the protocol and answers each Submit with Accepted,
/// `ok` on stdout and Exited, except where `fault` says otherwise; Pings
/// get their Pong. Returns its address and the count of duplicate terminal
/// frames it sent; it lives as long as the test.
fn fake_server(fault: Fault) -> (String, Arc<AtomicU64>) {
    use futures::{SinkExt, StreamExt};
    use tcp_task::codec::FrameCodec;
    use tcp_task::protocol::{
        ClientMessage, Hello, Limits, ServerMessage, Welcome, PROTOCOL_VERSION,
    };
    use tcp_task::{Ending, Outcome, OutputStream};
    use tokio_util::codec::{FramedRead, FramedWrite};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    let duplicates = Arc::new(AtomicU64::new(0));
    let sent = duplicates.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((socket, _)) = listener.accept().await {
                let sent = sent.clone();
                let _ = socket.set_nodelay(true);
                tokio::spawn(async move {
                    let (read, write) = socket.into_split();
                    let mut reader = FramedRead::new(read, FrameCodec::<Hello>::default());
                    let mut writer = FramedWrite::new(write, FrameCodec::<()>::default());
                    let Some(Ok(_hello)) = reader.next().await else {
                        return;
                    };
                    let welcome = ServerMessage::Welcome(Welcome {
                        version: PROTOCOL_VERSION,
                        server: "fake".into(),
                        limits: Limits {
                            max_frame_len: 1 << 20,
                            max_chunk_len: 1 << 16,
                            max_tasks_per_connection: 64,
                            idle_timeout_ms: 60_000,
                        },
                    });
                    if writer.send(welcome).await.is_err() {
                        return;
                    }
                    let mut reader = reader.map_decoder(|c| c.retype::<ClientMessage>());
                    let mut submits = 0;
                    while let Some(Ok(message)) = reader.next().await {
                        let mut frames = Vec::new();
                        match message {
                            ClientMessage::Submit { id, .. } => {
                                submits += 1;
                                if matches!(fault, Fault::Slow) {
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                                if matches!(fault, Fault::Forget) && submits == 3 {
                                    continue;
                                }
                                let exited = ServerMessage::Exited {
                                    id,
                                    outcome: Outcome {
                                        ending: Ending::Exited,
                                        exit_code: Some(0),
                                        signal: None,
                                        duration_ms: 1,
                                        output_truncated: false,
                                        usage: None,
                                    },
                                };
                                frames.push(ServerMessage::Accepted {
                                    id,
                                    task: tcp_task::TaskId::from_random(id.into()),
                                });
                                frames.push(ServerMessage::Output {
                                    id,
                                    stream: OutputStream::Stdout,
                                    chunk: "ok\n".into(),
                                });
                                if matches!(fault, Fault::Duplicate) && submits % 5 == 0 {
                                    frames.push(exited.clone());
                                    sent.fetch_add(1, Ordering::Relaxed);
                                }
                                frames.push(exited);
                            }
                            ClientMessage::Ping { id, payload } => {
                                frames.push(ServerMessage::Pong { id, payload })
                            }
                            _ => {}
                        }
                        for frame in frames {
                            if writer.send(frame).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
    });
    (addr, duplicates)
}

/// `tcp-task bench load --json` against `addr`, with `extra` flags.
fn bench_against(addr: &str, extra: &[&str]) -> (Out, Value) {
    let mut command = std::process::Command::new(BIN);
    command
        .args(["bench", "load", "--server", addr, "--json"])
        .args(["--connections", "4", "--tasks", "100"])
        .args(extra)
        .args(["--task", "anything"])
        .stdin(Stdio::null());
    let out = Out::of(command);
    let report = report(&out);
    eprintln!("{report}");
    (out, report)
}

#[test]
fn a_second_terminal_frame_for_a_task_counts_as_duplicated() {
    let (addr, sent) = fake_server(Fault::Duplicate);
    let (out, report) = bench_against(&addr, &[]);
    assert_eq!(count(&report, "completed"), 100, "{report}");
    // Every duplicate sent is counted, the last ones thanks to the final Ping.
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent >= 16, "{sent}");
    assert_eq!(count(&report, "duplicated"), sent, "{report}");
    assert_eq!(count(&report, "lost") + count(&report, "wrong"), 0);
    assert_eq!(out.code, 1, "{out:?}");
}

#[test]
fn a_task_the_server_forgets_counts_as_lost_after_the_stall_time() {
    let (addr, _) = fake_server(Fault::Forget);
    let (out, report) = bench_against(&addr, &["--stall", "1s"]);
    // The forgotten task holds its connection until --stall, then the
    // tasks in flight there are lost; the other connections finish the rest.
    assert!(count(&report, "lost") >= 1, "{report}");
    assert_eq!(report["errors"]["stalled"], 4, "{report}");
    assert_eq!(count(&report, "duplicated"), 0, "{report}");
    assert_eq!(out.code, 1, "{out:?}");
}

#[test]
fn a_rate_spaces_the_tasks_out() {
    let (addr, _) = fake_server(Fault::None);
    let (out, report) = bench_against(&addr, &["--rate", "200"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(count(&report, "completed"), 100, "{report}");
    assert_eq!(report["rate"], 200.0, "{report}");
    // The 100th task is due 99/200 s after the start; unpaced, the fake
    // server answers all of them within milliseconds.
    let elapsed = report["elapsed_s"].as_f64().unwrap();
    assert!(
        elapsed >= 0.495,
        "finished before the last task was due: {report}"
    );
}

#[test]
fn with_a_rate_latency_counts_from_each_tasks_scheduled_start() {
    // One task at a time, 50 ms each, offered every 10 ms: the tasks fall
    // behind their schedule, and their latency must show it (a closed loop
    // would report 50 ms each).
    let (addr, _) = fake_server(Fault::Slow);
    let mut command = std::process::Command::new(BIN);
    command
        .args(["bench", "load", "--server", &addr, "--json"])
        .args(["--connections", "1", "--window", "1", "--tasks", "20"])
        .args(["--rate", "100", "--task", "anything"])
        .stdin(Stdio::null());
    let out = Out::of(command);
    let report = report(&out);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(count(&report, "completed"), 20, "{report}");
    // The last task: due at 190 ms, answered after 20 x 50 ms.
    let max = report["max_ms"].as_f64().unwrap();
    assert!(
        max >= 800.0,
        "latency counted from the send, not the schedule: {report}"
    );
}

#[test]
fn a_rate_that_is_not_a_positive_number_is_refused() {
    for rate in ["0", "-5", "nan", "2e6", "fast"] {
        let out = Out::of({
            let mut command = std::process::Command::new(BIN);
            command
                .args(["bench", "load", "--server", "127.0.0.1:9", "--rate", rate])
                .args(["--task", "anything"])
                .stdin(Stdio::null());
            command
        });
        assert_eq!(out.code, 125, "--rate {rate}: {out:?}");
        assert!(
            out.stderr.contains("is not a rate in tasks per second"),
            "--rate {rate}: {out:?}"
        );
    }
}

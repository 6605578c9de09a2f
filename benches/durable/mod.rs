//! Durable tasks' benchmarks, called from `benches/tasks.rs` on its server
//! (cold path, no warm pool) and its one client connection:
//!
//! - `durable/attach_finished`: `Client::attach` to a detached task that
//!   has already ended, its replayed stdout and stderr consumed (the server
//!   reads them from the container's log) and its outcome received;
//! - `durable/docker_logs`: `docker logs tcp-task-<id>` on the same
//!   container, as a child process, its stdout and stderr read to the end.
//!
//! The task is `mixed 2000`: `out i` on stdout and `err i` on stderr, one
//! line each, for i in 0..2000 — 4000 log records, 33,780 bytes, the shape of
//! a typical task's log (many short lines on both streams). It runs once,
//! before the group; both measures check every byte of it once first, then
//! its byte counts on every iteration. It is removed at the end, through
//! the client, and the bench checks that its container is gone (a panic on
//! the way removes it with `docker rm -f`).
//!
//! The goal (issue 10): `attach_finished` ≤ 2 × `docker_logs`.

use bollard::query_parameters::InspectContainerOptions;
use criterion::{Criterion, SamplingMode};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::runtime::Runtime;

use tcp_task::executor::container_name;
use tcp_task::images::EXAMPLES_IMAGE;
use tcp_task::{Client, TaskEvent, TaskId, TaskSpec};

use super::Setup;

/// Lines on each stream of the kept task.
const LINES: u32 = 2000;

pub fn durable_benches(c: &mut Criterion, rt: &Runtime, setup: &Setup) {
    let (id, expected) = match rt.block_on(finished_task(&setup.client)) {
        Ok(task) => task,
        Err(why) => return eprintln!("durable benchmarks skipped: {why}"),
    };
    // From here on the task's container exists: whatever happens, it goes.
    let guard = KeptTask {
        name: container_name(&id),
        removed: false,
    };
    let mut group = c.benchmark_group("durable");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    if setup.cli {
        rt.block_on(docker_logs(&guard.name))
            .check(&expected, "docker logs");
        let sizes = expected.sizes();
        group.bench_function("docker_logs", |b| {
            b.to_async(rt)
                .iter(|| async { assert_eq!(docker_logs(&guard.name).await.sizes(), sizes) });
        });
    }
    rt.block_on(attach(&setup.client, &id, true))
        .check(&expected, "an attach");
    let sizes = expected.sizes();
    group.bench_function("attach_finished", |b| {
        b.to_async(rt)
            .iter(|| async { assert_eq!(attach(&setup.client, &id, false).await.sizes(), sizes) });
    });
    group.finish();
    rt.block_on(remove(setup, &id, guard));
}

/// What a task wrote, or with `keep == false` only how much of it.
struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stdout_bytes: usize,
    stderr_bytes: usize,
}

impl Output {
    fn sizes(&self) -> (usize, usize) {
        (self.stdout_bytes, self.stderr_bytes)
    }

    /// Panics unless both streams are `expected`'s, byte for byte.
    fn check(&self, expected: &Output, what: &str) {
        let same = self.stdout == expected.stdout && self.stderr == expected.stderr;
        assert!(
            same,
            "{what} gave {:?} bytes of stdout and stderr, not the task's {:?} (or other bytes)",
            self.sizes(),
            expected.sizes()
        );
    }
}

/// What `mixed LINES` writes.
fn mixed_output() -> Output {
    let lines = |tag: &str| -> Vec<u8> {
        (0..LINES)
            .flat_map(|i| format!("{tag} {i}\n").into_bytes())
            .collect()
    };
    let (stdout, stderr) = (lines("out"), lines("err"));
    Output {
        stdout_bytes: stdout.len(),
        stderr_bytes: stderr.len(),
        stdout,
        stderr,
    }
}

/// Runs `mixed LINES` detached and waits for its end: the task every
/// iteration attaches to. Returns its id and its output.
async fn finished_task(client: &Client) -> Result<(TaskId, Output), String> {
    let spec = TaskSpec::image(EXAMPLES_IMAGE, ["mixed".to_owned(), LINES.to_string()]);
    let id = client
        .run_detached(spec)
        .await
        .map_err(|e| format!("cannot run a detached task: {e}"))?;
    let outcome = client
        .wait(&id)
        .await
        .map_err(|e| format!("the detached task {id} did not end: {e}"))?;
    if !outcome.success() {
        return Err(format!("the detached task {id} failed: {outcome:?}"));
    }
    Ok((id, mixed_output()))
}

/// Attaches to the ended task `id`, reads all it replays and its outcome.
async fn attach(client: &Client, id: &TaskId, keep: bool) -> Output {
    let mut handle = client
        .attach(id)
        .await
        .expect("the server takes the attach");
    let mut out = Output {
        stdout: Vec::new(),
        stderr: Vec::new(),
        stdout_bytes: 0,
        stderr_bytes: 0,
    };
    while let Some(event) = handle.next().await {
        match event {
            TaskEvent::Stdout(chunk) => {
                out.stdout_bytes += chunk.len();
                if keep {
                    out.stdout.extend_from_slice(&chunk);
                }
            }
            TaskEvent::Stderr(chunk) => {
                out.stderr_bytes += chunk.len();
                if keep {
                    out.stderr.extend_from_slice(&chunk);
                }
            }
            TaskEvent::Accepted(_) | TaskEvent::Progress(_) => {}
        }
    }
    let outcome = handle.wait().await.expect("the attach gives the outcome");
    assert!(outcome.success(), "{outcome:?}");
    out
}

/// The start of the usage line `measure` writes last on a cold task's
/// stderr (tools/src/measure.rs), which the server takes out and `docker
/// logs` shows.
const USAGE_TRAILER: &[u8] = b"\0\x1btcp-task-usage ";

/// `docker logs NAME`, its stdout and stderr read to their ends; the
/// usage line at the end of stderr is read, then left out of the result.
async fn docker_logs(name: &str) -> Output {
    let mut child = Command::new("docker")
        .args(["logs", name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker logs starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let (stdout, mut stderr) = tokio::join!(read_all(stdout), read_all(stderr));
    let status = child.wait().await.expect("docker logs ends");
    assert!(status.success(), "docker logs failed: {status}");
    if let Some(at) = find(&stderr, USAGE_TRAILER) {
        stderr.truncate(at);
    }
    Output {
        stdout_bytes: stdout.len(),
        stderr_bytes: stderr.len(),
        stdout,
        stderr,
    }
}

/// Where `needle` last starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

async fn read_all(mut pipe: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut all = Vec::with_capacity(64 * 1024);
    pipe.read_to_end(&mut all)
        .await
        .expect("read docker's output");
    all
}

/// Removes the task through the server and waits for its container to go.
async fn remove(setup: &Setup, id: &TaskId, mut guard: KeptTask) {
    if let Err(e) = setup.client.remove(id, true).await {
        eprintln!("durable benchmarks: could not remove task {id}: {e}");
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let inspected = setup
            .docker
            .inspect_container(&guard.name, None::<InspectContainerOptions>)
            .await;
        match inspected {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                guard.removed = true;
                return;
            }
            Err(e) => eprintln!("durable benchmarks: inspecting {}: {e}", guard.name),
            Ok(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "durable benchmarks: the container of task {id} outlived its removal by 30 s; removing it"
    );
}

/// The kept task's container, removed with `docker rm -f` unless the
/// server removed it: on a panic, or when its removal did not happen.
struct KeptTask {
    name: String,
    removed: bool,
}

impl Drop for KeptTask {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let removed = std::process::Command::new("docker")
            .args(["rm", "-f", "-v", &self.name])
            .stdout(Stdio::null())
            .status();
        if !removed.is_ok_and(|s| s.success()) {
            eprintln!(
                "durable benchmarks: could not remove container {}; remove it by hand",
                self.name
            );
        }
    }
}

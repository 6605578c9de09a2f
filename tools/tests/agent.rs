//! The agent as a process, outside any container (so not PID 1): a task
//! round trip over its stdin and stdout, and its refusal of bad input.

#[path = "../src/agent_proto.rs"]
#[allow(dead_code)]
mod agent_proto;

use agent_proto::{self as proto, ExitReport, TaskHeader};
use std::io::{Read, Write};
use std::process::{Command, Stdio};

const TOOLS: &str = env!("CARGO_BIN_EXE_tcp-task-tools");

/// Runs the agent and writes each of `steps`, after each reading frames
/// until an exit report came (when `wait_exit`) as the server does; then
/// closes its stdin (the server going away) and collects its stderr and
/// exit code.
fn agent(args: &[&str], steps: &[Vec<u8>], wait_exit: bool) -> (Vec<(u8, Vec<u8>)>, String, i32) {
    let mut child = Command::new(TOOLS)
        .arg("agent")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tools binary runs");
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut frames = Vec::new();
    for step in steps {
        stdin.write_all(step).expect("the agent reads");
        if wait_exit {
            read_until_exit(&mut stdout, &mut frames);
        }
    }
    drop(stdin);
    let mut rest = std::io::Cursor::new(Vec::new());
    stdout.read_to_end(rest.get_mut()).expect("drained");
    while let Some(frame) = read_frame(&mut rest) {
        frames.push(frame);
    }
    let output = child.wait_with_output().expect("the agent ends");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (frames, stderr, output.status.code().unwrap_or(-1))
}

fn read_until_exit(input: &mut impl Read, frames: &mut Vec<(u8, Vec<u8>)>) {
    while let Some(frame) = read_frame(input) {
        let done = frame.0 == proto::EXIT;
        frames.push(frame);
        if done {
            return;
        }
    }
}

fn read_frame(input: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    input.read_exact(&mut header).ok()?;
    let (kind, len) = proto::parse_header(header, proto::FROM_AGENT).expect("a valid header");
    let mut payload = vec![0; len];
    input.read_exact(&mut payload).expect("a whole payload");
    Some((kind, payload))
}

fn task(argv: &[&str], stdin: bool) -> Vec<u8> {
    let header = TaskHeader {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["GREETING=hi there".into()],
        workdir: None,
        stdin,
        tag: "{\"id\":\"test\"}".into(),
    };
    proto::frame(proto::TASK, &header.encode())
}

fn exit_of(frames: &[(u8, Vec<u8>)]) -> ExitReport {
    let (kind, payload) = frames.last().expect("frames");
    assert_eq!(*kind, proto::EXIT);
    ExitReport::decode(payload).expect("an exit report")
}

fn stream(frames: &[(u8, Vec<u8>)], kind: u8) -> Vec<u8> {
    frames
        .iter()
        .filter(|(k, _)| *k == kind)
        .flat_map(|(_, p)| p.clone())
        .collect()
}

#[test]
fn runs_a_task_with_stdin_and_reports_its_exit() {
    let mut input = task(&[TOOLS, "cat"], true);
    input.extend(proto::frame(proto::STDIN, b"\x00binary\xffbytes"));
    input.extend(proto::frame(proto::CLOSE, b""));
    let (frames, stderr, code) = agent(&[], &[input], true);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(frames[0], (proto::READY, vec![proto::VERSION]));
    assert_eq!(frames[1].0, proto::STARTED);
    assert_eq!(stream(&frames, proto::STDOUT), b"\x00binary\xffbytes");
    assert_eq!(
        exit_of(&frames),
        ExitReport::Exited {
            code: 0,
            oom: false
        }
    );
}

#[test]
fn reuse_serves_several_tasks_and_reports_signals_and_missing_commands() {
    let mut second = proto::frame(proto::STDIN, b"leftover of a finished task");
    second.extend(task(&[TOOLS, "killself", "15"], false));
    let steps = [
        task(&[TOOLS, "exit", "42"], false),
        second,
        task(&["/no/such/command"], false),
        task(&[TOOLS, "env"], false),
    ];
    let (frames, stderr, code) = agent(&["--tasks", "4"], &steps, true);
    assert_eq!(code, 0, "{stderr}");
    let exits: Vec<ExitReport> = frames
        .iter()
        .filter(|(k, _)| *k == proto::EXIT)
        .map(|(_, p)| ExitReport::decode(p).expect("exit report"))
        .collect();
    assert_eq!(
        exits,
        vec![
            ExitReport::Exited {
                code: 42,
                oom: false
            },
            ExitReport::Signaled {
                signal: 15,
                oom: false
            },
            ExitReport::SpawnFailed { errno: 2 },
            ExitReport::Exited {
                code: 0,
                oom: false
            },
        ]
    );
    let env = String::from_utf8(stream(&frames, proto::STDOUT)).expect("text");
    assert!(env.contains("GREETING=hi there"), "{env}");
}

#[test]
fn malformed_and_truncated_input_ends_the_agent_with_a_clear_error() {
    let cases: [(&str, Vec<u8>); 4] = [
        ("unknown kind", b"Zjunk".to_vec()),
        ("too long", vec![proto::TASK, 0xff, 0xff, 0xff, 0xff]),
        (
            "truncated",
            proto::frame(proto::TASK, b"abcdef")[..7].to_vec(),
        ),
        ("bad header", proto::frame(proto::TASK, &[0, 0, 0, 0, 0])),
    ];
    for (name, input) in cases {
        let (frames, stderr, code) = agent(&[], &[input], false);
        assert_eq!(code, 2, "{name}: {stderr}");
        assert!(stderr.contains("malformed input"), "{name}: {stderr}");
        assert_eq!(frames.len(), 1, "{name}: only the ready frame");
    }
}

#[test]
fn end_of_input_before_any_task_is_a_quiet_exit() {
    let (frames, stderr, code) = agent(&[], &[], false);
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert_eq!(frames, vec![(proto::READY, vec![proto::VERSION])]);
}

#[test]
fn a_task_runs_on_when_the_server_goes_and_its_end_is_still_written() {
    // The task is sent and the input closed at once, as when the server is
    // killed: the agent no longer stops the task, it finishes it and writes
    // its output and end, which land in the container's log.
    let input = task(&[TOOLS, "ticks", "3", "100", "5"], false);
    let (frames, stderr, code) = agent(&[], &[input], false);
    assert_eq!(code, 0, "{stderr}");
    let (kind, started) = &frames[1];
    assert_eq!(*kind, proto::STARTED);
    assert_eq!(
        &started[4..],
        b"{\"id\":\"test\"}",
        "the tag follows the pid"
    );
    assert_eq!(stream(&frames, proto::STDOUT), b"out 0\nout 1\nout 2\n");
    assert_eq!(stream(&frames, proto::STDERR), b"err 0\nerr 1\nerr 2\n");
    assert_eq!(
        exit_of(&frames),
        ExitReport::Exited {
            code: 5,
            oom: false
        }
    );
}

/// A task that does not read its stdin: the agent takes in about its
/// bound (1 MiB) and then stops reading, so the writer (the server) is
/// held back instead of the agent's memory growing.
#[test]
fn stdin_a_task_does_not_read_is_bounded_in_the_agent() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    const BOUND: usize = 1024 * 1024;
    let mut child = Command::new(TOOLS)
        .arg("agent")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tools binary runs");
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(&task(&["sleep", "3"], true))
        .expect("the agent reads its task");
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    let writer = std::thread::spawn(move || {
        let frame = proto::frame(proto::STDIN, &[b'x'; 32 * 1024]);
        for _ in 0..(4 * BOUND / (32 * 1024)) {
            if stdin.write_all(&frame).is_err() {
                return;
            }
            counter.fetch_add(frame.len(), Ordering::SeqCst);
        }
    });
    // Wait until the writer is held back: no progress for half a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = usize::MAX;
    while written.load(Ordering::SeqCst) != last && Instant::now() < deadline {
        last = written.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(500));
    }
    let held = written.load(Ordering::SeqCst);
    // The bound, plus what the pipe and the reader's buffer hold.
    assert!(
        (BOUND..BOUND + 512 * 1024).contains(&held),
        "the agent took in {held} bytes of stdin its task did not read"
    );
    // When the task ends its unread stdin is dropped and reading resumes.
    writer
        .join()
        .expect("the writer finishes once the task has ended");
    let output = child.wait_with_output().expect("the agent ends");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

//! The `tcp-task` command driven as a user drives it: real processes.
//!
//! Each test starts `tcp-task serve` as a child process on a free loopback
//! port (it listens on port 0 and the test reads the address from its log),
//! with a config file whose executor `instance_id` is unique to the test, so
//! that "no container left behind" is checked precisely: only this test's
//! containers carry its label. Then the test runs `tcp-task run/task/tasks/
//! status` as child processes and checks what a user would see: exit codes,
//! stdout bytes, the lines on stderr, JSON that parses.
//!
//! One server per test rather than one per test binary: `cargo nextest`
//! (what CI runs) starts every test in its own process, where a shared
//! server would be started once per test anyway, and a server of its own
//! makes each test's leftover check exact. A server starts in well under a
//! second; the tests keep their cost down by running independent CLI
//! invocations at once.

mod cli_server;

use cli_server::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = tcp_task::images::EXAMPLES_IMAGE;

/// π to 50 decimals, from any table of π.
const PI_50: &str = "3.14159265358979323846264338327950288419716939937510";

// ---------------------------------------------------------------------------
// Exit codes
// ---------------------------------------------------------------------------

#[test]
fn exit_codes_follow_docker_run() {
    let server = Server::start();
    // (arguments, exit code, a phrase on stderr or None for an empty stderr)
    let cases: Vec<(Vec<&str>, i32, Option<&str>)> = vec![
        (vec!["run", IMAGE, "exit", "0"], 0, None),
        (vec!["run", IMAGE, "exit", "1"], 1, None),
        (vec!["run", IMAGE, "exit", "42"], 42, None),
        (vec!["run", IMAGE, "killself", "9"], 137, None),
        (vec!["run", IMAGE, "killself", "15"], 143, None),
        (
            vec!["run", "--timeout", "1s", IMAGE, "sleep", "30"],
            124,
            Some("timed out"),
        ),
        (
            vec!["run", "--memory", "16m", IMAGE, "alloc", "100"],
            137,
            Some("ran out of memory"),
        ),
        (
            vec!["run", "tcp-task-no-such-image:0", "true"],
            125,
            Some("tcp-task-no-such-image:0"),
        ),
        (
            vec!["run", "--network", "host", IMAGE, "true"],
            125,
            Some("network"),
        ),
        (
            vec!["run", IMAGE, "no-such-command"],
            127,
            Some("not found"),
        ),
        (
            vec!["run", IMAGE, "/etc/passwd"],
            126,
            Some("cannot be run"),
        ),
        (vec!["task", "no-such-task"], 125, Some("no-such-task")),
    ];
    let args: Vec<Vec<&str>> = cases.iter().map(|(a, _, _)| a.clone()).collect();
    let outs = run_all(&server, &args);
    let mut wrong = Vec::new();
    for ((args, code, phrase), out) in cases.iter().zip(&outs) {
        out.assert_no_panic();
        let stderr_ok = match phrase {
            None => out.stderr.is_empty(),
            Some(phrase) => out.one_line_error().contains(phrase),
        };
        if out.code != *code || !stderr_ok {
            wrong.push(format!(
                "{args:?}: expected {code} and {phrase:?} on stderr, got {} and {:?}",
                out.code, out.stderr
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    server.assert_clean();
}

// ---------------------------------------------------------------------------
// -i: stdin piped to the task
// ---------------------------------------------------------------------------

/// Bytes of every value, zeros and newlines included, in no simple pattern.
fn binary_data(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

/// Runs the command with `input` on its stdin.
fn with_stdin(mut command: Command, input: Vec<u8>) -> Out {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command.spawn().expect("tcp-task starts");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
        // Dropped here: end of file.
    });
    let out = Out::wait(child, started);
    writer.join().unwrap();
    out
}

#[test]
fn interactive_cat_round_trips_binary_data() {
    let server = Server::start();
    let data = binary_data(3 * 1024 * 1024 + 17);
    let out = with_stdin(server.cli(["run", "-i", IMAGE, "cat"]), data.clone());
    out.assert_no_panic();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "the bytes came back changed");
    assert_eq!(out.stderr, "");
    server.assert_clean();
}

/// An RGB PNG of `width`×`height` and the gray level each pixel should get
/// (BT.601 luma, as the task documents).
fn colour_png(width: u32, height: u32) -> (Vec<u8>, Vec<u8>) {
    let mut rgb = Vec::new();
    let mut gray = Vec::new();
    for y in 0..height {
        for x in 0..width {
            let (r, g, b) = ((x * 7) as u8, (y * 11) as u8, ((x + y) * 5) as u8);
            rgb.extend([r, g, b]);
            let luma = (299 * r as u32 + 587 * g as u32 + 114 * b as u32 + 500) / 1000;
            gray.push(luma as u8);
        }
    }
    let mut png_bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut png_bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&rgb).unwrap();
    writer.finish().unwrap();
    (png_bytes, gray)
}

#[test]
fn grayscale_task_turns_a_piped_png_gray() {
    let server = Server::start();
    let (input, expected) = colour_png(37, 23);
    let out = with_stdin(server.cli(["task", "grayscale", "-i"]), input);
    out.assert_no_panic();
    assert_eq!(out.code, 0, "{}", out.stderr);

    let decoder = png::Decoder::new(std::io::Cursor::new(&out.stdout));
    let mut reader = decoder.read_info().expect("stdout is a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((info.width, info.height), (37, 23), "same size");
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let pixels = &pixels[..info.buffer_size()];
    for (i, (got, want)) in pixels.iter().zip(&expected).enumerate() {
        assert!(
            got.abs_diff(*want) <= 1,
            "pixel {i}: gray {got}, expected {want}"
        );
    }
    server.assert_clean();
}

// ---------------------------------------------------------------------------
// Interrupts, closed pipes
// ---------------------------------------------------------------------------

/// `tcp-task run … sleep 60`, interrupted by `signal` once its container
/// runs: the CLI exits with 128+signal soon after, and the container is gone.
fn interrupt_cancels_and_cleans(signal_number: i32, expected: i32) {
    let server = Server::start();
    let mut command = server.cli(["run", IMAGE, "sleep", "60"]);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().unwrap();
    let pid = child.id();
    server.wait_for_running(1);
    let sent = Instant::now();
    signal(pid, signal_number);
    let out = Out::wait(child, sent);
    out.assert_no_panic();
    assert_eq!(out.code, expected, "{out:?}");
    assert!(out.stderr.contains("cancelling the task"), "{out:?}");
    assert!(
        out.took < Duration::from_secs(20),
        "the CLI took {:?} to end after the signal",
        out.took
    );
    // The CLI returned after the server reported the end, which comes after
    // the container's removal: nothing is left, with no waiting.
    server.assert_clean();
}

#[test]
fn sigint_cancels_the_task_and_its_container_is_gone() {
    interrupt_cancels_and_cleans(libc::SIGINT, 130);
}

#[test]
fn sigterm_cancels_the_task_and_its_container_is_gone() {
    interrupt_cancels_and_cleans(libc::SIGTERM, 143);
}

#[test]
fn sigint_while_queued_cancels_the_waiting_task() {
    let server = Server::with_executor("max_concurrent = 1");
    let mut holder = server.cli(["run", IMAGE, "sleep", "60"]);
    holder.stdout(Stdio::piped()).stderr(Stdio::piped());
    let holder = holder.spawn().unwrap();
    let holder_pid = holder.id();
    server.wait_for_running(1);

    // The second task waits for the only slot; --json shows where it is.
    let mut waiter = server.cli(["run", "--json", IMAGE, "true"]);
    waiter.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut waiter = waiter.spawn().unwrap();
    let mut lines = BufReader::new(waiter.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines
            .next()
            .expect("the waiter reports that it is queued")
            .unwrap();
        let event: Value = serde_json::from_str(&line).unwrap();
        seen.push(event.clone());
        if event["event"] == "queued" {
            assert_eq!(event["position"], 1, "{event}");
            break;
        }
    }
    let sent = Instant::now();
    signal(waiter.id(), libc::SIGINT);
    let rest: Vec<Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let out = Out::wait(waiter, sent);
    assert_eq!(out.code, 130, "{out:?}");
    let last = rest.last().expect("a terminal line");
    assert_eq!(last["event"], "exited", "{last}");
    assert_eq!(last["ending"], "cancelled", "{last}");
    assert_eq!(last["exit_status"], 130, "{last}");
    // A pipe gets no progress bar, even while the task waits.
    assert!(!out.stderr.contains("queued on the server"), "{out:?}");
    assert!(!out.stderr.contains('\u{1b}'), "{out:?}");

    signal(holder_pid, libc::SIGINT);
    let out = Out::wait(holder, Instant::now());
    assert_eq!(out.code, 130, "{out:?}");
    server.assert_clean();
}

#[test]
fn a_closed_stdout_stops_the_task_quietly() {
    let server = Server::start();
    let mut command = server.cli(["run", IMAGE, "flood"]);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut head = [0u8; 64 * 1024];
    stdout.read_exact(&mut head).unwrap();
    assert!(head.iter().all(|&b| b == b'x'));
    let closed = Instant::now();
    drop(stdout); // as `| head -c 65536` does
    let out = Out::wait(child, closed);
    out.assert_no_panic();
    // As a process in a pipeline whose reader went away: SIGPIPE's status,
    // and nothing to say about it.
    assert_eq!(out.code, 141, "{out:?}");
    assert_eq!(out.stderr, "");
    assert!(out.took < Duration::from_secs(20), "{out:?}");
    server.assert_clean();
}

// ---------------------------------------------------------------------------
// tasks, status, --json
// ---------------------------------------------------------------------------

const EXAMPLE_TASKS: [&str; 7] = [
    "grayscale",
    "isprime",
    "multiply",
    "pi",
    "primes",
    "random",
    "sum",
];

#[test]
fn tasks_and_status_print_tables_and_json() {
    let server = Server::start();
    let outs = run_all(
        &server,
        &[
            vec!["tasks", "--json"],
            vec!["status", "--json"],
            vec!["tasks"],
            vec!["status"],
        ],
    );
    for out in &outs {
        out.assert_no_panic();
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(out.stderr, "");
    }

    let tasks: Value = serde_json::from_slice(&outs[0].stdout).expect("tasks --json is JSON");
    let tasks = tasks.as_array().expect("an array of tasks");
    let mut names: Vec<&str> = tasks.iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, EXAMPLE_TASKS);
    for task in tasks {
        assert_eq!(task["image"], IMAGE, "{task}");
        assert!(!task["description"].as_str().unwrap().is_empty(), "{task}");
        assert!(task["command"].is_array(), "{task}");
        assert!(task["memory_bytes"].as_u64().unwrap() > 0, "{task}");
        assert!(task["nano_cpus"].as_u64().unwrap() > 0, "{task}");
        assert!(task["timeout_ms"].as_u64().unwrap() > 0, "{task}");
    }

    let status: Value = serde_json::from_slice(&outs[1].stdout).expect("status --json is JSON");
    assert!(
        status["server"].as_str().unwrap().starts_with("tcp-task "),
        "{status}"
    );
    assert!(status["protocol_version"].is_u64(), "{status}");
    assert!(status["uptime_ms"].is_u64(), "{status}");
    assert!(status["connections"].as_u64().unwrap() >= 1, "{status}");
    for counter in ["running", "queued", "finished", "failed"] {
        assert!(status[counter].is_u64(), "{counter}: {status}");
    }
    assert_eq!(status["catalog_size"], 7, "{status}");
    assert_eq!(status["engine"]["reachable"], true, "{status}");
    assert!(status["engine"]["version"].is_string(), "{status}");

    let table = outs[2].stdout_text();
    assert!(table.starts_with("NAME "), "{table}");
    for name in EXAMPLE_TASKS {
        assert!(table.contains(&format!("\n{name} ")), "{name} in\n{table}");
    }
    let text = outs[3].stdout_text();
    assert!(text.contains("engine:      reachable"), "{text}");
    assert!(text.contains("catalog:     7 pre-compiled tasks"), "{text}");
}

#[test]
fn the_server_address_comes_from_flags_then_environment() {
    let server = Server::start();
    let closed = format!("127.0.0.1:{}", closed_port());
    // TCP_TASK_SERVER alone.
    let mut command = tcp_task_command();
    command
        .args(["status", "--json"])
        .env("TCP_TASK_SERVER", &server.addr);
    let out = Out::of(command);
    assert_eq!(out.code, 0, "{out:?}");
    // A flag after the subcommand wins over the environment…
    let mut command = tcp_task_command();
    command
        .args(["status", "--server", &server.addr])
        .env("TCP_TASK_SERVER", &closed);
    let out = Out::of(command);
    assert_eq!(out.code, 0, "{out:?}");
    // …and so does one before it.
    let mut command = tcp_task_command();
    command
        .args(["--server", &server.addr, "tasks"])
        .env("TCP_TASK_SERVER", &closed);
    let out = Out::of(command);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn run_json_lines_parse_and_end_with_the_exit_status() {
    let server = Server::start();
    let outs = run_all(
        &server,
        &[
            vec!["run", "--json", IMAGE, "mixed", "3"],
            vec!["run", "--json", IMAGE, "exit", "7"],
            vec!["run", "--json", IMAGE, "no-such-command"],
            vec!["task", "--json", "sum", "1", "2"],
            vec!["run", "--json", "--timeout", "500ms", IMAGE, "sleep", "30"],
        ],
    );
    for out in &outs {
        out.assert_no_panic();
    }

    // Output as base64 chunks, the end with its exit status, in order.
    let lines = outs[0].json_lines();
    assert_eq!(outs[0].code, 0, "{:?}", outs[0]);
    let kinds: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"accepted"), "{kinds:?}");
    assert!(
        kinds.contains(&"created") && kinds.contains(&"started"),
        "{kinds:?}"
    );
    let stream = |name: &str| -> String {
        let bytes: Vec<u8> = lines
            .iter()
            .filter(|l| l["event"] == name)
            .flat_map(|l| base64_decode(l["data"].as_str().unwrap()))
            .collect();
        String::from_utf8(bytes).unwrap()
    };
    assert_eq!(stream("stdout"), "out 0\nout 1\nout 2\n");
    assert_eq!(stream("stderr"), "err 0\nerr 1\nerr 2\n");
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "exited", "{last}");
    assert_eq!(last["ending"], "exited", "{last}");
    assert_eq!(last["exit_code"], 0, "{last}");
    assert_eq!(last["exit_status"], 0, "{last}");
    assert!(last["duration_ms"].is_u64(), "{last}");
    assert_eq!(last["output_truncated"], false, "{last}");
    assert_eq!(
        outs[0].stderr, "",
        "--json keeps stderr for tcp-task itself"
    );

    let last = outs[1].json_lines().pop().unwrap();
    assert_eq!(outs[1].code, 7);
    assert_eq!(
        (&last["event"], &last["exit_status"]),
        (&"exited".into(), &7.into())
    );

    let last = outs[2].json_lines().pop().unwrap();
    assert_eq!(outs[2].code, 127);
    assert_eq!(last["event"], "failed", "{last}");
    assert_eq!(last["kind"], "command_not_found", "{last}");
    assert_eq!(last["exit_status"], 127, "{last}");
    assert!(last["message"]
        .as_str()
        .unwrap()
        .contains("no-such-command"));

    let lines = outs[3].json_lines();
    assert_eq!(outs[3].code, 0);
    let stdout: Vec<u8> = lines
        .iter()
        .filter(|l| l["event"] == "stdout")
        .flat_map(|l| base64_decode(l["data"].as_str().unwrap()))
        .collect();
    assert_eq!(stdout, b"3\n");

    let last = outs[4].json_lines().pop().unwrap();
    assert_eq!(outs[4].code, 124);
    assert_eq!(last["ending"], "timed_out", "{last}");
    assert_eq!(last["exit_status"], 124, "{last}");
    server.assert_clean();
}

// ---------------------------------------------------------------------------
// Messages for people
// ---------------------------------------------------------------------------

#[test]
fn no_server_is_one_line_that_says_what_to_do() {
    let addr = format!("127.0.0.1:{}", closed_port());
    for args in [
        vec!["run", IMAGE, "true"],
        vec!["task", "sum", "1"],
        vec!["tasks"],
        vec!["status"],
    ] {
        let mut command = tcp_task_command();
        command.arg("--server").arg(&addr).args(&args);
        let out = Out::of(command);
        assert_eq!(out.code, 125, "{args:?}: {out:?}");
        let line = out.one_line_error();
        assert!(
            line.starts_with(&format!(
                "tcp-task: cannot connect to the tcp-task server at {addr}: Connection refused"
            )),
            "{args:?}: {line}"
        );
        assert!(
            line.contains("Is `tcp-task serve` running there?"),
            "{line}"
        );
        assert!(line.contains("--server or TCP_TASK_SERVER"), "{line}");
        assert_eq!(line.matches("Connection refused").count(), 1, "{line}");
    }
    // --json: the failure is the one JSON line.
    let mut command = tcp_task_command();
    command.args(["--server", &addr, "run", "--json", IMAGE, "true"]);
    let out = Out::of(command);
    assert_eq!(out.code, 125, "{out:?}");
    let lines = out.json_lines();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert_eq!(lines[0]["event"], "failed");
    assert_eq!(lines[0]["kind"], "connect");
    assert_eq!(lines[0]["exit_status"], 125);
    // Not an address at all.
    let mut command = tcp_task_command();
    command.args(["--server", "my-server", "status"]);
    let out = Out::of(command);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.one_line_error().contains("HOST:PORT"), "{out:?}");
}

#[test]
fn a_missing_image_is_one_line_naming_it() {
    let server = Server::start();
    let out = server.run(&["run", "tcp-task-missing-image:1.0", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    let line = out.one_line_error();
    assert!(
        line.contains("image `tcp-task-missing-image:1.0` was not found"),
        "{line}"
    );
    assert!(out.stdout.is_empty());
    server.assert_clean();
}

#[test]
fn invalid_flag_values_are_named_with_no_panic() {
    // Nothing listens here: a flag that slipped through would fail later,
    // with another message.
    let addr = format!("127.0.0.1:{}", closed_port());
    let cases: [(Vec<&str>, &str); 8] = [
        (vec!["run", "--memory", "lots", IMAGE, "true"], "lots"),
        (vec!["run", "--timeout", "soon", IMAGE, "true"], "soon"),
        (vec!["run", "--cpus", "0", IMAGE, "true"], "--cpus"),
        (vec!["run", "--cpus", "many", IMAGE, "true"], "many"),
        (vec!["run", "--frobnicate", IMAGE, "true"], "--frobnicate"),
        (vec!["task", "sum", "--params", "{bad"], "--params"),
        (
            vec!["run", "-e", "TCP_TASK_TEST_UNSET_VARIABLE", IMAGE, "true"],
            "TCP_TASK_TEST_UNSET_VARIABLE",
        ),
        (vec!["run"], "IMAGE"),
    ];
    for (args, named) in cases {
        let mut command = tcp_task_command();
        command
            .arg("--server")
            .arg(&addr)
            .args(&args)
            .env_remove("TCP_TASK_TEST_UNSET_VARIABLE");
        let out = Out::of(command);
        out.assert_no_panic();
        // 125, as `docker run` exits on a bad command line: the statuses
        // below belong to the task.
        assert_eq!(out.code, 125, "{args:?}: {out:?}");
        assert!(out.stderr.contains(named), "{args:?}: {out:?}");
        assert!(!out.stderr.contains("cannot connect"), "{args:?}: {out:?}");
    }
    // Help is not an error.
    let mut command = tcp_task_command();
    command.args(["run", "--help"]);
    let out = Out::of(command);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout_text().contains("Examples:"), "{out:?}");
}

#[test]
fn every_subcommand_has_help_with_examples() {
    for sub in [
        vec![],
        vec!["run"],
        vec!["task"],
        vec!["tasks"],
        vec!["status"],
        vec!["serve"],
        vec!["demo"],
        vec!["image"],
        vec!["image", "build-examples"],
        vec!["image", "build-server"],
    ] {
        let mut command = tcp_task_command();
        command.args(&sub).arg("--help");
        let out = Out::of(command);
        assert_eq!(out.code, 0, "{sub:?}: {out:?}");
        let help = out.stdout_text();
        assert!(help.contains("Example"), "{sub:?} has no examples:\n{help}");
        // Only client commands offer --server; serve has --listen instead.
        let client = matches!(
            sub.first(),
            None | Some(&"run" | &"task" | &"tasks" | &"status")
        );
        assert_eq!(help.contains("--server"), client, "{sub:?}:\n{help}");
    }
}

/// The test binary is the ordinary, dynamically linked build: a
/// FROM-scratch image could not run it, so it is refused before any engine
/// is asked (DOCKER_HOST names nothing here), with how to build a static one.
#[test]
fn build_server_refuses_a_dynamic_binary() {
    let mut command = tcp_task_command();
    command
        .args(["image", "build-server"])
        .env("DOCKER_HOST", "unix:///nonexistent/tcp-task-test.sock");
    let out = Out::of(command);
    assert_eq!(out.code, 125, "{out:?}");
    out.assert_no_panic();
    for needed in ["is dynamically linked", "crt-static", "--binary"] {
        assert!(out.stderr.contains(needed), "{needed:?} missing: {out:?}");
    }
}

// ---------------------------------------------------------------------------
// The example tasks
// ---------------------------------------------------------------------------

#[test]
fn example_tasks_give_the_right_answers() {
    let server = Server::start();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["task", "pi", "50"], PI_50),
        (vec!["task", "primes", "--count", "1000000"], "78498"),
        (vec!["task", "sum", "1", "2", "3"], "6"),
        (vec!["task", "multiply", "2", "3", "7"], "42"),
        (vec!["task", "isprime", "97"], "true"),
        (vec!["task", "random", "5", "5"], "5"),
        (vec!["task", "sum", "--params", r#"{"numbers":[1,2]}"#], "3"),
        (
            vec!["task", "pi", "--params", r#"{"digits":10}"#],
            &PI_50[..12],
        ),
    ];
    let args: Vec<Vec<&str>> = cases.iter().map(|(a, _)| a.clone()).collect();
    let outs = run_all(&server, &args);
    for ((args, answer), out) in cases.iter().zip(&outs) {
        out.assert_no_panic();
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        assert_eq!(out.stdout_text(), format!("{answer}\n"), "{args:?}");
        assert_eq!(out.stderr, "", "{args:?}");
    }
    server.assert_clean();
}

// ---------------------------------------------------------------------------
// The progress bar: on a terminal only
// ---------------------------------------------------------------------------

#[test]
fn the_progress_bar_is_drawn_on_a_terminal_and_not_in_a_pipe() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: util-linux `script` (to give the CLI a terminal) is not installed");
        return;
    }
    let server = Server::with_executor("max_concurrent = 1");
    // Something to wait behind.
    let mut holder = server.cli(["run", IMAGE, "sleep", "2"]);
    holder.stdout(Stdio::piped()).stderr(Stdio::piped());
    let holder = holder.spawn().unwrap();
    server.wait_for_running(1);

    // Queued behind it: once on a terminal (script gives it one), once in a pipe.
    let line = format!("{BIN} --server {} run {IMAGE} echo done", server.addr);
    let mut on_terminal = Command::new("script");
    on_terminal
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .env_remove("TCP_TASK_SERVER");
    let mut in_pipe = server.cli(["run", IMAGE, "echo", "done"]);
    for command in [&mut on_terminal, &mut in_pipe] {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let on_terminal = on_terminal.spawn().unwrap();
    let in_pipe = in_pipe.spawn().unwrap();
    let [terminal, pipe] = [on_terminal, in_pipe].map(|c| Out::wait(c, Instant::now()));
    let holder = Out::wait(holder, Instant::now());
    assert_eq!(holder.code, 0, "{holder:?}");

    assert_eq!(terminal.code, 0, "{terminal:?}");
    let screen = terminal.stdout_text();
    assert!(
        screen.contains("queued on the server, position"),
        "{screen:?}"
    );
    assert!(screen.contains("done"), "{screen:?}");

    assert_eq!(pipe.code, 0, "{pipe:?}");
    assert_eq!(pipe.stdout_text(), "done\n");
    assert_eq!(pipe.stderr, "", "nothing of the bar in a pipe");

    // With nothing to wait for (the containers above removed: each holds
    // its slot until then), a terminal gets the output and nothing else:
    // no spinner flashing while the container starts.
    server.assert_clean();
    let line = format!("{BIN} --server {} run {IMAGE} echo hi", server.addr);
    let mut command = Command::new("script");
    command
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null());
    let out = Out::of(command);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout_text(), "hi\r\n");
    server.assert_clean();
}

// ---------------------------------------------------------------------------
// What `serve` says when it cannot serve
// ---------------------------------------------------------------------------

fn serve_command(listen: &str) -> Command {
    let mut command = tcp_task_command();
    command
        .args(["serve", "--listen", listen])
        .env("RUST_LOG", "info")
        .env_remove("DOCKER_HOST");
    die_with_parent(&mut command);
    command
}

#[test]
fn serve_on_a_port_in_use_says_so() {
    let server = Server::start();
    let out = Out::of(serve_command(&server.addr));
    assert_eq!(out.code, 125, "{out:?}");
    let line = out.one_line_error();
    assert!(
        line.starts_with(&format!(
            "tcp-task: cannot listen on {}: Address already in use",
            server.addr
        )),
        "{line}"
    );
    assert!(
        line.contains("pick another address with --listen"),
        "{line}"
    );
    // The first server still serves.
    assert_eq!(server.run(&["status"]).code, 0);
}

#[test]
fn serve_without_an_engine_says_how_to_start_one() {
    let mut command = serve_command("127.0.0.1:0");
    command.env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let out = Out::of(command);
    assert_eq!(out.code, 125, "{out:?}");
    let line = out.one_line_error();
    assert!(
        line.starts_with(
            "tcp-task: cannot reach the Docker engine at unix:///nonexistent/docker.sock"
        ),
        "{line}"
    );
    assert!(line.contains("Is dockerd running?"), "{line}");
}

#[test]
fn serve_without_permission_on_the_socket_says_what_to_do() {
    let socket = tcp_task::docker::docker_host();
    let Some(path) = socket.strip_prefix("unix://") else {
        eprintln!("skipped: the engine is not on a unix socket ({socket})");
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    let world_writable = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o002 != 0)
        .unwrap_or(true);
    if unsafe { libc::geteuid() } != 0 || world_writable {
        eprintln!("skipped: needs root (to become nobody) and a socket closed to others");
        return;
    }
    let mut command = serve_command("127.0.0.1:0");
    unsafe {
        command.pre_exec(|| {
            // As nobody, with no supplementary groups (no `docker` group).
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("skipped: nobody cannot run {BIN}: {e}");
            return;
        }
    };
    let out = Out::wait(child, Instant::now());
    assert_eq!(out.code, 125, "{out:?}");
    let line = out.one_line_error();
    assert!(line.contains("Permission denied"), "{line}");
    assert!(
        line.contains("add the user to the `docker` group"),
        "{line}"
    );
}

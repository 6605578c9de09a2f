//! Durable tasks against the real binary and engine: tasks that outlive a
//! `kill -9` of their server and the connections of their clients, with
//! nothing of their output or their endings lost.
//!
//! Each test starts its own `tcp-task serve` (tests/cli_server), kills it
//! with SIGKILL where the test says so, and starts it again on the same
//! address: it adopts its tasks from their containers.

mod cli_server;

use cli_server::kept::{
    detach, eventually, ps_all, run_in_background, sha, state_of, ticks_output,
};
use cli_server::{Out, Server};
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tcp_task::images::EXAMPLES_IMAGE as IMAGE;
use tcp_task::{Client, ProgressEvent, TaskEvent, TaskSpec};

/// Whether the kept task `id` has a container (named after it).
fn has_container(id: &str) -> bool {
    let (runtime, docker) = cli_server::engine();
    let name = tcp_task::executor::container_name(&tcp_task::TaskId::parse(id).unwrap());
    runtime
        .block_on(docker.inspect_container(&name, None))
        .is_ok()
}

/// A library client's run of `spec`, in a thread of its own: its stdout,
/// stderr, exit status and how many times it resumed.
fn library_run(
    addr: String,
    spec: TaskSpec,
) -> std::thread::JoinHandle<(Vec<u8>, Vec<u8>, i32, u32)> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let client = Client::connect(addr.as_str()).await.unwrap();
            let mut handle = client.run(spec).await.unwrap();
            let (mut stdout, mut stderr, mut resumed) = (Vec::new(), Vec::new(), 0);
            while let Some(event) = handle.next().await {
                match event {
                    TaskEvent::Stdout(chunk) => stdout.extend_from_slice(&chunk),
                    TaskEvent::Stderr(chunk) => stderr.extend_from_slice(&chunk),
                    TaskEvent::Progress(ProgressEvent::Resumed { .. }) => resumed += 1,
                    _ => {}
                }
            }
            let status = handle.wait().await.expect("the task's end").exit_status();
            (stdout, stderr, status, resumed)
        })
    })
}

#[test]
fn tasks_outlive_two_server_kills_and_lose_no_byte() {
    let mut server = Server::start();
    let n = 40;
    let (stdout, stderr) = ticks_output(n);
    let ticks = |code: &'static str| vec![IMAGE, "ticks", "40", "100", code];

    // An uninterrupted run first: what every other view must equal.
    let mut plain = vec!["run"];
    plain.extend(ticks("3"));
    let plain = server.run(&plain);
    assert_eq!(
        (plain.code, &plain.stdout),
        (3, &stdout),
        "{}",
        plain.stderr
    );
    assert_eq!(plain.stderr.as_bytes(), &stderr[..]);

    let id = detach(&server, &ticks("3"));
    let (cli, started) = run_in_background(&server, &ticks("4"));
    let mut spec = TaskSpec::image(IMAGE, ["ticks", "40", "100", "5"]);
    spec.timeout_ms = Some(60_000);
    let library = library_run(server.addr.clone(), spec);
    server.wait_for_running(3);

    // Output is written before, during and after each gap.
    std::thread::sleep(Duration::from_millis(800));
    server.kill_and_restart(Duration::from_millis(700));
    std::thread::sleep(Duration::from_millis(600));
    server.kill_and_restart(Duration::from_millis(300));

    let cli = Out::wait(cli, started);
    assert_eq!(
        cli.code, 4,
        "the CLI's run ends with the task's status: {}",
        cli.stderr
    );
    assert_eq!(
        sha(&cli.stdout),
        sha(&stdout),
        "run's stdout across the kills"
    );
    assert_eq!(
        sha(cli.stderr.as_bytes()),
        sha(&stderr),
        "run's stderr across the kills"
    );

    let (lib_out, lib_err, lib_status, resumed) = library.join().unwrap();
    assert_eq!(lib_status, 5);
    assert_eq!(sha(&lib_out), sha(&stdout), "a resumed handle's stdout");
    assert_eq!(sha(&lib_err), sha(&stderr), "a resumed handle's stderr");
    assert!(resumed >= 1, "the handle said it resumed ({resumed} times)");

    let waited = server.run(&["wait", &id]);
    assert_eq!(
        String::from_utf8_lossy(&waited.stdout).trim(),
        "3",
        "{}",
        waited.stderr
    );
    let logs = server.run(&["logs", &id]);
    assert_eq!(sha(&logs.stdout), sha(&stdout), "logs: stdout");
    assert_eq!(sha(logs.stderr.as_bytes()), sha(&stderr), "logs: stderr");
    let attached = server.run(&["attach", &id]);
    assert_eq!(attached.code, 3, "attach exits with the task's status");
    assert_eq!(sha(&attached.stdout), sha(&stdout), "attach: stdout");
    assert_eq!(
        sha(attached.stderr.as_bytes()),
        sha(&stderr),
        "attach: stderr"
    );

    assert_eq!(server.run(&["rm", &id]).code, 0);
    server.assert_clean();
}

#[test]
fn endings_that_fall_while_the_server_is_down_are_reported_after_it_restarts() {
    let mut server = Server::start();
    // The early one ends before the kill: a result the next server keeps.
    let finished = detach(&server, &[IMAGE, "echo", "early"]);
    eventually("the early task ends", Duration::from_secs(20), || {
        state_of(&server, &finished).is_some_and(|s| s.get("Ended").is_some())
    });
    // These end (or fall due) about 4 s after they start.
    let exited = detach(&server, &[IMAGE, "ticks", "9", "500", "42"]);
    let signaled = detach(&server, &[IMAGE, "killself", "TERM", "4000"]);
    let oom = detach(&server, &["--memory", "32m", IMAGE, "alloc", "256", "4000"]);
    let timed_out = detach(&server, &["--timeout", "4s", IMAGE, "sleep", "30"]);
    server.wait_for_running(4);
    let tasks = ps_all(&server);
    let running = tasks.iter().filter(|t| t["state"] == "Running").count();
    assert_eq!(
        running, 4,
        "all four run when the server is killed: {tasks:?}"
    );

    server.kill();
    // Long enough for each to end, and for the timeout to fall due.
    std::thread::sleep(Duration::from_millis(6000));
    server.start_again();

    let ending = |id: &str| -> Value {
        let state = state_of(&server, id).unwrap_or_else(|| panic!("task {id} was lost"));
        state["Ended"].clone()
    };
    let e = ending(&exited);
    assert_eq!(
        (e["ending"].as_str(), e["exit_code"].as_i64()),
        (Some("Exited"), Some(42))
    );
    let e = ending(&signaled);
    assert_eq!(
        (e["ending"].as_str(), e["signal"].as_i64()),
        (Some("Signaled"), Some(15))
    );
    assert_eq!(ending(&oom)["ending"], "OomKilled");
    // Still running at the restart, past its deadline: killed then.
    eventually(
        "the timeout fires after the restart",
        Duration::from_secs(20),
        || state_of(&server, &timed_out).is_some_and(|s| s["Ended"]["ending"] == "TimedOut"),
    );
    assert_eq!(ending(&finished)["exit_code"], 0);
    for (id, status) in [
        (&exited, "42"),
        (&signaled, "143"),
        (&oom, "137"),
        (&timed_out, "124"),
    ] {
        let out = server.run(&["wait", id]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            status,
            "wait {id}: {}",
            out.stderr
        );
    }
    assert_eq!(server.run(&["logs", &finished]).stdout, b"early\n");

    let mut rm = vec!["rm"];
    rm.extend([&exited, &signaled, &oom, &timed_out, &finished].map(String::as_str));
    assert_eq!(server.run(&rm).code, 0);
    server.assert_clean();
}

#[test]
fn tasks_still_queued_when_the_server_is_killed_run_after_it_restarts() {
    // One task at a time: the holder runs, the rest wait in the queue,
    // with no container yet, when the server is killed.
    let mut server = Server::with_executor("max_concurrent = 1");
    let holder = detach(&server, &[IMAGE, "ticks", "8", "500", "0"]);
    server.wait_for_running(1);
    let queued = [
        detach(&server, &[IMAGE, "echo", "first"]),
        detach(&server, &[IMAGE, "ticks", "3", "10", "7"]),
        detach(&server, &[IMAGE, "echo", "last"]),
    ];
    // And an attached `run`, queued too: it resumes after the restart.
    let (attached, started) = run_in_background(&server, &[IMAGE, "ticks", "6", "100", "5"]);
    std::thread::sleep(Duration::from_millis(500));
    for id in &queued {
        assert!(
            !has_container(id),
            "task {id} waits in the queue, with no container, when the server is killed"
        );
    }

    server.kill_and_restart(Duration::from_millis(200));

    let (ticks_out, ticks_err) = ticks_output(3);
    let expected: [(&str, &[u8], &[u8]); 3] = [
        ("0", b"first\n", b""),
        ("7", &ticks_out, &ticks_err),
        ("0", b"last\n", b""),
    ];
    for (id, (status, stdout, stderr)) in queued.iter().zip(expected) {
        let out = server.run(&["wait", id]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            status,
            "wait {id} after the restart: {}",
            out.stderr
        );
        let logs = server.run(&["logs", id]);
        assert_eq!(
            (logs.stdout.as_slice(), logs.stderr.as_bytes()),
            (stdout, stderr),
            "logs {id}"
        );
    }
    assert_eq!(server.run(&["wait", &holder]).stdout, b"0\n");
    let attached = Out::wait(attached, started);
    let (out, err) = ticks_output(6);
    assert_eq!(
        (
            attached.code,
            attached.stdout.as_slice(),
            attached.stderr.as_bytes()
        ),
        (5, out.as_slice(), err.as_slice()),
        "the attached run across the restart"
    );

    let mut rm = vec!["rm"];
    rm.extend(queued.iter().chain([&holder]).map(String::as_str));
    assert_eq!(server.run(&rm).code, 0);
    server.assert_clean();
}

#[test]
fn retention_and_the_reattach_grace_expire() {
    let config = "[server]\nretention = 2.0\nreattach_grace = 1.0\n";
    let server = Server::with_config(&[], config, "");

    // A detached result goes with its container after the retention.
    let id = detach(&server, &[IMAGE, "echo", "kept"]);
    assert_eq!(
        String::from_utf8_lossy(&server.run(&["wait", &id]).stdout).trim(),
        "0"
    );
    assert_eq!(server.run(&["logs", &id]).stdout, b"kept\n");
    eventually("the result expires", Duration::from_secs(15), || {
        state_of(&server, &id).is_none() && server.containers().is_empty()
    });
    let gone = server.run(&["wait", &id]);
    assert_eq!(gone.code, 125);
    assert!(gone.stderr.contains("no task"), "{}", gone.stderr);

    // A client that vanishes (killed, no cancel sent): its task runs on
    // for the grace, then it is cancelled and its container removed.
    let (mut cli, _) = run_in_background(&server, &[IMAGE, "sleep", "60"]);
    server.wait_for_running(1);
    cli_server::signal(cli.id(), libc::SIGKILL);
    let _ = cli.wait();
    let running = ps_all(&server);
    assert_eq!(
        running.len(),
        1,
        "the abandoned task still runs: {running:?}"
    );
    assert_eq!(running[0]["state"], "Running");
    eventually("the grace runs out", Duration::from_secs(15), || {
        ps_all(&server).is_empty() && server.containers().is_empty()
    });
}

#[test]
fn named_clients_see_and_touch_only_their_own_tasks() {
    let config = "[clients.alice]\ntoken = \"alice-secret-token-0123456789\"\n\
                  [clients.bob]\ntoken = \"bob-secret-token-0123456789ab\"\n";
    let server = Server::with_config(&[], config, "");
    let as_client = |token: &str, args: &[&str]| {
        let mut command = server.cli(args);
        command.env("TCP_TASK_TOKEN", token);
        Out::of(command)
    };
    let (alice, bob) = (
        "alice-secret-token-0123456789",
        "bob-secret-token-0123456789ab",
    );
    let out = as_client(alice, &["run", "-d", IMAGE, "sleep", "30"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let listed = as_client(bob, &["ps", "-a", "--json"]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "[]");
    let never = "aaaaaaaaaaaaaaaaaaaa";
    for command in [
        &["wait"][..],
        &["logs"],
        &["attach"],
        &["kill"],
        &["rm", "-f"],
    ] {
        let on = |task: &str| {
            let mut args = command.to_vec();
            args.push(task);
            let out = as_client(bob, &args);
            assert_ne!(out.code, 0, "bob's {args:?} succeeded");
            (out.code, out.stderr.replace(task, "ID"))
        };
        // The same answer as for an id that never existed.
        assert_eq!(on(&id), on(never), "bob's {command:?}");
    }
    let mine = as_client(alice, &["ps", "--json"]);
    assert!(String::from_utf8_lossy(&mine.stdout).contains(&id));
    assert_eq!(as_client(alice, &["rm", "-f", &id]).code, 0);
    server.assert_clean();
}

#[test]
fn tasks_on_warm_containers_outlive_a_server_kill_too() {
    let config =
        format!("[catalog.ticker]\nimage = \"{IMAGE}\"\ncommand = [\"ticks\"]\nwarm = 2\n");
    let mut server = Server::with_config(&[], &config, "");
    let warm_ready = |server: &Server| {
        let out = server.run(&["status", "--json"]);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        status["pools"]
            .as_array()
            .is_some_and(|pools| pools.iter().any(|p| p["warm"].as_u64() >= Some(2)))
    };
    eventually(
        "two warm containers are ready",
        Duration::from_secs(60),
        || warm_ready(&server),
    );
    let (stdout, stderr) = ticks_output(30);
    let out = server.run(&["task", "-d", "ticker", "30", "100", "7"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut attached = server.cli(["task", "ticker", "30", "100", "8"]);
    attached.stdout(Stdio::piped()).stderr(Stdio::piped());
    let (attached, started) = (attached.spawn().unwrap(), Instant::now());
    std::thread::sleep(Duration::from_millis(1200));
    server.kill_and_restart(Duration::from_millis(700));

    let attached = Out::wait(attached, started);
    assert_eq!(attached.code, 8, "{}", attached.stderr);
    assert_eq!(sha(&attached.stdout), sha(&stdout), "the warm run's stdout");
    assert_eq!(
        sha(attached.stderr.as_bytes()),
        sha(&stderr),
        "the warm run's stderr"
    );
    let waited = server.run(&["wait", &id]);
    assert_eq!(
        String::from_utf8_lossy(&waited.stdout).trim(),
        "7",
        "{}",
        waited.stderr
    );
    let logs = server.run(&["logs", &id]);
    assert_eq!(
        sha(&logs.stdout),
        sha(&stdout),
        "the detached warm task's stdout"
    );
    assert_eq!(sha(logs.stderr.as_bytes()), sha(&stderr), "its stderr");
    assert_eq!(server.run(&["rm", &id]).code, 0);
    server.assert_clean();
}

#[test]
fn an_adopted_warm_task_takes_the_signal_it_is_sent() {
    let config =
        format!("[catalog.ticker]\nimage = \"{IMAGE}\"\ncommand = [\"ticks\"]\nwarm = 1\n");
    let mut server = Server::with_config(&[], &config, "");
    eventually("a warm container is ready", Duration::from_secs(60), || {
        let out = server.run(&["status", "--json"]);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        status["pools"]
            .as_array()
            .is_some_and(|pools| pools.iter().any(|p| p["warm"].as_u64() >= Some(1)))
    });
    let out = server.run(&["task", "-d", "ticker", "300", "100", "9"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    std::thread::sleep(Duration::from_millis(500));
    server.kill_and_restart(Duration::from_millis(300));

    // Its agent no longer hears from a server: the signal goes to the
    // container, whose agent (PID 1) passes it on.
    let refused = server.run(&["kill", "-s", "7", &id]);
    assert_ne!(
        refused.code, 0,
        "a signal the agent does not pass on is refused"
    );
    let killed = server.run(&["kill", "-s", "TERM", &id]);
    assert_eq!(killed.code, 0, "{}", killed.stderr);
    let waited = server.run(&["wait", &id]);
    assert_eq!(
        String::from_utf8_lossy(&waited.stdout).trim(),
        "143",
        "SIGTERM, not SIGKILL (137): {}",
        waited.stderr
    );
    assert_eq!(server.run(&["rm", &id]).code, 0);
    server.assert_clean();
}

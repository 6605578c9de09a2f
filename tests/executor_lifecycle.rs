//! The Docker executor against a real engine: exit codes, signals, output
//! order and bytes, stdin, streaming, start errors, policy refusals,
//! settings (env, workdir, user, read-only root), catalog tasks.
//! Every test ends by checking that none of its containers is left.

mod common;

use common::{task, Event, Harness, EXAMPLES_IMAGE};
use sha2::{Digest, Sha256};
use tcp_task::catalog::Catalog;
use tcp_task::executor::ExecutorConfig;
use tcp_task::protocol::{Ending, ErrorKind, OutputStream, TaskSpec};
use tcp_task::ProgressEvent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_0_1_42_with_lifecycle_events() {
    let h = Harness::standard().await;
    for (command, code) in [
        (vec!["true"], 0),
        (vec!["false"], 1),
        (vec!["exit", "42"], 42),
    ] {
        let run = h
            .run(TaskSpec::image(EXAMPLES_IMAGE, command.clone()))
            .await;
        let outcome = run.outcome();
        assert_eq!(outcome.ending, Ending::Exited, "{command:?}");
        assert_eq!(outcome.exit_code, Some(code), "{command:?}");
        assert_eq!(outcome.exit_status(), code);
        let progress = run.progress();
        assert!(matches!(
            progress.first(),
            Some(ProgressEvent::Created { .. })
        ));
        assert_eq!(progress.last(), Some(&ProgressEvent::Started));
    }
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn death_by_signal_is_reported_as_such() {
    let h = Harness::standard().await;
    for signal in [9, 15] {
        let run = h.run(task(["killself", &signal.to_string()])).await;
        let outcome = run.outcome();
        assert_eq!(outcome.ending, Ending::Signaled);
        assert_eq!(outcome.signal, Some(signal));
        assert_eq!(outcome.exit_status(), 128 + signal);
    }
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_stay_apart_and_in_order() {
    let h = Harness::standard().await;
    let run = h.run(task(["mixed", "300"])).await;
    assert!(run.outcome().success());
    let expected =
        |prefix: &str| -> String { (0..300).map(|i| format!("{prefix} {i}\n")).collect() };
    assert_eq!(run.stdout_text(), expected("out"));
    assert_eq!(run.stderr_text(), expected("err"));
    h.assert_clean().await;
}

/// `randbytes N SEED`'s generator, as the tools document it: xorshift64*,
/// each output little-endian, the last one cut short.
fn xorshift64_star(seed: u64, len: usize) -> Vec<u8> {
    let mut state = if seed == 0 {
        0x9E37_79B9_7F4A_7C15
    } else {
        seed
    };
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_of_random_bytes_is_byte_exact() {
    const LEN: usize = 1 << 20;
    let h = Harness::standard().await;
    let run = h.run(task(["randbytes", &LEN.to_string(), "7"])).await;
    assert!(run.outcome().success());
    assert!(run.stderr.is_empty());
    assert_eq!(run.stdout.len(), LEN);
    // The reference is the same command through `docker run`, which shares
    // nothing with our relay.
    let reference = std::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            EXAMPLES_IMAGE,
            "randbytes",
        ])
        .arg(LEN.to_string())
        .arg("7")
        .output()
        .expect("docker CLI runs");
    assert!(reference.status.success());
    assert_eq!(
        Sha256::digest(&run.stdout),
        Sha256::digest(&reference.stdout),
        "relayed bytes differ from docker run's"
    );
    assert_eq!(
        Sha256::digest(&run.stdout),
        Sha256::digest(xorshift64_star(7, LEN)),
        "relayed bytes differ from the documented generator"
    );
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_round_trips_through_cat_and_close_is_eof() {
    let h = Harness::standard().await;
    let spec = TaskSpec {
        stdin: true,
        ..task(["cat"])
    };
    let mut running = h.start(spec);
    let binary: Vec<u8> = (0..=255u8).cycle().take(200 * 1024).collect();
    let mut sent = b"hello\n".to_vec();
    running.send(b"hello\n").await;
    running.send(&binary).await;
    sent.extend_from_slice(&binary);
    running.send(b"bye").await;
    sent.extend_from_slice(b"bye");
    running.close_stdin();
    let run = running.finish().await;
    // `cat` only exits once it reads end-of-file, so success proves EOF
    // arrived.
    assert!(run.outcome().success(), "{:?}", run.outcome());
    assert_eq!(run.stdout.len(), sent.len());
    assert!(run.stdout == sent, "stdin did not round-trip byte for byte");
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_stream_as_written_not_at_exit() {
    let h = Harness::standard().await;
    let run = h.run(task(["lines", "5", "100"])).await;
    assert!(run.outcome().success());
    let arrivals: Vec<_> = run
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Output(at, OutputStream::Stdout, chunk) => Some((*at, chunk.clone())),
            _ => None,
        })
        .collect();
    // Each line is its own chunk, arriving in order, each strictly after
    // the previous one and before the executor reported the exit.
    assert_eq!(arrivals.len(), 5, "lines were batched: {arrivals:?}");
    for (i, (at, chunk)) in arrivals.iter().enumerate() {
        assert!(chunk.ends_with(b"\n"));
        assert!(*at < run.ended);
        if i > 0 {
            assert!(arrivals[i - 1].0 < *at);
        }
    }
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_command_is_command_not_found() {
    let h = Harness::standard().await;
    let run = h.run(task(["no-such-command"])).await;
    let error = run.error();
    assert_eq!(error.kind, ErrorKind::CommandNotFound, "{error:?}");
    assert_eq!(error.kind.exit_status(), 127);
    assert!(error.message.contains("no-such-command"));
    let run = h.run(task(["/bin/no-such-file"])).await;
    assert_eq!(run.error().kind, ErrorKind::CommandNotFound);
    let run = h.run(task(["/tmp"])).await;
    assert_eq!(run.error().kind, ErrorKind::CommandNotInvokable);
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_image_not_found() {
    let h = Harness::standard().await;
    let run = h
        .run(TaskSpec::image("tcp-task-no-such-image:0", ["true"]))
        .await;
    let error = run.error();
    assert_eq!(error.kind, ErrorKind::ImageNotFound, "{error:?}");
    assert!(error.message.contains("tcp-task-no-such-image:0"));
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_policy_are_refused_before_any_container() {
    let h = Harness::standard().await;
    let refusals = [
        (
            TaskSpec {
                memory_bytes: Some(64 << 30),
                ..task(["true"])
            },
            "max_memory_bytes",
        ),
        (
            TaskSpec {
                network: Some("bridge".into()),
                ..task(["true"])
            },
            "allow_network",
        ),
        (
            TaskSpec {
                nano_cpus: Some(64_000_000_000),
                ..task(["true"])
            },
            "max_nano_cpus",
        ),
        (
            TaskSpec {
                pids_limit: Some(-1),
                ..task(["true"])
            },
            "max_pids_limit",
        ),
        (
            TaskSpec {
                timeout_ms: Some(u64::MAX),
                ..task(["true"])
            },
            "max_timeout_ms",
        ),
    ];
    for (spec, limit) in refusals {
        let run = h.run(spec).await;
        let error = run.error();
        assert_eq!(error.kind, ErrorKind::PolicyDenied);
        assert!(error.message.contains(limit), "{}", error.message);
        assert!(
            run.progress().is_empty(),
            "nothing happened before the refusal"
        );
    }
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_workdir_user_and_read_only_root_apply() {
    let h = Harness::standard().await;
    let env = h
        .run(TaskSpec {
            env: vec![("GREETING".into(), "hello world".into())],
            ..task(["env"])
        })
        .await;
    assert!(env
        .stdout_text()
        .lines()
        .any(|l| l == "GREETING=hello world"));
    let pwd = h
        .run(TaskSpec {
            workdir: Some("/tmp".into()),
            ..task(["pwd"])
        })
        .await;
    assert_eq!(pwd.stdout_text(), "/tmp\n");
    let id = h
        .run(TaskSpec {
            user: Some("65534:65534".into()),
            ..task(["id"])
        })
        .await;
    assert_eq!(id.stdout_text(), "uid=65534 gid=65534\n");
    let read_only = |path: &str| TaskSpec {
        read_only_root: true,
        ..task(["writefile", path])
    };
    let root = h.run(read_only("/x")).await;
    assert_eq!(root.outcome().exit_code, Some(1), "the root is read-only");
    let tmp = h.run(read_only("/tmp/x")).await;
    assert!(tmp.outcome().success(), "/tmp is a writable tmpfs");
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_tasks_resolve_with_params_in_the_environment() {
    let catalog = Catalog::from_toml(&format!(
        r#"
        [show-env]
        description = "Prints its environment"
        image = "{EXAMPLES_IMAGE}"
        command = ["env"]
        "#
    ))
    .expect("catalog parses");
    let h = Harness::with_catalog(ExecutorConfig::default(), catalog).await;
    let mut spec = TaskSpec::named("show-env", Vec::<String>::new());
    if let tcp_task::protocol::Task::Named { params, .. } = &mut spec.task {
        *params = Some(r#"{"n":3}"#.into());
    }
    let run = h.run(spec).await;
    assert!(run.outcome().success());
    assert!(run
        .stdout_text()
        .lines()
        .any(|l| l == r#"TASK_PARAMS={"n":3}"#));
    let unknown = h.run(TaskSpec::named("nope", Vec::<String>::new())).await;
    assert_eq!(unknown.error().kind, ErrorKind::UnknownTask);
    assert_eq!(h.admission.catalog().len(), 1);
    h.assert_clean().await;
}

//! Differential test: for a corpus of commands, the executor gives the same
//! stdout, stderr and exit status as `docker run` on the same image.
//!
//! The reference runs `docker run --rm --init --network none`: tcp-task
//! always runs docker-init as PID 1 (a hardening default), and without it a
//! process that is PID 1 cannot even kill itself, so `--init` is what makes
//! the two comparable. Where tcp-task reports a task that could not start
//! as an error (a missing command), the error's `exit_status()` is compared.

mod common;

use common::{Harness, EXAMPLES_IMAGE};
use tcp_task::protocol::TaskSpec;

/// One corpus entry: the command, the settings, what to compare.
struct Case {
    name: &'static str,
    command: Vec<&'static str>,
    env: Vec<(&'static str, &'static str)>,
    workdir: Option<&'static str>,
    user: Option<&'static str>,
    /// Compare stderr too (not for start failures, where docker's message
    /// and ours are worded differently).
    compare_stderr: bool,
}

fn case(name: &'static str, command: &[&'static str]) -> Case {
    Case {
        name,
        command: command.to_vec(),
        env: Vec::new(),
        workdir: None,
        user: None,
        compare_stderr: true,
    }
}

fn corpus() -> Vec<Case> {
    vec![
        case("exit 0", &["true"]),
        case("exit 1", &["false"]),
        case("exit 42", &["exit", "42"]),
        case("stderr", &["echoerr", "something", "went", "wrong"]),
        case("interleaved", &["mixed", "100"]),
        case("large output", &["randbytes", "3000000", "11"]),
        case("zeros", &["zeros", "100000"]),
        Case {
            env: vec![("FOO", "bar baz"), ("EMPTY", "")],
            ..case("env", &["env"])
        },
        Case {
            workdir: Some("/tmp"),
            ..case("workdir", &["pwd"])
        },
        Case {
            user: Some("65534:65534"),
            ..case("user", &["id"])
        },
        Case {
            compare_stderr: false,
            ..case("missing command", &["no-such-command"])
        },
        case("signal", &["killself", "15"]),
    ]
}

struct Observed {
    status: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

async fn docker_run(case: &Case) -> Observed {
    let mut command = tokio::process::Command::new("docker");
    command.args(["run", "--rm", "--init", "--network", "none"]);
    for (key, value) in &case.env {
        command.arg("-e").arg(format!("{key}={value}"));
    }
    if let Some(workdir) = case.workdir {
        command.args(["-w", workdir]);
    }
    if let Some(user) = case.user {
        command.args(["-u", user]);
    }
    command.arg(EXAMPLES_IMAGE).args(&case.command);
    let output = command.output().await.expect("the docker CLI runs");
    Observed {
        status: output.status.code().unwrap_or(-1),
        stdout: output.stdout,
        stderr: output.stderr,
    }
}

async fn tcp_task_run(h: &Harness, case: &Case) -> Observed {
    let spec = TaskSpec {
        env: case
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        workdir: case.workdir.map(str::to_owned),
        user: case.user.map(str::to_owned),
        ..TaskSpec::image(EXAMPLES_IMAGE, case.command.clone())
    };
    let run = h.run(spec).await;
    let status = match &run.result {
        Ok(outcome) => outcome.exit_status(),
        Err(error) => error.kind.exit_status(),
    };
    Observed {
        status,
        stdout: run.stdout,
        stderr: run.stderr,
    }
}

/// The container's host name is its id, which differs run to run.
fn without_hostname(env: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(env)
        .lines()
        .filter(|line| !line.starts_with("HOSTNAME="))
        .flat_map(|line| format!("{line}\n").into_bytes())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_task_matches_docker_run_on_the_corpus() {
    let h = Harness::standard().await;
    let mut mismatches = Vec::new();
    for case in corpus() {
        let reference = docker_run(&case).await;
        let ours = tcp_task_run(&h, &case).await;
        let (mut ref_out, mut our_out) = (reference.stdout, ours.stdout);
        if case.name == "env" {
            ref_out = without_hostname(&ref_out);
            our_out = without_hostname(&our_out);
        }
        if reference.status != ours.status {
            mismatches.push(format!(
                "{}: exit status docker {} vs ours {}",
                case.name, reference.status, ours.status
            ));
        }
        if ref_out != our_out {
            mismatches.push(format!(
                "{}: stdout differs ({} vs {} bytes)",
                case.name,
                ref_out.len(),
                our_out.len()
            ));
        }
        if case.compare_stderr && reference.stderr != ours.stderr {
            mismatches.push(format!(
                "{}: stderr docker {:?} vs ours {:?}",
                case.name,
                String::from_utf8_lossy(&reference.stderr),
                String::from_utf8_lossy(&ours.stderr)
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_exercises_every_ending_kind() {
    // Guards the corpus itself: it must keep covering a success, a failure,
    // a signal and a start failure.
    let h = Harness::standard().await;
    let statuses: Vec<i32> = {
        let mut v = Vec::new();
        for name in ["exit 0", "exit 42", "signal", "missing command"] {
            let case = corpus()
                .into_iter()
                .find(|c| c.name == name)
                .expect("case exists");
            v.push(tcp_task_run(&h, &case).await.status);
        }
        v
    };
    assert_eq!(statuses, vec![0, 42, 143, 127]);
    h.assert_clean().await;
}

//! The differential corpus: commands whose stdout, stderr and exit status
//! must be the same however a task runs (`docker run`, the cold path, the
//! warm path), and the comparison.

use super::{Harness, Run, EXAMPLES_IMAGE};
use tcp_task::protocol::TaskSpec;

/// One corpus entry: the command, the settings, what to compare.
pub struct Case {
    pub name: &'static str,
    pub command: Vec<&'static str>,
    pub env: Vec<(&'static str, &'static str)>,
    pub workdir: Option<&'static str>,
    pub user: Option<&'static str>,
    /// Compare stderr too (not for start failures, where docker's message
    /// and ours are worded differently).
    pub compare_stderr: bool,
}

pub fn case(name: &'static str, command: &[&'static str]) -> Case {
    Case {
        name,
        command: command.to_vec(),
        env: Vec::new(),
        workdir: None,
        user: None,
        compare_stderr: true,
    }
}

pub fn corpus() -> Vec<Case> {
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

#[derive(Debug)]
pub struct Observed {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

pub async fn docker_run(case: &Case) -> Observed {
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

pub fn spec_of(case: &Case) -> TaskSpec {
    TaskSpec {
        env: case
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        workdir: case.workdir.map(str::to_owned),
        user: case.user.map(str::to_owned),
        ..TaskSpec::image(EXAMPLES_IMAGE, case.command.clone())
    }
}

pub async fn tcp_task_run(h: &Harness, case: &Case) -> Observed {
    observe(h.run(spec_of(case)).await)
}

/// What a run gives, as `docker run` would show it.
pub fn observe(run: Run) -> Observed {
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
pub fn without_hostname(env: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(env)
        .lines()
        .filter(|line| !line.starts_with("HOSTNAME="))
        .flat_map(|line| format!("{line}\n").into_bytes())
        .collect()
}

/// How `ours` differs from `reference` on `case`; empty when they agree.
pub fn mismatches(case: &Case, reference: Observed, ours: Observed) -> Vec<String> {
    let mut found = Vec::new();
    let (mut ref_out, mut our_out) = (reference.stdout, ours.stdout);
    if case.name == "env" {
        ref_out = without_hostname(&ref_out);
        our_out = without_hostname(&our_out);
    }
    if reference.status != ours.status {
        found.push(format!(
            "{}: exit status {} vs {}",
            case.name, reference.status, ours.status
        ));
    }
    if ref_out != our_out {
        found.push(format!(
            "{}: stdout differs ({} vs {} bytes)",
            case.name,
            ref_out.len(),
            our_out.len()
        ));
    }
    if case.compare_stderr && reference.stderr != ours.stderr {
        found.push(format!(
            "{}: stderr {:?} vs {:?}",
            case.name,
            String::from_utf8_lossy(&reference.stderr),
            String::from_utf8_lossy(&ours.stderr)
        ));
    }
    found
}

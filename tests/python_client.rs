//! The second client: `clients/python`, written from docs/PROTOCOL.md alone,
//! against real `tcp-task serve` processes and the real engine.
//!
//! - Its own unittest suite runs with the addresses of two servers in its
//!   environment: a plaintext one, and one with TLS (mutual) and a token.
//!   Every one of its tests must run: a skip fails here.
//! - Its command line (`python3 -m tcp_task_client run …`) and `tcp-task
//!   run` run the same corpus (binary output, signals, a missing command, a
//!   timeout, stdin, refusals); stdout, the task's stderr and the exit
//!   status must be the same.
//!
//! Without python3 both say `skipped: python3 not found` and pass: CI
//! installs it (scripts/test.sh), so there a missing python3 never skips.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod cli_server;

use cli_server::{Server, BIN};

const IMAGE: &str = tcp_task::images::EXAMPLES_IMAGE;
const TOKEN: &str = "python-client-test-token";

/// Longest any one process (the whole unittest run included) may take.
const DEADLINE: Duration = Duration::from_secs(600);

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python")
}

/// Whether `python3` runs; says `skipped: …` when it does not.
fn have_python() -> bool {
    let found = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("skipped: python3 not found");
    }
    found
}

/// A CA, a server certificate for `localhost` and `127.0.0.1`, and a client
/// certificate, as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "tcp-task python test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&key).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        let issuer = Issuer::new(params, key);
        let leaf = |names: &[&str], usage, name: &str| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names.clone()).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, &names[0]);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            // Python 3.13's strict verification wants it.
            params.use_authority_key_identifier_extension = true;
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            let (cert_path, key_path) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            );
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            (cert_path, key_path)
        };
        let (server_cert, server_key) = leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            "server",
        );
        let (client_cert, client_key) = leaf(
            &["python-client.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
            "client",
        );
        Pki {
            ca,
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Out {
    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Starts `command` with `input` on its stdin (or none).
fn spawn(
    mut command: Command,
    input: Option<Vec<u8>>,
) -> (Child, Option<std::thread::JoinHandle<()>>) {
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("the command starts");
    let writer = input.map(|input| {
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        })
    });
    (child, writer)
}

/// Waits for a spawned child, killing it past [`DEADLINE`].
fn finish(mut child: Child, writer: Option<std::thread::JoinHandle<()>>, what: &str) -> Out {
    let started = Instant::now();
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(writer) = writer {
        writer.join().unwrap();
    }
    use std::os::unix::process::ExitStatusExt;
    Out {
        code: status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// A command with none of the user's tcp-task settings in its environment.
fn clean(mut command: Command) -> Command {
    for name in [
        "TCP_TASK_SERVER",
        "TCP_TASK_TOKEN",
        "TCP_TASK_CONFIG",
        "TCP_TASK_TLS_CA",
        "TCP_TASK_TLS_CERT",
        "TCP_TASK_TLS_KEY",
        "RUST_BACKTRACE",
    ] {
        command.env_remove(name);
    }
    command
}

fn python() -> Command {
    let mut command = clean(Command::new("python3"));
    command
        .current_dir(python_dir())
        .env("PYTHONPATH", python_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    command
}

// ---------------------------------------------------------------------------
// The client's own suite
// ---------------------------------------------------------------------------

#[test]
fn the_python_clients_own_suite_passes_against_real_servers() {
    if !have_python() {
        return;
    }
    let plain = Server::with_config(&[], "[server]\nmax_tasks_per_connection = 4\n", "");
    // For the durable-task tests: without warm containers, because a task
    // that runs in one is not kept by its id yet (an Attach, Kill or logs
    // of it answers NoSuchTask).
    let durable = Server::with_config(&[], "", "[executor.warm]\nenabled = false\n");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let token_file = dir.path().join("tokens");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let tls = Server::with_config(
        &[
            "--token-file".as_ref(),
            token_file.as_os_str(),
            "--tls-cert".as_ref(),
            pki.server_cert.as_os_str(),
            "--tls-key".as_ref(),
            pki.server_key.as_os_str(),
            "--tls-client-ca".as_ref(),
            pki.ca.as_os_str(),
        ],
        "",
        "",
    );

    let mut command = python();
    command
        .args(["-m", "unittest", "discover", "-s", "tests", "-v"])
        .env("TCP_TASK_TEST_SERVER", &plain.addr)
        .env("TCP_TASK_TEST_DURABLE_SERVER", &durable.addr)
        .env("TCP_TASK_TEST_TLS_SERVER", &tls.addr)
        .env("TCP_TASK_TEST_TLS_CA", &pki.ca)
        .env("TCP_TASK_TEST_TLS_CERT", &pki.client_cert)
        .env("TCP_TASK_TEST_TLS_KEY", &pki.client_key)
        .env("TCP_TASK_TEST_TOKEN", TOKEN)
        .env("TCP_TASK_TEST_IMAGE", IMAGE);
    let (child, writer) = spawn(command, None);
    let out = finish(child, writer, "the Python suite");
    let report = out.stderr_text();
    assert_eq!(out.code, 0, "the Python client's suite failed:\n{report}");
    // Every server it needs is given: a test that skips did not test.
    let skipped: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("... skipped"))
        .collect();
    assert!(
        skipped.is_empty(),
        "Python tests skipped although every server was given:\n{}",
        skipped.join("\n")
    );
    assert!(
        report.contains("\nOK"),
        "no OK at the end of the suite's report:\n{report}"
    );
    plain.assert_clean();
    // The durable server keeps a cancelled task's result for the reattach
    // grace; its drop checks that nothing is left once it has stopped.
    drop(durable);
}

// ---------------------------------------------------------------------------
// The command lines side by side
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

/// The task's own stderr, and the client's closing message if it printed
/// one (a last line starting with its name).
fn split_stderr(stderr: &[u8], prefix: &str) -> (Vec<u8>, Option<String>) {
    let text = stderr;
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let last = String::from_utf8_lossy(&body[start..]).into_owned();
    if last.starts_with(prefix) {
        (text[..start].to_vec(), Some(last))
    } else {
        (text.to_vec(), None)
    }
}

/// A corpus entry: its name, the arguments after `--server ADDR`, stdin.
type Case<'a> = (&'a str, Vec<&'a str>, Option<Vec<u8>>);

#[test]
fn the_python_command_line_matches_tcp_task_run_on_the_corpus() {
    if !have_python() {
        return;
    }
    let server = Server::start();
    let input = binary_data(1_000_000);
    let corpus: Vec<Case> = vec![
        ("exit 0", vec!["run", IMAGE, "true"], None),
        ("exit 42", vec!["run", IMAGE, "exit", "42"], None),
        (
            "stdout and stderr",
            vec!["run", IMAGE, "mixed", "200"],
            None,
        ),
        (
            "binary output",
            vec!["run", IMAGE, "randbytes", "2000000", "5"],
            None,
        ),
        ("zeros", vec!["run", IMAGE, "zeros", "100000"], None),
        (
            "stdin",
            vec!["run", "-i", IMAGE, "cat"],
            Some(input.clone()),
        ),
        (
            "workdir, user, env",
            vec![
                "run",
                "-w",
                "/tmp",
                "-u",
                "65534:65534",
                "-e",
                "A=b",
                IMAGE,
                "pwd",
            ],
            None,
        ),
        ("SIGKILL", vec!["run", IMAGE, "killself", "9"], None),
        ("SIGTERM", vec!["run", IMAGE, "killself", "15"], None),
        (
            "missing command",
            vec!["run", IMAGE, "no-such-command"],
            None,
        ),
        ("not executable", vec!["run", IMAGE, "/etc/passwd"], None),
        (
            "timeout",
            vec!["run", "--timeout", "1s", IMAGE, "sleep", "30"],
            None,
        ),
        (
            "out of memory",
            vec!["run", "--memory", "16m", IMAGE, "alloc", "100"],
            None,
        ),
        ("the image's default command", vec!["run", IMAGE], None),
        ("a catalog task", vec!["task", "sum", "1", "2", "3"], None),
        (
            "an unknown catalog task",
            vec!["task", "no-such-task"],
            None,
        ),
        (
            "refused by the policy",
            vec!["run", "--network", "host", IMAGE, "true"],
            None,
        ),
        (
            "a missing image",
            vec!["run", "tcp-task-no-such-image:0", "true"],
            None,
        ),
    ];

    // Both clients, every case, all at once.
    let started: Vec<_> = corpus
        .iter()
        .map(|(_, args, stdin)| {
            let mut rust = clean(Command::new(BIN));
            rust.arg("--server").arg(&server.addr).args(args);
            let mut py = python();
            py.args(["-m", "tcp_task_client", "--server", &server.addr])
                .args(args);
            (spawn(rust, stdin.clone()), spawn(py, stdin.clone()))
        })
        .collect();

    let mut wrong = Vec::new();
    for ((name, _, _), ((rust, rust_in), (py, py_in))) in corpus.iter().zip(started) {
        let rust = finish(rust, rust_in, "tcp-task run");
        let py = finish(py, py_in, "python3 -m tcp_task_client");
        let (rust_err, rust_note) = split_stderr(&rust.stderr, "tcp-task: ");
        let (py_err, py_note) = split_stderr(&py.stderr, "tcp-task-client: ");
        if rust.code != py.code {
            wrong.push(format!(
                "{name}: exit status {} (tcp-task run) vs {} (python); stderr:\n  {}\n  {}",
                rust.code,
                py.code,
                rust.stderr_text().trim(),
                py.stderr_text().trim()
            ));
        }
        if rust.stdout != py.stdout {
            wrong.push(format!(
                "{name}: stdout differs: {} vs {} bytes",
                rust.stdout.len(),
                py.stdout.len()
            ));
        }
        if rust_err != py_err {
            wrong.push(format!(
                "{name}: the task's stderr differs: {:?} vs {:?}",
                String::from_utf8_lossy(&rust_err),
                String::from_utf8_lossy(&py_err)
            ));
        }
        if rust_note.is_some() != py_note.is_some() {
            wrong.push(format!(
                "{name}: one client explains the end, the other not: {rust_note:?} vs {py_note:?}"
            ));
        }
        if *name == "timeout" {
            for note in [&rust_note, &py_note] {
                let says = note.as_deref().unwrap_or_default();
                if !says.contains("timed out") {
                    wrong.push(format!("{name}: {says:?} does not say it timed out"));
                }
            }
        }
        if *name == "stdin" && py.stdout != input {
            wrong.push(format!(
                "{name}: the task did not get its stdin byte for byte"
            ));
        }
        if *name == "binary output" && py.stdout.len() != 2_000_000 {
            wrong.push(format!("{name}: {} bytes of output", py.stdout.len()));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------
// Durable tasks across the two clients
// ---------------------------------------------------------------------------

/// The Python library's side of the durable-task test: one step per run,
/// `python3 -c STEP ADDR ARGS…`, printing what it found as JSON.
const PY_DURABLE: &str = r#"
import json, sys
from tcp_task_client import Client, Offsets, OutputStream, Output, TaskSpec, TaskFailed, RemoteError
from tcp_task_client.wire import StateEnded, to_plain
addr, step, *args = sys.argv[1:]
with Client.connect(addr, client_name="python durable test") as client:
    if step == "detach":
        print(json.dumps({"id": client.run_detached(TaskSpec.image(args[0], args[1:]), timeout=120)}))
    elif step == "list":
        print(json.dumps([{"id": t.id, "detached": t.detached, "command": t.command,
                           "ended": isinstance(t.state, StateEnded),
                           "output_bytes": t.output_bytes} for t in client.list(all=True)]))
    elif step == "wait":
        try:
            print(json.dumps(to_plain(client.wait(args[0], timeout=120))))
        except TaskFailed as e:
            print(json.dumps({"failed": e.kind.name}))
    elif step == "attach":
        task = client.attach(args[0], Offsets(int(args[1]), int(args[2])))
        out, err = bytearray(), bytearray()
        for event in task.events(timeout=120):
            if isinstance(event, Output):
                (out if event.stream is OutputStream.STDOUT else err).extend(event.chunk)
        outcome = task.wait()
        print(json.dumps({"stdout": out.decode(), "stderr": err.decode(),
                          "exit": outcome.exit_status(), "task": task.task_id}))
    elif step == "remove":
        try:
            client.remove(args[0], timeout=120)
            print(json.dumps({"removed": args[0]}))
        except RemoteError as e:
            print(json.dumps({"refused": e.kind.name}))
"#;

fn py_step(server: &Server, step: &[&str]) -> serde_json::Value {
    let mut command = python();
    command.args(["-c", PY_DURABLE, &server.addr]).args(step);
    let (child, writer) = spawn(command, None);
    let out = finish(child, writer, "the Python durable step");
    assert_eq!(
        out.code,
        0,
        "python step {step:?} failed:\n{}",
        out.stderr_text()
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python step {step:?} printed no JSON ({e}): {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn rust_cli(server: &Server, args: &[&str]) -> Out {
    let mut command = clean(Command::new(BIN));
    command.arg("--server").arg(&server.addr).args(args);
    let (child, writer) = spawn(command, None);
    finish(child, writer, "tcp-task")
}

/// A detached task submitted by one client is the same task for the other:
/// listed, waited for, replayed from offsets and removed by either, with
/// the same bytes and ids; and no container is left behind.
#[test]
fn the_python_client_and_tcp_task_share_durable_tasks() {
    if !have_python() {
        return;
    }
    // Without warm containers: see the suite's durable server above.
    let server = Server::with_executor("[executor.warm]\nenabled = false\n");

    // Python detaches, tcp-task follows.
    let from_python = py_step(&server, &["detach", IMAGE, "mixed", "3"]);
    let id = from_python["id"].as_str().expect("an id").to_owned();
    assert!(
        id.len() == 20 && id.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')),
        "{id:?} is not a task id as the server makes them"
    );
    let waited = rust_cli(&server, &["wait", &id]);
    assert_eq!(waited.code, 0, "tcp-task wait: {}", waited.stderr_text());
    assert_eq!(waited.stdout, b"0\n");
    let ps = rust_cli(&server, &["ps", "-a", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&ps.stdout).expect("ps --json");
    let ours: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["id"] == id.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "tcp-task ps -a lists the task: {listed}");
    assert_eq!(ours[0]["detached"], true);
    assert_eq!(ours[0]["output_bytes"], 36);
    let logs = rust_cli(&server, &["logs", &id]);
    assert_eq!(logs.code, 0, "tcp-task logs: {}", logs.stderr_text());
    assert_eq!(logs.stdout, b"out 0\nout 1\nout 2\n");
    assert_eq!(logs.stderr, b"err 0\nerr 1\nerr 2\n");

    // The Python replay from offsets is the rest of what tcp-task saw.
    let part = py_step(&server, &["attach", &id, "6", "12"]);
    assert_eq!(part["stdout"], "out 1\nout 2\n", "{part}");
    assert_eq!(part["stderr"], "err 2\n");
    assert_eq!(part["exit"], 0);
    assert_eq!(part["task"], id.as_str());

    // Removed by Python: gone for both.
    assert_eq!(py_step(&server, &["remove", &id])["removed"], id.as_str());
    assert_eq!(
        py_step(&server, &["remove", &id])["refused"],
        "NO_SUCH_TASK"
    );
    let gone = rust_cli(&server, &["wait", &id]);
    assert_ne!(gone.code, 0, "tcp-task wait of a removed task succeeded");
    let ps = rust_cli(&server, &["ps", "-a", "--json"]);
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains(&id),
        "a removed task is still listed: {}",
        String::from_utf8_lossy(&ps.stdout)
    );

    // tcp-task detaches, Python follows.
    let detached = rust_cli(&server, &["run", "-d", IMAGE, "mixed", "4"]);
    assert_eq!(
        detached.code,
        0,
        "tcp-task run -d: {}",
        detached.stderr_text()
    );
    let id = String::from_utf8(detached.stdout)
        .unwrap()
        .trim()
        .to_owned();
    let listed = py_step(&server, &["list"]);
    let ours: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["id"] == id.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "the Python client lists the task: {listed}");
    assert_eq!(ours[0]["detached"], true);
    let waited = py_step(&server, &["wait", &id]);
    assert_eq!(waited["ending"], "exited", "{waited}");
    assert_eq!(waited["exit_code"], 0, "{waited}");
    let whole = py_step(&server, &["attach", &id, "0", "0"]);
    let logs = rust_cli(&server, &["logs", &id]);
    assert_eq!(whole["stdout"].as_str().unwrap().as_bytes(), logs.stdout);
    assert_eq!(whole["stderr"].as_str().unwrap().as_bytes(), logs.stderr);
    assert_eq!(logs.stdout, b"out 0\nout 1\nout 2\nout 3\n");
    assert_eq!(logs.stderr, b"err 0\nerr 1\nerr 2\nerr 3\n");
    assert_eq!(whole["exit"], 0);
    let removed = rust_cli(&server, &["rm", &id]);
    assert_eq!(removed.code, 0, "tcp-task rm: {}", removed.stderr_text());
    assert_eq!(py_step(&server, &["wait", &id])["failed"], "NO_SUCH_TASK");

    server.assert_clean();
}

//! The `tcp-task` command driven as a user drives it, shared by the tests
//! that start a real `tcp-task serve` (tests/cli.rs, tests/bench_load.rs):
//! a server child process with an instance id of its own, so that "no
//! container left behind" is checked precisely, and the CLI run against it.
#![allow(dead_code)] // each test binary uses its own part

pub mod kept;

use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tcp_task::executor::label_filter;

pub const BIN: &str = env!("CARGO_BIN_EXE_tcp-task");

/// How long any one CLI invocation may take before the test gives up on it.
pub const CLI_DEADLINE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// The engine, the server, the CLI
// ---------------------------------------------------------------------------

/// A runtime and a Docker client for the tests' own look at the engine, with
/// the examples image ready. One per test process.
pub fn engine() -> &'static (tokio::runtime::Runtime, Docker) {
    static ENGINE: OnceLock<(tokio::runtime::Runtime, Docker)> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let docker = runtime.block_on(async {
            let docker = tcp_task::docker::connect_docker()
                .await
                .expect("these tests need a Docker engine");
            tcp_task::images::ensure_examples_image(&docker)
                .await
                .expect("the examples image can be built");
            docker
        });
        (runtime, docker)
    })
}

/// A `tcp-task serve` child process with an instance id of its own. Stopped
/// (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    /// The HTTP listener's address, when started with `--http`.
    pub http: Option<String>,
    pub instance: String,
    pub log: Arc<Mutex<String>>,
    /// The config file and extra arguments, for a restart.
    config: std::path::PathBuf,
    args: Vec<std::ffi::OsString>,
    pub _dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        Server::with_executor("")
    }

    /// A server whose `[executor]` table also holds `executor_toml`.
    pub fn with_executor(executor_toml: &str) -> Server {
        Server::with_config(&[], "", executor_toml)
    }

    /// `serve ARGS…` with a config file of `config_toml` (tables other than
    /// `[executor]`), then the `[executor]` table: this server's own
    /// instance id and `executor_toml`.
    pub fn with_config(
        args: &[&std::ffi::OsStr],
        config_toml: &str,
        executor_toml: &str,
    ) -> Server {
        engine();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let instance = format!(
            "cli-test-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("server.toml");
        std::fs::write(
            &config,
            format!("{config_toml}\n[executor]\ninstance_id = \"{instance}\"\n{executor_toml}\n"),
        )
        .expect("the config file is written");
        let args: Vec<std::ffi::OsString> = args.iter().map(|a| a.to_os_string()).collect();
        let log = Arc::new(Mutex::new(String::new()));
        let (child, addr, http) = spawn_serve(&config, &args, "127.0.0.1:0", &log);
        Server {
            child,
            addr,
            http,
            instance,
            log,
            config,
            args,
            _dir: dir,
        }
    }

    /// Kills the server with SIGKILL, as a crash would, and starts it again
    /// on the same address with the same config (so the same instance id).
    pub fn kill_and_restart(&mut self, down_for: Duration) {
        self.kill();
        std::thread::sleep(down_for);
        self.start_again();
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the (killed) server again on its address.
    pub fn start_again(&mut self) {
        self.log.lock().unwrap().push_str("--- restarted ---\n");
        let (child, addr, http) = spawn_serve(&self.config, &self.args, &self.addr, &self.log);
        assert_eq!(addr, self.addr, "the server came back on another address");
        self.child = child;
        self.http = http;
    }
}

/// Starts `tcp-task serve --listen LISTEN --config CONFIG ARGS…` and waits
/// for its "listening" line; gives the child and its address. Its stderr
/// goes to `log`.
fn spawn_serve(
    config: &std::path::Path,
    args: &[std::ffi::OsString],
    listen: &str,
    log: &Arc<Mutex<String>>,
) -> (Child, String, Option<String>) {
    {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--listen", listen, "--config"])
            .arg(config)
            .args(args)
            // The address is read from the info-level "listening" line.
            .env("RUST_LOG", "info")
            .env_remove("TCP_TASK_TOKEN_FILE")
            .env_remove("TCP_TASK_CONFIG")
            // Its own journal of queued tasks, kept across its restarts.
            .env("STATE_DIRECTORY", config.with_file_name("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        die_with_parent(&mut command);
        let mut child = command.spawn().expect("tcp-task serve starts");

        let (lines, listening) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
                let _ = lines.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let wants_http = args.iter().any(|a| a.to_str() == Some("--http"));
        let (mut addr, mut http) = (None, None);
        // A field of a log line, in text (`name=value`) or JSON
        // (`--log-format json`).
        let field = |line: &str, name: &str| -> String {
            if let Ok(json) = serde_json::from_str::<Value>(line) {
                if let Some(value) = json["fields"][name].as_str() {
                    return value.to_string();
                }
            }
            let line = strip_ansi(line);
            let value = line
                .split(&format!(" {name}="))
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no {name} in the log line {line:?}"));
            value.to_string()
        };
        let addr = loop {
            if let Some(addr) = addr.clone().filter(|_| http.is_some() || !wants_http) {
                break addr;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match listening.recv_timeout(left) {
                Ok(line) if line.contains("HTTP listening") => {
                    http = Some(field(&line, "http_address"));
                }
                Ok(line) if line.contains("listening") => addr = Some(field(&line, "address")),
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "tcp-task serve did not start listening; its log:\n{}",
                        log.lock().unwrap()
                    );
                }
            }
        };
        (child, addr, http)
    }
}

impl Server {
    /// `tcp-task --server ADDR ARGS…`, with a clean environment.
    pub fn cli<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = tcp_task_command();
        command.arg("--server").arg(&self.addr).args(args);
        command
    }

    /// Runs `tcp-task --server ADDR ARGS…` to its end, with no stdin.
    pub fn run(&self, args: &[&str]) -> Out {
        Out::of(self.cli(args))
    }

    /// This server's containers on the engine, running or not.
    pub fn containers(&self) -> Vec<bollard::models::ContainerSummary> {
        let (runtime, docker) = engine();
        let options = ListContainersOptions {
            all: true,
            filters: Some(label_filter(Some(&self.instance))),
            ..ListContainersOptions::default()
        };
        runtime
            .block_on(docker.list_containers(Some(options)))
            .expect("the engine lists containers")
    }

    pub fn running_containers(&self) -> usize {
        self.containers()
            .iter()
            .filter(|c| c.state.as_ref().map(|s| s.to_string()) == Some("running".into()))
            .count()
    }

    /// Waits until `count` of this server's containers are running.
    pub fn wait_for_running(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.running_containers() < count {
            assert!(
                Instant::now() < deadline,
                "{count} container(s) never ran; server log:\n{}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// No task container of this server is left on the engine, once the
    /// removals it owes are done: a task's container is removed right after
    /// its outcome is sent, so this waits (up to 10 s) for them. Idle warm
    /// containers (label `tcp-task.warm`) are the server's own stock while
    /// it runs; `Drop` checks that they go too when it stops.
    pub fn assert_clean(&self) {
        let task_containers = || -> Vec<_> {
            self.containers()
                .into_iter()
                .filter(|c| !is_warm(c))
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut left = task_containers();
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            left = task_containers();
        }
        assert!(
            left.is_empty(),
            "containers left behind by instance {}: {:?}",
            self.instance,
            left.iter().map(|c| (&c.id, &c.command)).collect::<Vec<_>>()
        );
    }
}

pub fn is_warm(container: &bollard::models::ContainerSummary) -> bool {
    let labels = container.labels.as_ref();
    labels.is_some_and(|l| l.contains_key(tcp_task::executor::LABEL_WARM))
}

impl Drop for Server {
    fn drop(&mut self) {
        // A test may have killed the server itself; it then cleans up.
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            signal(self.child.id(), libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let stopped = matches!(self.child.try_wait(), Ok(Some(_)));
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- tcp-task serve log ---\n{}", self.log.lock().unwrap());
            return;
        }
        // A graceful stop removes everything, warm containers included.
        assert!(
            stopped,
            "tcp-task serve did not stop within 15 s of SIGTERM"
        );
        let left = self.containers();
        assert!(
            left.is_empty(),
            "containers left after the server stopped: {:?}",
            left.iter().map(|c| (&c.id, &c.command)).collect::<Vec<_>>()
        );
    }
}

/// The binary with none of the user's tcp-task settings in its environment.
pub fn tcp_task_command() -> Command {
    let mut command = Command::new(BIN);
    command
        .env_remove("TCP_TASK_SERVER")
        .env_remove("TCP_TASK_TOKEN")
        .env_remove("TCP_TASK_CONFIG")
        // Unset, a panic prints "note: run with `RUST_BACKTRACE=1`", which
        // the tests look for.
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null());
    command
}

/// The child gets SIGTERM if the test process dies (a killed test run must
/// not leave servers behind).
pub fn die_with_parent(command: &mut Command) {
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

pub fn signal(pid: u32, signal: i32) {
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

pub fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A free loopback port with nothing listening on it.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// What a finished CLI invocation left: exit code, stdout, stderr.
#[derive(Debug)]
pub struct Out {
    /// The exit code, or 128+N when signal N killed the CLI itself.
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub took: Duration,
}

impl Out {
    pub fn of(mut command: Command) -> Out {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = command.spawn().expect("tcp-task starts");
        Out::wait(child, Instant::now())
    }

    /// Collects a spawned child's output and status (stdout and stderr must
    /// be piped), killing it past [`CLI_DEADLINE`].
    pub fn wait(mut child: Child, started: Instant) -> Out {
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
            if started.elapsed() > CLI_DEADLINE {
                let _ = child.kill();
                panic!("tcp-task did not finish within {CLI_DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        Out {
            code,
            stdout: stdout.join().unwrap(),
            stderr: String::from_utf8_lossy(&stderr.join().unwrap()).into_owned(),
            took: started.elapsed(),
        }
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Every stdout line, parsed as JSON.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout_text()
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON line: {line:?}: {e}\n{self:?}"))
            })
            .collect()
    }

    /// The message is for people: no panic, no backtrace.
    pub fn assert_no_panic(&self) {
        for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
            assert!(!self.stderr.contains(bad), "{bad} in stderr: {self:?}");
        }
    }

    /// Exactly one line on stderr, starting `tcp-task: `; returns it.
    pub fn one_line_error(&self) -> &str {
        self.assert_no_panic();
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr: {self:?}");
        assert!(lines[0].starts_with("tcp-task: "), "{self:?}");
        lines[0]
    }
}

/// Runs several invocations at once and returns their results in order.
pub fn run_all(server: &Server, cases: &[Vec<&str>]) -> Vec<Out> {
    let children: Vec<(Child, Instant)> = cases
        .iter()
        .map(|args| {
            let mut command = server.cli(args);
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
            (command.spawn().expect("tcp-task starts"), Instant::now())
        })
        .collect();
    children
        .into_iter()
        .map(|(child, started)| Out::wait(child, started))
        .collect()
}

pub fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("output data is base64")
}

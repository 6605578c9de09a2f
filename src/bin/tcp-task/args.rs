//! The command line, as clap reads it.

use clap::{Args, Parser, Subcommand};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "tcp-task",
    version,
    about = "Run containers on a remote tcp-task server, like `docker run`, and serve them",
    after_help = "Examples:
  tcp-task serve --listen 0.0.0.0:7070 --config server.toml
  tcp-task run tcp-task-examples:0.1.0 sum 1 2 3
  echo hi | tcp-task run -i tcp-task-examples:0.1.0 cat
  tcp-task task pi 100
  tcp-task --server 10.0.0.5:7070 status --json

The client commands (run, task, tasks, status, ps, logs, attach, wait, kill, rm)
reach the server named by --server,
or by TCP_TASK_SERVER, or 127.0.0.1:7070. A command line that cannot be parsed
exits with status 125, as `docker run` does."
)]
pub struct Cli {
    // Where the server is, for client commands; a subcommand's own --server wins.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// A path flag: the subcommand's, else the one before it, else the environment's.
fn pick(
    inner: &Option<std::path::PathBuf>,
    outer: &Option<std::path::PathBuf>,
    env: &str,
) -> Option<std::path::PathBuf> {
    let from_env = std::env::var_os(env)
        .filter(|v| !v.is_empty())
        .map(Into::into);
    inner.clone().or_else(|| outer.clone()).or(from_env)
}

/// The server's address when neither `--server` nor `TCP_TASK_SERVER` names one.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7070";

// Where the server is and how to reach it. Accepted both before the
// subcommand (`tcp-task --server X status`) and after it (`tcp-task status
// --server X`), but only by the commands that talk to a server, so that
// `serve --help` does not offer a `--server` beside its `--listen`.
//
// The environment variables are read here rather than by clap: an explicit
// flag anywhere on the command line must win over the environment.
// (Plain comments: a doc comment here would become the program's `about`.)
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Server")]
pub struct ConnectionArgs {
    /// Address of the tcp-task server [env: TCP_TASK_SERVER] [default: 127.0.0.1:7070]
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// Authentication token, for servers that require one [env: TCP_TASK_TOKEN]
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Connect with TLS, trusting the CA certificate(s) in this PEM file [env: TCP_TASK_TLS_CA]
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// For mutual TLS: this client's certificate chain (PEM) [env: TCP_TASK_TLS_CERT]
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// For mutual TLS: this client's private key (PEM) [env: TCP_TASK_TLS_KEY]
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl ConnectionArgs {
    /// These settings, completed by `outer` (the flags given before the
    /// subcommand), then by the environment, then by the default.
    pub fn resolve(&self, outer: &ConnectionArgs) -> ConnectionArgs {
        let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        ConnectionArgs {
            server: self
                .server
                .clone()
                .or_else(|| outer.server.clone())
                .or_else(|| from_env("TCP_TASK_SERVER"))
                .or_else(|| Some(DEFAULT_SERVER.to_string())),
            token: self
                .token
                .clone()
                .or_else(|| outer.token.clone())
                .or_else(|| from_env("TCP_TASK_TOKEN")),
            tls_ca: pick(&self.tls_ca, &outer.tls_ca, "TCP_TASK_TLS_CA"),
            tls_cert: pick(&self.tls_cert, &outer.tls_cert, "TCP_TASK_TLS_CERT"),
            tls_key: pick(&self.tls_key, &outer.tls_key, "TCP_TASK_TLS_KEY"),
        }
    }

    /// TLS settings, when a CA was given (after [`ConnectionArgs::resolve`]).
    pub fn tls(&self) -> Option<tcp_task::ClientTlsConfig> {
        let ca = self.tls_ca.as_ref()?;
        let tls = tcp_task::ClientTlsConfig::with_ca_file(ca);
        Some(match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => tls.with_client_cert(cert, key),
            _ => tls,
        })
    }

    /// The address to dial (after [`ConnectionArgs::resolve`]).
    pub fn address(&self) -> &str {
        self.server.as_deref().unwrap_or(DEFAULT_SERVER)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server: accept clients and run their tasks on this host's Docker engine.
    #[command(after_help = "Examples:
  tcp-task serve
  tcp-task serve --listen 0.0.0.0:7070 --config /etc/tcp-task.toml
  tcp-task serve --http 127.0.0.1:9090 --log-format json
  tcp-task serve -v
  RUST_LOG=tcp_task=debug tcp-task serve

The engine is found through DOCKER_HOST, or at unix:///var/run/docker.sock.
Stop the server with Ctrl-C or SIGTERM: running tasks get the shutdown grace
to finish; a second Ctrl-C exits at once.")]
    Serve(ServeArgs),
    /// Build the images tcp-task needs, locally, with no registry.
    #[command(
        subcommand,
        after_help = "Example:
  tcp-task image build-examples"
    )]
    Image(ImageCommand),
    /// See tcp-task work on this machine, in one command.
    ///
    /// Builds the examples image if it is missing, starts a server on a free
    /// loopback port, runs example and generic tasks, and prints their
    /// results and latencies. Needs only a Docker engine.
    #[command(after_help = "Example:
  cargo run --release -- demo")]
    Demo,
    /// Run a command in a new container on the server.
    #[command(after_help = "Examples:
  tcp-task run tcp-task-examples:0.1.0 echo hello
  tcp-task run -e NAME=world -w /tmp tcp-task-examples:0.1.0 env
  tcp-task run --memory 64m --cpus 0.5 --timeout 10s tcp-task-examples:0.1.0 primes 100000
  cat photo.png | tcp-task run -i tcp-task-examples:0.1.0 grayscale > gray.png
  tcp-task run --json tcp-task-examples:0.1.0 echo hi | jq -c .
  tcp-task run -d tcp-task-examples:0.1.0 primes 10000000
  TCP_TASK_SERVER=10.0.0.5:7070 tcp-task run tcp-task-examples:0.1.0 pi 100

Everything after IMAGE is the command: `run IMG pi --json` passes --json to pi.
Ctrl-C (or SIGTERM) cancels the task and waits until its container is removed;
a second one stops waiting. If the connection breaks (the server restarts, say),
run reconnects and carries on where the output stopped, within the server's
reattach grace.

Exit status: the task's own; 128+N when signal N killed it (137 also when it
ran out of memory); 124 when --timeout killed it; 130/143 when you interrupted
it; 125 when the server, the engine or the command line failed; 126 when the
command cannot be run; 127 when it is not found.")]
    Run(RunArgs),
    /// Run a pre-compiled task from the server's catalog.
    #[command(after_help = "Examples:
  tcp-task task sum 1 2 3
  tcp-task task primes --count 1000000
  tcp-task task pi --params '{\"digits\": 50}'
  tcp-task task grayscale -i < photo.png > gray.png

Arguments reach the task as its arguments; --params JSON reaches it in the
environment variable TASK_PARAMS (read by the example tasks when no arguments
are given). The task's stdout is its result. `tcp-task tasks` lists the names.
Exit status: as for `tcp-task run`.")]
    Task(NamedArgs),
    /// Call an HTTP task: an image whose own server answers POST /task/NAME.
    ///
    /// The original task service's contract: the server starts IMAGE (its
    /// default command, or COMMAND), waits until its server answers on
    /// --port inside the container (network none: through the container's
    /// own loopback), POSTs {"params": JSON} to /task/TASK, and prints the
    /// answer's `result` as JSON.
    #[command(after_help = "Examples:
  tcp-task call tcp-task-http-examples:0.1.0 sum --port 8080 --params '[1, 2, 3]'
  tcp-task call tcp-task-http-examples:0.1.0 multiply --port 8080 --params '{\"numbers\": [6, 7]}'
  tcp-task call --raw tcp-task-http-examples:0.1.0 sum --port 8080 --params '[1]'

Exit status: 0 when the task answered 2xx; 125 when it could not run or
answered another status (the message says which); 124 on --timeout.")]
    Call(CallArgs),
    /// List the server's pre-compiled tasks.
    #[command(after_help = "Examples:
  tcp-task tasks
  tcp-task tasks --json | jq -r '.[].name'")]
    Tasks(InfoArgs),
    /// Measure a server: load, throughput, latency, and its promises kept.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Show the server's version, uptime, engine, and task counts.
    #[command(after_help = "Examples:
  tcp-task status
  tcp-task status --server 10.0.0.5:7070 --json")]
    Status(InfoArgs),
    /// List tasks: the running ones, and with -a the ended ones whose results are kept.
    #[command(after_help = "Examples:
  tcp-task ps
  tcp-task ps -a --json | jq -r '.[].id'

With named clients, each client sees only its own tasks.")]
    Ps(PsArgs),
    /// Print a task's output from the start: its stdout to stdout, its stderr to stderr.
    #[command(after_help = "Examples:
  tcp-task logs 4kq2zv7mfx3wa6bty5hd
  tcp-task logs -f 4kq2zv7mfx3wa6bty5hd

Without -f, prints what the task wrote so far; with -f, follows it until it ends.")]
    Logs(LogsArgs),
    /// Follow a task: its output so far, then live, and exit with its status as run does.
    #[command(after_help = "Example:
  tcp-task attach 4kq2zv7mfx3wa6bty5hd

Ctrl-C stops following; the task runs on.")]
    Attach(TaskArg),
    /// Wait for tasks to end and print each one's exit status.
    #[command(after_help = "Example:
  tcp-task wait 4kq2zv7mfx3wa6bty5hd")]
    Wait(TaskArgs),
    /// Send a signal to running tasks (SIGKILL unless -s says otherwise).
    #[command(after_help = "Examples:
  tcp-task kill 4kq2zv7mfx3wa6bty5hd
  tcp-task kill -s TERM 4kq2zv7mfx3wa6bty5hd")]
    Kill(KillArgs),
    /// Remove ended tasks and their kept output (-f stops running ones first).
    #[command(after_help = "Example:
  tcp-task rm -f 4kq2zv7mfx3wa6bty5hd")]
    Rm(RmArgs),
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show ended tasks too (their results are kept for the server's retention).
    #[arg(short, long)]
    pub all: bool,
    /// Print JSON (for programs) instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Follow the output until the task ends.
    #[arg(short, long)]
    pub follow: bool,
    /// The task's id, as `run -d` printed it or `ps` lists it.
    #[arg(value_name = "TASK")]
    pub task: String,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Args, Debug)]
pub struct TaskArg {
    /// The task's id, as `run -d` printed it or `ps` lists it.
    #[arg(value_name = "TASK")]
    pub task: String,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Args, Debug)]
pub struct TaskArgs {
    /// Task ids, as `run -d` printed them or `ps` lists them.
    #[arg(value_name = "TASK", required = true)]
    pub tasks: Vec<String>,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// The signal: a name (KILL, SIGTERM, …) or a number.
    #[arg(short, long, default_value = "KILL", value_name = "SIGNAL")]
    pub signal: String,
    /// Task ids, as `run -d` printed them or `ps` lists them.
    #[arg(value_name = "TASK", required = true)]
    pub tasks: Vec<String>,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Stop running tasks first, then remove them.
    #[arg(short, long)]
    pub force: bool,
    /// Task ids, as `run -d` printed them or `ps` lists them.
    #[arg(value_name = "TASK", required = true)]
    pub tasks: Vec<String>,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:7070, or `listen` in the config].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Config file (TOML): limits, policy, catalog, registry credentials.
    #[arg(long, value_name = "FILE", env = "TCP_TASK_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Also serve HTTP here: /metrics, /healthz, /readyz and the JSON API
    /// (/api/execute, /api/status) [default: off, or `listen` in [http]].
    /// Keep it on loopback or behind a firewall: /metrics and the health
    /// endpoints need no token.
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<String>,
    /// Where tasks run: `local` (containers on this engine) or `swarm`
    /// (a service per task on the Docker Swarm this engine manages)
    /// [default: local, or `backend` in [executor]].
    #[arg(long, value_name = "BACKEND", value_enum)]
    pub backend: Option<BackendArg>,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log lines as text (for people) or as JSON objects, one per line
    /// (for log shippers).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Require a token from this file (one per line; several allow rotation).
    #[arg(long, value_name = "FILE", env = "TCP_TASK_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Require client certificates signed by this CA (mutual TLS).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,
}

/// How `serve` writes its log.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendArg {
    Local,
    Swarm,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Build the example images (the example tasks and test helpers; the same
    /// tasks as an HTTP server), FROM scratch.
    #[command(after_help = "Example:\n  tcp-task image build-examples")]
    BuildExamples,
    /// Build the server image: FROM scratch, a static tcp-task as
    /// /bin/tcp-task, running `serve --listen 0.0.0.0:7070` by default
    /// (docs/DEPLOY.md runs it as a Swarm service).
    #[command(after_help = "Examples:
  tcp-task image build-server      # this tcp-task, if it is statically linked
  RUSTFLAGS='-C target-feature=+crt-static' \\
    cargo build --release --target x86_64-unknown-linux-gnu
  tcp-task image build-server --binary target/x86_64-unknown-linux-gnu/release/tcp-task

The image is built on the engine DOCKER_HOST names; copy it to other nodes
with `docker save IMAGE | docker -H NODE load`.")]
    BuildServer(BuildServerArgs),
}

#[derive(Args, Debug)]
pub struct BuildServerArgs {
    /// The statically linked tcp-task to put in the image [default: this
    /// program].
    #[arg(long, value_name = "FILE")]
    pub binary: Option<std::path::PathBuf>,
    /// The image's name and tag.
    #[arg(long, value_name = "NAME:TAG", default_value = tcp_task::images::SERVER_IMAGE)]
    pub tag: String,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Run one task many times over many connections; report tasks/s,
    /// latency percentiles, errors by kind, and whether every task ended
    /// exactly once with the same output.
    #[command(after_help = "Examples:
  tcp-task bench load --server 10.0.0.5:7070 --connections 64 --tasks 10000 --task sum 1 2 3
  tcp-task bench load --tasks 500 --json tcp-task-examples:0.1.0 echo hello | jq .p99_ms

Flags go before the task: everything after --task NAME (or after IMAGE) is
the task's arguments. Each connection keeps up to --window tasks in flight
(at most the server's per-connection limit). A task counts as lost when its
connection broke before its terminal frame, duplicated when a second
terminal frame came for it, wrong when its stdout, stderr or exit differ
from the first completed task's, stray when a frame came for no task in
flight. The progress bar shows on a terminal only.

Exit status: 0 when every task completed once with the same output; 1 when
any was lost, duplicated or wrong (or a frame was stray); 2 when that held
but some tasks failed (see errors) or could not be submitted; 125 when the
command line was wrong.")]
    Load(LoadArgs),
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Connections to open, each with its own share of the tasks.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = parse_positive)]
    pub connections: usize,
    /// Tasks to run in all.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub tasks: u64,
    /// Tasks in flight per connection at most.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = parse_positive)]
    pub window: usize,
    /// Offer tasks at this many per second in all (an open loop), instead
    /// of as fast as the windows allow: latency then counts from each
    /// task's scheduled start, so time spent waiting for a window is in it.
    #[arg(long, value_name = "PER_SECOND", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Run this pre-compiled task (what follows are its arguments) instead
    /// of IMAGE CMD.
    #[arg(long, value_name = "NAME")]
    pub task: Option<String>,
    /// Kill each task after this long (the server reports it as timed out).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Give up the tasks of a connection that gets no frame for this long
    /// while tasks are in flight: they count as lost.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub stall: Duration,
    /// Print one JSON object (for programs) instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// IMAGE [CMD…], or the task's ARGS… with --task.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE CMD… | ARGS…"
    )]
    pub command: Vec<String>,
    // Last: its help heading applies to what follows it.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Args, Debug)]
pub struct CallArgs {
    /// The port the image's server listens on, inside its container.
    #[arg(long, value_name = "PORT")]
    pub port: u16,
    /// The task's parameters, JSON, sent as {"params": JSON} [default: null].
    #[arg(long, value_name = "JSON")]
    pub params: Option<String>,
    /// Print the whole answer, not only its `result`.
    #[arg(long)]
    pub raw: bool,
    /// Give up after this long, the wait for the server included.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Print events as JSON lines (the answer's body as stdout) instead.
    #[arg(long)]
    pub json: bool,
    /// The image.
    pub image: String,
    /// The task's name: the server gets POST /task/TASK.
    pub task: String,
    /// The image's server command (default: the image's own).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    // Last: its help heading applies to what follows it.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Print JSON (for programs) instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// Options shared by `run` and `task`.
#[derive(Args, Debug)]
pub struct TaskOptions {
    /// Send this process's stdin to the task, until end of file.
    #[arg(short, long, conflicts_with = "detach")]
    pub interactive: bool,
    /// Run in the background: print the task's id and exit. The task runs
    /// on without this client; `logs`, `attach` and `wait` find it by id.
    #[arg(short, long)]
    pub detach: bool,
    /// Kill the task after this long: 30s, 500ms, 2m, or plain seconds.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Print events as JSON lines (for programs) instead of raw output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Set an environment variable (KEY=VALUE, or KEY to pass this shell's value).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as: name, uid, or uid:gid.
    #[arg(short, long, value_name = "USER")]
    pub user: Option<String>,
    /// Memory limit: bytes, or with a unit (b, k, m, g).
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Number of CPUs (e.g. 0.5).
    #[arg(long, value_name = "N", value_parser = parse_cpus)]
    pub cpus: Option<u64>,
    /// Maximum number of processes in the container.
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<i64>,
    /// Network mode (the server's policy decides which are allowed; default none).
    #[arg(long, value_name = "MODE")]
    pub network: Option<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Add a label to the container (KEY=VALUE).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Registry user for pulling a private image; the password is read from
    /// TCP_TASK_REGISTRY_PASSWORD.
    #[arg(long, value_name = "USER")]
    pub registry_user: Option<String>,
    #[command(flatten)]
    pub options: TaskOptions,
    /// The image to run.
    pub image: String,
    /// The command and its arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    // Last: its help heading applies to what follows it.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Args, Debug)]
pub struct NamedArgs {
    /// JSON parameters, passed to the task in TASK_PARAMS.
    #[arg(long, value_name = "JSON")]
    pub params: Option<String>,
    #[command(flatten)]
    pub options: TaskOptions,
    /// The task's name, as `tcp-task tasks` lists it.
    pub name: String,
    /// Arguments for the task.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
    // Last: its help heading applies to what follows it.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// A count of at least 1.
pub fn parse_positive(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{text}` is not a whole number of at least 1")),
    }
}

/// A rate in tasks per second: above 0 and at most [`MAX_RATE`].
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= MAX_RATE => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a rate in tasks per second above 0 and at most {MAX_RATE}"
        )),
    }
}

/// The highest `--rate`: a task every microsecond, far past what one
/// machine submits.
pub const MAX_RATE: f64 = 1_000_000.0;

/// `30s`, `500ms`, `2m`, `1h`, or plain seconds (`1.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; use e.g. 30s, 500ms, 2m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`; use ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is not a valid duration"))
}

/// `512m`, `1g`, `64k`, `1048576`: bytes, binary units as `docker run` reads them.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (number, multiplier) = match lower.chars().last() {
        Some('b') => (&lower[..lower.len() - 1], 1),
        Some('k') => (&lower[..lower.len() - 1], 1 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower.as_str(), 1),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a memory size; use e.g. 512m or 1g"))?;
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// `0.5` CPUs as billionths of a CPU, the engine's unit.
pub fn parse_cpus(text: &str) -> Result<u64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of CPUs; use e.g. 0.5 or 2"))?;
    if !(value > 0.0 && value <= 1024.0) {
        return Err(format!(
            "--cpus must be above 0 and at most 1024, not {text}"
        ));
    }
    Ok((value * 1e9).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512m"), Ok(512 << 20));
        assert_eq!(parse_memory("1G"), Ok(1 << 30));
        assert_eq!(parse_memory("4096"), Ok(4096));
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("99999999999999999g").is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5"), Ok(500_000_000));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("NaN").is_err());
    }
}

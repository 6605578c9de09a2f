//! The command line, as clap reads it.

use clap::{Args, Parser, Subcommand};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "tcp-task",
    version,
    about = "Run containers on a remote tcp-task server, like `docker run`, and serve them",
    after_help = "Examples:\n  tcp-task serve --listen 0.0.0.0:7070 --config server.toml\n  tcp-task run tcp-task-examples:0.1.0 sum 1 2 3\n  echo hi | tcp-task run -i tcp-task-examples:0.1.0 cat\n  tcp-task task pi 100\n  tcp-task status --json"
)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the server is and how to reach it.
#[derive(Args, Debug, Clone)]
pub struct ConnectionArgs {
    /// Address of the tcp-task server.
    #[arg(
        long,
        global = true,
        env = "TCP_TASK_SERVER",
        default_value = "127.0.0.1:7070"
    )]
    pub server: String,
    /// Authentication token, for servers that require one.
    #[arg(long, global = true, env = "TCP_TASK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server: accept clients and run their tasks on this host's Docker engine.
    #[command(
        after_help = "Examples:\n  tcp-task serve\n  tcp-task serve --listen 0.0.0.0:7070 --config /etc/tcp-task.toml\n  RUST_LOG=tcp_task=debug tcp-task serve\n\nStop it with Ctrl-C or SIGTERM: running tasks get the shutdown grace to finish."
    )]
    Serve(ServeArgs),
    /// Build the images tcp-task needs, locally, with no registry.
    #[command(subcommand)]
    Image(ImageCommand),
    /// See tcp-task work: build the examples image if missing, start a server,
    /// run example and generic tasks, print results and latencies.
    #[command(after_help = "Example:\n  cargo run --release -- demo")]
    Demo,
    /// Run a command in a new container on the server.
    #[command(
        after_help = "Examples:\n  tcp-task run tcp-task-examples:0.1.0 echo hello\n  tcp-task run -e NAME=world -w /tmp tcp-task-examples:0.1.0 env\n  tcp-task run --memory 64m --cpus 0.5 --timeout 10s tcp-task-examples:0.1.0 primes 100000\n  cat photo.png | tcp-task run -i tcp-task-examples:0.1.0 grayscale > gray.png\n\nThe exit status is the task's own; 128+N when a signal N killed it; 124 on timeout;\n125 when the server or the engine failed; 126/127 when the command cannot be run / is not found."
    )]
    Run(RunArgs),
    /// Run a pre-compiled task from the server's catalog.
    #[command(
        after_help = "Examples:\n  tcp-task task sum 1 2 3\n  tcp-task task pi --params '{\"digits\": 50}'\n  tcp-task task grayscale -i < photo.png > gray.png\n\nArguments reach the task as its arguments; --params JSON reaches it in the\nenvironment variable TASK_PARAMS. The task's stdout is its result."
    )]
    Task(NamedArgs),
    /// List the server's pre-compiled tasks.
    #[command(after_help = "Examples:\n  tcp-task tasks\n  tcp-task tasks --json")]
    Tasks(JsonArgs),
    /// Show the server's version, uptime, engine, and task counts.
    #[command(
        after_help = "Examples:\n  tcp-task status\n  tcp-task --server 10.0.0.5:7070 status --json"
    )]
    Status(JsonArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:7070, or `listen` in the config].
    #[arg(long)]
    pub listen: Option<String>,
    /// Config file (TOML): limits, policy, catalog, registry credentials.
    #[arg(long, env = "TCP_TASK_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Build the examples image (example tasks and test helpers, FROM scratch).
    #[command(after_help = "Example:\n  tcp-task image build-examples")]
    BuildExamples,
}

#[derive(Args, Debug)]
pub struct JsonArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options shared by `run` and `task`.
#[derive(Args, Debug)]
pub struct TaskOptions {
    /// Stream this terminal's stdin to the task.
    #[arg(short, long)]
    pub interactive: bool,
    /// Kill the task after this long: 30s, 500ms, 2m, or plain seconds.
    #[arg(long, value_parser = parse_duration)]
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
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User to run as: name, uid, or uid:gid.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Memory limit: bytes, or with a unit (b, k, m, g).
    #[arg(long, value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Number of CPUs (e.g. 0.5).
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<u64>,
    /// Maximum number of processes in the container.
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// Network mode (the server's policy decides which are allowed; default none).
    #[arg(long)]
    pub network: Option<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Add a label to the container (KEY=VALUE).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Registry user for pulling a private image; the password is read from
    /// TCP_TASK_REGISTRY_PASSWORD.
    #[arg(long)]
    pub registry_user: Option<String>,
    #[command(flatten)]
    pub options: TaskOptions,
    /// The image to run.
    pub image: String,
    /// The command and its arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct NamedArgs {
    /// JSON parameters, passed to the task in TASK_PARAMS.
    #[arg(long)]
    pub params: Option<String>,
    #[command(flatten)]
    pub options: TaskOptions,
    /// The task's name, as `tcp-task tasks` lists it.
    pub name: String,
    /// Arguments for the task.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

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

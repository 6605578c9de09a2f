//! `tcp-task run` and `tcp-task task`: submit, stream the output live, map
//! the outcome to an exit status the way `docker run` does.

use base64::Engine as _;
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::io::Write as _;
use std::time::Duration;
use tcp_task::protocol::{Ending, RegistryAuth, Task};
use tcp_task::{
    Client, ConnectOptions, Error, ErrorKind, Outcome, ProgressEvent, TaskEvent, TaskHandle,
    TaskId, TaskSpec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::args::{ConnectionArgs, NamedArgs, RunArgs, TaskOptions};
use crate::signals::Interrupts;
use crate::EXIT_SERVER_ERROR;

const SIGPIPE: i32 = 13;

pub async fn connect(connection: &ConnectionArgs) -> Result<Client, Error> {
    let address = connection.address();
    if !looks_like_address(address) {
        return Err(Error::Connect {
            addr: address.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "that is not an address; give HOST:PORT, e.g. 127.0.0.1:7070",
            ),
        });
    }
    let options = ConnectOptions {
        token: connection.token.clone(),
        tls: connection.tls(),
        ..ConnectOptions::default()
    };
    Client::connect_with(address, options).await
}

/// `HOST:PORT` with a numeric port and a non-empty host.
fn looks_like_address(text: &str) -> bool {
    match text.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

pub async fn run_image(connection: &ConnectionArgs, args: RunArgs) -> u8 {
    match image_spec(&args) {
        Ok(spec) => execute(connection, spec, &args.options).await,
        Err(message) => {
            eprintln!("tcp-task: {message}");
            EXIT_SERVER_ERROR
        }
    }
}

pub async fn run_named(connection: &ConnectionArgs, args: NamedArgs) -> u8 {
    if let Some(params) = &args.params {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(params) {
            eprintln!("tcp-task: --params is not valid JSON: {e}");
            return EXIT_SERVER_ERROR;
        }
    }
    let spec = TaskSpec {
        task: Task::Named {
            name: args.name,
            args: args.args,
            params: args.params,
        },
        ..TaskSpec::default()
    };
    execute(connection, spec, &args.options).await
}

fn image_spec(args: &RunArgs) -> Result<TaskSpec, String> {
    let mut spec = TaskSpec::image(&args.image, &args.command);
    spec.env = args
        .env
        .iter()
        .map(|e| env_pair(e))
        .collect::<Result<_, _>>()?;
    spec.labels = args
        .labels
        .iter()
        .map(|l| key_value(l, "--label"))
        .collect::<Result<_, _>>()?;
    spec.workdir = args.workdir.clone();
    spec.user = args.user.clone();
    spec.memory_bytes = args.memory;
    spec.nano_cpus = args.cpus;
    spec.pids_limit = args.pids_limit;
    spec.network = args.network.clone();
    spec.read_only_root = args.read_only;
    if let Some(username) = &args.registry_user {
        let password = std::env::var("TCP_TASK_REGISTRY_PASSWORD").map_err(|_| {
            "--registry-user needs the password in TCP_TASK_REGISTRY_PASSWORD".to_string()
        })?;
        spec.registry_auth = Some(RegistryAuth {
            username: username.clone(),
            password,
            server: None,
        });
    }
    Ok(spec)
}

/// `KEY=VALUE`, or `KEY` alone to pass this shell's value, as `docker run -e`.
fn env_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some(_) => key_value(text, "-e"),
        None => match std::env::var(text) {
            Ok(value) => Ok((text.to_string(), value)),
            Err(_) => Err(format!(
                "-e {text}: no such variable in this environment; use -e {text}=VALUE"
            )),
        },
    }
}

fn key_value(text: &str, flag: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{flag} {text}: expected KEY=VALUE")),
    }
}

pub async fn execute(connection: &ConnectionArgs, mut spec: TaskSpec, options: &TaskOptions) -> u8 {
    spec.stdin = options.interactive;
    spec.timeout_ms = options.timeout.map(|t| t.as_millis() as u64);
    let display = Display::new(options.json);
    let client = match connect(connection).await {
        Ok(client) => client,
        Err(e) => return display.finish(Err(e), None),
    };
    // From the moment the task is submitted, Ctrl-C must cancel it rather
    // than kill this process, so the handlers go in before the submit, and
    // once: a signal that arrives while an event is being printed waits in
    // the stream instead of being lost between two listeners.
    if options.detach {
        return match client.run_detached(spec).await {
            Ok(task) => {
                println!("{task}");
                0
            }
            Err(e) => display.finish(Err(e), None),
        };
    }
    let mut interrupts = Interrupts::new();
    let handle = match client.run(spec).await {
        Ok(handle) => handle,
        Err(e) => return display.finish(Err(e), None),
    };
    if options.interactive {
        tokio::spawn(pump_stdin(handle.stdin()));
    }
    follow(handle, display, &mut interrupts).await
}

/// `tcp-task attach`: the task's output so far, then live, then its exit
/// status. Ctrl-C stops following; the task runs on.
pub async fn follow_attached(connection: &ConnectionArgs, task: &TaskId) -> u8 {
    let display = Display::new(false);
    let client = match connect(connection).await {
        Ok(client) => client,
        Err(e) => return display.finish(Err(e), None),
    };
    let mut interrupts = Interrupts::new();
    match client.attach(task).await {
        Ok(handle) => follow(handle, display, &mut interrupts).await,
        Err(e) => display.finish(Err(e), None),
    }
}

/// Relays events until the task ends and returns the exit status. The first
/// Ctrl-C (or SIGTERM) cancels the remote task and waits for its end, which
/// comes after its container is removed; a second one stops waiting.
async fn follow(mut handle: TaskHandle, mut display: Display, interrupts: &mut Interrupts) -> u8 {
    let mut interrupted = None;
    loop {
        tokio::select! {
            event = handle.next() => match event {
                Some(event) => {
                    if display.event(event).await.is_err() && !display.output_lost {
                        // Our stdout is gone (a closed pipe, as in `| head`):
                        // nobody wants the rest, so stop the task.
                        display.output_lost = true;
                        let _ = handle.cancel().await;
                    }
                }
                None => return display.finish(handle.wait().await, interrupted),
            },
            signal = interrupts.next() => {
                if let Some(first) = interrupted {
                    display.progress.finish_and_clear();
                    eprintln!("tcp-task: not waiting for the task's end; the server removes its container");
                    return 128 + first as u8;
                }
                interrupted = Some(signal);
                display.progress.finish_and_clear();
                eprintln!("tcp-task: cancelling the task (interrupt again to stop waiting)");
                let _ = handle.cancel().await;
            }
        }
    }
}

async fn pump_stdin(stdin: tcp_task::StdinWriter) {
    let mut input = tokio::io::stdin();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match input.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stdin
                    .write(Bytes::copy_from_slice(&buffer[..n]))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    let _ = stdin.close().await;
}

/// The exit status for a failure, as `docker run` picks it: 127 when the
/// command was not found, 126 when it cannot be run, 125 for the rest.
pub fn error_status(error: &Error) -> u8 {
    match error.kind() {
        Some(kind) => kind.exit_status().clamp(0, 255) as u8,
        None => EXIT_SERVER_ERROR,
    }
}

/// A failure's kind for `--json`: the server's error kind in snake_case, or
/// what went wrong on the way to the server.
fn error_kind_name(error: &Error) -> String {
    match error {
        Error::Remote(e) => snake_case(&format!("{:?}", e.kind)),
        Error::Connect { .. } => "connect".into(),
        Error::Disconnected(_) => "disconnected".into(),
        Error::Handshake(_) => "handshake".into(),
        Error::Tls(_) => "tls".into(),
    }
}

/// `OomKilled` → `oom_killed`.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The line on stderr for an ending that was not the task's own doing.
pub fn ending_message(outcome: &Outcome) -> Option<String> {
    let seconds = outcome.duration().as_secs_f64();
    match outcome.ending {
        Ending::TimedOut => Some(format!(
            "the task timed out after {seconds:.1}s and was killed (allow more with --timeout)"
        )),
        Ending::OomKilled => {
            Some("the task ran out of memory and was killed (allow more with --memory)".to_string())
        }
        Ending::OutputLimit => Some(
            "the task wrote more output than the server relays (its output limit) and was killed"
                .to_string(),
        ),
        Ending::Cancelled => Some("the task was cancelled".to_string()),
        Ending::Exited | Ending::Signaled => None,
    }
}

/// Where events go: raw output and a progress bar, or JSON lines.
struct Display {
    json: bool,
    /// Hidden until the task waits for something a person would wonder
    /// about (a queue, a pull), and on a terminal only.
    progress: ProgressBar,
    layers: HashMap<String, (u64, u64)>,
    stdout: tokio::io::Stdout,
    stderr: tokio::io::Stderr,
    /// Our stdout or stderr was closed: output is dropped from then on.
    output_lost: bool,
}

/// One line of `--json` output. `event` names the kind; the last line is
/// always `exited` or `failed`, with the `exit_status` tcp-task exits with.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum JsonEvent<'a> {
    /// The server admitted the task, and this is its id.
    Accepted {
        task: &'a str,
    },
    /// Waiting for a free slot on the server; position 1 is next.
    Queued {
        position: u32,
    },
    /// The server's engine is pulling the image.
    Pulling {
        layer: &'a str,
        status: &'a str,
        current: Option<u64>,
        total: Option<u64>,
    },
    /// The container exists (short id).
    Created {
        container: &'a str,
    },
    /// The task's process is running.
    Started,
    /// The connection broke and the client re-attached: the output goes on
    /// where it stopped.
    Resumed {
        attempts: u32,
    },
    /// On a Docker Swarm: the scheduler's state, and the node once placed.
    Scheduling {
        state: &'a str,
        node: Option<&'a str>,
    },
    /// Output, base64: output is bytes, not always UTF-8 text.
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    /// The task ran and ended.
    Exited {
        /// exited, signaled, timed_out, oom_killed, cancelled, output_limit
        ending: String,
        exit_code: Option<i32>,
        signal: Option<i32>,
        duration_ms: u64,
        output_truncated: bool,
        exit_status: u8,
        /// What it used, when the server measured it: `cpu_user_us`,
        /// `cpu_system_us`, `peak_memory_bytes`.
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<tcp_task::Usage>,
    },
    /// The task could not run, or the server could not be reached.
    Failed {
        kind: String,
        message: String,
        exit_status: u8,
    },
}

impl Display {
    fn new(json: bool) -> Display {
        Display {
            json,
            progress: ProgressBar::hidden(),
            layers: HashMap::new(),
            stdout: tokio::io::stdout(),
            stderr: tokio::io::stderr(),
            output_lost: false,
        }
    }

    async fn event(&mut self, event: TaskEvent) -> std::io::Result<()> {
        if self.output_lost {
            return Ok(());
        }
        if self.json {
            let line = match &event {
                TaskEvent::Accepted(task) => JsonEvent::Accepted {
                    task: task.as_str(),
                },
                TaskEvent::Progress(progress) => match progress {
                    ProgressEvent::Queued { position } => JsonEvent::Queued {
                        position: *position,
                    },
                    ProgressEvent::Pulling {
                        layer,
                        status,
                        current,
                        total,
                    } => JsonEvent::Pulling {
                        layer,
                        status,
                        current: *current,
                        total: *total,
                    },
                    ProgressEvent::Created { container } => JsonEvent::Created { container },
                    ProgressEvent::Started => JsonEvent::Started,
                    ProgressEvent::Resumed { attempts } => JsonEvent::Resumed {
                        attempts: *attempts,
                    },
                    ProgressEvent::Scheduling { state, node } => JsonEvent::Scheduling {
                        state,
                        node: node.as_deref(),
                    },
                },
                TaskEvent::Stdout(data) => JsonEvent::Stdout { data: encode(data) },
                TaskEvent::Stderr(data) => JsonEvent::Stderr { data: encode(data) },
            };
            return self.json_line(&line).await;
        }
        match event {
            TaskEvent::Accepted(_) => Ok(()),
            TaskEvent::Progress(progress) => {
                self.show_progress(progress);
                Ok(())
            }
            TaskEvent::Stdout(data) => {
                self.progress.finish_and_clear();
                self.stdout.write_all(&data).await?;
                self.stdout.flush().await
            }
            TaskEvent::Stderr(data) => {
                self.progress.finish_and_clear();
                self.stderr.write_all(&data).await?;
                self.stderr.flush().await
            }
        }
    }

    /// Makes the bar visible, if stderr is a terminal: it is for people,
    /// never for a pipe or a log.
    fn show_bar(&mut self) {
        if self.progress.is_hidden() && std::io::stderr().is_terminal() {
            self.progress = ProgressBar::new_spinner();
            self.progress.enable_steady_tick(Duration::from_millis(120));
        }
    }

    fn show_progress(&mut self, event: ProgressEvent) {
        match event {
            ProgressEvent::Queued { position } => {
                self.show_bar();
                self.progress
                    .set_message(format!("queued on the server, position {position}"));
            }
            ProgressEvent::Pulling {
                layer,
                status,
                current,
                total,
            } => {
                self.show_bar();
                if let (Some(current), Some(total)) = (current, total) {
                    self.layers.insert(layer, (current, total));
                }
                let (done, all) = self
                    .layers
                    .values()
                    .fold((0, 0), |(d, a), (c, t)| (d + c, a + t));
                if all > 0 {
                    self.progress.set_style(
                        ProgressStyle::with_template(
                            "pulling {bar:30} {bytes}/{total_bytes} {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    self.progress.set_length(all);
                    self.progress.set_position(done);
                }
                self.progress.set_message(status);
            }
            ProgressEvent::Created { .. } => self.progress.set_message("starting"),
            ProgressEvent::Started => self.progress.finish_and_clear(),
            // The program sees the same bytes as if nothing had happened.
            ProgressEvent::Resumed { .. } => {}
            ProgressEvent::Scheduling { state, node } => {
                self.show_bar();
                self.progress.set_message(match node {
                    Some(node) => format!("{state} on node {node}"),
                    None => format!("{state} (waiting for a swarm node)"),
                });
            }
        }
    }

    async fn json_line(&mut self, line: &JsonEvent<'_>) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        text.push(b'\n');
        self.stdout.write_all(&text).await?;
        self.stdout.flush().await
    }

    /// Reports the end and returns the exit status. `interrupted` is the
    /// signal by which the user cancelled the task, if they did.
    fn finish(self, end: Result<Outcome, Error>, interrupted: Option<i32>) -> u8 {
        self.progress.finish_and_clear();
        let cancelled = matches!(&end, Ok(o) if o.ending == Ending::Cancelled);
        if self.output_lost && cancelled {
            // We stopped the task because nobody reads its output: end the
            // way a process in a pipeline ends when its reader goes away,
            // silently, with the status of death by SIGPIPE.
            return 128 + SIGPIPE as u8;
        }
        let detached = matches!(&end, Err(e) if e.kind() == Some(ErrorKind::Detached));
        let status = match (&end, interrupted) {
            (Ok(_), Some(signal)) if cancelled => 128 + signal as u8,
            // Ctrl-C on `attach`: we stopped following; the task runs on.
            (Err(_), Some(signal)) if detached => 128 + signal as u8,
            (Ok(outcome), _) => outcome.exit_status().clamp(0, 255) as u8,
            (Err(error), _) => error_status(error),
        };
        if !self.json {
            match &end {
                Ok(outcome) => {
                    if let Some(message) = ending_message(outcome) {
                        eprintln!("tcp-task: {message}");
                    }
                }
                Err(error) => eprintln!("tcp-task: {error}"),
            }
            return status;
        }
        let line = match &end {
            Ok(outcome) => JsonEvent::Exited {
                ending: snake_case(&format!("{:?}", outcome.ending)),
                exit_code: outcome.exit_code,
                signal: outcome.signal,
                duration_ms: outcome.duration_ms,
                output_truncated: outcome.output_truncated,
                exit_status: status,
                usage: outcome.usage,
            },
            Err(error) => JsonEvent::Failed {
                kind: error_kind_name(error),
                message: error.to_string(),
                exit_status: status,
            },
        };
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush());
        status
    }
}

/// Output bytes for JSON: UTF-8 text as is would be ambiguous for binary
/// output, so every chunk is base64.
fn encode(data: &Bytes) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_endings_read_as_snake_case() {
        assert_eq!(snake_case("OomKilled"), "oom_killed");
        assert_eq!(snake_case("CommandNotFound"), "command_not_found");
        assert_eq!(snake_case("Exited"), "exited");
    }

    #[test]
    fn addresses_are_host_and_port() {
        assert!(looks_like_address("127.0.0.1:7070"));
        assert!(looks_like_address("server.example:7070"));
        assert!(looks_like_address("[::1]:7070"));
        assert!(!looks_like_address("garbage"));
        assert!(!looks_like_address("host:port"));
        assert!(!looks_like_address(":7070"));
    }
}

//! `tcp-task run` and `tcp-task task`: submit, stream the output live, map
//! the outcome to an exit status the way `docker run` does.

use base64::Engine as _;
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;
use tcp_task::protocol::{Ending, RegistryAuth, Task};
use tcp_task::{
    Client, ConnectOptions, Error, ErrorKind, Outcome, ProgressEvent, TaskEvent, TaskHandle,
    TaskSpec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::args::{ConnectionArgs, NamedArgs, RunArgs, TaskOptions};
use crate::signals::Interrupts;
use crate::EXIT_SERVER_ERROR;

/// Exit status after the user interrupted the task, as a shell reports
/// death by SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

pub async fn connect(connection: &ConnectionArgs) -> Result<Client, Error> {
    let options = ConnectOptions {
        token: connection.token.clone(),
        ..ConnectOptions::default()
    };
    Client::connect_with(connection.server.as_str(), options).await
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

async fn execute(connection: &ConnectionArgs, mut spec: TaskSpec, options: &TaskOptions) -> u8 {
    spec.stdin = options.interactive;
    spec.timeout_ms = options.timeout.map(|t| t.as_millis() as u64);
    let client = match connect(connection).await {
        Ok(client) => client,
        Err(e) => return report_error(&e),
    };
    let handle = match client.run(spec).await {
        Ok(handle) => handle,
        Err(e) => return report_error(&e),
    };
    if options.interactive {
        tokio::spawn(pump_stdin(handle.stdin()));
    }
    let mut display = Display::new(options.json);
    match follow(handle, &mut display).await {
        Followed::Ended(end) => display.finish(end),
        Followed::Abandoned => EXIT_INTERRUPTED,
    }
}

enum Followed {
    Ended(Result<Outcome, Error>),
    /// Interrupted twice: the user does not want to wait for the cleanup.
    Abandoned,
}

/// Relays events until the task ends. The first Ctrl-C (or SIGTERM) cancels
/// the remote task and waits for its container to be removed; a second one
/// stops waiting.
async fn follow(mut handle: TaskHandle, display: &mut Display) -> Followed {
    let mut interrupts = Interrupts::new();
    let mut interrupted = 0;
    loop {
        tokio::select! {
            event = handle.next() => match event {
                Some(event) => {
                    if display.event(event).await.is_err() {
                        // Our stdout is gone (a closed pipe): nobody wants the rest.
                        let _ = handle.cancel().await;
                    }
                }
                None => return Followed::Ended(handle.wait().await),
            },
            _ = interrupts.recv() => {
                interrupted += 1;
                if interrupted > 1 {
                    return Followed::Abandoned;
                }
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

/// Prints a failure and picks the exit status `docker run` would.
fn report_error(error: &Error) -> u8 {
    eprintln!("tcp-task: {error}");
    match error.kind() {
        Some(ErrorKind::CommandNotFound) => 127,
        Some(ErrorKind::CommandNotInvokable) => 126,
        _ => EXIT_SERVER_ERROR,
    }
}

/// The exit status for an outcome, with a line on stderr when the ending is
/// not the task's own doing.
fn report_outcome(outcome: &Outcome) -> u8 {
    let seconds = outcome.duration().as_secs_f64();
    match outcome.ending {
        Ending::TimedOut => {
            eprintln!("tcp-task: the task timed out after {seconds:.1}s and was killed")
        }
        Ending::OomKilled => {
            eprintln!("tcp-task: the task ran out of memory and was killed (raise --memory)")
        }
        Ending::OutputLimit => {
            eprintln!("tcp-task: the task wrote more output than the server relays (its output limit) and was killed")
        }
        Ending::Cancelled => eprintln!("tcp-task: the task was cancelled"),
        Ending::Exited | Ending::Signaled => {}
    }
    outcome.exit_status().clamp(0, 255) as u8
}

/// Where events go: raw output and a progress bar, or JSON lines.
struct Display {
    json: bool,
    progress: ProgressBar,
    layers: HashMap<String, (u64, u64)>,
    stdout: tokio::io::Stdout,
    stderr: tokio::io::Stderr,
}

/// One JSON line of `--json` output.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum JsonEvent<'a> {
    Accepted,
    Progress {
        progress: &'a ProgressEvent,
    },
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    Exited {
        outcome: &'a Outcome,
        exit_status: u8,
    },
    Failed {
        kind: Option<ErrorKind>,
        message: String,
        exit_status: u8,
    },
}

impl Display {
    fn new(json: bool) -> Display {
        // The bar is for people: only on a terminal, never in a pipe or log.
        let progress = if !json && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::hidden()
        };
        Display {
            json,
            progress,
            layers: HashMap::new(),
            stdout: tokio::io::stdout(),
            stderr: tokio::io::stderr(),
        }
    }

    async fn event(&mut self, event: TaskEvent) -> std::io::Result<()> {
        if self.json {
            let line = match &event {
                TaskEvent::Accepted => JsonEvent::Accepted,
                TaskEvent::Progress(progress) => JsonEvent::Progress { progress },
                TaskEvent::Stdout(data) => JsonEvent::Stdout { data: encode(data) },
                TaskEvent::Stderr(data) => JsonEvent::Stderr { data: encode(data) },
            };
            return self.json_line(&line).await;
        }
        match event {
            TaskEvent::Accepted => Ok(()),
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

    fn show_progress(&mut self, event: ProgressEvent) {
        match event {
            ProgressEvent::Queued { position } => self
                .progress
                .set_message(format!("queued on the server, position {position}")),
            ProgressEvent::Pulling {
                layer,
                status,
                current,
                total,
            } => {
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
        }
    }

    async fn json_line(&mut self, line: &JsonEvent<'_>) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        text.push(b'\n');
        self.stdout.write_all(&text).await?;
        self.stdout.flush().await
    }

    /// Reports the end and returns the exit status.
    fn finish(self, end: Result<Outcome, Error>) -> u8 {
        self.progress.finish_and_clear();
        if !self.json {
            return match end {
                Ok(outcome) => report_outcome(&outcome),
                Err(error) => report_error(&error),
            };
        }
        let (line, status) = match &end {
            Ok(outcome) => {
                let exit_status = outcome.exit_status().clamp(0, 255) as u8;
                (
                    JsonEvent::Exited {
                        outcome,
                        exit_status,
                    },
                    exit_status,
                )
            }
            Err(error) => {
                let exit_status = match error.kind() {
                    Some(ErrorKind::CommandNotFound) => 127,
                    Some(ErrorKind::CommandNotInvokable) => 126,
                    _ => EXIT_SERVER_ERROR,
                };
                let message = error.to_string();
                (
                    JsonEvent::Failed {
                        kind: error.kind(),
                        message,
                        exit_status,
                    },
                    exit_status,
                )
            }
        };
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        print!("{text}");
        status
    }
}

/// Output bytes for JSON: UTF-8 text as is would be ambiguous for binary
/// output, so every chunk is base64.
fn encode(data: &Bytes) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

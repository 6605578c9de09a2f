//! `ps`, `logs`, `attach`, `wait`, `kill` and `rm`: the tasks a server
//! keeps, by their ids, as docker's commands of the same names treat
//! containers.

use anyhow::{bail, Result};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tcp_task::{Client, Ending, ErrorKind, TaskEvent, TaskId, TaskInfo, TaskState};
use tokio::io::AsyncWriteExt;

use crate::args::{ConnectionArgs, KillArgs, LogsArgs, PsArgs, RmArgs, TaskArg, TaskArgs};
use crate::run::{connect, follow_attached};

#[path = "../../../tools/src/signal_names.rs"]
mod signal_names;
use signal_names::SIGNALS;

pub async fn ps(connection: &ConnectionArgs, args: &PsArgs) -> Result<()> {
    let tasks = connect(connection).await?.list(args.all).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&tasks)?);
        return Ok(());
    }
    println!(
        "{:<22} {:<28} {:<24} {:<16} {:<24} {:>8}",
        "TASK ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "OUTPUT"
    );
    for task in &tasks {
        println!(
            "{:<22} {:<28} {:<24} {:<16} {:<24} {:>8}",
            task.id,
            clip(&task.image, 28),
            clip(&format!("\"{}\"", task.command.join(" ")), 24),
            ago(task.created_ms),
            status_of(task),
            bytes(task.output_bytes),
        );
    }
    Ok(())
}

/// `logs`: the output so far (or, with -f, until the end), exit 0.
pub async fn logs(connection: &ConnectionArgs, args: &LogsArgs) -> Result<()> {
    let task = TaskId::parse(&args.task)?;
    let client = connect(connection).await?;
    let mut handle = if args.follow {
        client.attach(&task).await?
    } else {
        client.logs(&task).await?
    };
    let (mut stdout, mut stderr) = (tokio::io::stdout(), tokio::io::stderr());
    while let Some(event) = handle.next().await {
        match event {
            TaskEvent::Stdout(data) => stdout.write_all(&data).await?,
            TaskEvent::Stderr(data) => stderr.write_all(&data).await?,
            TaskEvent::Accepted(_) | TaskEvent::Progress(_) => {}
        }
    }
    stdout.flush().await?;
    match handle.wait().await {
        Ok(_) => Ok(()),
        // Without -f, a running task ends the replay this way.
        Err(e) if e.kind() == Some(ErrorKind::Detached) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `attach`: replay, then live; the exit status is the task's.
pub async fn attach(connection: &ConnectionArgs, args: &TaskArg) -> u8 {
    let task = match TaskId::parse(&args.task) {
        Ok(task) => task,
        Err(e) => {
            eprintln!("tcp-task: {e}");
            return crate::EXIT_SERVER_ERROR;
        }
    };
    follow_attached(connection, &task).await
}

/// `wait`: one exit status per task, in order.
pub async fn wait(connection: &ConnectionArgs, args: &TaskArgs) -> Result<()> {
    let client = connect(connection).await?;
    each(&args.tasks, |task| {
        let client = client.clone();
        async move {
            let outcome = client.wait(&task).await?;
            println!("{}", outcome.exit_status());
            Ok(())
        }
    })
    .await
}

pub async fn kill(connection: &ConnectionArgs, args: &KillArgs) -> Result<()> {
    let signal = parse_signal(&args.signal)?;
    let client = connect(connection).await?;
    each(&args.tasks, |task| {
        let client = client.clone();
        async move {
            client.kill(&task, signal).await?;
            println!("{task}");
            Ok(())
        }
    })
    .await
}

pub async fn rm(connection: &ConnectionArgs, args: &RmArgs) -> Result<()> {
    let client: Client = connect(connection).await?;
    let force = args.force;
    each(&args.tasks, |task| {
        let client = client.clone();
        async move {
            client.remove(&task, force).await?;
            println!("{task}");
            Ok(())
        }
    })
    .await
}

/// Runs `action` for each task id, reporting each failure and going on,
/// as docker does for several containers; fails if any failed.
async fn each<F, Fut>(tasks: &[String], action: F) -> Result<()>
where
    F: Fn(TaskId) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut failed = 0;
    for text in tasks {
        let done = match TaskId::parse(text) {
            Ok(task) => action(task).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = done {
            eprintln!("tcp-task: {text}: {e}");
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of {} tasks failed (above)", tasks.len());
    }
    Ok(())
}

/// A signal by number, or by name with or without `SIG` (`KILL`,
/// `SIGTERM`), as `docker kill -s` takes it.
pub fn parse_signal(text: &str) -> Result<i32> {
    if let Ok(number) = text.parse::<i32>() {
        if (1..=64).contains(&number) {
            return Ok(number);
        }
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    match SIGNALS.iter().find(|(n, _)| *n == name) {
        Some((_, number)) => Ok(*number),
        None => bail!(
            "-s {text}: not a signal; give a name such as KILL, TERM or HUP, or a number from 1 to 64"
        ),
    }
}

fn status_of(task: &TaskInfo) -> String {
    match &task.state {
        TaskState::Running if task.detached => "Running (detached)".into(),
        TaskState::Running => "Running".into(),
        TaskState::Ended(outcome) => match outcome.ending {
            Ending::Exited => format!("Exited ({})", outcome.exit_code.unwrap_or(-1)),
            Ending::Signaled => format!("Killed (signal {})", outcome.signal.unwrap_or(0)),
            Ending::TimedOut => "Timed out".into(),
            Ending::OomKilled => "Out of memory".into(),
            Ending::Cancelled => "Cancelled".into(),
            Ending::OutputLimit => "Output limit".into(),
        },
        TaskState::Failed(error) => format!("Failed ({:?})", error.kind),
    }
}

/// `5 seconds ago`, `3 minutes ago`, as `docker ps` says it.
fn ago(created_ms: u64) -> String {
    let created = UNIX_EPOCH + Duration::from_millis(created_ms);
    let seconds = SystemTime::now()
        .duration_since(created)
        .unwrap_or_default()
        .as_secs();
    match seconds {
        0..=59 => format!("{seconds} seconds ago"),
        60..=3599 => format!("{} minutes ago", seconds / 60),
        3600..=86_399 => format!("{} hours ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..=9_999 => format!("{n}B"),
        10_000..=9_999_999 => format!("{}kB", n / 1000),
        _ => format!("{}MB", n / 1_000_000),
    }
}

fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    format!("{kept}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("sigterm").unwrap(), 15);
        assert_eq!(parse_signal("2").unwrap(), 2);
        assert_eq!(parse_signal("64").unwrap(), 64);
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn long_text_is_clipped_to_its_column() {
        assert_eq!(clip("short", 8), "short");
        assert_eq!(clip("a long command line", 8), "a long …");
    }
}

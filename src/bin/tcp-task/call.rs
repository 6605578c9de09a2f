//! `tcp-task call IMAGE TASK --port N --params JSON`: an HTTP task, the
//! original task service's contract, from the command line. Prints the
//! answer's `result` as JSON (the whole answer with `--raw`), as
//! `/api/execute` would return it.

use serde_json::Value;
use tcp_task::protocol::Task;
use tcp_task::{Error, TaskSpec};

use crate::args::{CallArgs, ConnectionArgs, TaskOptions};
use crate::run::{connect, ending_message, error_status, execute};
use crate::signals::Interrupts;
use crate::EXIT_SERVER_ERROR;

pub async fn call(connection: &ConnectionArgs, args: CallArgs) -> u8 {
    if let Some(params) = &args.params {
        if let Err(e) = serde_json::from_str::<Value>(params) {
            eprintln!("tcp-task: --params is not valid JSON: {e}");
            return EXIT_SERVER_ERROR;
        }
    }
    let spec = TaskSpec {
        task: Task::Http {
            image: args.image,
            port: args.port,
            task: args.task,
            params: args.params,
            command: args.command,
        },
        timeout_ms: args.timeout.map(|t| t.as_millis() as u64),
        ..TaskSpec::default()
    };
    if args.json {
        let options = TaskOptions {
            interactive: false,
            detach: false,
            timeout: args.timeout,
            json: true,
        };
        return execute(connection, spec, &options).await;
    }
    let mut interrupts = Interrupts::new();
    let answer = tokio::select! {
        answer = run(connection, spec) => answer,
        // Dropping the task's handle cancels it; its container is removed.
        _ = interrupts.next() => return 130,
    };
    match answer {
        Ok(body) => print_answer(&body, args.raw),
        Err(Failure::Remote(e)) => {
            eprintln!("tcp-task: {e}");
            error_status(&e)
        }
        Err(Failure::Ended(message, status)) => {
            eprintln!("tcp-task: {message}");
            status
        }
    }
}

enum Failure {
    Remote(Error),
    /// It ran but did not answer: the message and the exit status.
    Ended(String, u8),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Remote(e)
    }
}

/// The answer's body, once the task ended well.
async fn run(connection: &ConnectionArgs, spec: TaskSpec) -> Result<Vec<u8>, Failure> {
    let client = connect(connection).await?;
    let output = client.run(spec).await?.output().await?;
    if output.outcome.success() {
        return Ok(output.stdout);
    }
    let message = ending_message(&output.outcome)
        .unwrap_or_else(|| format!("the task ended with {:?}", output.outcome.ending));
    let status = output.outcome.exit_status().clamp(0, 255) as u8;
    Err(Failure::Ended(message, status))
}

/// The `result` of a JSON answer (the whole answer with `raw`, or when it
/// has no `result`), on one line.
fn print_answer(body: &[u8], raw: bool) -> u8 {
    let text = String::from_utf8_lossy(body);
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        eprintln!("tcp-task: the task answered something that is not JSON:\n{text}");
        return EXIT_SERVER_ERROR;
    };
    let shown = match answer.get("result") {
        Some(result) if !raw => result,
        _ => &answer,
    };
    println!("{shown}");
    0
}

//! `tcp-task`: run containers on a tcp-task server the way `docker run` runs
//! them locally, and serve them.
//!
//! The binary is thin: argument parsing, terminal output and exit codes. The
//! work is in the library.

mod args;
mod bench;
mod call;
mod demo;
mod info;
mod manage;
mod run;
mod serve;
mod signals;

use clap::Parser;
use std::process::ExitCode;

use args::{BenchCommand, BuildServerArgs, Cli, Command, ImageCommand};

/// Exit status when the server, the engine or the command line failed, as
/// `docker run` uses it. A usage error exits with it too (not clap's 2): the
/// statuses below 125 belong to the task, and a script must be able to tell
/// "the task said 2" from "tcp-task never ran it".
pub const EXIT_SERVER_ERROR: u8 = 125;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed.
            let code = if e.use_stderr() { EXIT_SERVER_ERROR } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tcp-task: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_SERVER_ERROR);
        }
    };
    let code = runtime.block_on(dispatch(cli));
    // Don't wait for background tasks (a blocked stdin reader, say).
    runtime.shutdown_background();
    ExitCode::from(code)
}

async fn dispatch(cli: Cli) -> u8 {
    // `serve` sets up its own logs; the other commands log only when
    // RUST_LOG asks (a resume, say, is otherwise silent by design).
    if std::env::var_os("RUST_LOG").is_some() && !matches!(cli.command, Command::Serve(_)) {
        serve::init_logging(0, args::LogFormat::Text);
    }
    let outer = &cli.connection;
    let result = match cli.command {
        Command::Run(args) => {
            let connection = args.connection.resolve(outer);
            return run::run_image(&connection, args).await;
        }
        Command::Task(args) => {
            let connection = args.connection.resolve(outer);
            return run::run_named(&connection, args).await;
        }
        Command::Call(args) => {
            let connection = args.connection.resolve(outer);
            return call::call(&connection, args).await;
        }
        Command::Bench(BenchCommand::Load(args)) => {
            let connection = args.connection.resolve(outer);
            return bench::load(&connection, args).await;
        }
        Command::Tasks(args) => info::tasks(&args.connection.resolve(outer), args.json).await,
        Command::Status(args) => info::status(&args.connection.resolve(outer), args.json).await,
        Command::Ps(args) => manage::ps(&args.connection.resolve(outer), &args).await,
        Command::Logs(args) => manage::logs(&args.connection.resolve(outer), &args).await,
        Command::Attach(args) => {
            return manage::attach(&args.connection.resolve(outer), &args).await;
        }
        Command::Wait(args) => manage::wait(&args.connection.resolve(outer), &args).await,
        Command::Kill(args) => manage::kill(&args.connection.resolve(outer), &args).await,
        Command::Rm(args) => manage::rm(&args.connection.resolve(outer), &args).await,
        Command::Serve(args) => serve::serve(args).await,
        Command::Image(ImageCommand::BuildExamples) => build_examples().await,
        Command::Image(ImageCommand::BuildServer(args)) => build_server(args).await,
        Command::Demo => demo::demo().await,
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tcp-task: {}", error_chain(&e));
            EXIT_SERVER_ERROR
        }
    }
}

/// An error and its causes on one line, `outer: inner`, leaving out a cause
/// whose text the outer message already carries (our client errors embed
/// their io error, and `{:#}` would print it twice).
fn error_chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let next = cause.to_string();
        if text.contains(&next) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&next);
    }
    text
}

async fn build_examples() -> anyhow::Result<()> {
    let docker = tcp_task::docker::connect_docker().await?;
    tcp_task::images::build_examples_image(&docker).await?;
    println!("built {}", tcp_task::images::EXAMPLES_IMAGE);
    println!("built {}", tcp_task::images::HTTP_EXAMPLES_IMAGE);
    Ok(())
}

async fn build_server(args: BuildServerArgs) -> anyhow::Result<()> {
    let path = match args.binary {
        Some(path) => path,
        None => std::env::current_exe()
            .map_err(|e| anyhow::anyhow!("cannot find this program's file ({e}); pass --binary"))?,
    };
    let binary =
        std::fs::read(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let name = path.display().to_string();
    // Checked before connecting: a dynamic binary is refused with or
    // without an engine.
    tcp_task::images::ensure_static(&name, &binary)?;
    let docker = tcp_task::docker::connect_docker().await?;
    tcp_task::images::build_server_image(&docker, &args.tag, &name, &binary).await?;
    println!(
        "built {} ({:.1} MiB)",
        args.tag,
        binary.len() as f64 / 1048576.0
    );
    Ok(())
}

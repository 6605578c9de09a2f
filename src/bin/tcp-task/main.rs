//! `tcp-task`: run containers on a tcp-task server the way `docker run` runs
//! them locally, and serve them.
//!
//! The binary is thin: argument parsing, terminal output and exit codes. The
//! work is in the library.

mod args;
mod demo;
mod info;
mod run;
mod serve;
mod signals;

use clap::Parser;
use std::process::ExitCode;

use args::{Cli, Command, ImageCommand};

/// Exit status when the server or the engine failed, as `docker run` uses it.
pub const EXIT_SERVER_ERROR: u8 = 125;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let result = match cli.command {
        Command::Run(args) => return run::run_image(&cli.connection, args).await,
        Command::Task(args) => return run::run_named(&cli.connection, args).await,
        Command::Tasks(args) => info::tasks(&cli.connection, args).await,
        Command::Status(args) => info::status(&cli.connection, args).await,
        Command::Serve(args) => serve::serve(args).await,
        Command::Image(ImageCommand::BuildExamples) => build_examples().await,
        Command::Demo => demo::demo().await,
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tcp-task: {e:#}");
            EXIT_SERVER_ERROR
        }
    }
}

async fn build_examples() -> anyhow::Result<()> {
    let docker = tcp_task::docker::connect_docker().await?;
    tcp_task::images::build_examples_image(&docker).await?;
    println!("built {}", tcp_task::images::EXAMPLES_IMAGE);
    Ok(())
}

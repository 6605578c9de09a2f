//! `tcp-task serve`: the server, on a Docker host.

use anyhow::{Context, Result};
use tcp_task::config::{Config, DEFAULT_LISTEN};
use tcp_task::docker::connect_docker;
use tcp_task::executor::DockerExecutor;
use tcp_task::Server;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::args::ServeArgs;

pub async fn serve(args: ServeArgs) -> Result<()> {
    init_logging(args.verbose);
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let listen = args
        .listen
        .clone()
        .or_else(|| config.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let executor = start_executor(&config).await?;
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| bind_advice(&listen))?;
    info!(address = %listener.local_addr()?, "listening");
    Server::new(config.server, executor)
        .run(listener, stop_signal())
        .await;
    Ok(())
}

async fn start_executor(config: &Config) -> Result<DockerExecutor> {
    let docker = connect_docker().await?;
    let catalog = config.catalog();
    let executor = DockerExecutor::new(docker, config.executor.clone()).with_catalog(catalog);
    match executor.reap_orphans().await {
        Ok(0) => {}
        Ok(n) => info!(
            removed = n,
            "removed containers left behind by an earlier server"
        ),
        Err(e) => {
            warn!(error = %e, "could not look for containers left behind by an earlier server")
        }
    }
    // After the sweep, so that the new warm containers are not mistaken
    // for anything an earlier server left.
    executor.warm_up();
    info!(instance = executor.instance_id(), "engine ready");
    Ok(executor)
}

fn bind_advice(listen: &str) -> String {
    format!(
        "cannot listen on {listen}. If the address is in use, another server (perhaps another tcp-task) runs there: stop it or pick another address with --listen"
    )
}

/// Ctrl-C or SIGTERM starts a graceful shutdown.
async fn stop_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let sigterm = async {
        match terminate.as_mut() {
            Some(signal) => signal.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm => {}
    }
    info!("stop requested; finishing running tasks (Ctrl-C again to exit at once)");
    // A second signal exits without waiting for the tasks.
    tokio::spawn(async {
        let _ = tokio::signal::ctrl_c().await;
        warn!("second stop request: exiting now");
        std::process::exit(130);
    });
}

/// Logs go to stderr; the level comes from RUST_LOG, or from -v.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

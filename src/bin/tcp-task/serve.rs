//! `tcp-task serve`: the server, on a Docker host.

use anyhow::Result;
use tcp_task::config::{Config, DEFAULT_LISTEN};
use tcp_task::docker::connect_docker;
use tcp_task::executor::DockerExecutor;
use tcp_task::Server;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::args::ServeArgs;
use crate::signals::Interrupts;

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
    // Bind first: a taken port is the quicker mistake to report.
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}. {}", bind_advice(&e)))?;
    let executor = start_executor(&config).await?;
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
    info!(instance = executor.instance_id(), "engine ready");
    Ok(executor)
}

fn bind_advice(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            "Another program (perhaps another tcp-task server) listens there: stop it or pick another address with --listen"
        }
        std::io::ErrorKind::PermissionDenied => "Ports below 1024 need root: pick a higher port with --listen",
        _ => "Check the address given to --listen (or `listen` in the config)",
    }
}

/// Ctrl-C or SIGTERM starts a graceful shutdown; a second one exits without
/// waiting for the tasks.
async fn stop_signal() {
    let mut interrupts = Interrupts::new();
    interrupts.recv().await;
    info!("stop requested; finishing running tasks (interrupt again to exit at once)");
    tokio::spawn(async move {
        interrupts.recv().await;
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
        // Colour codes only for a terminal, not for a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

//! `tcp-task serve`: the server, on a Docker host.

use anyhow::Result;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;
use tcp_task::config::{Config, DEFAULT_LISTEN};
use tcp_task::docker::{connect_docker_or_later, negotiate, DockerError};
use tcp_task::executor::{Backend, DockerExecutor};
use tcp_task::metrics::Metrics;
use tcp_task::server::TakeOver;
use tcp_task::{Server, TlsConfig};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::args::{BackendArg, LogFormat, ServeArgs};
use crate::signals::Interrupts;

pub async fn serve(args: ServeArgs) -> Result<()> {
    init_logging(args.verbose, args.log_format);
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let listen = args
        .listen
        .clone()
        .or_else(|| config.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    // The port first: when it is taken, say so before touching the engine
    // (and before reaping containers on behalf of a server that may be
    // the one holding it).
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|e| anyhow::anyhow!(bind_error(&listen, &e, "--listen")))?;
    let http = match args.http.as_ref().or(config.http.listen.as_ref()) {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .map_err(|e| anyhow::anyhow!(bind_error(address, &e, "--http")))?,
        ),
        None => None,
    };
    let mut server_config = config.server_config()?;
    if let Some(path) = &args.token_file {
        server_config = server_config.with_token_file(path)?;
    }
    let tls = args
        .tls_cert
        .as_ref()
        .zip(args.tls_key.as_ref())
        .map(|(cert, key)| {
            let tls = TlsConfig::new(cert, key);
            match &args.tls_client_ca {
                Some(ca) => tls.with_client_ca(ca),
                None => tls,
            }
        });
    // A server that comes back on the same address takes over the tasks it
    // left; other servers sharing the engine leave them alone.
    let mut config = config;
    match args.backend {
        Some(BackendArg::Local) => config.executor.runtime.backend = Backend::Local,
        Some(BackendArg::Swarm) => config.executor.runtime.backend = Backend::Swarm,
        None => {}
    }
    if config.executor.runtime.scope.is_none() {
        config.executor.runtime.scope = Some(listener.local_addr()?.to_string());
    }
    // One registry: the connections and the executor report to it.
    let metrics = Arc::new(Metrics::new());
    let (executor, engine_down) = start_executor(&config).await?;
    let executor = Arc::new(executor.with_observer(metrics.clone()));
    let open_to_all = server_config.tokens.is_empty() && server_config.clients.is_empty();
    let state_dir = server_config.state_dir_or_default();
    let mut server = Server::new(server_config, executor.clone())
        .with_metrics(metrics)
        .with_policy(config.executor.policy.clone())
        .with_catalog(config.catalog());
    // Before adopting: the tasks a killed server had queued are in there.
    match &state_dir {
        Some(dir) => {
            server = server
                .with_state_dir(dir, config.executor.runtime.scope.as_deref())
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot write to the state directory {}: {e}; make it writable for this user, or set [server] state_dir to one that is",
                        dir.display()
                    )
                })?
        }
        None => warn!("no state directory (set [server] state_dir, or HOME): tasks still queued when this server is killed will be lost"),
    }
    if let Some(tls) = &tls {
        server = server.with_tls(tls)?;
    }
    // Tasks an earlier server left running (or ended while none watched)
    // are taken over before any client can ask for them, and before the
    // rest of what it left is swept away. When the engine does not answer
    // (it is restarting, say), the server serves all the same, and takes
    // them over once it does.
    if engine_down.is_some() || !inherit(&server.take_over(), &executor).await {
        let later = server.take_over_later();
        let executor = executor.clone();
        tokio::spawn(async move { inherit_when_back(later, executor).await });
    }
    info!(
        address = %listener.local_addr()?,
        tls = tls.is_some(),
        mutual_tls = args.tls_client_ca.is_some(),
        tokens = !open_to_all,
        "listening"
    );
    if tls.is_none() && open_to_all && !listener.local_addr()?.ip().is_loopback() {
        warn!("listening beyond loopback with neither TLS nor tokens: anyone who reaches this port can run containers here");
    }
    if let Some(http) = http {
        let address = http.local_addr()?;
        info!(http_address = %address, tls = tls.is_some(), "HTTP listening: /metrics, /healthz, /readyz, /api/");
        if !address.ip().is_loopback() {
            warn!("HTTP beyond loopback: /metrics, /healthz and /readyz answer anyone who reaches this port (they need no token); keep it behind a firewall");
        }
        server = server.with_http(http, config.http.clone());
    }
    server.run(listener, stop_signal()).await;
    Ok(())
}

/// The executor, and whether the engine was down: then its API version is
/// negotiated later ([`inherit_when_back`]).
async fn start_executor(config: &Config) -> Result<(DockerExecutor, Option<DockerError>)> {
    let (docker, engine_down) = connect_docker_or_later().await?;
    let runtime = &config.executor.runtime;
    match &engine_down {
        // A swarm manager is checked at start-up, so it must answer then.
        Some(e) if runtime.backend == Backend::Swarm => return Err(e.clone().into()),
        Some(e) => {
            warn!(error = %e, "the engine does not answer; serving all the same: /readyz says not ready, new tasks wait or fail as [executor] engine_outage says, and the tasks an earlier server left are taken over once it answers")
        }
        None if runtime.backend == Backend::Swarm => check_swarm_manager(&docker).await?,
        None => {}
    }
    let executor = DockerExecutor::new(docker, runtime.clone());
    info!(
        instance = executor.instance_id(),
        backend = ?runtime.backend,
        engine_up = engine_down.is_none(),
        "executor ready"
    );
    Ok((executor, engine_down))
}

/// The executor as the server and the take-over share it.
type SharedExecutor = Arc<DockerExecutor>;

/// Takes over what earlier servers left: their tasks (adopted), then
/// their other containers (removed), then fills the warm pools. False
/// when the engine failed it: nothing was taken over, try again.
async fn inherit(takeover: &TakeOver<SharedExecutor>, executor: &DockerExecutor) -> bool {
    match takeover.adopt().await {
        Ok(0) => {}
        Ok(n) => info!(tasks = n, "took over the tasks an earlier server left"),
        Err(e) => {
            warn!(error = %e, "could not look for tasks an earlier server left");
            return false;
        }
    }
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
    // After the executor's sweep of what an earlier server left, so that
    // the new warm containers are not mistaken for it.
    takeover.warm_up();
    true
}

/// How often a server whose engine was away at start-up asks for it.
const ENGINE_POLL: Duration = Duration::from_secs(1);

/// [`inherit`] once the engine answers (its API version negotiated
/// first), asking every [`ENGINE_POLL`] until then.
async fn inherit_when_back(takeover: TakeOver<SharedExecutor>, executor: SharedExecutor) {
    loop {
        if negotiate(executor.docker()).await.is_ok() {
            info!("the engine answers; taking over what earlier servers left");
            if inherit(&takeover, &executor).await {
                return;
            }
        }
        tokio::time::sleep(ENGINE_POLL).await;
    }
}

/// The Swarm backend needs an engine that manages a swarm: say so at
/// start-up rather than at the first task.
async fn check_swarm_manager(docker: &bollard::Docker) -> Result<()> {
    let info = docker.info().await?;
    let manager = info
        .swarm
        .as_ref()
        .and_then(|s| s.control_available)
        .unwrap_or(false);
    if !manager {
        anyhow::bail!(
            "--backend swarm needs an engine that is a Docker Swarm manager, and the engine at              {} is not; run `docker swarm init` there, point DOCKER_HOST at a manager, or use              --backend local",
            tcp_task::docker::docker_host()
        );
    }
    Ok(())
}

/// Why `listen` (given by `flag`, or its key in the config) cannot be
/// bound, and what to do about it.
fn bind_error(listen: &str, error: &std::io::Error, flag: &str) -> String {
    use std::io::ErrorKind;
    let advice = match error.kind() {
        ErrorKind::AddrInUse => format!(
            "Another program (perhaps another `tcp-task serve`) is listening there; stop it, or \
             pick another address with {flag}"
        ),
        ErrorKind::AddrNotAvailable => "No network interface of this machine has that address; \
             listen on one it has, such as 127.0.0.1:7070, or 0.0.0.0:7070 for every interface"
            .to_owned(),
        ErrorKind::PermissionDenied => format!(
            "Ports below 1024 need root (or CAP_NET_BIND_SERVICE); pick a port above 1023 with \
             {flag}"
        ),
        _ => format!(
            "Check the address given by {flag} or in the config: HOST:PORT, e.g. 127.0.0.1:7070"
        ),
    };
    format!("cannot listen on {listen}: {error}. {advice}")
}

/// Ctrl-C or SIGTERM starts a graceful shutdown; a second one exits without
/// waiting for the tasks.
async fn stop_signal() {
    let mut interrupts = Interrupts::new();
    interrupts.next().await;
    info!("stop requested; finishing running tasks (interrupt again to exit at once)");
    tokio::spawn(async move {
        interrupts.next().await;
        warn!("second stop request: exiting now");
        std::process::exit(130);
    });
}

/// Logs go to stderr; the level comes from RUST_LOG, or from -v. As JSON,
/// each line is one object with the fields of the event and of the spans
/// it is in (the connection, the task).
pub fn init_logging(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().with_span_list(true).try_init(),
        // Colours for a person at a terminal; plain text for a log file.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

//! Durable tasks on the Swarm backend, against the real binary and the
//! test swarm of scripts/swarm.sh (TCP_TASK_SWARM_HOST, the manager, and
//! TCP_TASK_SWARM_NODES, every node; without them each test says
//! `skipped:`). A `tcp-task serve --backend swarm` is killed with SIGKILL
//! while its tasks run and started again on the same address: it adopts
//! their services, as a local server adopts its containers.

mod cli_server;

use bollard::query_parameters::{ListContainersOptions, ListNetworksOptions, ListServicesOptions};
use bollard::Docker;
use cli_server::kept::{
    detach, eventually, ps_all, run_in_background, sha, state_of, ticks_output,
};
use cli_server::{Out, Server};
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tcp_task::executor::{label_filter, LABEL_INSTANCE};
use tcp_task::images::EXAMPLES_IMAGE as IMAGE;

/// The swarm's engines (the manager first) and a runtime to ask them.
struct Swarm {
    runtime: tokio::runtime::Runtime,
    nodes: Vec<Docker>,
}

/// The test swarm, with the examples image on every node; `None` (and a
/// `skipped:` line) without one. The server and the tests' own look at
/// "the engine" (tests/cli_server) go to the manager: DOCKER_HOST is set
/// to it for this whole test process, the same value by every test.
fn swarm() -> Option<&'static Swarm> {
    static SWARM: OnceLock<Option<Swarm>> = OnceLock::new();
    let swarm = SWARM.get_or_init(|| {
        let manager = std::env::var("TCP_TASK_SWARM_HOST").ok()?;
        std::env::set_var("DOCKER_HOST", &manager);
        let hosts = std::env::var("TCP_TASK_SWARM_NODES").unwrap_or_else(|_| manager.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let nodes = runtime.block_on(async {
            let mut nodes = Vec::new();
            for host in std::iter::once(manager.as_str()).chain(hosts.split_whitespace()) {
                let docker = tcp_task::docker::connect_docker_at(host)
                    .await
                    .unwrap_or_else(|e| panic!("the swarm node at {host} answers: {e}"));
                tcp_task::images::ensure_examples_image(&docker)
                    .await
                    .expect("the examples image builds on every node");
                nodes.push(docker);
            }
            nodes
        });
        Some(Swarm { runtime, nodes })
    });
    if swarm.is_none() {
        eprintln!("skipped: TCP_TASK_SWARM_HOST is not set (scripts/test.sh sets up a test swarm with scripts/swarm.sh)");
    }
    swarm.as_ref()
}

/// A server on the swarm; `config` holds tables other than `[executor]`.
fn swarm_server(config: &str) -> Server {
    let args = [std::ffi::OsStr::new("--backend"), "swarm".as_ref()];
    Server::with_config(&args, config, "")
}

/// The server's log so far (a copy: the lock is not held while a failed
/// assertion panics).
fn log_of(server: &Server) -> String {
    server.log.lock().unwrap().clone()
}

fn task_ids(server: &Server) -> Vec<String> {
    let ids = ps_all(server)
        .into_iter()
        .map(|t| t["id"].as_str().map(str::to_owned));
    ids.collect::<Option<_>>().expect("ids are strings")
}

/// Waits until task `id` has written something (it runs on a node).
fn until_it_writes(server: &Server, id: &str) {
    eventually(
        &format!("task {id} writes"),
        Duration::from_secs(60),
        || !server.run(&["logs", id]).stdout.is_empty(),
    );
}

/// What `wait ID` prints: the task's exit status.
fn waited(server: &Server, id: &str) -> String {
    let out = server.run(&["wait", id]);
    let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!status.is_empty(), "wait {id}: {}", out.stderr);
    status
}

/// The services, networks and task containers of `server`'s instance
/// still on the swarm.
fn leftovers(swarm: &Swarm, server: &Server) -> Vec<String> {
    let manager = &swarm.nodes[0];
    let filters = Some(label_filter(Some(&server.instance)));
    let by_instance = HashMap::from([(
        "label".to_owned(),
        vec![format!("{LABEL_INSTANCE}={}", server.instance)],
    )]);
    swarm.runtime.block_on(async {
        let mut left = Vec::new();
        let services = manager
            .list_services(Some(ListServicesOptions {
                filters: filters.clone(),
                ..ListServicesOptions::default()
            }))
            .await
            .expect("services list");
        left.extend(services.into_iter().map(|s| format!("service {:?}", s.id)));
        let networks = manager
            .list_networks(Some(ListNetworksOptions { filters }))
            .await
            .expect("networks list");
        left.extend(
            networks
                .into_iter()
                .map(|n| format!("network {:?}", n.name)),
        );
        for node in &swarm.nodes {
            let containers = node
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(by_instance.clone()),
                    ..ListContainersOptions::default()
                }))
                .await
                .expect("containers list");
            left.extend(
                containers
                    .into_iter()
                    .map(|c| format!("container {:?}", c.names)),
            );
        }
        left
    })
}

/// Nothing of `server`'s is left on the swarm, once the removals it owes
/// are done (a removed service's container goes on its node a moment
/// later).
fn assert_no_leftovers(swarm: &Swarm, server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let left = leftovers(swarm, server);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left on the swarm by instance {}: {left:?}\nserver log:\n{}",
            server.instance,
            log_of(server)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Removes what a failed test left of `instance` on the swarm (a server
/// leaves its kept tasks' services for the next one): a failure must not
/// leak into the next test's swarm. A passing test checked already that
/// nothing was left.
struct Sweep {
    swarm: &'static Swarm,
    instance: String,
}

impl Drop for Sweep {
    fn drop(&mut self) {
        let manager = &self.swarm.nodes[0];
        let filters = Some(label_filter(Some(&self.instance)));
        self.swarm.runtime.block_on(async {
            let options = ListServicesOptions {
                filters: filters.clone(),
                ..ListServicesOptions::default()
            };
            for service in manager
                .list_services(Some(options))
                .await
                .unwrap_or_default()
            {
                let _ = manager
                    .delete_service(&service.id.unwrap_or_default())
                    .await;
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let options = ListNetworksOptions {
                    filters: filters.clone(),
                };
                let networks = manager
                    .list_networks(Some(options))
                    .await
                    .unwrap_or_default();
                if networks.is_empty() || Instant::now() > deadline {
                    return;
                }
                for network in networks {
                    let _ = manager
                        .remove_network(&network.id.unwrap_or_default())
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
}

#[test]
fn swarm_tasks_outlive_a_server_kill_and_lose_no_byte() {
    let Some(swarm) = swarm() else { return };
    let mut server = swarm_server("");
    let _sweep = Sweep {
        swarm,
        instance: server.instance.clone(),
    };
    let (stdout, stderr) = ticks_output(60);
    let (short_out, short_err) = ticks_output(10);

    // Writes for 6 s: before, during and after the gap.
    let long = detach(&server, &[IMAGE, "ticks", "60", "100", "3"]);
    // Ends about a second after it starts: during the gap.
    let short = detach(&server, &[IMAGE, "ticks", "10", "100", "42"]);
    // Runs until it is killed, after the restart.
    let sleeper = detach(&server, &[IMAGE, "ticks", "1200", "100", "0"]);
    // Falls due while the server is down.
    let timed_out = detach(
        &server,
        &["--timeout", "4s", IMAGE, "ticks", "1200", "100", "0"],
    );
    // Not detached: its client carries on across the restart (the grace).
    let (cli, cli_started) = run_in_background(&server, &[IMAGE, "ticks", "60", "100", "4"]);
    // Every task runs (its service exists) before the kill.
    eventually("five tasks", Duration::from_secs(20), || {
        task_ids(&server).len() == 5
    });
    for id in task_ids(&server) {
        until_it_writes(&server, &id);
    }

    server.kill();
    std::thread::sleep(Duration::from_secs(4));
    server.start_again();

    let attached = server.run(&["attach", &long]);
    assert_eq!(
        attached.code,
        3,
        "attach exits with the task's status: {}\nserver log:\n{}",
        attached.stderr,
        log_of(&server)
    );
    assert_eq!(sha(&attached.stdout), sha(&stdout), "attach: stdout");
    assert_eq!(
        sha(attached.stderr.as_bytes()),
        sha(&stderr),
        "attach: stderr"
    );
    let logs = server.run(&["logs", &long]);
    assert_eq!(sha(&logs.stdout), sha(&stdout), "logs: stdout");
    assert_eq!(sha(logs.stderr.as_bytes()), sha(&stderr), "logs: stderr");
    assert_eq!(waited(&server, &long), "3");

    // It ended while no server watched: a result with its true exit code.
    let ended = state_of(&server, &short).expect("the short task is kept");
    assert_eq!(ended["Ended"]["exit_code"], 42, "{ended}");
    assert_eq!(waited(&server, &short), "42");
    let logs = server.run(&["logs", &short]);
    assert_eq!(sha(&logs.stdout), sha(&short_out), "logs: stdout");
    assert_eq!(sha(logs.stderr.as_bytes()), sha(&short_err), "logs: stderr");

    // Its deadline, counted from its real start, fell due in the gap.
    eventually(
        "the timeout fires after the restart",
        Duration::from_secs(30),
        || state_of(&server, &timed_out).is_some_and(|s| s["Ended"]["ending"] == "TimedOut"),
    );
    assert_eq!(waited(&server, &timed_out), "124");

    // Swarm can only end a task: SIGKILL, not another signal.
    let term = server.run(&["kill", "-s", "TERM", &sleeper]);
    assert_ne!(term.code, 0, "kill -s TERM on a swarm: {term:?}");
    assert!(term.stderr.contains("Swarm"), "{}", term.stderr);
    let killed = server.run(&["kill", &sleeper]);
    assert_eq!(killed.code, 0, "kill: {}", killed.stderr);
    assert_eq!(waited(&server, &sleeper), "137");

    let cli = Out::wait(cli, cli_started);
    assert_eq!(cli.code, 4, "run across the restart: {}", cli.stderr);
    assert_eq!(sha(&cli.stdout), sha(&stdout), "run: stdout");
    assert_eq!(sha(cli.stderr.as_bytes()), sha(&stderr), "run: stderr");

    let rm = server.run(&["rm", &long, &short, &sleeper, &timed_out]);
    assert_eq!(rm.code, 0, "rm: {}", rm.stderr);
    assert_no_leftovers(swarm, &server);
}

#[test]
fn an_adopted_results_service_goes_when_its_retention_ends() {
    let Some(swarm) = swarm() else { return };
    let mut server = swarm_server("[server]\nretention = 8.0\n");
    let _sweep = Sweep {
        swarm,
        instance: server.instance.clone(),
    };
    let id = detach(&server, &[IMAGE, "ticks", "5", "100", "7"]);
    until_it_writes(&server, &id);
    server.kill();
    std::thread::sleep(Duration::from_secs(2));
    server.start_again();

    // Kept across the restart, with its output and exit code...
    let (stdout, stderr) = ticks_output(5);
    let logs = server.run(&["logs", &id]);
    assert_eq!(
        sha(&logs.stdout),
        sha(&stdout),
        "logs: {}\nserver log:\n{}",
        logs.stderr,
        log_of(&server)
    );
    assert_eq!(sha(logs.stderr.as_bytes()), sha(&stderr));
    assert_eq!(waited(&server, &id), "7");
    // ...until its retention ends: then its service and network go.
    eventually("the result expires", Duration::from_secs(30), || {
        state_of(&server, &id).is_none()
    });
    assert_no_leftovers(swarm, &server);
}

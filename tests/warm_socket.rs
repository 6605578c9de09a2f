//! The warm data plane against a real engine: by default a warm
//! container's agent talks to the server over a Unix socket of its own,
//! bind-mounted read-only, and the container gains nothing else; a task
//! that connects to that socket is refused and hurts nobody; `attach`
//! still works.

mod common;

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::InspectContainerOptions;
use common::{Harness, EXAMPLES_IMAGE};
use std::path::Path;
use tcp_task::catalog::Catalog;
use tcp_task::executor::{DataPlane, Executor, ExecutorConfig, WarmConfig, SOCKET_IN_CONTAINER};
use tcp_task::protocol::TaskSpec;

fn config(plane: DataPlane, socket_dir: &Path) -> ExecutorConfig {
    ExecutorConfig {
        warm: WarmConfig {
            demand_threshold: 0,
            data_plane: plane,
            socket_dir: Some(socket_dir.to_owned()),
            ..WarmConfig::default()
        },
        ..ExecutorConfig::default()
    }
}

/// `probe` connects to the agent's socket 50 times; containers of both
/// entries serve three tasks each.
fn catalog() -> Catalog {
    Catalog::from_toml(&format!(
        r#"
        [echo]
        image = "{EXAMPLES_IMAGE}"
        command = ["echo"]
        warm = 1
        reuse = 3

        [probe]
        image = "{EXAMPLES_IMAGE}"
        command = ["unixcheck", "{SOCKET_IN_CONTAINER}"]
        warm = 1
        reuse = 3
        "#
    ))
    .expect("catalog parses")
}

/// A short directory of its own (socket paths are limited).
fn socket_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tt-sock")
        .tempdir_in("/tmp")
        .expect("a temporary directory")
}

async fn inspect(h: &Harness, id: &str) -> ContainerInspectResponse {
    h.docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .expect("inspect the warm container")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_task_runs_over_its_own_read_only_socket() {
    let dir = socket_dir();
    let h = Harness::warm(config(DataPlane::Auto, dir.path()), catalog()).await;
    h.wait_warm(2).await;
    assert_eq!(h.exec.stats().await.warm_data_plane, "socket");
    let run = h.run(TaskSpec::named("echo", ["over the socket"])).await;
    assert!(run.outcome().success(), "{:?}", run.result);
    assert_eq!(run.stdout_text(), "over the socket\n");
    // The container serves more tasks, so it is still there to look at.
    let container = inspect(&h, &run.container()).await;
    let mounts = container.mounts.unwrap_or_default();
    // Two read-only binds: the tools (tests/tools_mount.rs) and the socket.
    let bind_at = |target: &str| {
        mounts
            .iter()
            .find(|m| m.typ == Some("bind".to_owned()) && m.destination.as_deref() == Some(target))
            .unwrap_or_else(|| panic!("a bind at {target}: {mounts:?}"))
    };
    let socket = bind_at(SOCKET_IN_CONTAINER);
    assert_eq!(socket.rw, Some(false), "read-only: {socket:?}");
    let source = socket.source.clone().unwrap_or_default();
    assert!(
        source.starts_with(&*dir.path().to_string_lossy()),
        "{source}"
    );
    assert_eq!(bind_at("/.tcp-task").rw, Some(false));
    assert_eq!(mounts.len(), 2, "nothing else is mounted: {mounts:?}");
    // Nothing writable from the host (the cold path's own tmpfs are tmpfs,
    // not mounts the engine lists).
    let writable: Vec<_> = mounts.iter().filter(|m| m.rw == Some(true)).collect();
    assert!(writable.is_empty(), "{writable:?}");
    let host = container.host_config.unwrap_or_default();
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    assert_eq!(host.binds.unwrap_or_default(), Vec::<String>::new());
    assert_eq!(
        container.config.and_then(|c| c.open_stdin),
        Some(false),
        "nobody attaches"
    );
    // Each socket's directory goes once its agent connected.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("the socket dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left in the socket dir: {left:?}");
    // The same container serves the next task, over the same socket.
    let again = h.run(TaskSpec::named("echo", ["again"])).await;
    assert_eq!(again.stdout_text(), "again\n");
    assert_eq!(again.container(), run.container());
    h.drain_and_assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_connects_to_the_socket_is_refused_and_hurts_only_itself() {
    let dir = socket_dir();
    let h = Harness::warm(config(DataPlane::Socket, dir.path()), catalog()).await;
    h.wait_warm(2).await;
    let bystander = h.start(TaskSpec::named("echo", ["unaffected"]));
    let first = h.run(TaskSpec::named("probe", ["50"])).await;
    assert!(first.outcome().success(), "{:?}", first.result);
    assert_eq!(first.stdout_text(), "connected 0 refused 50 other 0\n");
    // The container it ran in serves its next task as before.
    let second = h.run(TaskSpec::named("probe", ["5"])).await;
    assert_eq!(second.stdout_text(), "connected 0 refused 5 other 0\n");
    assert_eq!(second.container(), first.container(), "reused");
    let bystander = bystander.finish().await;
    assert_eq!(bystander.stdout_text(), "unaffected\n");
    assert_ne!(bystander.container(), first.container());
    h.drain_and_assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attach_data_plane_still_works() {
    let dir = socket_dir();
    let h = Harness::warm(config(DataPlane::Attach, dir.path()), catalog()).await;
    h.wait_warm(2).await;
    assert_eq!(h.exec.stats().await.warm_data_plane, "attach");
    let run = h.run(TaskSpec::named("echo", ["attached"])).await;
    assert_eq!(run.stdout_text(), "attached\n");
    let container = inspect(&h, &run.container()).await;
    let sockets = container
        .mounts
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.destination.as_deref() == Some(SOCKET_IN_CONTAINER))
        .count();
    assert_eq!(sockets, 0, "no socket with attach");
    let probe = h.run(TaskSpec::named("probe", ["1"])).await;
    assert!(
        probe.stdout_text().starts_with("connected 0 "),
        "no socket there: {}",
        probe.stdout_text()
    );
    h.drain_and_assert_clean().await;
}

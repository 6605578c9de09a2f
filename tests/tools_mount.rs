//! How the tools binary (`measure`, the warm agent) reaches task
//! containers: a read-only bind mount of the server's tools directory when
//! the engine can see it, else an upload into a volume of each container
//! (a remote engine, or a directory the server must not trust).

mod common;

use bollard::models::{ContainerInspectResponse, MountPoint};
use common::engine::container_running;
use common::{task, Harness};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tcp_task::executor::ExecutorConfig;
use tcp_task::images::TOOLS_DIGEST;

const TOOLS_DIR: &str = "/.tcp-task";

async fn harness(tools_dir: &Path) -> Harness {
    Harness::new(ExecutorConfig {
        tools_dir: Some(tools_dir.to_owned()),
        ..ExecutorConfig::default()
    })
    .await
}

/// The mount at /.tcp-task of a task's container, seen while it runs
/// `sleep SECONDS` (a length no other test uses, to find it by).
async fn tools_mount(h: &Harness, seconds: &str) -> MountPoint {
    let running = h.start(task(["sleep", seconds]));
    let inspected: ContainerInspectResponse =
        container_running(&h.docker, h.exec.instance_id(), &format!("sleep {seconds}")).await;
    running.cancel.cancel();
    running.finish().await;
    inspected
        .mounts
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.destination.as_deref() == Some(TOOLS_DIR))
        .expect("a mount at /.tcp-task")
}

/// A quick task ran its command under `measure` (which reports usage) and
/// printed what it should.
async fn runs_measured(h: &Harness) {
    let run = h.run(task(["echo", "measured"])).await;
    assert_eq!(run.outcome().exit_code, Some(0), "{:?}", run.result);
    assert_eq!(run.stdout_text(), "measured\n");
    assert!(run.outcome().usage.is_some(), "measure reported no usage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_container_mounts_the_tools_read_only_from_the_tools_dir() {
    let scratch = tempfile::tempdir().unwrap();
    let root: PathBuf = scratch.path().join("tools");
    let h = harness(&root).await;
    assert_eq!(
        fs::metadata(&root).unwrap().permissions().mode() & 0o777,
        0o700,
        "the tools dir is made for this user alone"
    );
    runs_measured(&h).await;

    let mount = tools_mount(&h, "61.5").await;
    assert_eq!(mount.typ.as_deref(), Some("bind"), "{mount:?}");
    assert_eq!(mount.rw, Some(false), "{mount:?}");
    let source = root.join(TOOLS_DIGEST);
    assert_eq!(mount.source.as_deref(), source.to_str(), "{mount:?}");
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_cannot_mount_the_tools_dir_gets_them_uploaded() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("tools");
    let h = harness(&root).await;
    // What a remote engine sees: no such directory on its host.
    fs::remove_dir_all(&root).unwrap();
    runs_measured(&h).await;

    let mount = tools_mount(&h, "61.75").await;
    assert_eq!(mount.typ.as_deref(), Some("volume"), "{mount:?}");
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tools_dir_others_may_write_to_is_not_used() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("tools");
    fs::create_dir(&root).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
    let h = harness(&root).await;
    assert!(
        !root.join(TOOLS_DIGEST).exists(),
        "the tools were written where anyone could replace them"
    );
    runs_measured(&h).await;

    let mount = tools_mount(&h, "61.875").await;
    assert_eq!(mount.typ.as_deref(), Some("volume"), "{mount:?}");
    h.assert_clean().await;
}

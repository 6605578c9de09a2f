//! Looking at a task from outside its data path, through the Engine API
//! alone: which container of an executor instance runs a given command
//! line, and what a file inside a running container holds. Nothing here
//! goes through tcp-task's own code except the instance's label filter.

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{
    DownloadFromContainerOptions, InspectContainerOptions, ListContainersOptions,
    RemoveContainerOptions, TopOptions,
};
use bollard::Docker;
use futures::TryStreamExt;
use std::io::Read;
use std::time::{Duration, Instant};
use tcp_task::executor::label_filter;

/// The ids of the running containers labelled with `instance`.
pub async fn running_containers(docker: &Docker, instance: &str) -> Vec<String> {
    let mut filters = label_filter(Some(instance));
    filters.insert("status".into(), vec!["running".into()]);
    let options = ListContainersOptions {
        filters: Some(filters),
        ..ListContainersOptions::default()
    };
    docker
        .list_containers(Some(options))
        .await
        .expect("the engine lists containers")
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// Waits (up to 60 s) until a running container of `instance` has a
/// process whose command line is exactly `command_line`, and returns that
/// container as the engine inspects it. Matching the process, not just the
/// label, singles out the task's container among others of the instance
/// (a warm pool's refill, say).
pub async fn container_running(
    docker: &Docker,
    instance: &str,
    command_line: &str,
) -> ContainerInspectResponse {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for id in running_containers(docker, instance).await {
            if runs(docker, &id, command_line).await {
                return docker
                    .inspect_container(&id, None::<InspectContainerOptions>)
                    .await
                    .expect("inspect the task's container");
            }
        }
        assert!(
            Instant::now() < deadline,
            "no running container of {instance} ran `{command_line}` within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether container `id` has a process with exactly `command_line`.
async fn runs(docker: &Docker, id: &str, command_line: &str) -> bool {
    // The engine needs the PID column to tell the container's processes.
    let options = TopOptions {
        ps_args: "-o pid,args".into(),
    };
    // The container may have ended since it was listed.
    let Ok(top) = docker.top_processes(id, Some(options)).await else {
        return false;
    };
    top.processes
        .unwrap_or_default()
        .iter()
        .any(|process| process.last().map(String::as_str) == Some(command_line))
}

/// Waits (up to 30 s) until the engine lists no container of `instance`,
/// running or not.
pub async fn wait_until_none(docker: &Docker, instance: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let options = ListContainersOptions {
            all: true,
            filters: Some(label_filter(Some(instance))),
            ..ListContainersOptions::default()
        };
        let left = docker
            .list_containers(Some(options))
            .await
            .expect("the engine lists containers");
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "containers of {instance} still there after 30 s: {:?}",
            left.iter().map(|c| &c.id).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The contents of the regular file `path` in container `id`, through the
/// Engine API's archive download (what `docker cp` uses). Works while the
/// container runs.
pub async fn read_file(docker: &Docker, id: &str, path: &str) -> Result<Vec<u8>, String> {
    let options = DownloadFromContainerOptions {
        path: path.to_owned(),
    };
    let archive: Vec<u8> = docker
        .download_from_container(id, Some(options))
        .map_ok(|chunk| chunk.to_vec())
        .try_concat()
        .await
        .map_err(|e| format!("cannot download {path} from {id}: {e}"))?;
    let mut archive = tar::Archive::new(archive.as_slice());
    let mut entries = archive
        .entries()
        .map_err(|e| format!("the archive of {path} is not a tar: {e}"))?;
    let mut entry = entries
        .next()
        .ok_or_else(|| format!("the archive of {path} is empty"))?
        .map_err(|e| format!("the archive of {path} is not a tar: {e}"))?;
    if !entry.header().entry_type().is_file() {
        return Err(format!("{path} is not a regular file"));
    }
    let mut contents = Vec::new();
    entry
        .read_to_end(&mut contents)
        .map_err(|e| format!("cannot read {path} from the archive: {e}"))?;
    Ok(contents)
}

/// Removes every container of an executor instance when the test fails,
/// so that a failing test leaves nothing running behind it (a passing test
/// checks instead that nothing is left). Hold it for the whole test.
pub struct RemoveOnPanic {
    instance: String,
}

impl RemoveOnPanic {
    pub fn new(instance: &str) -> RemoveOnPanic {
        RemoveOnPanic {
            instance: instance.to_owned(),
        }
    }
}

impl Drop for RemoveOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let instance = self.instance.clone();
        // Its own thread, runtime and engine connection: the test's runtime
        // is the one unwinding, and cannot be blocked on from inside.
        let removal = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(remove_all(&instance))
        });
        match removal.join() {
            Ok(0) => {}
            Ok(n) => eprintln!(
                "removed {n} container(s) of {} after the failure",
                self.instance
            ),
            Err(_) => eprintln!("could not remove the containers of {}", self.instance),
        }
    }
}

/// Force-removes every container labelled with `instance` and waits (up to
/// 30 s) until the engine lists none; returns how many there were.
async fn remove_all(instance: &str) -> usize {
    let Ok(docker) = tcp_task::docker::connect_docker().await else {
        return 0;
    };
    let list = || {
        let options = ListContainersOptions {
            all: true,
            filters: Some(label_filter(Some(instance))),
            ..ListContainersOptions::default()
        };
        docker.list_containers(Some(options))
    };
    let Ok(found) = list().await else {
        return 0;
    };
    for id in found.iter().filter_map(|c| c.id.as_deref()) {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..RemoveContainerOptions::default()
        };
        // May fail as already in progress: the executor's own clean-up.
        let _ = docker.remove_container(id, Some(options)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match list().await {
            Ok(left) if left.is_empty() => break,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    found.len()
}

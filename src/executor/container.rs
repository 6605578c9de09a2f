//! The container every task gets, cold or warm: its command and
//! environment, the server's labels, and the hardening defaults. One builder,
//! so the warm path cannot drift from the cold path's isolation.

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use std::collections::HashMap;

use super::cleanup::LABEL_SCOPE;
use super::cleanup::{Owner, LABEL_TASK};
use super::config::ExecutorConfig;
use super::kept::tag_labels;
use super::plan::Plan;

/// The create request for `plan`'s container; `task` goes into the
/// `tcp-task.task` label.
pub(crate) fn container_body(
    config: &ExecutorConfig,
    owner: &Owner,
    plan: &Plan,
    task: &str,
) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(plan.image.clone()),
        cmd: (!plan.command.is_empty()).then(|| plan.command.clone()),
        env: Some(plan.env.clone()),
        working_dir: plan.workdir.clone(),
        user: plan.user.clone(),
        labels: Some(labels(config, owner, plan, task)),
        // No TTY: stdout and stderr stay apart, multiplexed by the engine.
        tty: Some(false),
        attach_stdin: Some(plan.stdin),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(plan.stdin),
        // Closing our attach stream's write half then gives the process
        // end-of-file on stdin.
        stdin_once: Some(plan.stdin),
        host_config: Some(host_config(config, plan)),
        ..ContainerCreateBody::default()
    }
}

/// What the server labels a task's container (or Swarm service) with:
/// the operator's labels, the task's, then the server's own, which nothing
/// can override. `task` says which kind of container it is.
pub(crate) fn labels(
    config: &ExecutorConfig,
    owner: &Owner,
    plan: &Plan,
    task: &str,
) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = config.labels.clone().into_iter().collect();
    labels.extend(plan.labels.iter().cloned());
    // The server's own labels go last so nothing can override them.
    labels.extend(owner.labels());
    // On warm containers too: a restarted server adopts the tasks they ran.
    if let Some(scope) = &config.scope {
        labels.insert(LABEL_SCOPE.to_owned(), scope.clone());
    }
    if let Some(tag) = &plan.task {
        labels.extend(tag_labels(tag, plan.timeout.as_millis()));
    }
    labels.insert(LABEL_TASK.to_owned(), task.to_owned());
    labels
}

/// The log driver of every task's container; bounded by `log_max_size`
/// and `log_max_file`.
pub(crate) const LOG_DRIVER: &str = "local";

fn host_config(config: &ExecutorConfig, plan: &Plan) -> HostConfig {
    let memory = i64::try_from(plan.memory_bytes).unwrap_or(i64::MAX);
    let log_options = HashMap::from([
        ("max-size".to_owned(), config.log_max_size.clone()),
        ("max-file".to_owned(), config.log_max_file.to_string()),
        // Compressing a rotated file costs dockerd CPU for a log that
        // only `docker logs` reads.
        ("compress".to_owned(), "false".to_owned()),
    ]);
    let tmpfs = plan.read_only_root.then(|| {
        let options = format!("rw,nosuid,nodev,mode=1777,size={}", plan.tmpfs_bytes);
        HashMap::from([("/tmp".to_owned(), options)])
    });
    HostConfig {
        network_mode: Some(plan.network.clone()),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        pids_limit: Some(plan.pids_limit),
        memory: Some(memory),
        // Swap equal to memory means no swap at all.
        memory_swap: Some(memory),
        nano_cpus: Some(i64::try_from(plan.nano_cpus).unwrap_or(i64::MAX)),
        // docker-init as PID 1 reaps zombies and passes signals on.
        init: Some(true),
        // `local`, not json-file: the same size bounds, but dockerd writes
        // compact protobuf records instead of escaping every byte into
        // JSON, which cost it seconds of CPU per 256 MiB of output.
        log_config: Some(HostConfigLogConfig {
            typ: Some(LOG_DRIVER.to_owned()),
            config: Some(log_options),
        }),
        readonly_rootfs: Some(plan.read_only_root),
        tmpfs,
        // Never: removal would race with reading the exit status.
        auto_remove: Some(false),
        ..HostConfig::default()
    }
}

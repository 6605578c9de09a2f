//! The service every Swarm task gets: one replica that is never restarted,
//! on its own internal network, with the hardening Swarm allows and the
//! server's labels. The counterpart of `super::super::container` for the
//! local backend; docs/SECURITY.md compares the two.

use bollard::models::{
    Limit, Mount, MountTmpfsOptions, MountType, NetworkAttachmentConfig, ServiceSpec,
    ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec,
    TaskSpecContainerSpecPrivileges, TaskSpecLogDriver, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum,
};
use std::collections::HashMap;

use super::super::cleanup::{Owner, LABEL_MANAGED};
use super::super::config::ExecutorConfig;
use super::super::container::{self, LOG_DRIVER};
use super::super::plan::Plan;

/// On a task's container (the service's labels are the server's): which
/// service it belongs to. The container carries no `tcp-task.managed`, so
/// the local backend's sweeps and adoption never take it for theirs.
pub const LABEL_SERVICE: &str = "tcp-task.service";

/// The create request for `plan`'s service, named `name`, attached to
/// `network` only.
pub(crate) fn service_spec(
    config: &ExecutorConfig,
    owner: &Owner,
    plan: &Plan,
    (name, network): (&str, &str),
) -> ServiceSpec {
    let labels = labels(config, owner, plan);
    let mut container_labels = labels.clone();
    container_labels.remove(LABEL_MANAGED);
    container_labels.insert(LABEL_SERVICE.to_owned(), name.to_owned());
    let task = TaskSpec {
        container_spec: Some(container_spec(plan, container_labels)),
        resources: Some(resources(plan)),
        // One try: a task that ends (or fails to start) is not run again.
        restart_policy: Some(TaskSpecRestartPolicy {
            condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
            max_attempts: Some(0),
            ..TaskSpecRestartPolicy::default()
        }),
        networks: Some(vec![NetworkAttachmentConfig {
            target: Some(network.to_owned()),
            ..NetworkAttachmentConfig::default()
        }]),
        log_driver: Some(log_driver(config)),
        ..TaskSpec::default()
    };
    ServiceSpec {
        name: Some(name.to_owned()),
        labels: Some(labels),
        task_template: Some(task),
        // A replicated service of one, not a replicated job: on Engine
        // 20.10 removing a job's service leaves its container behind.
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
            ..ServiceSpecMode::default()
        }),
        ..ServiceSpec::default()
    }
}

fn container_spec(plan: &Plan, labels: HashMap<String, String>) -> TaskSpecContainerSpec {
    TaskSpecContainerSpec {
        image: Some(plan.image.clone()),
        // The plan's argv replaces the image's command, as `docker run
        // IMAGE CMD...` does; the entrypoint stays.
        args: (!plan.command.is_empty()).then(|| plan.command.clone()),
        env: Some(plan.env.clone()),
        dir: plan.workdir.clone(),
        user: plan.user.clone(),
        labels: Some(labels),
        tty: Some(false),
        open_stdin: Some(false),
        read_only: Some(plan.read_only_root),
        mounts: plan.read_only_root.then(|| vec![tmp(plan.tmpfs_bytes)]),
        // docker-init as PID 1 reaps zombies and passes signals on.
        init: Some(true),
        // API 1.41 knows capability_drop; an engine older than that
        // ignores it (docs/SECURITY.md).
        capability_drop: Some(vec!["ALL".to_owned()]),
        // Only API 1.46 and later honour this in a service; older engines
        // ignore the field (docs/SECURITY.md says so).
        privileges: Some(TaskSpecContainerSpecPrivileges {
            no_new_privileges: Some(true),
            ..TaskSpecContainerSpecPrivileges::default()
        }),
        // No grace: a task that is ended is killed, as on the local backend
        // (a kept task's by scaling its service to none, `super::kept`), and
        // reads as SIGKILL.
        stop_signal: Some("SIGKILL".to_owned()),
        stop_grace_period: Some(0),
        ..TaskSpecContainerSpec::default()
    }
}

/// A writable /tmp beside a read-only root, as on the local backend.
fn tmp(bytes: u64) -> Mount {
    Mount {
        target: Some("/tmp".to_owned()),
        typ: Some(MountType::TMPFS),
        tmpfs_options: Some(MountTmpfsOptions {
            size_bytes: Some(i64::try_from(bytes).unwrap_or(i64::MAX)),
            mode: Some(0o1777),
            ..MountTmpfsOptions::default()
        }),
        ..Mount::default()
    }
}

/// Limits, and the memory reserved: the scheduler then places a task only
/// on a node with the memory for it, and a task no node can hold stays
/// pending (which the runtime reports as `Unschedulable`). CPU is limited,
/// not reserved: a reservation of one CPU per task (the default limit)
/// would let a 2-core node run two tasks, however idle they are, as the
/// local backend does not.
fn resources(plan: &Plan) -> TaskSpecResources {
    let memory = i64::try_from(plan.memory_bytes).unwrap_or(i64::MAX);
    let nano_cpus = i64::try_from(plan.nano_cpus).unwrap_or(i64::MAX);
    TaskSpecResources {
        limits: Some(Limit {
            nano_cpus: Some(nano_cpus),
            memory_bytes: Some(memory),
            pids: Some(plan.pids_limit),
        }),
        reservations: Some(bollard::models::ResourceObject {
            memory_bytes: Some(memory),
            ..bollard::models::ResourceObject::default()
        }),
        ..TaskSpecResources::default()
    }
}

fn log_driver(config: &ExecutorConfig) -> TaskSpecLogDriver {
    TaskSpecLogDriver {
        name: Some(LOG_DRIVER.to_owned()),
        options: Some(HashMap::from([
            ("max-size".to_owned(), config.log_max_size.clone()),
            ("max-file".to_owned(), config.log_max_file.to_string()),
            ("compress".to_owned(), "false".to_owned()),
        ])),
    }
}

/// The server's labels, as on a local container.
pub(crate) fn labels(
    config: &ExecutorConfig,
    owner: &Owner,
    plan: &Plan,
) -> HashMap<String, String> {
    container::labels(config, owner, plan, "swarm")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn plan() -> Plan {
        Plan {
            image: "img".into(),
            command: vec!["echo".into(), "hi".into()],
            env: vec!["A=b".into()],
            workdir: None,
            user: None,
            stdin: false,
            memory_bytes: 64 << 20,
            nano_cpus: 500_000_000,
            pids_limit: 64,
            network: "none".into(),
            read_only_root: true,
            tmpfs_bytes: 0,
            timeout: Duration::from_secs(5),
            labels: vec![("tcp-task.managed".into(), "forged".into())],
            pull_auth: None,
            entry: None,
            http: None,
            task: None,
        }
    }

    #[test]
    fn the_service_is_hardened_and_labelled() {
        let config = ExecutorConfig::default();
        let owner = Owner::this_process(Some("me".into()));
        let spec = service_spec(&config, &owner, &plan(), ("svc", "net"));
        let labels = spec.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_MANAGED], "true", "the server's labels win");
        let task = spec.task_template.unwrap();
        let container = task.container_spec.unwrap();
        assert_eq!(container.capability_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(container.init, Some(true));
        assert_eq!(container.read_only, Some(true));
        assert!(!container.labels.unwrap().contains_key(LABEL_MANAGED));
        let limits = task.resources.unwrap().limits.unwrap();
        assert_eq!(limits.pids, Some(64));
        assert_eq!(limits.memory_bytes, Some(64 << 20));
        let networks = task.networks.unwrap();
        assert_eq!(networks[0].target.as_deref(), Some("net"));
        assert_eq!(
            task.restart_policy.unwrap().condition,
            Some(TaskSpecRestartPolicyConditionEnum::NONE)
        );
        assert_eq!(spec.mode.unwrap().replicated.unwrap().replicas, Some(1));
    }
}

//! Checking a request against the server's policy, before any container
//! exists, and turning it into a [`Plan`]: the exact settings the container
//! gets, defaults filled in.

use std::time::Duration;

use super::config::Policy;
use crate::access::{ClientPolicy, ClientRules};
use crate::protocol::{ErrorKind, RegistryAuth, Task, TaskError, TaskSpec};

/// The label namespace the server keeps for itself.
pub(crate) const LABEL_PREFIX: &str = "tcp-task.";

/// Docker refuses memory limits under 6 MiB; refusing them here gives a
/// clearer message than the engine's.
const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

/// A request that passed the policy, with every limit decided.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub image: String,
    pub command: Vec<String>,
    /// `KEY=VALUE`, as the engine takes them.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub stdin: bool,
    pub memory_bytes: u64,
    pub nano_cpus: u64,
    pub pids_limit: i64,
    pub network: String,
    pub read_only_root: bool,
    pub timeout: Duration,
    pub labels: Vec<(String, String)>,
    pub registry_auth: Option<RegistryAuth>,
}

fn bad_request(message: String) -> TaskError {
    TaskError::new(ErrorKind::BadRequest, message)
}

fn denied(message: String) -> TaskError {
    TaskError::new(ErrorKind::PolicyDenied, message)
}

/// Checks `spec` against the server's policy and, for a named client, its
/// own rules too (which can only narrow the server's). A refusal names the
/// rule that refused.
pub(crate) fn plan_for(
    spec: TaskSpec,
    policy: &Policy,
    client: Option<&ClientRules>,
) -> Result<Plan, TaskError> {
    let Some(client) = client else {
        return plan(spec, policy);
    };
    if let Task::Image { image, .. } = &spec.task {
        client.policy.check_image(&client.name, image)?;
    }
    // The server's rules first, so their refusals keep their own names.
    plan(spec.clone(), policy)?;
    plan(spec, &narrowed(policy, &client.policy)).map_err(|e| as_client_rule(e, &client.name))
}

/// The server's policy with a client's maxima applied on top: the smaller
/// maximum wins, and a default never exceeds its maximum.
fn narrowed(policy: &Policy, client: &ClientPolicy) -> Policy {
    let mut narrowed = policy.clone();
    if let Some(max) = client.max_memory_bytes {
        narrowed.max_memory_bytes = narrowed.max_memory_bytes.min(max);
        narrowed.default_memory_bytes = narrowed.default_memory_bytes.min(max);
    }
    if let Some(max) = client.max_nano_cpus {
        narrowed.max_nano_cpus = narrowed.max_nano_cpus.min(max);
        narrowed.default_nano_cpus = narrowed.default_nano_cpus.min(max);
    }
    if let Some(max) = client.max_pids_limit {
        narrowed.max_pids_limit = narrowed.max_pids_limit.min(max);
        narrowed.default_pids_limit = narrowed.default_pids_limit.min(max);
    }
    if let Some(max) = client.max_timeout_ms {
        narrowed.max_timeout_ms = narrowed.max_timeout_ms.min(max);
        narrowed.default_timeout_ms = narrowed.default_timeout_ms.min(max);
    }
    if client.allow_network == Some(false) {
        narrowed.allow_network = false;
    }
    narrowed
}

/// Rewords a refusal by the narrowed policy so that it names the client's
/// rule rather than the server's.
fn as_client_rule(error: TaskError, name: &str) -> TaskError {
    let message = error
        .message
        .replace(
            "this server's maximum",
            &format!("the client `{name}`'s maximum"),
        )
        .replace(
            "this server gives tasks no network",
            &format!("the client `{name}` may not use a network"),
        )
        .replace("(policy.", &format!("([clients.{name}] "));
    TaskError::new(error.kind, message)
}

/// Checks `spec` (an image task; catalog tasks are resolved before) against
/// `policy`.
pub(crate) fn plan(spec: TaskSpec, policy: &Policy) -> Result<Plan, TaskError> {
    let (image, command) = match spec.task {
        Task::Image { image, command } => (image, command),
        Task::Named { name, .. } => {
            return Err(TaskError::new(
                ErrorKind::Internal,
                format!("catalog task `{name}` reached the policy check unresolved"),
            ))
        }
    };
    if image.trim().is_empty() {
        return Err(bad_request(
            "the task names no image; give one, e.g. `alpine:3.20`".to_owned(),
        ));
    }
    Ok(Plan {
        image,
        command,
        env: env_pairs(spec.env)?,
        workdir: spec.workdir,
        user: spec.user,
        stdin: spec.stdin,
        memory_bytes: memory(spec.memory_bytes, policy)?,
        nano_cpus: cpus(spec.nano_cpus, policy)?,
        pids_limit: pids(spec.pids_limit, policy)?,
        network: network(spec.network, policy)?,
        read_only_root: spec.read_only_root || policy.force_read_only_root,
        timeout: timeout(spec.timeout_ms, policy)?,
        labels: labels(spec.labels)?,
        registry_auth: spec.registry_auth,
    })
}

fn env_pairs(env: Vec<(String, String)>) -> Result<Vec<String>, TaskError> {
    env.into_iter()
        .map(|(key, value)| {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                Err(bad_request(format!(
                    "environment variable name `{key}` is not valid: it must be non-empty and \
                     contain no `=`"
                )))
            } else {
                Ok(format!("{key}={value}"))
            }
        })
        .collect()
}

fn memory(asked: Option<u64>, policy: &Policy) -> Result<u64, TaskError> {
    let max = policy.max_memory_bytes;
    match asked {
        None => Ok(policy.default_memory_bytes.min(max)),
        Some(m) if m > max => Err(denied(format!(
            "memory limit of {} exceeds this server's maximum of {} (policy.max_memory_bytes); \
             ask for at most that",
            human_bytes(m),
            human_bytes(max)
        ))),
        Some(m) if m < MIN_MEMORY_BYTES => Err(bad_request(format!(
            "memory limit of {} is below Docker's minimum of 6 MiB; ask for more",
            human_bytes(m)
        ))),
        Some(m) => Ok(m),
    }
}

fn cpus(asked: Option<u64>, policy: &Policy) -> Result<u64, TaskError> {
    let max = policy.max_nano_cpus;
    match asked {
        None => Ok(policy.default_nano_cpus.min(max)),
        Some(0) => Err(bad_request(
            "a CPU quota of 0 would never run; leave it unset for the server's default".to_owned(),
        )),
        Some(c) if c > max => Err(denied(format!(
            "CPU quota of {} CPUs exceeds this server's maximum of {} CPUs \
             (policy.max_nano_cpus); ask for at most that",
            cpus_text(c),
            cpus_text(max)
        ))),
        Some(c) => Ok(c),
    }
}

fn pids(asked: Option<i64>, policy: &Policy) -> Result<i64, TaskError> {
    let max = policy.max_pids_limit;
    match asked {
        None => Ok(policy.default_pids_limit.min(max)),
        // Docker reads 0 and -1 as "unlimited".
        Some(p) if p <= 0 => Err(denied(format!(
            "an unlimited process count is not allowed; the pids limit maximum is {max} \
             (policy.max_pids_limit)"
        ))),
        Some(p) if p > max => Err(denied(format!(
            "pids limit of {p} exceeds this server's maximum of {max} (policy.max_pids_limit); \
             ask for at most that"
        ))),
        Some(p) => Ok(p),
    }
}

fn timeout(asked: Option<u64>, policy: &Policy) -> Result<Duration, TaskError> {
    let max = policy.max_timeout_ms;
    let ms =
        match asked {
            None => policy.default_timeout_ms.min(max),
            Some(0) => return Err(bad_request(
                "a timeout of 0 ms would end the task before it starts; leave it unset for the \
                 server's default"
                    .to_owned(),
            )),
            Some(t) if t > max => {
                return Err(denied(format!(
                    "timeout of {t} ms exceeds this server's maximum of {max} ms \
                 (policy.max_timeout_ms); ask for at most that"
                )))
            }
            Some(t) => t,
        };
    Ok(Duration::from_millis(ms))
}

fn network(asked: Option<String>, policy: &Policy) -> Result<String, TaskError> {
    let mode = match asked {
        None => return Ok("none".to_owned()),
        Some(mode) if mode == "none" => return Ok(mode),
        Some(mode) => mode,
    };
    if !policy.allow_network {
        return Err(denied(format!(
            "network mode `{mode}` was asked for, but this server gives tasks no network \
             (policy.allow_network is false); run the task without a network"
        )));
    }
    if !policy.allowed_network_modes.contains(&mode) {
        return Err(denied(format!(
            "network mode `{mode}` is not allowed on this server \
             (policy.allowed_network_modes); allowed: none, {}",
            policy.allowed_network_modes.join(", ")
        )));
    }
    Ok(mode)
}

fn labels(labels: Vec<(String, String)>) -> Result<Vec<(String, String)>, TaskError> {
    if let Some((key, _)) = labels.iter().find(|(k, _)| k.starts_with(LABEL_PREFIX)) {
        return Err(bad_request(format!(
            "label `{key}` is in the `{LABEL_PREFIX}` namespace, which the server keeps for \
             itself; choose another name"
        )));
    }
    Ok(labels)
}

/// `268435456` → `256 MiB`, for messages.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn cpus_text(nano: u64) -> String {
    let cpus = nano as f64 / 1e9;
    format!("{cpus}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskSpec {
        TaskSpec::image("img:1", ["true"])
    }

    #[test]
    fn defaults_fill_in_and_network_is_none() {
        let plan = plan(spec(), &Policy::default()).expect("default spec passes");
        assert_eq!(plan.network, "none");
        assert_eq!(plan.memory_bytes, 256 * 1024 * 1024);
        assert_eq!(plan.pids_limit, 256);
        assert_eq!(plan.timeout, Duration::from_secs(600));
        assert!(!plan.read_only_root);
    }

    #[test]
    fn limits_above_the_policy_are_denied_by_name() {
        let policy = Policy::default();
        let cases: Vec<(TaskSpec, &str)> = vec![
            (
                TaskSpec {
                    memory_bytes: Some(3 << 30),
                    ..spec()
                },
                "max_memory_bytes",
            ),
            (
                TaskSpec {
                    nano_cpus: Some(3_000_000_000),
                    ..spec()
                },
                "max_nano_cpus",
            ),
            (
                TaskSpec {
                    pids_limit: Some(5000),
                    ..spec()
                },
                "max_pids_limit",
            ),
            (
                TaskSpec {
                    timeout_ms: Some(7_200_000),
                    ..spec()
                },
                "max_timeout_ms",
            ),
            (
                TaskSpec {
                    network: Some("bridge".into()),
                    ..spec()
                },
                "allow_network",
            ),
        ];
        for (spec, limit) in cases {
            let err = plan(spec, &policy).expect_err("over the policy");
            assert_eq!(err.kind, ErrorKind::PolicyDenied);
            assert!(err.message.contains(limit), "{}", err.message);
        }
    }

    #[test]
    fn network_modes_follow_the_allow_list() {
        let policy = Policy {
            allow_network: true,
            ..Policy::default()
        };
        let ok = TaskSpec {
            network: Some("bridge".into()),
            ..spec()
        };
        assert_eq!(plan(ok, &policy).expect("allowed").network, "bridge");
        let host = TaskSpec {
            network: Some("host".into()),
            ..spec()
        };
        let err = plan(host, &policy).expect_err("host is not allowed");
        assert!(err.message.contains("allowed_network_modes"));
    }

    #[test]
    fn reserved_labels_and_bad_env_are_bad_requests() {
        let policy = Policy::default();
        let label = TaskSpec {
            labels: vec![("tcp-task.instance".into(), "x".into())],
            ..spec()
        };
        assert_eq!(
            plan(label, &policy).unwrap_err().kind,
            ErrorKind::BadRequest
        );
        let env = TaskSpec {
            env: vec![("A=B".into(), "x".into())],
            ..spec()
        };
        assert_eq!(plan(env, &policy).unwrap_err().kind, ErrorKind::BadRequest);
        let empty = TaskSpec::image("", Vec::<String>::new());
        assert_eq!(
            plan(empty, &policy).unwrap_err().kind,
            ErrorKind::BadRequest
        );
    }

    #[test]
    fn forced_read_only_root_applies() {
        let policy = Policy {
            force_read_only_root: true,
            ..Policy::default()
        };
        assert!(plan(spec(), &policy).expect("passes").read_only_root);
    }

    #[test]
    fn a_clients_rules_narrow_the_servers_and_say_so() {
        let client = ClientRules {
            name: "ci".into(),
            policy: ClientPolicy {
                images: vec!["ok:*".into()],
                max_memory_bytes: Some(64 * 1024 * 1024),
                allow_network: Some(false),
                ..ClientPolicy::default()
            },
        };
        let policy = Policy {
            allow_network: true,
            ..Policy::default()
        };
        let spec = |image: &str| TaskSpec::image(image, ["true"]);

        let plan = plan_for(spec("ok:1"), &policy, Some(&client)).unwrap();
        assert_eq!(
            plan.memory_bytes,
            64 * 1024 * 1024,
            "the default is capped by the client's maximum"
        );

        let err = plan_for(spec("other:1"), &policy, Some(&client)).unwrap_err();
        assert!(err.message.contains("`images` rule"), "{}", err.message);

        let mut big = spec("ok:1");
        big.memory_bytes = Some(128 * 1024 * 1024);
        let err = plan_for(big, &policy, Some(&client)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::PolicyDenied);
        assert!(
            err.message.contains("the client `ci`'s maximum"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("[clients.ci] max_memory_bytes"),
            "{}",
            err.message
        );

        let mut networked = spec("ok:1");
        networked.network = Some("bridge".into());
        let err = plan_for(networked.clone(), &policy, Some(&client)).unwrap_err();
        assert!(
            err.message
                .contains("the client `ci` may not use a network"),
            "{}",
            err.message
        );
        assert!(
            plan_for(networked, &policy, None).is_ok(),
            "the server alone allows it"
        );

        let mut huge = spec("ok:1");
        huge.memory_bytes = Some(64 * 1024 * 1024 * 1024);
        let err = plan_for(huge, &policy, Some(&client)).unwrap_err();
        assert!(
            err.message.contains("this server's maximum"),
            "the server's rule names itself: {}",
            err.message
        );
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(256 * 1024 * 1024), "256 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(7), "7 bytes");
    }
}

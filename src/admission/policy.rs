//! The server's policy, and the check of a request against it (narrowed,
//! for a named client, by the client's own rules) that turns the request
//! into a [`Plan`]: the exact settings the task gets, defaults filled in.
//! A refusal names the rule that refused.

use serde::Deserialize;
use std::time::Duration;

use super::client::{ClientPolicy, ClientRules};
use crate::executor::{EntryRef, Plan};
use crate::protocol::{Task, TaskSpec};
use crate::task::{ErrorKind, TaskError};

/// The label namespace the server keeps for itself.
pub(crate) const LABEL_PREFIX: &str = "tcp-task.";

/// Docker refuses memory limits under 6 MiB; refusing them here gives a
/// clearer message than the engine's.
const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
const ONE_CPU: u64 = 1_000_000_000;

/// The server's policy: maxima a request may not exceed, the defaults a
/// request gets when it names no limit, and what a client may loosen.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Default 256 MiB.
    pub default_memory_bytes: u64,
    /// Default 2 GiB.
    pub max_memory_bytes: u64,
    /// Default one CPU.
    pub default_nano_cpus: u64,
    /// Default two CPUs.
    pub max_nano_cpus: u64,
    /// Default 256 processes.
    pub default_pids_limit: i64,
    /// Default 1024 processes.
    pub max_pids_limit: i64,
    /// Applied when a request names no timeout. Default 10 minutes.
    pub default_timeout_ms: u64,
    /// Default one hour.
    pub max_timeout_ms: u64,
    /// Whether a request may name a network mode other than `none`.
    /// Default false.
    pub allow_network: bool,
    /// The network modes a request may name when `allow_network` is set.
    /// Default `["bridge"]`.
    pub allowed_network_modes: Vec<String>,
    /// Mount every task's root filesystem read-only, whatever the request
    /// says. Default false: the request decides (`TaskSpec::read_only_root`).
    pub force_read_only_root: bool,
    /// Size of the tmpfs mounted on /tmp when the root is read-only, in
    /// bytes. Default 64 MiB.
    pub tmpfs_bytes: u64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            default_memory_bytes: 256 * MIB,
            max_memory_bytes: 2 * GIB,
            default_nano_cpus: ONE_CPU,
            max_nano_cpus: 2 * ONE_CPU,
            default_pids_limit: 256,
            max_pids_limit: 1024,
            default_timeout_ms: 10 * 60 * 1000,
            max_timeout_ms: 60 * 60 * 1000,
            allow_network: false,
            allowed_network_modes: vec!["bridge".to_owned()],
            force_read_only_root: false,
            tmpfs_bytes: 64 * MIB,
        }
    }
}

/// Whose rule a limit is, so that a refusal names it.
#[derive(Debug, Clone, Copy)]
enum Rule<'a> {
    Server,
    Client(&'a str),
}

impl Rule<'_> {
    /// "this server's", "the client `ci`'s".
    fn whose(self) -> String {
        match self {
            Rule::Server => "this server's".to_owned(),
            Rule::Client(name) => format!("the client `{name}`'s"),
        }
    }

    /// Where the rule is set: `policy.KEY`, `[clients.NAME] KEY`.
    fn key(self, key: &str) -> String {
        match self {
            Rule::Server => format!("policy.{key}"),
            Rule::Client(name) => format!("[clients.{name}] {key}"),
        }
    }
}

/// A maximum and the rule that sets it.
#[derive(Debug, Clone, Copy)]
struct Max<'a, T> {
    value: T,
    rule: Rule<'a>,
}

/// The maxima that apply to one request: the server's, then its client's.
struct Maxima<'a> {
    memory: Vec<Max<'a, u64>>,
    cpus: Vec<Max<'a, u64>>,
    pids: Vec<Max<'a, i64>>,
    timeout_ms: Vec<Max<'a, u64>>,
    /// Who forbids a network, if anyone does.
    no_network: Option<Rule<'a>>,
}

impl<'a> Maxima<'a> {
    fn of(policy: &Policy, client: Option<&'a ClientRules>) -> Maxima<'a> {
        fn both<'a, T: Copy>(server: T, client: Option<(T, Rule<'a>)>) -> Vec<Max<'a, T>> {
            let server = Max {
                value: server,
                rule: Rule::Server,
            };
            let client = client.map(|(value, rule)| Max { value, rule });
            std::iter::once(server).chain(client).collect()
        }
        let rule = client.map(|c| Rule::Client(&c.name));
        let limits = client.map(|c| &c.policy);
        let of = |pick: fn(&ClientPolicy) -> Option<u64>| limits.and_then(pick).zip(rule);
        let no_network = if !policy.allow_network {
            Some(Rule::Server)
        } else if limits.and_then(|l| l.allow_network) == Some(false) {
            rule
        } else {
            None
        };
        Maxima {
            memory: both(policy.max_memory_bytes, of(|l| l.max_memory_bytes)),
            cpus: both(policy.max_nano_cpus, of(|l| l.max_nano_cpus)),
            pids: both(
                policy.max_pids_limit,
                limits.and_then(|l| l.max_pids_limit).zip(rule),
            ),
            timeout_ms: both(policy.max_timeout_ms, of(|l| l.max_timeout_ms)),
            no_network,
        }
    }
}

/// The asked value when no maximum refuses it, else the first refusal;
/// when nothing was asked, the default capped by every maximum.
fn bounded<'a, T: Copy + Ord>(
    asked: Option<T>,
    default: T,
    maxima: &[Max<'a, T>],
    refuse: impl Fn(T, Max<'a, T>) -> TaskError,
) -> Result<T, TaskError> {
    match asked {
        None => Ok(maxima.iter().fold(default, |d, max| d.min(max.value))),
        Some(value) => match maxima.iter().find(|max| value > max.value) {
            Some(max) => Err(refuse(value, *max)),
            None => Ok(value),
        },
    }
}

fn bad_request(message: String) -> TaskError {
    TaskError::new(ErrorKind::BadRequest, message)
}

fn denied(message: String) -> TaskError {
    TaskError::new(ErrorKind::PolicyDenied, message)
}

/// Checks `spec` (an image task: catalog tasks are resolved before) against
/// the server's policy and, for a named client, its own rules too, which
/// only narrow the server's. `entry` is the catalog entry it came from.
pub(crate) fn plan(
    spec: TaskSpec,
    policy: &Policy,
    client: Option<&ClientRules>,
    entry: Option<EntryRef>,
) -> Result<Plan, TaskError> {
    let (image, command, http) = match &spec.task {
        Task::Image { image, command } => (image.clone(), command.clone(), None),
        Task::Http {
            image,
            port,
            task,
            params,
            command,
        } => {
            let call = super::http::call(&spec, *port, task, params.as_deref())?;
            (image.clone(), command.clone(), Some(call))
        }
        Task::Named { name, .. } => {
            return Err(TaskError::new(
                ErrorKind::Internal,
                format!("catalog task `{name}` reached the policy check unresolved"),
            ))
        }
    };
    if let Some(client) = client {
        client.policy.check_image(&client.name, &image)?;
    }
    if image.trim().is_empty() {
        return Err(bad_request(
            "the task names no image; give one, e.g. `alpine:3.20`".to_owned(),
        ));
    }
    let maxima = Maxima::of(policy, client);
    Ok(Plan {
        image,
        command,
        env: env_pairs(spec.env)?,
        workdir: spec.workdir,
        user: spec.user,
        stdin: spec.stdin,
        memory_bytes: memory(spec.memory_bytes, policy, &maxima)?,
        nano_cpus: cpus(spec.nano_cpus, policy, &maxima)?,
        pids_limit: pids(spec.pids_limit, policy, &maxima)?,
        network: network(spec.network, policy, &maxima)?,
        read_only_root: spec.read_only_root || policy.force_read_only_root,
        tmpfs_bytes: policy.tmpfs_bytes,
        timeout: timeout(spec.timeout_ms, policy, &maxima)?,
        labels: labels(spec.labels)?,
        pull_auth: spec.registry_auth,
        entry,
        http,
        task: None,
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

fn memory(asked: Option<u64>, policy: &Policy, maxima: &Maxima) -> Result<u64, TaskError> {
    if let Some(m) = asked.filter(|m| *m < MIN_MEMORY_BYTES) {
        // Unless a maximum refuses it first, as before any minimum.
        if m <= maxima.memory[0].value {
            return Err(bad_request(format!(
                "memory limit of {} is below Docker's minimum of 6 MiB; ask for more",
                human_bytes(m)
            )));
        }
    }
    bounded(
        asked,
        policy.default_memory_bytes,
        &maxima.memory,
        |m, max| {
            denied(format!(
                "memory limit of {} exceeds {} maximum of {} ({}); ask for at most that",
                human_bytes(m),
                max.rule.whose(),
                human_bytes(max.value),
                max.rule.key("max_memory_bytes")
            ))
        },
    )
}

fn cpus(asked: Option<u64>, policy: &Policy, maxima: &Maxima) -> Result<u64, TaskError> {
    if asked == Some(0) {
        return Err(bad_request(
            "a CPU quota of 0 would never run; leave it unset for the server's default".to_owned(),
        ));
    }
    bounded(asked, policy.default_nano_cpus, &maxima.cpus, |c, max| {
        denied(format!(
            "CPU quota of {} CPUs exceeds {} maximum of {} CPUs ({}); ask for at most that",
            cpus_text(c),
            max.rule.whose(),
            cpus_text(max.value),
            max.rule.key("max_nano_cpus")
        ))
    })
}

fn pids(asked: Option<i64>, policy: &Policy, maxima: &Maxima) -> Result<i64, TaskError> {
    // Docker reads 0 and -1 as "unlimited".
    if asked.is_some_and(|p| p <= 0) {
        return Err(denied(format!(
            "an unlimited process count is not allowed; the pids limit maximum is {} \
             (policy.max_pids_limit)",
            policy.max_pids_limit
        )));
    }
    bounded(asked, policy.default_pids_limit, &maxima.pids, |p, max| {
        denied(format!(
            "pids limit of {p} exceeds {} maximum of {} ({}); ask for at most that",
            max.rule.whose(),
            max.value,
            max.rule.key("max_pids_limit")
        ))
    })
}

fn timeout(asked: Option<u64>, policy: &Policy, maxima: &Maxima) -> Result<Duration, TaskError> {
    if asked == Some(0) {
        return Err(bad_request(
            "a timeout of 0 ms would end the task before it starts; leave it unset for the \
             server's default"
                .to_owned(),
        ));
    }
    let ms = bounded(
        asked,
        policy.default_timeout_ms,
        &maxima.timeout_ms,
        |t, max| {
            denied(format!(
                "timeout of {t} ms exceeds {} maximum of {} ms ({}); ask for at most that",
                max.rule.whose(),
                max.value,
                max.rule.key("max_timeout_ms")
            ))
        },
    )?;
    Ok(Duration::from_millis(ms))
}

fn network(asked: Option<String>, policy: &Policy, maxima: &Maxima) -> Result<String, TaskError> {
    let mode = match asked {
        None => return Ok("none".to_owned()),
        Some(mode) if mode == "none" => return Ok(mode),
        Some(mode) => mode,
    };
    if let Some(rule) = maxima.no_network {
        let who = match rule {
            Rule::Server => "this server gives tasks no network".to_owned(),
            Rule::Client(name) => format!("the client `{name}` may not use a network"),
        };
        return Err(denied(format!(
            "network mode `{mode}` was asked for, but {who} ({} is false); run the task \
             without a network",
            rule.key("allow_network")
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

    /// The server's policy alone, as for a client with no rules of its own.
    fn plan(spec: TaskSpec, policy: &Policy) -> Result<Plan, TaskError> {
        super::plan(spec, policy, None, None)
    }

    fn plan_for(
        spec: TaskSpec,
        policy: &Policy,
        client: Option<&ClientRules>,
    ) -> Result<Plan, TaskError> {
        super::plan(spec, policy, client, None)
    }

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

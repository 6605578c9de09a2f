//! Pre-compiled tasks: names the server knows, each an image and a command
//! with its own limits, loaded from TOML.
//!
//! ```toml
//! [sum]
//! description = "Adds the numbers given as arguments"
//! image = "tcp-task-examples:0.1.0"
//! command = ["sum"]
//! timeout_ms = 10000
//! warm = 2     # containers kept started ahead of time (docs/WARM.md)
//! reuse = 1    # tasks one warm container serves (1: single use)
//! reset = false # reset the container between those tasks (read-only root)
//! ```
//!
//! A client runs one with `Task::Named { name, args, params }`: the args are
//! appended to the command, and `params` (JSON) reaches the task in the
//! `TASK_PARAMS` environment variable. The server's policy still applies to
//! the result, like to any other task.
//!
//! An entry with a `port` is an HTTP task (the original task service's
//! images): its image's server (`command`, or the image's default) listens
//! on that port, and a request's `params` are POSTed to `/task/{task}`
//! (`task` defaults to the entry's name):
//!
//! ```toml
//! [add]
//! image = "tcp-task-http-examples:0.1.0"
//! port = 8080
//! task = "sum"
//! warm = 2
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;

use crate::protocol::{CatalogEntryInfo, Task, TaskSpec};
use crate::task::{ErrorKind, TaskError};

/// The environment variable that carries a named task's JSON parameters.
pub const PARAMS_ENV: &str = "TASK_PARAMS";

/// The pre-compiled tasks, by name.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Catalog {
    pub entries: BTreeMap<String, CatalogEntry>,
}

/// One pre-compiled task.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub image: String,
    /// The argv; the request's args are appended. For an HTTP task, its
    /// server's command; empty: the image's default.
    #[serde(default)]
    pub command: Vec<String>,
    /// Makes the entry an HTTP task whose server listens on this port.
    pub port: Option<u16>,
    /// An HTTP task's name on its server (`POST /task/{task}`); default:
    /// the entry's name.
    pub task: Option<String>,
    #[serde(default)]
    pub description: String,
    /// Environment every run gets.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Limits used when the request names none; the policy caps them all.
    pub memory_bytes: Option<u64>,
    pub nano_cpus: Option<u64>,
    pub pids_limit: Option<i64>,
    pub timeout_ms: Option<u64>,
    /// Containers kept warm (started, agent waiting) for this task, whatever
    /// the demand. Default 0: warm only on demand.
    #[serde(default)]
    pub warm: u32,
    /// How many of this entry's tasks one warm container serves, one after
    /// the other. Default 1: a fresh container per task, as on the cold
    /// path. More trades isolation between this entry's tasks for speed
    /// (docs/WARM.md says what is shared).
    #[serde(default = "single_use")]
    pub reuse: u32,
    /// Between two of the `reuse` tasks, the container is reset to what a
    /// fresh one holds and checked, or discarded (docs/WARM.md). Implies a
    /// read-only root; warm containers of such an entry serve one named
    /// client only. Default false.
    #[serde(default)]
    pub reset: bool,
}

fn single_use() -> u32 {
    1
}

impl Catalog {
    pub fn from_toml(text: &str) -> Result<Catalog, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What `tcp-task tasks` lists.
    pub fn infos(&self) -> Vec<CatalogEntryInfo> {
        self.entries
            .iter()
            .map(|(name, entry)| CatalogEntryInfo {
                name: name.clone(),
                description: entry.description.clone(),
                image: entry.image.clone(),
                command: entry.command.clone(),
                memory_bytes: entry.memory_bytes,
                nano_cpus: entry.nano_cpus,
                timeout_ms: entry.timeout_ms,
            })
            .collect()
    }

    /// The entry a named task refers to, with its name.
    pub fn entry_of(&self, spec: &TaskSpec) -> Option<(&str, &CatalogEntry)> {
        match &spec.task {
            Task::Named { name, .. } => self
                .entries
                .get_key_value(name)
                .map(|(name, entry)| (name.as_str(), entry)),
            Task::Image { .. } | Task::Http { .. } => None,
        }
    }

    /// Turns `spec` into an image task: a named task is looked up and filled
    /// in; an image task is returned as it is.
    pub fn resolve(&self, spec: TaskSpec) -> Result<TaskSpec, TaskError> {
        match spec.task.clone() {
            Task::Image { .. } | Task::Http { .. } => Ok(spec),
            Task::Named { name, args, params } => {
                let entry = self.entries.get(&name).ok_or_else(|| self.unknown(&name))?;
                entry.apply(&name, spec, args, params)
            }
        }
    }

    fn unknown(&self, name: &str) -> TaskError {
        let known: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        let listing = if known.is_empty() {
            "this server has none".to_owned()
        } else {
            format!("known: {}", known.join(", "))
        };
        TaskError::new(
            ErrorKind::UnknownTask,
            format!(
                "no pre-compiled task is named `{name}` ({listing}); `tcp-task tasks` lists them"
            ),
        )
    }
}

impl CatalogEntry {
    fn apply(
        &self,
        name: &str,
        mut spec: TaskSpec,
        args: Vec<String>,
        params: Option<String>,
    ) -> Result<TaskSpec, TaskError> {
        let mut command = self.command.clone();
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.append(&mut spec.env);
        // Only a read-only root can be reset: the task writes nowhere else
        // than the writable mounts the reset empties.
        spec.read_only_root |= self.reset;
        if let Some(params) = &params {
            check_json(params)?;
        }
        spec.task = match self.port {
            Some(port) => {
                if !args.is_empty() {
                    return Err(TaskError::new(
                        ErrorKind::BadRequest,
                        format!("`{name}` is an HTTP task: it takes --params JSON, not arguments"),
                    ));
                }
                Task::Http {
                    image: self.image.clone(),
                    port,
                    task: self.task.clone().unwrap_or_else(|| name.to_owned()),
                    params,
                    command,
                }
            }
            None => {
                command.extend(args);
                if let Some(params) = params {
                    env.push((PARAMS_ENV.to_owned(), params));
                }
                Task::Image {
                    image: self.image.clone(),
                    command,
                }
            }
        };
        spec.env = env;
        spec.memory_bytes = spec.memory_bytes.or(self.memory_bytes);
        spec.nano_cpus = spec.nano_cpus.or(self.nano_cpus);
        spec.pids_limit = spec.pids_limit.or(self.pids_limit);
        spec.timeout_ms = spec.timeout_ms.or(self.timeout_ms);
        Ok(spec)
    }
}

fn check_json(params: &str) -> Result<(), TaskError> {
    serde_json::from_str::<serde_json::Value>(params)
        .map(|_| ())
        .map_err(|e| {
            TaskError::new(
                ErrorKind::BadRequest,
                format!("the task's parameters are not valid JSON ({e}); send a JSON value"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
        [sum]
        description = "Adds numbers"
        image = "tcp-task-examples:0.1.0"
        command = ["sum"]
        timeout_ms = 5000
        env = { MODE = "fast" }
        warm = 2
        reuse = 3
        reset = true
    "#;

    #[test]
    fn resolves_a_named_task() {
        let catalog = Catalog::from_toml(TEXT).expect("catalog parses");
        let mut spec = TaskSpec::named("sum", ["1", "2"]);
        if let Task::Named { params, .. } = &mut spec.task {
            *params = Some(r#"{"x":1}"#.to_owned());
        }
        let resolved = catalog.resolve(spec).expect("known task");
        assert_eq!(
            resolved.task,
            Task::Image {
                image: "tcp-task-examples:0.1.0".into(),
                command: vec!["sum".into(), "1".into(), "2".into()],
            }
        );
        assert_eq!(resolved.timeout_ms, Some(5000));
        assert!(resolved
            .env
            .contains(&(PARAMS_ENV.to_owned(), r#"{"x":1}"#.to_owned())));
        assert!(resolved
            .env
            .contains(&("MODE".to_owned(), "fast".to_owned())));
        assert_eq!(catalog.infos()[0].name, "sum");
        let (name, entry) = catalog
            .entry_of(&TaskSpec::named("sum", Vec::<String>::new()))
            .expect("an entry");
        assert_eq!((name, entry.warm, entry.reuse), ("sum", 2, 3));
        assert!(
            entry.reset && resolved.read_only_root,
            "reset implies a read-only root"
        );
        let plain: Catalog =
            Catalog::from_toml("[x]\nimage = \"i\"\ncommand = [\"c\"]\n").expect("catalog parses");
        assert_eq!((plain.entries["x"].warm, plain.entries["x"].reuse), (0, 1));
        assert!(!plain.entries["x"].reset);
    }

    #[test]
    fn an_entry_with_a_port_is_an_http_task() {
        let text = "[add]\nimage = \"h:1\"\nport = 8080\ntask = \"sum\"\n[mul]\nimage = \"h:1\"\nport = 8080\n";
        let catalog = Catalog::from_toml(text).expect("catalog parses");
        let mut spec = TaskSpec::named("add", Vec::<String>::new());
        if let Task::Named { params, .. } = &mut spec.task {
            *params = Some("[1,2]".to_owned());
        }
        let resolved = catalog.resolve(spec).expect("known task");
        assert_eq!(
            resolved.task,
            Task::Http {
                image: "h:1".into(),
                port: 8080,
                task: "sum".into(),
                params: Some("[1,2]".into()),
                command: Vec::new(),
            }
        );
        let mul = catalog
            .resolve(TaskSpec::named("mul", Vec::<String>::new()))
            .unwrap();
        assert!(matches!(mul.task, Task::Http { ref task, .. } if task == "mul"));
        let with_args = catalog.resolve(TaskSpec::named("mul", ["1"])).unwrap_err();
        assert_eq!(with_args.kind, ErrorKind::BadRequest);
    }

    #[test]
    fn unknown_names_and_bad_params_are_refused() {
        let catalog = Catalog::from_toml(TEXT).expect("catalog parses");
        let err = catalog
            .resolve(TaskSpec::named("nope", Vec::<String>::new()))
            .expect_err("unknown");
        assert_eq!(err.kind, ErrorKind::UnknownTask);
        assert!(err.message.contains("sum"));
        let mut bad = TaskSpec::named("sum", Vec::<String>::new());
        if let Task::Named { params, .. } = &mut bad.task {
            *params = Some("{not json".to_owned());
        }
        assert_eq!(
            catalog.resolve(bad).unwrap_err().kind,
            ErrorKind::BadRequest
        );
    }
}

//! Tasks accepted but not yet in a container, written down so that a
//! server killed before it could start them does not lose them.
//!
//! Once a task has a container the engine keeps it, and a restarted server
//! adopts it from there; before that (queued, pulling) it exists only in
//! the server's memory. So each accepted task is written here as a
//! [`Ticket`] before its `Accepted` goes out, and removed when it ends. A
//! server that starts reads the tickets of servers that are gone and runs
//! those tasks again, unless their containers were adopted.
//!
//! The layout, under the state directory:
//!
//! ```text
//! queued/<scope>/<owner instance>/owner.json   who wrote these tickets
//! queued/<scope>/<owner instance>/<task id>.json
//! ```
//!
//! A server only takes the tickets of an owner whose process is gone (the
//! same test as for containers, [`Owner::judge`]), in its own scope.
//!
//! A ticket survives the server process, not the machine: it is written
//! without fsync, and a `kill -9` leaves the page cache alone. Registry
//! credentials are never written: a task taken over by the next server
//! pulls its image without them.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::executor::{Liveness, Owner};
use crate::protocol::TaskSpec;
use crate::task::TaskId;

const OWNER_FILE: &str = "owner.json";

/// A ticket file larger than this is not one of ours: it is skipped.
/// (A spec is bounded by the frame it came in, 16 MiB at most.)
const MAX_TICKET_BYTES: u64 = 32 * 1024 * 1024;

/// An accepted task, as its request came.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Ticket {
    pub id: String,
    /// The named client that submitted it.
    pub client: Option<String>,
    pub detach: bool,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The request, without its registry credentials.
    pub spec: TaskSpec,
}

/// This server's tickets, and the way to those of servers that are gone.
#[derive(Debug)]
pub(crate) struct Journal {
    /// `queued/<scope>`: every owner's directory.
    scope_dir: PathBuf,
    /// This server's own directory in it.
    mine: PathBuf,
    owner: Owner,
}

impl Journal {
    /// Opens (creating them) this server's directories under `state_dir`.
    pub fn open(state_dir: &Path, scope: Option<&str>, owner: Owner) -> io::Result<Journal> {
        let scope_dir = state_dir
            .join("queued")
            .join(dir_name(scope.unwrap_or("default")));
        let mine = scope_dir.join(dir_name(&owner.instance));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&mine)?;
        let labels: HashMap<String, String> = owner.labels().into_iter().collect();
        write_file(&mine.join(OWNER_FILE), &serde_json::to_vec(&labels)?)?;
        Ok(Journal {
            scope_dir,
            mine,
            owner,
        })
    }

    /// Writes `ticket` down; when this returns, a server started after this
    /// one is killed will find it.
    pub fn write(&self, ticket: &Ticket) -> io::Result<()> {
        let mut ticket = ticket.clone();
        ticket.spec.registry_auth = None;
        let path = self.mine.join(format!("{}.json", ticket.id));
        write_file(&path, &serde_json::to_vec(&ticket)?)
    }

    /// The task `id` ended (or was given up): its ticket goes.
    pub fn remove(&self, id: &TaskId) {
        let path = self.mine.join(format!("{id}.json"));
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a task's ticket");
            }
        }
    }

    /// At a clean shutdown: this server's directory goes, unless it holds
    /// tickets (detached tasks still queued), which the next server takes.
    pub fn close(&self) {
        let Ok(entries) = fs::read_dir(&self.mine) else {
            return;
        };
        let only_owner = entries
            .filter_map(Result::ok)
            .all(|e| e.file_name() == OWNER_FILE);
        if only_owner {
            let _ = fs::remove_dir_all(&self.mine);
        }
    }

    /// The tickets of the servers in this scope that are gone, oldest
    /// first. Their directories are left in place: call [`Journal::release`]
    /// once each ticket is written again as this server's.
    pub fn left_behind(&self) -> Vec<Ticket> {
        let mut tickets = Vec::new();
        for dir in self.dead_owners() {
            tickets.extend(read_tickets(&dir));
        }
        tickets.sort_by_key(|t| t.created_ms);
        tickets
    }

    /// Removes the directories of the servers that are gone.
    pub fn release(&self) {
        for dir in self.dead_owners() {
            if let Err(e) = fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a gone server's tickets");
            }
        }
    }

    fn dead_owners(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.scope_dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|dir| *dir != self.mine && self.owner_is_gone(dir))
            .collect()
    }

    fn owner_is_gone(&self, dir: &Path) -> bool {
        let labels = read_small(&dir.join(OWNER_FILE))
            .and_then(|bytes| serde_json::from_slice::<HashMap<String, String>>(&bytes).ok());
        // No owner file: not a directory of ours, or one cut short while
        // it was made; leave it alone.
        labels.is_some_and(|labels| self.owner.judge(&labels) == Liveness::Gone)
    }
}

fn read_tickets(dir: &Path) -> Vec<Ticket> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut tickets = Vec::new();
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        let is_ticket = path.extension().is_some_and(|x| x == "json")
            && path.file_name().is_some_and(|n| n != OWNER_FILE);
        if !is_ticket {
            continue;
        }
        match read_small(&path).map(|b| serde_json::from_slice::<Ticket>(&b)) {
            Some(Ok(ticket)) if TaskId::parse(&ticket.id).is_ok() => tickets.push(ticket),
            _ => tracing::warn!(path = %path.display(), "not a task ticket; skipped"),
        }
    }
    tickets
}

fn read_small(path: &Path) -> Option<Vec<u8>> {
    let size = fs::metadata(path).ok()?.len();
    if size > MAX_TICKET_BYTES {
        return None;
    }
    fs::read(path).ok()
}

/// Writes `bytes` to `path` whole or not at all: a reader never sees half
/// a ticket, even when the writer is killed midway.
fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let partial = path.with_extension("partial");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(bytes)?;
    drop(file);
    fs::rename(&partial, path)
}

/// A name safe as one path component.
fn dir_name(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
            _ => '_',
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{RegistryAuth, Task};

    fn ticket(id: &str, created_ms: u64) -> Ticket {
        Ticket {
            id: id.to_owned(),
            client: Some("alice".into()),
            detach: true,
            created_ms,
            spec: TaskSpec {
                task: Task::Image {
                    image: "img".into(),
                    command: vec!["echo".into(), "hi".into()],
                },
                registry_auth: Some(RegistryAuth {
                    username: "u".into(),
                    password: "secret".into(),
                    server: None,
                }),
                ..TaskSpec::default()
            },
        }
    }

    /// An owner whose process is gone: this process's identity with a
    /// start time no process of this pid has.
    fn gone_owner(instance: &str) -> Owner {
        let mut owner = Owner::this_process(Some(instance.into()));
        owner.pid_start = owner.pid_start.map(|s| s + 1).or(Some(1));
        owner
    }

    #[test]
    fn a_gone_servers_tickets_are_found_oldest_first_without_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let old = Journal::open(dir.path(), None, gone_owner("old")).unwrap();
        old.write(&ticket("bbbbbbbbbbbbbbbbbbbb", 2)).unwrap();
        old.write(&ticket("aaaaaaaaaaaaaaaaaaaa", 1)).unwrap();
        let text = fs::read_to_string(old.mine.join("aaaaaaaaaaaaaaaaaaaa.json")).unwrap();
        assert!(
            !text.contains("secret"),
            "credentials reached the disk: {text}"
        );

        let new = Journal::open(dir.path(), None, Owner::this_process(None)).unwrap();
        let found = new.left_behind();
        let ids: Vec<&str> = found.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["aaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbb"]);
        assert!(found[0].spec.registry_auth.is_none());
        new.release();
        assert!(new.left_behind().is_empty());
        assert!(!old.mine.exists());
        assert!(new.mine.exists());
    }

    #[test]
    fn a_live_servers_and_another_scopes_tickets_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let live =
            Journal::open(dir.path(), None, Owner::this_process(Some("live".into()))).unwrap();
        live.write(&ticket("aaaaaaaaaaaaaaaaaaaa", 1)).unwrap();
        let other = Journal::open(dir.path(), Some("other"), gone_owner("other")).unwrap();
        other.write(&ticket("bbbbbbbbbbbbbbbbbbbb", 1)).unwrap();

        let new = Journal::open(dir.path(), None, Owner::this_process(None)).unwrap();
        assert!(new.left_behind().is_empty());
        new.release();
        assert!(live.mine.join("aaaaaaaaaaaaaaaaaaaa.json").exists());
        assert!(other.mine.join("bbbbbbbbbbbbbbbbbbbb.json").exists());
    }

    #[test]
    fn a_removed_ticket_is_not_found_and_junk_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let old = Journal::open(dir.path(), None, gone_owner("old")).unwrap();
        old.write(&ticket("aaaaaaaaaaaaaaaaaaaa", 1)).unwrap();
        old.write(&ticket("bbbbbbbbbbbbbbbbbbbb", 2)).unwrap();
        old.remove(&TaskId::parse("aaaaaaaaaaaaaaaaaaaa").unwrap());
        fs::write(old.mine.join("junk.json"), b"{not json").unwrap();
        fs::write(old.mine.join("evil.json"), br#"{"id":"../x"}"#).unwrap();

        let new = Journal::open(dir.path(), None, Owner::this_process(None)).unwrap();
        let ids: Vec<String> = new.left_behind().into_iter().map(|t| t.id).collect();
        assert_eq!(ids, ["bbbbbbbbbbbbbbbbbbbb"]);
    }

    #[test]
    fn a_ticket_file_past_the_size_bound_is_skipped_unread() {
        let dir = tempfile::tempdir().unwrap();
        let old = Journal::open(dir.path(), None, gone_owner("old")).unwrap();
        old.write(&ticket("aaaaaaaaaaaaaaaaaaaa", 1)).unwrap();
        // A valid ticket, padded with JSON whitespace past the bound: only
        // the bound keeps it out.
        let mut big = serde_json::to_vec(&ticket("bbbbbbbbbbbbbbbbbbbb", 2)).unwrap();
        big.resize(MAX_TICKET_BYTES as usize + 1, b' ');
        fs::write(old.mine.join("bbbbbbbbbbbbbbbbbbbb.json"), big).unwrap();

        let new = Journal::open(dir.path(), None, Owner::this_process(None)).unwrap();
        let ids: Vec<String> = new.left_behind().into_iter().map(|t| t.id).collect();
        assert_eq!(ids, ["aaaaaaaaaaaaaaaaaaaa"]);
    }

    #[test]
    fn scope_and_instance_names_stay_one_path_component() {
        assert_eq!(dir_name("../../etc"), "_.._etc");
        assert_eq!(dir_name("a/b c"), "a_b_c");
        assert_eq!(dir_name("host-12-34-0"), "host-12-34-0");
    }
}

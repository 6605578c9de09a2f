//! Putting a warm container back as it was before its last task
//! (`agent --reset`), and checking that it is.
//!
//! Before its first task the agent takes a [`Baseline`]: every writable
//! mount of the container (tmpfs `/tmp`, `/dev`, `/dev/shm`, `/dev/mqueue`,
//! the agent's own volume, writable single-file binds, any volume
//! the image declares) with what it holds, plus what of the agent itself a
//! task could change and the next task would inherit (its working
//! directory, resource limits, nice value, OOM score). After a task it
//! [`Baseline::reset`]s:
//!
//! 1. every process but PID 1 is killed, until none is left ([`clear_processes`]);
//! 2. System V shared memory, semaphores and message queues are removed
//!    (POSIX ones are files in `/dev/shm` and `/dev/mqueue`, next step);
//! 3. each writable mount is brought back: what was not there is removed,
//!    what was changed is restored (mode, small files' content and times);
//! 4. everything is compared with the baseline again. Any difference, or
//!    anything that could not be restored, is an error: the agent then exits
//!    and the container is discarded, never reused.
//!
//! A read-write root cannot be reset (the task could have written anywhere),
//! so a baseline is refused when `/` is writable.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::sys;

/// Entries a baseline may hold over all mounts: a fresh container's
/// writable mounts hold a few dozen; more means an image volume too big to
/// compare after every task, and the container is not reset.
pub const MAX_BASELINE_ENTRIES: usize = 4096;

/// Files up to this size keep their content in the baseline, so a task
/// that changed one (a single-file bind, say) can have it restored. A larger
/// baseline file that changed makes the container unfit.
pub const MAX_RESTORED_FILE_BYTES: u64 = 64 * 1024;

/// How long the processes a task left may take to die and be reaped.
pub const KILL_WAIT: Duration = Duration::from_secs(2);

/// File systems whose content is not files a task leaves: the kernel's
/// views (a task cannot create entries there) and terminals.
const NOT_STORAGE: &[&str] = &["proc", "sysfs", "cgroup", "cgroup2", "devpts"];

/// What the container looked like before its first task.
#[derive(Debug)]
pub struct Baseline {
    mounts: Vec<MountBase>,
    /// `/proc/self/mountinfo` minus the mount ids: no mount may come or go.
    mount_table: Vec<String>,
    agent: AgentState,
}

/// One writable mount and what was under it.
#[derive(Debug)]
struct MountBase {
    point: PathBuf,
    dev: u64,
    /// Paths relative to `point` ("" is the mount point itself).
    entries: BTreeMap<PathBuf, Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    ino: u64,
    /// The file type and permission bits (`st_mode`).
    mode: u32,
    uid: u32,
    gid: u32,
    /// For regular files: size, modification time, and the content when
    /// small enough to restore.
    file: Option<FileState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileState {
    size: u64,
    mtime: (i64, i64),
    content: Option<Vec<u8>>,
}

/// What a task could change in the agent itself that its children (the
/// next task) would inherit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AgentState {
    cwd: PathBuf,
    limits: String,
    oom_score_adj: String,
    nice: String,
}

impl Baseline {
    /// Takes the baseline; `Err` says why this container cannot be reset.
    pub fn take() -> Result<Baseline, String> {
        Ok(Baseline {
            mounts: scan_all(writable_mounts()?)?,
            mount_table: mount_table()?,
            agent: AgentState::read()?,
        })
    }

    /// Brings the container back to the baseline after a task, then checks
    /// it. `Err` names the first thing that differs: the container must go.
    pub fn reset(&self) -> Result<(), String> {
        clear_processes(KILL_WAIT)?;
        remove_sysv_ipc()?;
        for mount in &self.mounts {
            mount.restore();
        }
        self.check()
    }

    /// Compares the container with the baseline.
    pub fn check(&self) -> Result<(), String> {
        let others = other_processes();
        if !others.is_empty() {
            return Err(format!("processes are left: {others:?}"));
        }
        for (file, what) in SYSV_IPC {
            if !sysv_ids(file).is_empty() {
                return Err(format!("System V {what} are left"));
            }
        }
        if mount_table()? != self.mount_table {
            return Err("the container's mounts changed".into());
        }
        for mount in &self.mounts {
            mount.check()?;
        }
        let agent = AgentState::read()?;
        if agent != self.agent {
            return Err(format!(
                "the agent's own state changed (working directory, limits, nice value or OOM \
                 score): {:?} then, {agent:?} now",
                self.agent
            ));
        }
        Ok(())
    }
}

/// The baselines of `points`, refused past [`MAX_BASELINE_ENTRIES`] in all.
fn scan_all(points: Vec<PathBuf>) -> Result<Vec<MountBase>, String> {
    let mut total = 0;
    let mut bases = Vec::new();
    for point in points {
        let base = MountBase::scan(&point)?;
        total += base.entries.len();
        if total > MAX_BASELINE_ENTRIES {
            return Err(format!(
                "the writable mounts hold more than {MAX_BASELINE_ENTRIES} entries \
                 (at {}); such a container is not reset",
                point.display()
            ));
        }
        bases.push(base);
    }
    Ok(bases)
}

impl MountBase {
    fn scan(point: &Path) -> Result<MountBase, String> {
        let dev = fs::symlink_metadata(point)
            .map_err(|e| format!("cannot read {}: {e}", point.display()))?
            .dev();
        let mut entries = BTreeMap::new();
        walk(point, dev, &mut |relative, meta| {
            let full = under(point, relative);
            entries.insert(relative.to_owned(), Entry::of(&full, meta));
            entries.len() <= MAX_BASELINE_ENTRIES
        });
        Ok(MountBase {
            point: point.to_owned(),
            dev,
            entries,
        })
    }

    /// Removes what is new and restores what changed, as far as it can;
    /// [`MountBase::check`] judges the result.
    fn restore(&self) {
        let mut new = Vec::new();
        walk(&self.point, self.dev, &mut |relative, meta| {
            let kept = self
                .entries
                .get(relative)
                .is_some_and(|e| e.ino == meta.ino() && same_type(e.mode, meta.mode()));
            if !kept {
                new.push(relative.to_owned());
            }
            // What is inside a new directory goes with it.
            kept
        });
        for relative in &new {
            remove_tree(&under(&self.point, relative));
        }
        for (relative, entry) in &self.entries {
            entry.restore(&under(&self.point, relative));
        }
    }

    fn check(&self) -> Result<(), String> {
        let mut now = BTreeMap::new();
        walk(&self.point, self.dev, &mut |relative, meta| {
            let full = under(&self.point, relative);
            now.insert(relative.to_owned(), Entry::of(&full, meta));
            // Past the baseline's size it differs anyway.
            now.len() <= self.entries.len()
        });
        for (relative, entry) in &now {
            let path = under(&self.point, relative);
            match self.entries.get(relative) {
                None => return Err(format!("{} is left", path.display())),
                Some(base) if base != entry => {
                    return Err(format!("{} differs from before", path.display()))
                }
                Some(_) => {}
            }
        }
        match self.entries.keys().find(|k| !now.contains_key(*k)) {
            Some(gone) => Err(format!(
                "{} is gone and cannot be put back",
                under(&self.point, gone).display()
            )),
            None => Ok(()),
        }
    }
}

impl Entry {
    fn of(path: &Path, meta: &fs::Metadata) -> Entry {
        let file = meta.file_type().is_file().then(|| FileState {
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            content: (meta.size() <= MAX_RESTORED_FILE_BYTES)
                .then(|| read_small(path))
                .flatten(),
        });
        Entry {
            ino: meta.ino(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            file,
        }
    }

    /// Puts back the permission bits, and a small file's content and
    /// modification time. Best effort: the check decides.
    fn restore(&self, path: &Path) {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return;
        };
        if meta.ino() != self.ino || meta.file_type().is_symlink() {
            return;
        }
        if meta.mode() != self.mode {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(self.mode & 0o7777));
        }
        let Some(FileState {
            mtime,
            content: Some(content),
            ..
        }) = &self.file
        else {
            return;
        };
        let now = Entry::of(path, &meta);
        let same = now
            .file
            .as_ref()
            .is_some_and(|f| f.content.as_deref() == Some(content.as_slice()) && f.mtime == *mtime);
        if same {
            return;
        }
        if let Ok(file) = fs::OpenOptions::new().write(true).truncate(true).open(path) {
            let _ = io::Write::write_all(&mut &file, content);
            let when = std::time::UNIX_EPOCH
                + Duration::new(mtime.0.max(0) as u64, mtime.1.clamp(0, 999_999_999) as u32);
            let _ = file.set_modified(when);
        }
    }
}

/// Whether two `st_mode`s have the same file type.
fn same_type(a: u32, b: u32) -> bool {
    const S_IFMT: u32 = 0o170000;
    a & S_IFMT == b & S_IFMT
}

fn read_small(path: &Path) -> Option<Vec<u8>> {
    let mut content = Vec::new();
    File::open(path)
        .ok()?
        .take(MAX_RESTORED_FILE_BYTES + 1)
        .read_to_end(&mut content)
        .ok()?;
    Some(content)
}

/// Calls `visit` with the path (relative to `root`) and metadata of `root`
/// and everything under it on device `dev`, parents before children; a
/// directory is entered only when `visit` returns true. A directory on
/// another device is another mount: visited, not entered.
fn walk(root: &Path, dev: u64, visit: &mut dyn FnMut(&Path, &fs::Metadata) -> bool) {
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let path = under(root, &relative);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let enter = visit(&relative, &meta);
        if !enter || !meta.is_dir() || meta.dev() != dev {
            continue;
        }
        let Ok(dir) = fs::read_dir(&path) else {
            continue;
        };
        let mut children: Vec<PathBuf> = dir
            .filter_map(|e| e.ok())
            .map(|e| relative.join(e.file_name()))
            .collect();
        // Reversed, so that they come off the stack in name order.
        children.sort_unstable_by(|a, b| b.cmp(a));
        stack.extend(children);
    }
}

/// `root/relative`, and `root` itself for the empty path (`join` would
/// add a slash, which a file mount point refuses).
fn under(root: &Path, relative: &Path) -> PathBuf {
    if relative.as_os_str().is_empty() {
        root.to_owned()
    } else {
        root.join(relative)
    }
}

/// Removes `path` and all under it, making directories writable first
/// (a task may have taken its own write permission away).
fn remove_tree(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        let _ = fs::remove_file(path);
        return;
    }
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    if let Ok(dir) = fs::read_dir(path) {
        for entry in dir.filter_map(|e| e.ok()) {
            remove_tree(&entry.path());
        }
    }
    let _ = fs::remove_dir(path);
}

/// The container's writable mounts that can hold what a task leaves: each
/// mount point that is a directory or a regular file, outside `/proc` and
/// `/sys`. `Err` when the root itself is writable.
fn writable_mounts() -> Result<Vec<PathBuf>, String> {
    let table = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mut points = Vec::new();
    for line in table.lines() {
        let Some(mount) = MountLine::parse(line) else {
            continue;
        };
        if !mount.writable {
            continue;
        }
        if mount.point == Path::new("/") {
            return Err(
                "the root file system is writable; only a read-only root can be reset".into(),
            );
        }
        let special = NOT_STORAGE.contains(&mount.fstype.as_str())
            || mount.point.starts_with("/proc")
            || mount.point.starts_with("/sys");
        let kind = fs::symlink_metadata(&mount.point).map(|m| m.file_type());
        let storage = kind.is_ok_and(|k| k.is_dir() || k.is_file());
        if !special && storage && !points.contains(&mount.point) {
            points.push(mount.point);
        }
    }
    Ok(points)
}

/// The lines of `/proc/self/mountinfo` without the mount ids, which say
/// nothing about what is mounted where, and without the `//deleted` the
/// kernel appends to the root of a bind mount whose source the host
/// removed: the
/// server removes the agent's socket file on the host once the agent is
/// connected (the mount keeps it in here), which may happen before or
/// after the baseline is taken, and which no task can do.
fn mount_table() -> Result<Vec<String>, String> {
    let table = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    Ok(table.lines().map(mount_line).collect())
}

/// `ID PARENT MAJ:MIN ROOT POINT…` → `MAJ:MIN ROOT POINT…`, ROOT without
/// `//deleted`.
fn mount_line(line: &str) -> String {
    let mut fields: Vec<&str> = line.split(' ').skip(2).collect();
    if let Some(root) = fields.get_mut(1) {
        *root = root.strip_suffix("//deleted").unwrap_or(root);
    }
    fields.join(" ")
}

/// One line of `/proc/self/mountinfo`, the parts we use.
struct MountLine {
    point: PathBuf,
    writable: bool,
    fstype: String,
}

impl MountLine {
    /// `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`
    fn parse(line: &str) -> Option<MountLine> {
        let fields: Vec<&str> = line.split(' ').collect();
        let point = unescape(fields.get(4)?);
        let writable = fields.get(5)?.split(',').any(|o| o == "rw");
        let dash = fields.iter().position(|f| *f == "-")?;
        let fstype = fields.get(dash + 1)?.to_string();
        Some(MountLine {
            point: PathBuf::from(point),
            writable,
            fstype,
        })
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Kills every process but PID 1 until none is left (a process that forks
/// while `kill(-1)` walks the list can escape one round), reaping as it
/// goes. `Err` if some are still there after `wait`.
pub fn clear_processes(wait: Duration) -> Result<(), String> {
    if sys::pid() != 1 {
        return Err("the agent is not PID 1: it cannot tell its container's processes".into());
    }
    let deadline = Instant::now() + wait;
    loop {
        let _ = sys::send_signal(-1, sys::SIGKILL);
        while sys::reap_any_nohang() {}
        if other_processes().is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "processes outlived SIGKILL for {wait:?}: {:?}",
                other_processes()
            ));
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// The pids in `/proc` other than ours: the container's other processes
/// (zombies included), since the container has its own PID namespace.
pub fn other_processes() -> Vec<i32> {
    let me = sys::pid();
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![-1];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .collect()
}

/// Where the kernel lists each kind of System V IPC object of the
/// container's IPC namespace.
const SYSV_IPC: [(&str, &str); 3] = [
    ("/proc/sysvipc/shm", "shared memory segments"),
    ("/proc/sysvipc/sem", "semaphore sets"),
    ("/proc/sysvipc/msg", "message queues"),
];

/// Removes every System V IPC object. With no process left, a removed
/// shared memory segment is freed at once.
fn remove_sysv_ipc() -> Result<(), String> {
    for (file, what) in SYSV_IPC {
        for id in sysv_ids(file) {
            sys::remove_sysv(file, id)
                .map_err(|e| format!("cannot remove System V {what} {id}: {e}"))?;
        }
    }
    Ok(())
}

/// The ids listed in one of `/proc/sysvipc/*` (the second column; the first
/// line is a header). A file that cannot be read lists none: the kernel
/// then has no System V IPC.
fn sysv_ids(file: &str) -> Vec<i32> {
    let text = fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

impl AgentState {
    fn read() -> Result<AgentState, String> {
        let read =
            |path: &str| fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"));
        let stat = read("/proc/self/stat")?;
        // The fields after the command's closing parenthesis; nice is the
        // 19th field of the line, the 17th after it.
        let nice = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(16))
            .unwrap_or_default()
            .to_owned();
        Ok(AgentState {
            cwd: fs::read_link("/proc/self/cwd")
                .map_err(|e| format!("cannot read the working directory: {e}"))?,
            limits: read("/proc/self/limits")?,
            oom_score_adj: read("/proc/self/oom_score_adj")?,
            nice,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_read() {
        let line =
            "1392 1370 0:118 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k";
        let mount = MountLine::parse(line).expect("parses");
        assert_eq!(mount.point, PathBuf::from("/dev/shm"));
        assert!(mount.writable);
        assert_eq!(mount.fstype, "tmpfs");
        let ro = "1371 1370 0:110 / / ro,relatime master:1 - overlay overlay rw,lowerdir=x";
        let mount = MountLine::parse(ro).expect("parses");
        assert!(
            !mount.writable,
            "per-mount options decide, not the super block's"
        );
        assert_eq!(mount.fstype, "overlay");
        assert_eq!(unescape(r"/a\040b\134c"), r"/a b\c");
        assert!(MountLine::parse("garbage").is_none());
        // The host removed the source of a bind (the agent's socket).
        let deleted =
            "68 47 254:0 /run/x/agent.sock//deleted /.tcp-task/agent.sock ro - ext4 /dev/vda rw";
        let there = "69 47 254:0 /run/x/agent.sock /.tcp-task/agent.sock ro - ext4 /dev/vda rw";
        assert_eq!(mount_line(deleted), mount_line(there));
        assert_eq!(
            mount_line(there),
            "254:0 /run/x/agent.sock /.tcp-task/agent.sock ro - ext4 /dev/vda rw"
        );
    }

    /// A directory tree changed and brought back, outside a container:
    /// new entries go, a changed small file gets its content, mode and
    /// time back, and the check then passes; a baseline file that is gone
    /// fails it.
    #[test]
    fn a_tree_is_brought_back_to_its_baseline() {
        let root = std::env::temp_dir().join(format!("reset-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("keep")).unwrap();
        fs::write(root.join("keep/hosts"), "127.0.0.1 localhost\n").unwrap();
        let base = MountBase::scan(&root).expect("scans");
        fs::write(root.join("keep/hosts"), "6.6.6.6 localhost\n").unwrap();
        fs::set_permissions(root.join("keep/hosts"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::create_dir_all(root.join("new/deep")).unwrap();
        fs::write(root.join("new/deep/file"), "x").unwrap();
        fs::set_permissions(root.join("new"), fs::Permissions::from_mode(0o500)).unwrap();
        fs::write(root.join("left"), "y").unwrap();
        assert!(base.check().is_err());
        base.restore();
        base.check().expect("back to the baseline");
        assert_eq!(
            fs::read_to_string(root.join("keep/hosts")).unwrap(),
            "127.0.0.1 localhost\n"
        );
        fs::remove_file(root.join("keep/hosts")).unwrap();
        base.restore();
        let gone = base.check().expect_err("a baseline file is gone");
        assert!(gone.contains("is gone"), "{gone}");
        fs::remove_dir_all(&root).unwrap();
    }

    /// A single-file mount is its own baseline.
    #[test]
    fn a_file_is_brought_back_too() {
        let file = std::env::temp_dir().join(format!("reset-file-{}", std::process::id()));
        fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        let base = MountBase::scan(&file).expect("scans");
        assert_eq!(base.entries.len(), 1);
        fs::write(&file, "6.6.6.6 localhost\n").unwrap();
        assert!(base.check().is_err());
        base.restore();
        base.check().expect("back to the baseline");
        assert_eq!(fs::read_to_string(&file).unwrap(), "127.0.0.1 localhost\n");
        fs::remove_file(&file).unwrap();
    }

    /// Baselines over all mounts hold at most MAX_BASELINE_ENTRIES: one
    /// more, even split over two mounts, and the container is not reset.
    #[test]
    fn a_baseline_past_its_entry_bound_is_refused() {
        let root = std::env::temp_dir().join(format!("reset-bound-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let (a, b) = (root.join("a"), root.join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        // Each mount's root is an entry of its own.
        let half = MAX_BASELINE_ENTRIES / 2;
        for i in 0..half - 1 {
            File::create(a.join(i.to_string())).unwrap();
            File::create(b.join(i.to_string())).unwrap();
        }
        let bases = scan_all(vec![a.clone(), b.clone()]).expect("exactly at the bound");
        assert_eq!(
            bases.iter().map(|m| m.entries.len()).sum::<usize>(),
            MAX_BASELINE_ENTRIES
        );
        File::create(b.join("one-more")).unwrap();
        let refused = scan_all(vec![a, b]).expect_err("one past the bound");
        assert!(refused.contains("more than 4096 entries"), "{refused}");
        fs::remove_dir_all(&root).unwrap();
    }

    /// A file of MAX_RESTORED_FILE_BYTES gets its content back; one byte
    /// more and a change to it cannot be undone: the check fails.
    #[test]
    fn only_files_up_to_the_restore_bound_are_restored() {
        let root = std::env::temp_dir().join(format!("reset-big-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let bound = MAX_RESTORED_FILE_BYTES as usize;
        fs::write(root.join("small"), vec![b'a'; bound]).unwrap();
        let base = MountBase::scan(&root).expect("scans");
        fs::write(root.join("small"), vec![b'b'; bound]).unwrap();
        base.restore();
        base.check().expect("a file at the bound is restored");
        assert_eq!(fs::read(root.join("small")).unwrap(), vec![b'a'; bound]);

        fs::write(root.join("big"), vec![b'a'; bound + 1]).unwrap();
        let base = MountBase::scan(&root).expect("scans");
        // Another size: a same-size rewrite may keep a coarse mtime.
        fs::write(root.join("big"), vec![b'b'; bound + 2]).unwrap();
        base.restore();
        let kept = base
            .check()
            .expect_err("a file past the bound is not restored");
        assert!(kept.contains("big differs"), "{kept}");
        fs::remove_dir_all(&root).unwrap();
    }
}

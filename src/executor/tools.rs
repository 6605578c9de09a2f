//! The static tools binary inside task containers, at [`TOOLS_DIR`] under
//! three names that pick its applet: the warm agent, an HTTP task's relay,
//! and `measure`, which reports what a cold task used.
//!
//! Two ways in. With an engine on this host, the binary is written once
//! into a directory of the server's ([`ExecutorConfig::tools_dir`]) and
//! bind-mounted read-only into each container: nothing is copied per
//! container. An upload costs the engine more than the rest of a
//! container's creation: measured here, ~90 ms of dockerd CPU per
//! container against ~30 ms for a create and remove. An engine that cannot
//! mount that directory (a remote one; a server in a container) refuses
//! the first such container; from then on the binary is uploaded through
//! the Engine API into an anonymous volume at [`TOOLS_DIR`] of each
//! container, which works with any engine (a volume, because the engine
//! refuses uploads into a read-only root filesystem but not into a
//! volume; it is removed with the container).

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, ContainerCreateResponse, HostConfig, Mount, MountType};
use bollard::query_parameters::{CreateContainerOptions, UploadToContainerOptions};
use bollard::Docker;
use bytes::Bytes;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use super::config::{current_uid, ExecutorConfig};
use super::engine::{engine_error, names_path};
use crate::images::{TOOLS_BINARY, TOOLS_DIGEST};
use crate::task::{ErrorKind, TaskError};

/// Where the binary is, in every container that has it.
pub const TOOLS_DIR: &str = "/.tcp-task";
/// The warm agent (the binary's name picks the `agent` applet).
pub const AGENT_PATH: &str = "/.tcp-task/agent";
/// An HTTP task's way to its server's port.
pub const RELAY_PATH: &str = "/.tcp-task/relay";
/// A cold task's measurer (tools/src/measure.rs).
pub const MEASURE_PATH: &str = "/.tcp-task/measure";
/// The warm agent's socket, beside the binary (`warm::socket`).
pub const SOCKET_NAME: &str = "agent.sock";

/// Host path `source` at `target` in a container, read-only.
pub(crate) fn read_only_bind(source: &Path, target: &str) -> Mount {
    Mount {
        target: Some(target.to_owned()),
        source: Some(source.to_string_lossy().into_owned()),
        typ: Some(MountType::BIND),
        read_only: Some(true),
        ..Mount::default()
    }
}

/// How the tools reach the containers of one executor. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    /// The host directory that holds them, when it could be made.
    host_dir: Option<PathBuf>,
    /// Set once the engine could not mount `host_dir`: upload from then on.
    unmountable: Arc<AtomicBool>,
}

/// How one container gets the tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToolsMount {
    /// Bind-mounted read-only: there already.
    Bound,
    /// An empty volume: to be uploaded into before the start.
    Volume,
    /// Not at all: the container runs none of them.
    Unneeded,
}

impl Tools {
    /// Writes the binary into `config`'s tools directory (once per binary:
    /// the directory is named after its digest). If that fails, the tools
    /// are uploaded into each container instead, and the log says why.
    pub fn new(config: &ExecutorConfig) -> Tools {
        let host_dir = match prepare(&config.tools_dir()) {
            Ok(dir) => {
                tracing::debug!(?dir, "tools reach containers by a read-only bind mount");
                Some(dir)
            }
            Err(e) => {
                tracing::warn!(error = %e, "tools are uploaded into each container (slower)");
                None
            }
        };
        Tools {
            host_dir,
            unmountable: Arc::default(),
        }
    }

    /// Sets `body` up to receive the tools; the answer says whether
    /// [`Tools::provide`] must upload them after the create.
    pub fn mount(&self, body: &mut ContainerCreateBody) -> ToolsMount {
        match self.host_dir.as_ref().filter(|_| !self.unmountable()) {
            Some(dir) => {
                let mount = read_only_bind(dir, TOOLS_DIR);
                let host = body.host_config.get_or_insert_with(HostConfig::default);
                host.mounts.get_or_insert_with(Vec::new).push(mount);
                ToolsMount::Bound
            }
            None => {
                body.volumes = Some(vec![TOOLS_DIR.to_owned()]);
                ToolsMount::Volume
            }
        }
    }

    /// After the create: uploads the tools when the container has a volume
    /// for them.
    pub async fn provide(
        &self,
        docker: &Docker,
        id: &str,
        how: ToolsMount,
    ) -> Result<(), TaskError> {
        match how {
            ToolsMount::Volume => upload(docker, id).await,
            ToolsMount::Bound | ToolsMount::Unneeded => Ok(()),
        }
    }

    /// Creates a container from `body` (its settings, and how they get
    /// the tools: [`Tools::mount`]). When the engine cannot mount the
    /// tools directory, the container is created again from a new `body`,
    /// which has them uploaded.
    pub async fn create(
        &self,
        docker: &Docker,
        options: Option<CreateContainerOptions>,
        mut body: impl FnMut() -> (ContainerCreateBody, ToolsMount),
    ) -> Result<(ContainerCreateResponse, ToolsMount), BollardError> {
        loop {
            let (settings, how) = body();
            match docker.create_container(options.clone(), settings).await {
                Ok(created) => return Ok((created, how)),
                Err(e) if self.cannot_mount(how, &e) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether a create failed because the engine cannot see the tools
    /// directory (it is on another host). Then every later container gets
    /// them uploaded.
    fn cannot_mount(&self, how: ToolsMount, e: &BollardError) -> bool {
        // The engine names the path it misses: another bind (an agent's
        // socket, say) may be the one missing.
        let missing = matches!((e, self.host_dir.as_deref()), (BollardError::DockerResponseServerError { status_code: 400, message }, Some(dir))
            if message.contains("bind source path does not exist") && names_path(e, dir));
        if how == ToolsMount::Bound && missing && !self.unmountable.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                dir = ?self.host_dir,
                "the engine cannot mount the tools directory (is it on another host?); \
                 uploading the tools into each container from now on"
            );
        }
        how == ToolsMount::Bound && missing
    }

    fn unmountable(&self) -> bool {
        self.unmountable.load(Ordering::Relaxed)
    }
}

/// Makes `root/<digest>/` with the binary and its applet names in it,
/// unless it is there already. Nobody but this user may write to `root`:
/// whoever can chooses what every container runs as its init.
fn prepare(root: &Path) -> Result<PathBuf, String> {
    if TOOLS_BINARY.is_empty() {
        return Err("this build has no tools binary".into());
    }
    let shown = root.display();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|e| format!("cannot make {shown}: {e}"))?;
    let meta = fs::metadata(root).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let me = current_uid().ok_or("cannot tell this process's user (no /proc)")?;
    if meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{shown} must belong to this user (uid {me}) and be writable by nobody else; it has \
             uid {} and mode {:o}",
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    let dir = root.join(TOOLS_DIGEST);
    let agent = dir.join("agent");
    let complete = fs::metadata(&agent).is_ok_and(|m| m.len() == TOOLS_BINARY.len() as u64)
        && dir.join(SOCKET_NAME).exists();
    if complete {
        // Marks them as in use, for other builds' pruning.
        let _ = fs::File::open(&dir).and_then(|d| d.set_modified(SystemTime::now()));
        prune_stale(root, STALE_TOOLS);
        return Ok(dir);
    }
    // Written aside and renamed into place: a server that dies halfway
    // leaves no half-written binary for the next one to mount.
    let aside = root.join(format!("{TOOLS_DIGEST}.{}", std::process::id()));
    let _ = fs::remove_dir_all(&aside);
    write_tools(&aside)
        .map_err(|e| format!("cannot write the tools into {}: {e}", aside.display()))?;
    match fs::rename(&aside, &dir) {
        Ok(()) => {
            prune_stale(root, STALE_TOOLS);
            Ok(dir)
        }
        // Another server put them there meanwhile.
        Err(_) if agent.exists() => {
            let _ = fs::remove_dir_all(&aside);
            Ok(dir)
        }
        Err(e) => Err(format!("cannot move the tools into {}: {e}", dir.display())),
    }
}

/// How long another build's tools stay in the tools directory after a
/// server of that build last started. Each upgrade would leave its binary
/// behind for good otherwise. A server of that build still running when
/// they go falls back to uploads (its next create names the missing path).
const STALE_TOOLS: Duration = Duration::from_secs(24 * 60 * 60);

/// Removes what other builds left in `root` (their tools, or a write cut
/// short by a crash) once it is older than `older_than`.
fn prune_stale(root: &Path, older_than: Duration) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == TOOLS_DIGEST || !is_tools_dir_name(name) {
            continue;
        }
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if age.is_some_and(|age| age > older_than) {
            match fs::remove_dir_all(entry.path()) {
                Ok(()) => tracing::info!(dir = ?entry.path(), "removed another build's old tools"),
                Err(e) => {
                    tracing::warn!(dir = ?entry.path(), error = %e, "cannot remove old tools")
                }
            }
        }
    }
}

/// A digest (16 hex digits), or a digest and the PID that was writing it.
fn is_tools_dir_name(name: &str) -> bool {
    let digest = name.split_once('.').map_or(name, |(digest, _)| digest);
    digest.len() == 16 && digest.bytes().all(|b| b.is_ascii_hexdigit())
}

fn write_tools(dir: &Path) -> std::io::Result<()> {
    fs::create_dir(dir)?;
    // Readable by any user a task runs as; writable by nobody but us.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    let mut file = fs::File::create(dir.join("agent"))?;
    file.write_all(TOOLS_BINARY)?;
    file.set_permissions(fs::Permissions::from_mode(0o755))?;
    for name in ["relay", "measure"] {
        std::os::unix::fs::symlink("agent", dir.join(name))?;
    }
    // Where a warm agent's socket is mounted (`warm::socket`): in a
    // read-only bind the engine cannot create a mount point, so it is here.
    fs::File::create(dir.join(SOCKET_NAME))?;
    Ok(())
}

/// Uploads the binary into container `id` (created, with a volume at
/// [`TOOLS_DIR`]).
async fn upload(docker: &Docker, id: &str) -> Result<(), TaskError> {
    if TOOLS_BINARY.is_empty() {
        return Err(TaskError::new(
            ErrorKind::Internal,
            "this build has no tools binary (not built for Linux): it cannot run warm, HTTP or \
             measured tasks",
        ));
    }
    let options = UploadToContainerOptions {
        path: TOOLS_DIR.to_owned(),
        ..UploadToContainerOptions::default()
    };
    docker
        .upload_to_container(id, Some(options), bollard::body_full(tools_tar()?))
        .await
        .map_err(|e| engine_error("uploading tcp-task's tools into the container", &e))
}

/// The tar, built once: the upload's body.
fn tools_tar() -> Result<Bytes, TaskError> {
    static TAR: OnceLock<Result<Bytes, String>> = OnceLock::new();
    TAR.get_or_init(|| build_tar().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| TaskError::new(ErrorKind::Internal, format!("cannot pack the tools: {e}")))
}

fn build_tar() -> std::io::Result<Bytes> {
    let mut header = tar::Header::new_gnu();
    header.set_size(TOOLS_BINARY.len() as u64);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_data(&mut header, "agent", TOOLS_BINARY)?;
    for name in ["relay", "measure"] {
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_mode(0o777);
        builder.append_link(&mut link, name, "agent")?;
    }
    Ok(Bytes::from(builder.into_inner()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_aged(root: &Path, name: &str, age: Duration) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("agent"), b"old").unwrap();
        let when = SystemTime::now() - age;
        fs::File::open(&dir).unwrap().set_modified(when).unwrap();
        dir
    }

    #[test]
    fn other_builds_old_tools_go_and_the_rest_stays() {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path();
        let day = Duration::from_secs(24 * 60 * 60);
        let old = dir_aged(root, "0123456789abcdef", 2 * day);
        let cut_short = dir_aged(root, "0123456789abcdef.4242", 2 * day);
        let recent = dir_aged(root, "fedcba9876543210", day / 2);
        let ours = dir_aged(root, TOOLS_DIGEST, 2 * day);
        let stranger = dir_aged(root, "not-tools", 2 * day);
        prune_stale(root, day);
        assert!(!old.exists() && !cut_short.exists(), "old tools left");
        assert!(recent.exists(), "another build's recent tools removed");
        assert!(ours.exists(), "this build's tools removed");
        assert!(stranger.exists(), "something not ours removed");
    }
}

//! The agent's socket on the host: the directory the warm agents'
//! sockets are made in (`socket_dir`), one directory of its own per
//! container in it, and the listener that takes the agent's one
//! connection (docs/WARM.md, "The data plane"). What goes over that
//! connection is `warm/channel.rs`'s.

use bollard::models::Mount;
use bollard::Docker;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};

use crate::executor::config::{current_uid, DataPlane, WarmConfig};
use crate::executor::exit::wait_exit;
use crate::executor::tools::{read_only_bind, SOCKET_NAME};

/// Bytes in `sockaddr_un.sun_path` on Linux, the terminating NUL
/// included: a Unix socket's path must be shorter than this.
pub const SUN_PATH_MAX: usize = 108;
/// The longest name of a container's directory: `{pid:x}-{n:x}`, n
/// counting this process's sockets.
const CONTAINER_DIR_MAX: usize = 8 + 1 + 16;
/// The longest `socket_dir`: a container's socket,
/// `SOCKET_DIR/PID-SERIAL/agent.sock`, must fit in `sun_path`.
pub const MAX_SOCKET_DIR_LEN: usize =
    SUN_PATH_MAX - 1 - (1 + CONTAINER_DIR_MAX + 1 + SOCKET_NAME.len());
/// Where the agent finds the socket in its container: beside the agent
/// (over the empty `tools::SOCKET_NAME` file of the read-only tools
/// directory, or in the tools volume), so that nothing is added to the
/// image's own file system.
pub const SOCKET_IN_CONTAINER: &str = "/.tcp-task/agent.sock";

/// Refuses a `socket_dir` whose sockets' paths would not fit in
/// [`SUN_PATH_MAX`], unless the socket is never used (`attach`).
pub fn check_socket_dir(config: &WarmConfig) -> Result<(), String> {
    match (&config.socket_dir, config.data_plane) {
        (Some(dir), DataPlane::Auto | DataPlane::Socket) => fits(dir),
        _ => Ok(()),
    }
}

fn fits(dir: &Path) -> Result<(), String> {
    let len = dir.as_os_str().len();
    if len <= MAX_SOCKET_DIR_LEN {
        return Ok(());
    }
    Err(format!(
        "[executor.warm] socket_dir {} is {len} bytes long, and at most {MAX_SOCKET_DIR_LEN} \
         fit: the warm agents' sockets are made in it, and a Unix socket's path is limited to \
         {} bytes. Choose a shorter directory, or set data_plane = \"attach\"",
        dir.display(),
        SUN_PATH_MAX - 1
    ))
}

/// Makes `dir` (mode 0700) if missing, and checks that it is a directory
/// of ours that no other user may enter: sockets in it are 0666, so the
/// directory is what keeps other host users away from them.
pub(crate) fn prepare(dir: &Path) -> Result<(), String> {
    fits(dir)?;
    let failed = |e: io::Error| format!("cannot use {} for sockets: {e}", dir.display());
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    let meta = fs::symlink_metadata(dir).map_err(failed)?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if Some(meta.uid()) != current_uid() {
        return Err(format!(
            "{} belongs to another user (uid {})",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(failed)?;
    }
    Ok(())
}

/// Removes the directories a server of this host left behind when it died
/// before its agents connected (a running server removes each as soon as
/// its agent connects, or its launch fails): those whose process is gone.
pub(crate) fn sweep_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((pid, _)) = name.to_str().and_then(|n| n.split_once('-')) else {
            continue;
        };
        let Ok(pid) = u32::from_str_radix(pid, 16) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// One container's socket, listening from before the container is created
/// until its agent connects. Dropped, it removes its directory.
#[derive(Debug)]
pub(crate) struct AgentSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: UnixListener,
}

impl AgentSocket {
    /// Listens at `base/PID-N/agent.sock`, N counting this process's
    /// sockets (several executors may share a process and a directory).
    /// The socket is mode 0666 so that the container's user, whoever it
    /// is, may connect; its directories (0700) keep everyone else on the
    /// host out.
    pub fn bind(base: &Path) -> io::Result<AgentSocket> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{:x}-{n:x}", std::process::id()));
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join(SOCKET_NAME);
        let socket = UnixListener::bind(&path)
            .and_then(|listener| {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o666))?;
                Ok(listener)
            })
            .map(|listener| AgentSocket {
                dir: dir.clone(),
                path: path.clone(),
                listener,
            });
        if socket.is_err() {
            let _ = fs::remove_file(&path);
            let _ = fs::remove_dir(&dir);
        }
        socket
    }

    /// Its path on the host: the bind mount's source.
    pub fn host_path(&self) -> &Path {
        &self.path
    }

    /// The container's read-only bind of the socket at
    /// [`SOCKET_IN_CONTAINER`]. Connecting needs no write access to the
    /// mount (`EROFS` concerns regular files, directories and links).
    pub fn mount(&self) -> Mount {
        read_only_bind(&self.path, SOCKET_IN_CONTAINER)
    }

    /// Takes the agent's connection, the only one: the listener is closed
    /// and the socket's file and directory removed as this returns (the
    /// container keeps the socket through its mount, but nothing listens
    /// on it any more, so a task that connects is refused). Waits up to
    /// `within`, and no longer than container `id` runs.
    pub async fn accept(
        self,
        docker: &Docker,
        id: &str,
        within: Duration,
    ) -> Result<UnixStream, NotConnected> {
        tokio::select! {
            accepted = self.listener.accept() => accepted
                .map(|(stream, _)| stream)
                .map_err(|e| NotConnected::Failed(format!("accepting the agent's connection failed: {e}"))),
            status = wait_exit(docker, id) => Err(NotConnected::Ended(status.ok())),
            _ = tokio::time::sleep(within) => Err(NotConnected::Failed(format!(
                "the agent did not connect to its socket within {within:?}"
            ))),
        }
    }
}

impl Drop for AgentSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Why no agent connected.
#[derive(Debug)]
pub(crate) enum NotConnected {
    /// The container ended first, with this exit status if the engine
    /// said.
    Ended(Option<i64>),
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's socket sits over the placeholder file of the tools
    /// directory.
    #[test]
    fn the_socket_in_the_container_is_the_tools_placeholder() {
        let placeholder = format!("{}/{SOCKET_NAME}", crate::executor::tools::TOOLS_DIR);
        assert_eq!(SOCKET_IN_CONTAINER, placeholder);
    }

    fn with_dir(dir: &str) -> WarmConfig {
        WarmConfig {
            socket_dir: Some(PathBuf::from(dir)),
            ..WarmConfig::default()
        }
    }

    #[test]
    fn a_socket_dir_too_long_for_sun_path_is_refused() {
        let longest = format!("/{}", "d".repeat(MAX_SOCKET_DIR_LEN - 1));
        assert_eq!(check_socket_dir(&with_dir(&longest)), Ok(()));
        let over = format!("{longest}x");
        let refused = check_socket_dir(&with_dir(&over)).expect_err("one byte too long");
        assert!(refused.contains("socket_dir"), "{refused}");
        assert!(
            refused.contains(&MAX_SOCKET_DIR_LEN.to_string()),
            "{refused}"
        );
        let attach = WarmConfig {
            data_plane: DataPlane::Attach,
            ..with_dir(&over)
        };
        assert_eq!(check_socket_dir(&attach), Ok(()), "never used with attach");
    }

    /// The longest socket dir, with the longest container directory, is a
    /// path the kernel binds a socket at; one byte more is not.
    #[test]
    fn the_longest_socket_path_binds_and_one_more_byte_does_not() {
        let root = tempfile::tempdir().expect("a temporary directory");
        let prefix = root.path().as_os_str().len();
        let longest = root
            .path()
            .join("d".repeat(MAX_SOCKET_DIR_LEN - prefix - 1));
        assert_eq!(longest.as_os_str().len(), MAX_SOCKET_DIR_LEN);
        prepare(&longest).expect("the longest socket dir is usable");
        let container_dir = longest.join("f".repeat(CONTAINER_DIR_MAX));
        fs::create_dir(&container_dir).expect("the longest container directory");
        let path = container_dir.join(SOCKET_NAME);
        assert_eq!(path.as_os_str().len(), SUN_PATH_MAX - 1);
        std::os::unix::net::UnixListener::bind(&path).expect("binds at the longest path");
        let over = container_dir.join(format!("{SOCKET_NAME}x"));
        assert!(
            std::os::unix::net::UnixListener::bind(&over).is_err(),
            "the kernel refuses a socket path past sun_path"
        );
        let too_long = PathBuf::from(format!("{}x", longest.display()));
        assert!(prepare(&too_long).is_err());
    }

    #[tokio::test]
    async fn one_connection_is_taken_and_the_socket_is_gone_after() {
        let root = tempfile::tempdir().expect("a temporary directory");
        let socket = AgentSocket::bind(root.path()).expect("binds");
        let other = AgentSocket::bind(root.path()).expect("a second one");
        assert_ne!(socket.host_path(), other.host_path());
        let path = socket.host_path().to_owned();
        let mode = fs::metadata(&path).expect("the socket file").mode();
        assert_eq!(mode & 0o777, 0o666);
        let dir_mode = fs::metadata(path.parent().expect("its dir"))
            .expect("dir")
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let first = std::os::unix::net::UnixStream::connect(&path).expect("connects");
        let (stream, _) = socket.listener.accept().await.expect("accepts");
        drop(socket);
        assert!(!path.exists(), "the socket file is removed");
        assert!(!path.parent().expect("dir").exists(), "so is its directory");
        drop((stream, first));
    }
}

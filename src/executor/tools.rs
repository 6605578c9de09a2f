//! The static tools binary inside task containers: packed once into a
//! tar, uploaded through the Engine API into an anonymous volume at
//! [`TOOLS_DIR`], under three names that pick its applet — the warm
//! agent, an HTTP task's relay, and `measure`, which reports what a cold
//! task used.
//!
//! Why upload rather than bind-mount: the archive upload works the same
//! with a remote engine. Why a volume: the engine refuses uploads into a
//! read-only root filesystem but not into a volume; the volume is removed
//! with the container (`v=true`).

use bollard::query_parameters::UploadToContainerOptions;
use bollard::Docker;
use bytes::Bytes;
use std::sync::OnceLock;

use super::engine::engine_error;
use crate::images::TOOLS_BINARY;
use crate::task::{ErrorKind, TaskError};

/// Where the binary is, in every container that has it.
pub const TOOLS_DIR: &str = "/.tcp-task";
/// The warm agent (the binary's name picks the `agent` applet).
pub const AGENT_PATH: &str = "/.tcp-task/agent";
/// An HTTP task's way to its server's port.
pub const RELAY_PATH: &str = "/.tcp-task/relay";
/// A cold task's measurer (tools/src/measure.rs).
pub const MEASURE_PATH: &str = "/.tcp-task/measure";

/// Uploads the binary into container `id` (created, with a volume at
/// [`TOOLS_DIR`]).
pub(crate) async fn upload(docker: &Docker, id: &str) -> Result<(), TaskError> {
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

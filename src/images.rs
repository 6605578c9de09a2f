//! The images tcp-task needs, built locally through the Engine API with no
//! registry: FROM scratch plus the static `tcp-task-tools` binary that
//! `build.rs` compiles from `tools/` and embeds here.
//!
//! The examples image ([`EXAMPLES_IMAGE`]) holds:
//! - `/bin/tcp-task-tools` and one symlink per applet (`/bin/sum`, …), with
//!   `PATH=/bin`, so both `sum 1 2` and `/bin/sum 1 2` run;
//! - `/tmp` (mode 1777), and `/etc/passwd` and `/etc/group` naming `root` and
//!   `nobody` (65534), so `--user nobody` works;
//! - the labels `tcp-task.image=examples`, `tcp-task.version` and
//!   [`TOOLS_DIGEST_LABEL`], the digest of the embedded binary, by which
//!   [`ensure_examples_image`] notices an image built from other code.
//!
//! The HTTP examples image ([`HTTP_EXAMPLES_IMAGE`]) holds the same files,
//! and runs `http-tasks 8080` by default: the sum and multiply tasks as an
//! HTTP server answering `POST /task/{name}`, the shape of the original
//! task service's images (see `tools/src/http_tasks.rs`).
//!
//! The server image ([`SERVER_IMAGE`], `tcp-task image build-server`) holds
//! a static `tcp-task` binary as `/bin/tcp-task` and the same `/etc` and
//! `/tmp`, and runs `tcp-task serve --listen 0.0.0.0:7070` by default: the
//! way to deploy tcp-task itself as a Swarm service (docs/DEPLOY.md). Its
//! binary is not embedded (a program cannot embed itself): the caller hands
//! one over, and it must be statically linked ([`ensure_static`]).
//!
//! It is built with the classic builder from an in-memory context
//! (`Dockerfile` + `rootfs/`): a build, rather than an import, gives an image
//! with its labels, environment and default command in one call, and identical
//! contexts hit the build cache, so concurrent builders converge on one image.

use bollard::models::ImageInspect;
use bollard::query_parameters::{BuildImageOptionsBuilder, RemoveImageOptionsBuilder};
use bollard::Docker;
use futures::StreamExt;
use std::io;

use crate::docker::{error_chain, DockerError};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/tools.rs"));
}

/// The static multi-call binary built from `tools/` (empty when this library
/// was built for a non-Linux target).
pub const TOOLS_BINARY: &[u8] = embedded::TOOLS_BINARY;

/// The applet names of [`TOOLS_BINARY`]: each is a symlink in the image's `/bin`.
pub const TOOLS_APPLETS: &[&str] = embedded::TOOLS_APPLETS;

/// A fingerprint (FNV-1a 64, hex) of [`TOOLS_BINARY`].
pub const TOOLS_DIGEST: &str = embedded::TOOLS_DIGEST;

/// The examples image, tagged with this crate's version.
pub const EXAMPLES_IMAGE: &str = concat!("tcp-task-examples:", env!("CARGO_PKG_VERSION"));

/// The HTTP examples image: the example tasks as an HTTP server on port
/// [`HTTP_EXAMPLES_PORT`], as the original service's task images were.
pub const HTTP_EXAMPLES_IMAGE: &str = concat!("tcp-task-http-examples:", env!("CARGO_PKG_VERSION"));

/// The server image, tagged with this crate's version.
pub const SERVER_IMAGE: &str = concat!("tcp-task-server:", env!("CARGO_PKG_VERSION"));

/// The port the server image's `tcp-task serve` listens on by default.
pub const SERVER_PORT: u16 = 7070;

/// Where the server binary lives in the server image.
pub const SERVER_PATH: &str = "/bin/tcp-task";

/// The port the HTTP examples image's server listens on.
pub const HTTP_EXAMPLES_PORT: u16 = 8080;

/// Label naming which of tcp-task's images this is.
pub const IMAGE_LABEL: &str = "tcp-task.image";

/// Label carrying [`TOOLS_DIGEST`] of the binary inside the image.
pub const TOOLS_DIGEST_LABEL: &str = "tcp-task.tools-digest";

/// Where the binary lives in the image.
pub const TOOLS_PATH: &str = "/bin/tcp-task-tools";

/// Why an image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(
        "this build of tcp-task has no tools binary (built for {target}, not Linux), so it cannot \
         build images; build tcp-task on Linux, or build the image on a Linux machine"
    )]
    NoToolsBinary { target: &'static str },
    #[error("cannot inspect image {image}: {detail}. Check that the Docker engine is healthy (`docker info`)")]
    Inspect { image: String, detail: String },
    #[error("building image {image} failed: {detail}. Check the engine's log (`journalctl -u docker`) and free disk space (`docker system df`)")]
    Build { image: String, detail: String },
    #[error(
        "{binary} is {why}, and a FROM-scratch image has no C library or loader to run it; \
         build a static tcp-task with `RUSTFLAGS='-C target-feature=+crt-static' cargo build \
         --release --target x86_64-unknown-linux-gnu` and pass \
         target/x86_64-unknown-linux-gnu/release/tcp-task with --binary"
    )]
    NotStatic { binary: String, why: &'static str },
    #[error("cannot assemble the build context for {image}: {source}")]
    Context { image: String, source: io::Error },
}

/// Builds (or rebuilds) [`EXAMPLES_IMAGE`] and [`HTTP_EXAMPLES_IMAGE`]
/// from the embedded binary. The images they replace, if any, are removed
/// when no container uses them, so rebuilds do not pile up untagged images.
pub async fn build_examples_image(docker: &Docker) -> Result<(), ImageError> {
    if TOOLS_BINARY.is_empty() {
        return Err(ImageError::NoToolsBinary {
            target: embedded::TOOLS_TARGET,
        });
    }
    for (image, kind) in [
        (EXAMPLES_IMAGE, Kind::Examples),
        (HTTP_EXAMPLES_IMAGE, Kind::Http),
    ] {
        let context = context(kind).map_err(|source| ImageError::Context {
            image: image.to_string(),
            source,
        })?;
        rebuild(docker, image, context).await?;
    }
    Ok(())
}

/// Builds the server image, tagged `tag` (say [`SERVER_IMAGE`]), around
/// `binary`: the bytes of a statically linked `tcp-task`, read from the
/// file `name` (named in errors). Refuses a dynamically linked binary
/// before the engine is asked anything.
pub async fn build_server_image(
    docker: &Docker,
    tag: &str,
    name: &str,
    binary: &[u8],
) -> Result<(), ImageError> {
    ensure_static(name, binary)?;
    let context = server_context(binary).map_err(|source| ImageError::Context {
        image: tag.to_string(),
        source,
    })?;
    rebuild(docker, tag, context).await
}

/// Whether `binary` can run FROM scratch: a Linux ELF executable with no
/// program interpreter (`PT_INTERP`), that is with no dynamic loader and so
/// no shared libraries. `name` is what errors call it.
pub fn ensure_static(name: &str, binary: &[u8]) -> Result<(), ImageError> {
    let refuse = |why| {
        Err(ImageError::NotStatic {
            binary: name.to_string(),
            why,
        })
    };
    match elf_interpreter(binary) {
        None => refuse("not a 64-bit little-endian ELF executable"),
        Some(true) => refuse("dynamically linked (it names an ELF program interpreter)"),
        Some(false) => Ok(()),
    }
}

/// `Some(whether it has a PT_INTERP program header)` for a 64-bit
/// little-endian ELF, `None` for anything else (or a truncated file).
fn elf_interpreter(binary: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB.
    if binary.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(binary.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(binary.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(binary.get(at..at + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    let mut interp = false;
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        interp |= u32_at(at)? == PT_INTERP;
    }
    Some(interp)
}

/// Builds `image` from `context`, then removes the image it replaced.
async fn rebuild(docker: &Docker, image: &str, context: Vec<u8>) -> Result<(), ImageError> {
    let old = match inspect(docker, image).await? {
        Some(found) => found.id,
        None => None,
    };
    build_image(docker, image, context).await?;
    if let Some(old) = old {
        let new = inspect(docker, image).await?.and_then(|i| i.id);
        if new.as_ref() != Some(&old) {
            // Best effort: a container still using the old image keeps it.
            let options = RemoveImageOptionsBuilder::default().build();
            if let Err(e) = docker.remove_image(&old, Some(options), None).await {
                tracing::debug!(image = old, "old image kept: {}", error_chain(&e));
            }
        }
    }
    Ok(())
}

/// Makes sure [`EXAMPLES_IMAGE`] and [`HTTP_EXAMPLES_IMAGE`] exist and
/// hold this build's binary: builds them when one is missing or was built
/// from another binary. Returns whether it built.
///
/// Callers on one machine (say, parallel test processes) take turns through
/// a lock file, so that one builds and the others find the image ready.
pub async fn ensure_examples_image(docker: &Docker) -> Result<bool, ImageError> {
    if is_current(docker).await? {
        return Ok(false);
    }
    let _lock = build_lock().await;
    // Whoever held the lock before us may have built it.
    if is_current(docker).await? {
        return Ok(false);
    }
    build_examples_image(docker).await?;
    Ok(true)
}

/// Whether both example images exist and carry this build's digest.
async fn is_current(docker: &Docker) -> Result<bool, ImageError> {
    for image in [EXAMPLES_IMAGE, HTTP_EXAMPLES_IMAGE] {
        if !carries_this_binary(docker, image).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn carries_this_binary(docker: &Docker, name: &str) -> Result<bool, ImageError> {
    let Some(image) = inspect(docker, name).await? else {
        tracing::info!(image = name, "image missing; building");
        return Ok(false);
    };
    let digest = image
        .config
        .and_then(|c| c.labels)
        .and_then(|mut labels| labels.remove(TOOLS_DIGEST_LABEL));
    if digest.as_deref() == Some(TOOLS_DIGEST) {
        return Ok(true);
    }
    tracing::info!(
        image = name,
        found = digest.as_deref().unwrap_or("none"),
        want = TOOLS_DIGEST,
        "image holds another tools binary; rebuilding"
    );
    Ok(false)
}

/// The image's details, or `None` when the engine does not have it.
async fn inspect(docker: &Docker, image: &str) -> Result<Option<ImageInspect>, ImageError> {
    match docker.inspect_image(image).await {
        Ok(found) => Ok(Some(found)),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(ImageError::Inspect {
            image: image.to_string(),
            detail: error_chain(&e),
        }),
    }
}

/// An exclusive lock on a file in the temporary directory, held until the
/// returned file is dropped. `None` (no locking) when the file cannot be
/// opened: serialising builds saves work but is not needed for correctness.
async fn build_lock() -> Option<std::fs::File> {
    tokio::task::spawn_blocking(|| {
        let path = std::env::temp_dir().join("tcp-task-image-build.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .or_else(|_| std::fs::File::open(&path))
            .ok()?;
        file.lock().ok()?;
        Some(file)
    })
    .await
    .ok()
    .flatten()
}

/// Sends a build context (a tar with a `Dockerfile` at its root) to the
/// engine's classic builder and waits for the build to finish.
async fn build_image(docker: &Docker, tag: &str, context: Vec<u8>) -> Result<(), ImageError> {
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(tag)
        .rm(true)
        .forcerm(true)
        .build();
    let mut progress = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    let mut built = false;
    while let Some(item) = progress.next().await {
        let info = item.map_err(|e| ImageError::Build {
            image: tag.to_string(),
            detail: error_chain(&e),
        })?;
        if let Some(line) = info.stream.as_deref().map(str::trim_end) {
            if !line.is_empty() {
                tracing::debug!(image = tag, "{line}");
            }
            built |= line.starts_with("Successfully tagged");
        }
        if let Some(aux) = info.aux.and_then(|a| a.id) {
            tracing::debug!(image = tag, id = aux, "built");
        }
    }
    if built {
        Ok(())
    } else {
        Err(ImageError::Build {
            image: tag.to_string(),
            detail: "the engine ended the build without tagging the image".to_string(),
        })
    }
}

/// Which of the two images a context is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Examples,
    Http,
}

/// The build context of the examples image: a Dockerfile and `rootfs/`.
/// Every entry has a fixed owner and timestamp, so the same binary always
/// gives the same context (and a build-cache hit).
pub fn examples_context() -> io::Result<Vec<u8>> {
    context(Kind::Examples)
}

/// The context of `kind`'s image: the same `rootfs/` (so the engine's
/// cache shares its layer), a label and a default command of its own.
fn context(kind: Kind) -> io::Result<Vec<u8>> {
    let (label, tail) = match kind {
        Kind::Examples => (
            "examples",
            "CMD [\"tcp-task-tools\", \"--help\"]\n".to_owned(),
        ),
        Kind::Http => (
            "http-examples",
            format!(
                "EXPOSE {HTTP_EXAMPLES_PORT}\nCMD [\"http-tasks\", \"{HTTP_EXAMPLES_PORT}\"]\n"
            ),
        ),
    };
    let dockerfile = format!(
        "FROM scratch\n\
         COPY rootfs/ /\n\
         ENV PATH=/bin\n\
         LABEL {IMAGE_LABEL}={label} tcp-task.version={version} {TOOLS_DIGEST_LABEL}={TOOLS_DIGEST}\n\
         {tail}",
        version = env!("CARGO_PKG_VERSION"),
    );
    let mut tar = ContextTar::new();
    tar.file("Dockerfile", 0o644, dockerfile.as_bytes())?;
    tar.dir("rootfs/", 0o755)?;
    tar.dir("rootfs/bin/", 0o755)?;
    tar.file("rootfs/bin/tcp-task-tools", 0o755, TOOLS_BINARY)?;
    for applet in TOOLS_APPLETS {
        // Relative, so the link also resolves in an exported or copied rootfs.
        tar.symlink(&format!("rootfs/bin/{applet}"), "tcp-task-tools")?;
    }
    base_rootfs(&mut tar, TOOLS_PATH)?;
    tar.finish()
}

/// The context of the server image: `tcp-task` in `/bin`, the same `/etc`
/// and `/tmp` as the examples image, and `serve` on all interfaces as the
/// default command (the port published or not is the deployer's choice).
fn server_context(binary: &[u8]) -> io::Result<Vec<u8>> {
    let dockerfile = format!(
        "FROM scratch\n\
         COPY rootfs/ /\n\
         ENV PATH=/bin\n\
         LABEL {IMAGE_LABEL}=server tcp-task.version={version}\n\
         EXPOSE {SERVER_PORT}\n\
         ENTRYPOINT [\"{SERVER_PATH}\"]\n\
         CMD [\"serve\", \"--listen\", \"0.0.0.0:{SERVER_PORT}\"]\n",
        version = env!("CARGO_PKG_VERSION"),
    );
    let mut tar = ContextTar::new();
    tar.file("Dockerfile", 0o644, dockerfile.as_bytes())?;
    tar.dir("rootfs/", 0o755)?;
    tar.dir("rootfs/bin/", 0o755)?;
    tar.file("rootfs/bin/tcp-task", 0o755, binary)?;
    base_rootfs(&mut tar, SERVER_PATH)?;
    tar.finish()
}

/// What every image's root holds besides its binaries: `/etc/passwd` and
/// `/etc/group` naming root (whose shell is `shell`) and nobody, root's
/// home, and `/tmp`.
fn base_rootfs(tar: &mut ContextTar, shell: &str) -> io::Result<()> {
    tar.dir("rootfs/etc/", 0o755)?;
    let passwd = format!(
        "root:x:0:0:root:/root:{shell}\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    );
    tar.file("rootfs/etc/passwd", 0o644, passwd.as_bytes())?;
    tar.file("rootfs/etc/group", 0o644, b"root:x:0:\nnobody:x:65534:\n")?;
    tar.dir("rootfs/root/", 0o700)?;
    // World-writable with the sticky bit, as on any Unix: `--user nobody`
    // tasks can write scratch files but not delete each other's.
    tar.dir("rootfs/tmp/", 0o1777)
}

/// A tar being written in memory, every entry owned by root.
struct ContextTar {
    builder: tar::Builder<Vec<u8>>,
}

/// A fixed timestamp (2024-01-01) for reproducible contexts.
const MTIME: u64 = 1_704_067_200;

impl ContextTar {
    fn new() -> Self {
        ContextTar {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        header
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let mut header = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.builder.append_data(&mut header, path, data)
    }

    fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let mut header = Self::header(tar::EntryType::Directory, mode, 0);
        self.builder.append_data(&mut header, path, io::empty())
    }

    fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let mut header = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.builder.append_link(&mut header, path, target)
    }

    fn finish(self) -> io::Result<Vec<u8>> {
        self.builder.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    #[cfg(target_os = "linux")]
    fn the_binary_and_its_applet_list_are_embedded() {
        assert!(TOOLS_BINARY.starts_with(b"\x7fELF"), "not an ELF binary");
        for applet in ["sum", "multiply", "pi", "primes", "cat", "agent"] {
            assert!(
                TOOLS_APPLETS.contains(&applet),
                "{applet} missing from {TOOLS_APPLETS:?}"
            );
        }
        assert!(
            !TOOLS_APPLETS.contains(&"forkbomb-child"),
            "internal applets get no symlink"
        );
        assert_eq!(TOOLS_DIGEST.len(), 16);
        assert_eq!(
            EXAMPLES_IMAGE,
            format!("tcp-task-examples:{}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn only_a_static_elf_may_go_into_the_server_image() {
        // The tools are linked with +crt-static; this test program is not.
        ensure_static("tools", TOOLS_BINARY).expect("the tools binary is static");
        let me = std::env::current_exe().unwrap();
        let dynamic = std::fs::read(&me).unwrap();
        let err = ensure_static("me", &dynamic).unwrap_err().to_string();
        assert!(err.contains("me is dynamically linked"), "{err}");
        assert!(err.contains("crt-static"), "says how to fix it: {err}");
        let err = ensure_static("script", b"#!/bin/sh\necho hi\n").unwrap_err();
        assert!(err.to_string().contains("not a 64-bit"), "{err}");
        // Cut off inside its program headers: refused, not a panic.
        let err = ensure_static("cut", &TOOLS_BINARY[..0x48]).unwrap_err();
        assert!(err.to_string().contains("not a 64-bit"), "{err}");
    }

    #[test]
    fn the_server_context_runs_serve_from_bin() {
        let context = server_context(b"binary").unwrap();
        let mut archive = tar::Archive::new(context.as_slice());
        let mut files = HashMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut body = String::new();
            std::io::Read::read_to_string(&mut entry, &mut body).unwrap();
            files.insert(path, (entry.header().mode().unwrap(), body));
        }
        assert_eq!(files["rootfs/bin/tcp-task"], (0o755, "binary".to_owned()));
        assert_eq!(files["rootfs/tmp/"].0, 0o1777);
        assert!(files["rootfs/etc/passwd"]
            .1
            .starts_with("root:x:0:0:root:/root:/bin/tcp-task\n"));
        let dockerfile = &files["Dockerfile"].1;
        assert!(dockerfile.starts_with("FROM scratch\n"), "{dockerfile}");
        assert!(
            dockerfile.contains("ENTRYPOINT [\"/bin/tcp-task\"]"),
            "{dockerfile}"
        );
        assert!(
            dockerfile.contains("CMD [\"serve\", \"--listen\", \"0.0.0.0:7070\"]"),
            "{dockerfile}"
        );
    }

    #[test]
    fn the_context_holds_the_rootfs_layout() {
        let context = examples_context().unwrap();
        let mut archive = tar::Archive::new(context.as_slice());
        let mut entries = HashMap::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let link = entry
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            entries.insert(
                path,
                (
                    header.entry_type(),
                    header.mode().unwrap(),
                    link,
                    header.uid().unwrap(),
                ),
            );
        }
        assert!(entries.contains_key("Dockerfile"));
        let (kind, mode, _, _) = &entries["rootfs/bin/tcp-task-tools"];
        assert!(kind.is_file());
        assert_eq!(*mode, 0o755);
        let (kind, _, link, _) = &entries["rootfs/bin/sum"];
        assert!(kind.is_symlink());
        assert_eq!(link.as_deref(), Some("tcp-task-tools"));
        let (kind, mode, _, _) = &entries["rootfs/tmp/"];
        assert!(kind.is_dir());
        assert_eq!(*mode, 0o1777);
        assert!(entries.values().all(|(_, _, _, uid)| *uid == 0));
        assert_eq!(
            examples_context().unwrap(),
            context,
            "contexts must be reproducible"
        );
    }
}

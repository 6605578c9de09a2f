//! Builds `tools/` (crate `tcp-task-tools`) as a static binary and hands it
//! to the library, which embeds it with `include_bytes!` and packs it into the
//! images it builds (see `src/images.rs`).
//!
//! Why a nested `cargo build` rather than an artifact dependency: the tools
//! must be linked statically (`+crt-static`) for a FROM-scratch image, in
//! release mode whatever the outer profile, and artifact dependencies are
//! still unstable. The nested build uses its own target directory
//! (`<target-dir>/tools-static`): the outer cargo holds the lock on its own
//! profile directory while build scripts run, and one directory for every
//! outer profile means `cargo build`, `cargo test` and `cargo clippy` share
//! one tools build instead of each redoing it.
//!
//! Writes `$OUT_DIR/tools.rs` with `TOOLS_BINARY`, `TOOLS_APPLETS` (the
//! applet names, for the image's symlinks), `TOOLS_DIGEST` and
//! `TOOLS_TARGET`.
//!
//! Nothing is built without the `server` feature: a client-only build
//! needs no tools.
//!
//! Escape hatch: `TCP_TASK_TOOLS_BINARY=/path/to/tcp-task-tools` embeds that
//! prebuilt binary instead (for cross builds or packagers). On a non-Linux
//! target nothing is built and the library reports, at run time, that images
//! cannot be built there; the client side still works.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TOOLS_PACKAGE: &str = "tcp-task-tools";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=tools/src");
    println!("cargo:rerun-if-changed=tools/Cargo.toml");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-env-changed=TCP_TASK_TOOLS_BINARY");

    // Only the server packs the tools into images; a client-only build
    // (`default-features = false`) neither builds nor embeds them.
    if env::var_os("CARGO_FEATURE_SERVER").is_none() {
        return;
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let host = env::var("HOST").expect("cargo sets HOST");

    let generated = out_dir.join("tools.rs");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        println!(
            "cargo:warning=tcp-task: target {target} is not Linux; the tools binary is not embedded \
             and images cannot be built by this build (the client works as usual)"
        );
        write_generated(&generated, None, &[], "", &target);
        return;
    }

    let built = match env::var_os("TCP_TASK_TOOLS_BINARY") {
        Some(path) => PathBuf::from(path),
        None => build_tools(&manifest_dir, &out_dir, &target),
    };
    let binary = fs::read(&built)
        .unwrap_or_else(|e| panic!("cannot read the tools binary {}: {e}", built.display()));
    // A private copy: what the library embeds cannot change under it if a
    // later nested build rewrites the shared target directory.
    let embedded = out_dir.join(TOOLS_PACKAGE);
    fs::write(&embedded, &binary)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", embedded.display()));

    let applets = list_applets(&embedded, &manifest_dir, &target, &host);
    write_generated(
        &generated,
        Some(&embedded),
        &applets,
        &fnv1a_hex(&binary),
        &target,
    );
}

/// Runs the nested `cargo build` and returns the path of the static binary.
fn build_tools(manifest_dir: &Path, out_dir: &Path, target: &str) -> PathBuf {
    let target_dir = tools_target_dir(manifest_dir, out_dir);
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .args(["-p", TOOLS_PACKAGE])
        .args(["--target", target])
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    if let Ok(jobs) = env::var("NUM_JOBS") {
        cmd.args(["-j", &jobs]);
    }
    // The outer build's settings must not leak in: its RUSTFLAGS, target,
    // target dir, jobserver, profile overrides or clippy wrapper would change
    // what the nested build produces and make it rebuild every time.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if must_clear(&key) {
            cmd.env_remove(key.as_ref());
        }
    }
    // `--target` keeps these flags off build scripts and proc macros, which
    // cannot be linked statically.
    cmd.env("RUSTFLAGS", "-C target-feature=+crt-static");

    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {TOOLS_PACKAGE}: {e}"));
    if !output.status.success() {
        panic!(
            "building the static {TOOLS_PACKAGE} binary failed ({}).\n\
             Command: {cmd:?}\n{}\n\
             If the target's standard library is missing, `rustup target add {target}`; \
             or set TCP_TASK_TOOLS_BINARY to a prebuilt static binary.",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    target_dir.join(target).join("release").join(TOOLS_PACKAGE)
}

/// `<target-dir>/tools-static`, the same for every profile: the target dir is
/// `CARGO_TARGET_DIR` when set, else the ancestor of OUT_DIR that cargo marked
/// with CACHEDIR.TAG, else `<workspace>/target`.
fn tools_target_dir(manifest_dir: &Path, out_dir: &Path) -> PathBuf {
    let root = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            out_dir
                .ancestors()
                .find(|dir| dir.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| manifest_dir.join("target"));
    root.join("tools-static")
}

fn must_clear(key: &str) -> bool {
    let keep = key == "CARGO_HOME"
        || key.starts_with("CARGO_NET_")
        || key.starts_with("CARGO_HTTP_")
        || key.starts_with("CARGO_REGISTRIES_")
        || key.starts_with("CARGO_REGISTRY_")
        || key.starts_with("CARGO_TERM_");
    (key.starts_with("CARGO_") && !keep)
        || key.starts_with("__CARGO")
        || matches!(
            key,
            "RUSTFLAGS"
                | "RUSTDOCFLAGS"
                | "RUSTC_WORKSPACE_WRAPPER"
                | "MAKEFLAGS"
                | "MFLAGS"
                | "TARGET"
                | "HOST"
                | "OUT_DIR"
                | "PROFILE"
                | "OPT_LEVEL"
                | "DEBUG"
                | "NUM_JOBS"
                | "RUSTC_LINKER"
        )
}

/// The applet names, from the binary itself (`--list`) when this machine can
/// run it, else from the table in `tools/src/main.rs`.
fn list_applets(binary: &Path, manifest_dir: &Path, target: &str, host: &str) -> Vec<String> {
    if target == host {
        // The embedded copy in OUT_DIR may lack the executable bit (fs::write).
        set_executable(binary);
        match Command::new(binary).arg("--list").output() {
            Ok(out) if out.status.success() => {
                return String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect();
            }
            Ok(out) => panic!(
                "the freshly built {} does not run: `--list` exited with {}: {}",
                binary.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!("cannot run the freshly built {}: {e}", binary.display()),
        }
    }
    let main_rs = manifest_dir.join("tools/src/main.rs");
    let source = fs::read_to_string(&main_rs)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", main_rs.display()));
    applets_from_source(&source)
}

/// The names in the `Applet::new("name", …)` entries of the applet table,
/// skipping those marked `.hidden()`.
fn applets_from_source(source: &str) -> Vec<String> {
    source
        .split("Applet::new(")
        .skip(1)
        .filter_map(|chunk| {
            // One table entry: up to the next entry, or the end of the table.
            let entry = chunk.split("];").next().unwrap_or(chunk);
            if entry.contains(".hidden()") {
                return None;
            }
            let start = entry.find('"')? + 1;
            let len = entry[start..].find('"')?;
            Some(entry[start..start + len].to_string())
        })
        .collect()
}

#[cfg(unix)]
fn set_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
}

#[cfg(not(unix))]
fn set_executable(_path: &Path) {}

/// FNV-1a 64: a cheap content fingerprint, so an image built from another
/// version of the binary is noticed and rebuilt.
fn fnv1a_hex(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn write_generated(
    path: &Path,
    binary: Option<&Path>,
    applets: &[String],
    digest: &str,
    target: &str,
) {
    let mut src = String::from("// Generated by build.rs: the embedded tcp-task-tools binary.\n\n");
    let bytes = match binary {
        Some(p) => format!("include_bytes!({:?})", p.display().to_string()),
        None => "&[]".to_string(),
    };
    let _ = writeln!(
        src,
        "/// The static multi-call binary (empty on non-Linux targets)."
    );
    let _ = writeln!(src, "pub const TOOLS_BINARY: &[u8] = {bytes};");
    let _ = writeln!(
        src,
        "/// Every applet name, one symlink each in the image's /bin."
    );
    let _ = writeln!(src, "pub const TOOLS_APPLETS: &[&str] = &{applets:?};");
    let _ = writeln!(src, "/// FNV-1a 64 of TOOLS_BINARY, in hex.");
    let _ = writeln!(src, "pub const TOOLS_DIGEST: &str = {digest:?};");
    let _ = writeln!(src, "/// The target triple the binary was built for.");
    let _ = writeln!(src, "pub const TOOLS_TARGET: &str = {target:?};");
    fs::write(path, src).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

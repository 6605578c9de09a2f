//! The warm data plane as `tcp-task serve` chooses it: a `socket_dir` too
//! long for a Unix socket's path is refused at start; and with `auto`, a
//! server whose socket directory the engine cannot see (as when the server
//! runs in a container of its own and talks to the host's engine) falls
//! back to the attach stream, says so once, and runs its warm tasks there.
//!
//! The second test makes that situation for real: the server runs in a
//! mount namespace of its own (`unshare -m`) in which its socket directory
//! is a private tmpfs, so the paths it hands the engine do not exist for
//! the engine. It needs root and `unshare`; without them it says it is
//! skipped.

mod cli_server;

use cli_server::strip_ansi;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tcp_task::executor::{label_filter, MAX_SOCKET_DIR_LEN};
use tcp_task::images::EXAMPLES_IMAGE;
use tcp_task::{Client, TaskSpec};

const BIN: &str = env!("CARGO_BIN_EXE_tcp-task");

#[test]
fn a_socket_dir_too_long_for_a_unix_socket_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let too_long = format!("/tmp/{}", "d".repeat(MAX_SOCKET_DIR_LEN - 4));
    assert_eq!(too_long.len(), MAX_SOCKET_DIR_LEN + 1);
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!("[executor.warm]\nsocket_dir = \"{too_long}\"\n"),
    )
    .expect("the config is written");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcp-task serve starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tcp-task serve started with a socket_dir too long");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("socket_dir"), "{stderr}");
    assert!(
        stderr.contains(&format!("at most {MAX_SOCKET_DIR_LEN}")),
        "{stderr}"
    );
    // Refused before anything was made.
    assert!(!std::path::Path::new(&too_long).exists());
}

/// Why the fallback test cannot run here, if it cannot.
fn cannot_unshare() -> Option<String> {
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if uid.ok() != Some(0) {
        return Some("not root: cannot mount a private tmpfs".into());
    }
    let works = Command::new("unshare")
        .args(["-m", "--propagation", "private", "true"])
        .status()
        .is_ok_and(|s| s.success());
    (!works).then(|| "`unshare -m` does not work here".into())
}

#[test]
fn auto_falls_back_to_attach_when_the_engine_cannot_mount_the_socket() {
    if let Some(why) = cannot_unshare() {
        eprintln!(
            "SKIPPED auto_falls_back_to_attach_when_the_engine_cannot_mount_the_socket: {why}"
        );
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let docker = runtime.block_on(async {
        let docker = tcp_task::docker::connect_docker()
            .await
            .expect("this test needs a Docker engine");
        tcp_task::images::ensure_examples_image(&docker)
            .await
            .expect("the examples image can be built");
        docker
    });
    let dir = tempfile::Builder::new()
        .prefix("tt-fb")
        .tempdir_in("/tmp")
        .expect("a temporary directory");
    let sockets = dir.path().join("s");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let instance = format!("socket-fallback-{}-{nanos}", std::process::id());
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[catalog.echo]\nimage = \"{EXAMPLES_IMAGE}\"\ncommand = [\"echo\"]\nwarm = 1\n\n\
             [executor]\ninstance_id = \"{instance}\"\n\n\
             [executor.warm]\ndemand_threshold = 0\nsocket_dir = \"{}\"\n",
            sockets.display()
        ),
    )
    .expect("the config is written");
    // The tmpfs is the server's alone: the engine sees the empty directory
    // under it.
    let script = r#"mkdir -p "$1" && mount -t tmpfs -o mode=0700 tcp-task-test "$1" && exec "$2" serve --listen 127.0.0.1:0 --config "$3""#;
    let mut child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(&sockets)
        .arg(BIN)
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("STATE_DIRECTORY", dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare starts");
    let (log, addr) = follow_log(&mut child);
    let outcome = runtime.block_on(async {
        let client = Client::connect(addr.as_str()).await.expect("connects");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            let status = client.status().await.expect("status");
            if status.pools.iter().map(|p| p.warm).sum::<u64>() >= 1 {
                break status;
            }
            assert!(Instant::now() < deadline, "never warm: {status:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let output = client
            .run(TaskSpec::named("echo", ["fell back"]))
            .await
            .expect("submits")
            .output()
            .await
            .expect("runs");
        (status, output)
    });
    let (status, output) = outcome;
    stop(&mut child);
    let log = log
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_default();
    assert!(
        status
            .server
            .contains("warm data plane: attach (the socket failed: the engine cannot mount"),
        "{}",
        status.server
    );
    assert!(output.outcome.success(), "{:?}\n{log}", output.outcome);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "fell back\n");
    assert_eq!(
        log.matches("the warm containers' socket does not work here")
            .count(),
        1,
        "warned once:\n{log}"
    );
    // Nothing of the server is left on the engine after its shutdown.
    let left = runtime.block_on(async {
        let options = bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(label_filter(Some(&instance))),
            ..Default::default()
        };
        docker.list_containers(Some(options)).await.expect("lists")
    });
    assert!(left.is_empty(), "{left:?}");
}

/// Reads the server's log until it listens; gives the whole log (once the
/// server is gone) and its address.
fn follow_log(child: &mut Child) -> (mpsc::Receiver<String>, String) {
    let stderr = child.stderr.take().expect("stderr");
    let (addr_tx, addr_rx) = mpsc::channel();
    let (log_tx, log_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut log = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening") {
                let addr = line
                    .split(" address=")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(|a| a.trim_matches(|c: char| !c.is_ascii_graphic()).to_owned());
                if let Some(addr) = addr {
                    let _ = addr_tx.send(strip_ansi(&addr));
                }
            }
            log.push_str(&line);
            log.push('\n');
        }
        let _ = log_tx.send(log);
    });
    match addr_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => (log_rx, addr),
        Err(_) => {
            let _ = child.kill();
            let log = log_rx
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_default();
            panic!("the server did not listen:\n{log}");
        }
    }
}

/// SIGTERM (a graceful stop: the pools are drained), then wait.
fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

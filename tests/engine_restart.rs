//! The Docker engine killed (SIGKILL) and started again under a running
//! task, on an engine this test starts itself (own data-root, exec-root
//! and socket; never the machine's). With `live-restore` the container
//! runs on: the task's result is its own exit code and its whole output,
//! not an engine error. scripts/faults/engine-restart.sh does the same
//! under load, with and without live-restore.

use bollard::Docker;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tcp_task::executor::{DockerExecutor, EngineOutage, ExecutorConfig};
use tcp_task::images::{build_examples_image, EXAMPLES_IMAGE as IMAGE};
use tcp_task::{Client, Server, ServerConfig, TaskEvent, TaskId, TaskSpec, TaskState};

/// A dockerd of the test's own, stopped and cleaned up on drop.
struct Engine {
    dir: PathBuf,
    dockerd: Option<Child>,
}

impl Engine {
    fn start(dir: &Path) -> Engine {
        let mut engine = Engine {
            dir: dir.to_owned(),
            dockerd: None,
        };
        engine.launch();
        engine
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("d.sock")
    }

    /// No bridge and no firewall rules: a second engine must not touch
    /// the host's network; tasks run with network none.
    fn launch(&mut self) {
        std::fs::write(self.dir.join("daemon.json"), "{}").unwrap();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .unwrap();
        let dockerd = Command::new("dockerd")
            .arg("--config-file")
            .arg(self.dir.join("daemon.json"))
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("d.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(["--bridge", "none", "--iptables=false", "--ip-masq=false"])
            .arg("--live-restore")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("dockerd starts");
        self.dockerd = Some(dockerd);
    }

    fn kill(&mut self) {
        if let Some(mut dockerd) = self.dockerd.take() {
            let _ = dockerd.kill();
            let _ = dockerd.wait();
        }
    }

    async fn client(&self) -> Docker {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let socket = self.socket().display().to_string();
            if let Ok(docker) = Docker::connect_with_unix(&socket, 30, bollard::API_DEFAULT_VERSION)
            {
                if docker.ping().await.is_ok() {
                    return docker.negotiate_version().await.unwrap();
                }
            }
            assert!(
                Instant::now() < deadline,
                "the test's dockerd did not answer"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(mut dockerd) = self.dockerd.take() {
            unsafe { libc::kill(dockerd.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && matches!(dockerd.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = dockerd.kill();
            let _ = dockerd.wait();
        }
        // What the engine left mounted under its roots, deepest first.
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let prefix = format!("{}/", self.dir.display());
        let mut left: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split(' ').nth(1))
            .filter(|mount| mount.starts_with(&prefix))
            .collect();
        left.sort_by_key(|mount| std::cmp::Reverse(mount.len()));
        for mount in left {
            let path = std::ffi::CString::new(mount).unwrap();
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the task has printed anything yet (its output so far).
async fn has_output(client: &Client, id: &TaskId) -> bool {
    let mut handle = client.logs(id).await.unwrap();
    while let Some(event) = handle.next().await {
        if matches!(event, TaskEvent::Stdout(_)) {
            return true;
        }
    }
    false
}

fn skip_reason() -> Option<&'static str> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("starting a dockerd of its own needs root");
    }
    let found = Command::new("dockerd").arg("--version").output();
    if !found.is_ok_and(|o| o.status.success()) {
        return Some("no dockerd on PATH");
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_task_outlives_a_kill_of_its_engine() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = PathBuf::from(format!("/tmp/tcp-task-engine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut engine = Engine::start(&dir);
    let docker = engine.client().await;
    build_examples_image(&docker).await.unwrap();
    let executor = DockerExecutor::new(docker, Default::default());
    let server = Server::new(ServerConfig::default(), executor)
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::connect(server.local_addr()).await.unwrap();

    // 60 lines on each stream, 250 ms apart: about 15 s.
    let id = client
        .run_detached(TaskSpec::image(IMAGE, ["ticks", "60", "250", "7"]))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !has_output(&client, &id).await {
        assert!(
            Instant::now() < deadline,
            "the task printed nothing within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    engine.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    engine.launch();
    engine.client().await;

    let outcome = tokio::time::timeout(Duration::from_secs(120), client.wait(&id))
        .await
        .expect("the task's result within 120 s")
        .expect("the task's result, not an error");
    assert_eq!(outcome.exit_code, Some(7), "{outcome:?}");
    let output = client.logs(&id).await.unwrap().output().await.unwrap();
    let lines = |tag: &str| (0..60).map(|i| format!("{tag} {i}\n")).collect::<String>();
    assert_eq!(String::from_utf8_lossy(&output.stdout), lines("out"));
    assert_eq!(String::from_utf8_lossy(&output.stderr), lines("err"));

    client.remove(&id, true).await.unwrap();
    server.shutdown().await;
}

/// With `engine_outage = "hold"`, a task that would start while the
/// engine is away waits for it and then runs (with the default, `fail`, it
/// ends at once with the `engine` error: scripts/faults/engine-restart.sh).
#[tokio::test(flavor = "multi_thread")]
async fn with_hold_a_task_submitted_while_the_engine_is_away_runs_when_it_returns() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = PathBuf::from(format!("/tmp/tcp-task-engine-hold-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut engine = Engine::start(&dir);
    let docker = engine.client().await;
    build_examples_image(&docker).await.unwrap();
    let config = ExecutorConfig {
        engine_outage: EngineOutage::Hold,
        ..ExecutorConfig::default()
    };
    let executor = DockerExecutor::new(docker, config);
    let server = Server::new(ServerConfig::default(), executor)
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::connect(server.local_addr()).await.unwrap();

    engine.kill();
    let id = client
        .run_detached(TaskSpec::image(IMAGE, ["echo", "held"]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let info = client.list(true).await.unwrap();
    let listed = info
        .iter()
        .find(|t| t.id == id)
        .expect("the task is listed");
    assert_eq!(
        listed.state,
        TaskState::Running,
        "it ended while the engine was away: {listed:?}"
    );
    engine.launch();
    engine.client().await;

    let outcome = tokio::time::timeout(Duration::from_secs(120), client.wait(&id))
        .await
        .expect("the task's result within 120 s")
        .expect("the task ran, not an engine error");
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    let output = client.logs(&id).await.unwrap().output().await.unwrap();
    assert_eq!(output.stdout, b"held\n");

    client.remove(&id, true).await.unwrap();
    server.shutdown().await;
}

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
            // What a test left (a warm pool, a task of a failed test): with
            // live-restore it would run on after the engine stops.
            let host = format!("unix://{}", self.socket().display());
            if let Ok(out) = Command::new("docker")
                .args(["-H", &host, "ps", "-aq"])
                .output()
            {
                let ids = String::from_utf8_lossy(&out.stdout).to_string();
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let _ = Command::new("docker")
                        .args(["-H", &host, "rm", "-f"])
                        .args(&ids)
                        .output();
                }
            }
            unsafe { libc::kill(dockerd.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && matches!(dockerd.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = dockerd.kill();
            let _ = dockerd.wait();
        }
        // With the engine killed (a test that failed during an outage),
        // its containers' shims and their processes run on: stopped by
        // their PIDs, found by the engine's roots in their command lines.
        let roots = [self.dir.join("exec"), self.dir.join("data")];
        for pid in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = pid.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if roots
                .iter()
                .any(|r| cmdline.contains(&format!("{}/", r.display())))
            {
                let children = format!("/proc/{pid}/task/{pid}/children");
                let children = std::fs::read_to_string(children).unwrap_or_default();
                for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                    unsafe { libc::kill(child, libc::SIGKILL) };
                }
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
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

/// A `tcp-task serve` on the test's engine, SIGKILLed and started again
/// on its address; SIGKILLed on drop.
struct Serve {
    dir: PathBuf,
    addr: String,
    child: Option<Child>,
}

impl Serve {
    fn start(dir: &Path, engine: &Engine) -> Serve {
        Serve::start_with(dir, engine, "auto", 1)
    }

    /// The same with `warm` containers for `ticker`, on data plane
    /// `plane` (`auto`, `socket` or `attach`).
    fn start_with(dir: &Path, engine: &Engine, plane: &str, warm: u32) -> Serve {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "[executor]\nengine_outage = \"hold\"\n\n\
             [executor.warm]\ndata_plane = \"{plane}\"\n\n\
             [catalog.ticker]\nimage = \"{IMAGE}\"\ncommand = [\"ticks\"]\nwarm = {warm}\n"
        );
        std::fs::write(dir.join("server.toml"), config).unwrap();
        let mut serve = Serve {
            dir: dir.to_owned(),
            addr: format!("127.0.0.1:{port}"),
            child: None,
        };
        serve.launch(engine);
        serve
    }

    fn launch(&mut self, engine: &Engine) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("serve.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tcp-task"))
            .args(["serve", "--listen", &self.addr, "--config"])
            .arg(self.dir.join("server.toml"))
            .env(
                "DOCKER_HOST",
                format!("unix://{}", engine.socket().display()),
            )
            .env("STATE_DIRECTORY", self.dir.join("state"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("tcp-task serve starts");
        self.child = Some(child);
    }

    /// A client, once the server answers; panics with its log if it
    /// exits or does not answer within 60 s.
    async fn client(&mut self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(client) = Client::connect(self.addr.as_str()).await {
                return client;
            }
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("serve.log")).unwrap();
                panic!("tcp-task serve did not answer ({exited:?}); its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The test's engine with the examples image, a `tcp-task serve` on it
/// (with a warm catalog entry `ticker`), a client, and two detached
/// `ticks 40 500 7` (about 20 s) that have begun to print: one on a cold
/// container, one on a warm one.
async fn serve_with_running_tasks(name: &str) -> (Engine, Serve, Client, [TaskId; 2]) {
    let dir = PathBuf::from(format!("/tmp/tcp-task-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let engine = Engine::start(&dir);
    let docker = engine.client().await;
    build_examples_image(&docker).await.unwrap();
    let mut serve = Serve::start(&dir, &engine);
    let client = serve.client().await;
    wait_for_warm(&client, 1).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let args = ["40", "500", "7"];
    let warm = client
        .run_detached(TaskSpec::named("ticker", args))
        .await
        .unwrap();
    let cold = client
        .run_detached(TaskSpec::image(IMAGE, ["ticks", "40", "500", "7"]))
        .await
        .unwrap();
    for id in [&cold, &warm] {
        while !has_output(&client, id).await {
            assert!(
                Instant::now() < deadline,
                "task {id} printed nothing in time"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    (engine, serve, client, [cold, warm])
}

/// Waits (up to 60 s) until `count` warm containers are ready.
async fn wait_for_warm(client: &Client, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = client.status().await.unwrap();
        if status.pools.iter().any(|p| p.warm >= count) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not {count} warm containers in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Its whole result: exit 7, and 40 lines on each stream.
async fn assert_intact(client: &Client, id: &TaskId, outcome: tcp_task::Outcome) {
    assert_eq!(outcome.exit_code, Some(7), "{outcome:?}");
    let output = client.logs(id).await.unwrap().output().await.unwrap();
    let lines = |tag: &str| (0..40).map(|i| format!("{tag} {i}\n")).collect::<String>();
    assert_eq!(String::from_utf8_lossy(&output.stdout), lines("out"));
    assert_eq!(String::from_utf8_lossy(&output.stderr), lines("err"));
}

/// A task adopted by a restarted server whose engine then goes away: it
/// waits for the engine, as a task the server started itself does, and
/// gets its own result, not an engine error.
#[tokio::test(flavor = "multi_thread")]
async fn an_adopted_task_outlives_a_kill_of_its_engine() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let (mut engine, mut serve, client, ids) = serve_with_running_tasks("engine-adopted").await;
    drop(client);
    serve.kill();
    serve.launch(&engine);
    let client = serve.client().await;

    engine.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    engine.launch();
    engine.client().await;

    for id in &ids {
        let outcome = tokio::time::timeout(Duration::from_secs(120), client.wait(id))
            .await
            .expect("the task's result within 120 s")
            .unwrap_or_else(|e| panic!("task {id}: an error, not its result: {e}"));
        assert_intact(&client, id, outcome).await;
        client.remove(id, true).await.unwrap();
    }
    // Before the engine goes: its warm pool is removed with it.
    drop(serve);
}

/// Warm tasks this server started itself (not adopted ones), one attached
/// and one detached, whose engine is killed under them and started again
/// (live-restore: their containers run on): each gets its own result,
/// exit 7 and every line once and in order, not an engine error. With
/// the socket data plane the agent's frames never pass through dockerd;
/// with attach, they did, and the stream is lost with the engine.
async fn warm_tasks_outlive_a_kill_of_their_engine(plane: &str) {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = PathBuf::from(format!("/tmp/tcp-task-warm-{plane}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut engine = Engine::start(&dir);
    let docker = engine.client().await;
    build_examples_image(&docker).await.unwrap();
    let mut serve = Serve::start_with(&dir, &engine, plane, 2);
    let client = serve.client().await;
    wait_for_warm(&client, 2).await;
    let status = client.status().await.unwrap();
    assert!(
        status
            .server
            .ends_with(&format!("warm data plane: {plane}")),
        "{}",
        status.server
    );

    // `ticks 40 500 7`: about 20 s.
    let spec = || TaskSpec::named("ticker", ["40", "500", "7"]);
    let attached = client.run(spec()).await.unwrap();
    let attached = tokio::spawn(attached.output());
    let detached = client.run_detached(spec()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !has_output(&client, &detached).await {
        assert!(Instant::now() < deadline, "it printed nothing in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = client.status().await.unwrap();
    let hits: u64 = status.pools.iter().map(|p| p.hits).sum();
    assert_eq!(hits, 2, "both run on warm containers: {:?}", status.pools);

    engine.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    engine.launch();
    engine.client().await;

    let output = tokio::time::timeout(Duration::from_secs(120), attached)
        .await
        .expect("the attached task's result within 120 s")
        .unwrap()
        .unwrap_or_else(|e| panic!("the attached task: an error, not its result: {e}"));
    assert_eq!(output.outcome.exit_code, Some(7), "{:?}", output.outcome);
    let lines = |tag: &str| (0..40).map(|i| format!("{tag} {i}\n")).collect::<String>();
    assert_eq!(String::from_utf8_lossy(&output.stdout), lines("out"));
    assert_eq!(String::from_utf8_lossy(&output.stderr), lines("err"));

    let outcome = tokio::time::timeout(Duration::from_secs(120), client.wait(&detached))
        .await
        .expect("the detached task's result within 120 s")
        .unwrap_or_else(|e| panic!("the detached task: an error, not its result: {e}"));
    assert_intact(&client, &detached, outcome).await;
    client.remove(&detached, true).await.unwrap();
    // Before the engine goes: its warm pool is removed with it.
    drop(serve);
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_tasks_on_the_socket_outlive_a_kill_of_their_engine() {
    warm_tasks_outlive_a_kill_of_their_engine("socket").await
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_tasks_on_attach_outlive_a_kill_of_their_engine() {
    warm_tasks_outlive_a_kill_of_their_engine("attach").await
}

/// A server killed while its engine is down too, and started again before
/// the engine is back (scripts/faults/kills-and-engine.sh under load): it
/// serves all the same (a lookup of the task says to try again, not that
/// there is no such task), and once the engine answers it takes over the
/// task the killed server left, with its exit code and all its output.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_started_while_the_engine_is_down_takes_over_when_it_returns() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let (mut engine, mut serve, client, ids) = serve_with_running_tasks("engine-serve").await;
    drop(client);

    serve.kill();
    engine.kill();
    serve.launch(&engine);
    let client = serve.client().await;
    // The killed dockerd's containerd takes a moment to go; a dockerd
    // started meanwhile waits for it in vain.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in &ids {
        let error = client
            .wait(id)
            .await
            .expect_err("no result while the engine is down");
        assert_eq!(
            error.kind(),
            Some(tcp_task::ErrorKind::Engine),
            "not yet taken over: {error}"
        );
    }

    engine.launch();
    engine.client().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in &ids {
        let outcome = loop {
            match client.wait(id).await {
                Err(e) if e.kind() == Some(tcp_task::ErrorKind::Engine) => {
                    assert!(Instant::now() < deadline, "not taken over in 120 s: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                result => {
                    break result
                        .unwrap_or_else(|e| panic!("task {id}: an error, not its result: {e}"))
                }
            }
        };
        assert_intact(&client, id, outcome).await;
        client.remove(id, true).await.unwrap();
    }
    // Before the engine goes: its warm pool is removed with it.
    drop(serve);
}

/// Tasks adopted by a restarted server that end while the engine is down
/// (live-restore: the containers run on) get what the engine kept: a cold
/// task its exit code and the output the engine logged (it loses what
/// was written while it was down); a warm task, whose exit code is in
/// its agent's frames in that log, an error that says the engine did not
/// keep its end, never the agent's own exit 0.
#[tokio::test(flavor = "multi_thread")]
async fn tasks_that_end_while_the_engine_is_down_get_what_the_engine_kept() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let (mut engine, mut serve, client, [cold, warm]) =
        serve_with_running_tasks("engine-lost-end").await;
    drop(client);
    serve.kill();
    serve.launch(&engine);
    let client = serve.client().await;

    // Both end (about 20 s after they began) while the engine is down.
    engine.kill();
    tokio::time::sleep(Duration::from_secs(25)).await;
    engine.launch();
    engine.client().await;

    let wait = |id: TaskId| {
        let client = &client;
        async move {
            tokio::time::timeout(Duration::from_secs(120), client.wait(&id))
                .await
                .expect("an answer within 120 s")
        }
    };
    let outcome = wait(cold.clone()).await.expect("the cold task's result");
    assert_eq!(outcome.exit_code, Some(7), "{outcome:?}");
    let output = client.logs(&cold).await.unwrap().output().await.unwrap();
    let all = (0..40).map(|i| format!("out {i}\n")).collect::<String>();
    assert!(
        all.starts_with(&*String::from_utf8_lossy(&output.stdout)),
        "the cold task's stdout is a prefix of its own"
    );
    let error = wait(warm.clone())
        .await
        .expect_err("the warm task's end is not known");
    assert_eq!(error.kind(), Some(tcp_task::ErrorKind::Engine), "{error}");
    assert!(error.to_string().contains("did not keep"), "{error}");

    for id in [&cold, &warm] {
        client.remove(id, true).await.unwrap();
    }
    drop(serve);
}

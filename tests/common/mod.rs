//! Shared helpers for the executor tests: a real engine, the examples image,
//! an executor with its own instance id, admission in front of it as the
//! server has, and a collector that plays the connection (it takes the
//! task's events as they come).

#![allow(dead_code)]

pub mod corpus;
pub mod engine;

use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use tcp_task::admission::{Admission, ClientPolicy, ClientRules, Policy};
use tcp_task::catalog::Catalog;
use tcp_task::executor::{
    label_filter, Delivery, Disconnected, DockerExecutor, Events, Executor, ExecutorConfig,
    PoolStats, TaskIo,
};
use tcp_task::protocol::{Outcome, OutputStream, ProgressEvent, TaskError, TaskSpec};

pub use tcp_task::images::EXAMPLES_IMAGE;

/// An engine, the examples image, and an executor whose containers carry
/// this test's own instance id.
pub struct Harness {
    pub docker: Docker,
    pub exec: Arc<DockerExecutor>,
    /// The server's rules, with the default policy and the harness's catalog.
    pub admission: Arc<Admission>,
}

impl Harness {
    /// A cold-path executor: warm pools are switched off, so that repeated
    /// tasks do not warm up a pool (and leave its containers to count).
    pub async fn new(mut config: ExecutorConfig) -> Harness {
        config.warm.enabled = false;
        Harness::build(config, Catalog::default()).await
    }

    /// A cold-path executor behind a server that serves `catalog`.
    pub async fn with_catalog(mut config: ExecutorConfig, catalog: Catalog) -> Harness {
        config.warm.enabled = false;
        Harness::build(config, catalog).await
    }

    /// An executor with warm pools as `config` says, serving `catalog`,
    /// whose `warm` entries start filling at once.
    pub async fn warm(config: ExecutorConfig, catalog: Catalog) -> Harness {
        let h = Harness::build(config, catalog).await;
        for (plan, containers) in h.admission.warm_plans() {
            h.exec.keep_warm(&plan, containers);
        }
        h
    }

    async fn build(config: ExecutorConfig, catalog: Catalog) -> Harness {
        let docker = tcp_task::docker::connect_docker()
            .await
            .expect("a Docker engine is reachable");
        tcp_task::images::ensure_examples_image(&docker)
            .await
            .expect("the examples image can be built");
        let exec = DockerExecutor::new(docker.clone(), config);
        Harness {
            docker,
            exec: Arc::new(exec),
            admission: Arc::new(Admission::new(Policy::default(), catalog)),
        }
    }

    /// The warm pools, as `tcp-task status` shows them.
    pub async fn pools(&self) -> Vec<PoolStats> {
        self.exec.stats().await.pools
    }

    /// Waits (up to 60 s) until the pools hold `n` ready containers in all.
    pub async fn wait_warm(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let warm: u64 = self.pools().await.iter().map(|p| p.warm).sum();
            if warm >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the pools never held {n} containers: {:?}",
                self.pools().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Hits over all pools.
    pub async fn hits(&self) -> u64 {
        self.pools().await.iter().map(|p| p.hits).sum()
    }

    /// Drains the pools (as at server shutdown), then asserts that nothing
    /// of this executor is left on the engine. Not `shutdown`: its safety
    /// net (remove everything of the instance) would hide leftovers.
    pub async fn drain_and_assert_clean(&self) {
        self.exec.drain_warm().await;
        self.assert_clean().await;
    }

    pub async fn standard() -> Harness {
        Harness::new(ExecutorConfig::default()).await
    }

    /// Runs `spec` to its end with no stdin.
    pub async fn run(&self, spec: TaskSpec) -> Run {
        self.start(spec).finish().await
    }

    /// Starts `spec` (through admission, as the server would); the caller
    /// may feed stdin, cancel, and then `finish`.
    pub fn start(&self, spec: TaskSpec) -> Running {
        start(self.exec.clone(), self.admission.clone(), spec)
    }

    /// Runs `spec` to its end for the named client `client` (whose rules
    /// are the default ones).
    pub async fn run_as(&self, client: &str, spec: TaskSpec) -> Run {
        let rules = ClientRules {
            name: client.to_owned(),
            policy: ClientPolicy::default(),
        };
        start_for(self.exec.clone(), self.admission.clone(), Some(rules), spec)
            .finish()
            .await
    }

    /// Asserts that no container of this executor is left on the engine,
    /// once the removals it owes (of tasks that ended) are done. Behind a
    /// server, a result that reached its client is forgotten (and its
    /// container removed) once the server has seen it delivered, a moment
    /// after the client got it: that is waited for, within 30 s.
    pub async fn assert_clean(&self) {
        self.exec.settle().await;
        engine::wait_until_none(&self.docker, self.exec.instance_id()).await;
    }
}

/// A task in flight.
pub struct Running {
    /// `Some` until dropped or closed; dropping it is end-of-file.
    pub stdin: Option<mpsc::Sender<Bytes>>,
    pub cancel: CancellationToken,
    pub started: Instant,
    task: JoinHandle<Result<Outcome, TaskError>>,
    collector: JoinHandle<Vec<Event>>,
}

/// What the client saw.
#[derive(Debug, Clone)]
pub enum Event {
    Progress(Instant, ProgressEvent),
    Output(Instant, OutputStream, Bytes),
}

/// A finished task, as the client saw it.
#[derive(Debug)]
pub struct Run {
    pub result: Result<Outcome, TaskError>,
    pub events: Vec<Event>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// When the executor returned.
    pub ended: Instant,
}

impl Run {
    pub fn outcome(&self) -> &Outcome {
        match &self.result {
            Ok(outcome) => outcome,
            Err(e) => panic!("the task failed to run: {e:?}"),
        }
    }

    pub fn error(&self) -> &TaskError {
        match &self.result {
            Err(e) => e,
            Ok(outcome) => panic!("expected an error, the task ran: {outcome:?}"),
        }
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The short container id of the `Created` event.
    pub fn container(&self) -> String {
        self.progress()
            .into_iter()
            .find_map(|p| match p {
                ProgressEvent::Created { container } => Some(container),
                _ => None,
            })
            .expect("a Created event")
    }

    pub fn progress(&self) -> Vec<ProgressEvent> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Progress(_, p) => Some(p.clone()),
                Event::Output(..) => None,
            })
            .collect()
    }
}

pub fn start(exec: Arc<DockerExecutor>, admission: Arc<Admission>, spec: TaskSpec) -> Running {
    start_for(exec, admission, None, spec)
}

/// Starts `spec` as the named client `client` would (`None`: anonymous).
pub fn start_for(
    exec: Arc<DockerExecutor>,
    admission: Arc<Admission>,
    client: Option<ClientRules>,
    spec: TaskSpec,
) -> Running {
    let (tx, rx) = mpsc::channel::<Event>(64);
    let (stdin_tx, stdin_rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let io = TaskIo {
        events: Arc::new(Collector(tx)),
        stdin: stdin_rx,
        cancel: cancel.clone(),
    };
    let task = tokio::spawn(async move {
        let plan = admission.plan(spec, client.as_ref())?;
        exec.run(plan, io).await
    });
    Running {
        stdin: Some(stdin_tx),
        cancel,
        started: Instant::now(),
        task,
        collector: tokio::spawn(collect(rx)),
    }
}

/// Plays the connection: takes every event and notes when it came.
struct Collector(mpsc::Sender<Event>);

impl Events for Collector {
    fn progress(&self, progress: ProgressEvent) -> Delivery<'_> {
        let event = Event::Progress(Instant::now(), progress);
        Box::pin(async move { self.0.send(event).await.map_err(|_| Disconnected) })
    }

    fn output(&self, stream: OutputStream, data: Bytes) -> Delivery<'_> {
        let event = Event::Output(Instant::now(), stream, data);
        Box::pin(async move { self.0.send(event).await.map_err(|_| Disconnected) })
    }
}

async fn collect(mut rx: mpsc::Receiver<Event>) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(event) = rx.recv().await {
        events.push(event);
    }
    events
}

impl Running {
    pub async fn send(&self, data: &[u8]) {
        let stdin = self.stdin.as_ref().expect("stdin is open");
        stdin
            .send(Bytes::copy_from_slice(data))
            .await
            .expect("the task takes stdin");
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub async fn finish(mut self) -> Run {
        self.stdin = None;
        let result = self.task.await.expect("the executor did not panic");
        let ended = Instant::now();
        let events = self.collector.await.expect("the collector did not panic");
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        for event in &events {
            if let Event::Output(_, stream, chunk) = event {
                match stream {
                    OutputStream::Stdout => stdout.extend_from_slice(chunk),
                    OutputStream::Stderr => stderr.extend_from_slice(chunk),
                }
            }
        }
        Run {
            result,
            events,
            stdout,
            stderr,
            ended,
        }
    }
}

/// `spec` running `command` in the examples image.
pub fn task<const N: usize>(command: [&str; N]) -> TaskSpec {
    TaskSpec::image(EXAMPLES_IMAGE, command)
}

/// Asserts the engine has no container (running or not) labelled as managed
/// by `instance`.
pub async fn assert_no_containers(docker: &Docker, instance: &str) {
    let options = ListContainersOptions {
        all: true,
        filters: Some(label_filter(Some(instance))),
        ..ListContainersOptions::default()
    };
    let left = docker
        .list_containers(Some(options))
        .await
        .expect("the engine lists containers");
    assert!(
        left.is_empty(),
        "containers left behind: {:?}",
        left.iter().map(|c| &c.id).collect::<Vec<_>>()
    );
}

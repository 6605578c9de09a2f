//! The server's Prometheus metrics: one registry, the counters and
//! histograms the connections, the HTTP listener and the executor update
//! as things happen, and the gauges read from the executor's own stats at
//! each scrape. docs/OBSERVABILITY.md lists every metric.
//!
//! Every label value comes from a closed set written in this file or in
//! [`crate::task`] (an ending, an error kind, a path, a listener, an HTTP
//! endpoint): never a task id, an image name or a client address, so the
//! number of series cannot grow with use.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::executor::{ExecutorStats, Observer, RunPath};
use crate::task::{ErrorKind, Outcome, TaskError};

/// Which listener a connection came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    /// The binary protocol.
    Tcp,
    /// `--http`: metrics, health, the JSON API.
    Http,
}

impl Listener {
    fn as_str(self) -> &'static str {
        match self {
            Listener::Tcp => "tcp",
            Listener::Http => "http",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TaskLabels {
    outcome: &'static str,
    path: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PathLabel {
    path: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusedLabels {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    endpoint: &'static str,
    code: u16,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// 1 ms to about 33 s, doubling: container starts are tens to hundreds of
/// milliseconds, warm starts a few.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// 5 ms to about 1.5 h, by factors of 3: tasks last from milliseconds to
/// the policy's maximum timeout.
fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 3.0, 15))
}

/// The server's metrics. Cheap to update from any task: counters and
/// histograms are atomics; only the scrape takes a lock.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tasks: Family<TaskLabels, Counter>,
    task_errors: Family<KindLabel, Counter>,
    start_latency: HistogramFamily<PathLabel>,
    duration: HistogramFamily<PathLabel>,
    queue_wait: Histogram,
    engine_errors: Counter,
    connections_open: Family<ListenerLabel, Gauge>,
    connections_refused: Family<RefusedLabels, Counter>,
    auth_failures: Family<ListenerLabel, Counter>,
    requests_refused: Family<KindLabel, Counter>,
    frames_received: Counter,
    frames_sent: Counter,
    bytes_received: Counter,
    bytes_sent: Counter,
    http_requests: Family<HttpLabels, Counter>,
    executor: Arc<Mutex<ExecutorStats>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::default(),
            tasks: Family::default(),
            task_errors: Family::default(),
            start_latency: Family::new_with_constructor(latency_buckets),
            duration: Family::new_with_constructor(duration_buckets),
            queue_wait: latency_buckets(),
            engine_errors: Counter::default(),
            connections_open: Family::default(),
            connections_refused: Family::default(),
            auth_failures: Family::default(),
            requests_refused: Family::default(),
            frames_received: Counter::default(),
            frames_sent: Counter::default(),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            http_requests: Family::default(),
            executor: Arc::default(),
        };
        metrics.register();
        metrics.zero_series();
        metrics
    }

    /// Creates the task series at 0, so that a dashboard sees them (and
    /// `rate()` works) before the first task of each kind ends.
    fn zero_series(&self) {
        const OUTCOMES: [&str; 7] = [
            "exited",
            "signaled",
            "timed_out",
            "oom_killed",
            "cancelled",
            "output_limit",
            "failed",
        ];
        for path in [RunPath::Cold, RunPath::Warm] {
            let path = path.as_str();
            for outcome in OUTCOMES {
                let _ = self.tasks.get_or_create(&TaskLabels { outcome, path });
            }
            let _ = self.start_latency.get_or_create(&PathLabel { path });
            let _ = self.duration.get_or_create(&PathLabel { path });
        }
        let failed = TaskLabels {
            outcome: "failed",
            path: "none",
        };
        let _ = self.tasks.get_or_create(&failed);
        for listener in [Listener::Tcp, Listener::Http] {
            let listener = listener.as_str();
            let _ = self
                .connections_open
                .get_or_create(&ListenerLabel { listener });
        }
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "tcptask_tasks",
            "Tasks that ended, by outcome (an ending, or failed) and by the path that ran them (cold, warm, none)",
            self.tasks.clone(),
        );
        r.register(
            "tcptask_task_errors",
            "Tasks that could not run, by error kind",
            self.task_errors.clone(),
        );
        r.register_with_unit(
            "tcptask_task_start_latency",
            "From the executor receiving a task to its process running (queue and pull included)",
            Unit::Seconds,
            self.start_latency.clone(),
        );
        r.register_with_unit(
            "tcptask_task_duration",
            "Wall time of tasks that ran, from their start to their end",
            Unit::Seconds,
            self.duration.clone(),
        );
        r.register_with_unit(
            "tcptask_queue_wait",
            "Time tasks waited for a free slot (max_concurrent)",
            Unit::Seconds,
            self.queue_wait.clone(),
        );
        r.register(
            "tcptask_engine_errors",
            "Tasks that failed because the container engine failed or could not be reached",
            self.engine_errors.clone(),
        );
        r.register(
            "tcptask_connections_open",
            "Connections being served, by listener",
            self.connections_open.clone(),
        );
        r.register(
            "tcptask_connections_refused",
            "Connections refused or closed before they were served, by listener and reason",
            self.connections_refused.clone(),
        );
        r.register(
            "tcptask_auth_failures",
            "Failed authentications (a missing or wrong token), by listener",
            self.auth_failures.clone(),
        );
        r.register(
            "tcptask_requests_refused",
            "Task requests refused before anything ran, by reason (an error kind: policy_denied, busy, …)",
            self.requests_refused.clone(),
        );
        r.register(
            "tcptask_frames_received",
            "Frames received on the binary protocol",
            self.frames_received.clone(),
        );
        r.register(
            "tcptask_frames_sent",
            "Frames sent on the binary protocol",
            self.frames_sent.clone(),
        );
        r.register_with_unit(
            "tcptask_received",
            "Bytes received on the binary protocol (after TLS)",
            Unit::Bytes,
            self.bytes_received.clone(),
        );
        r.register_with_unit(
            "tcptask_sent",
            "Bytes sent on the binary protocol (before TLS)",
            Unit::Bytes,
            self.bytes_sent.clone(),
        );
        r.register(
            "tcptask_http_requests",
            "HTTP requests answered, by endpoint and status code",
            self.http_requests.clone(),
        );
        r.register_collector(Box::new(Snapshot(self.executor.clone())));
        r.register_collector(Box::new(ProcessCollector));
    }

    /// The metrics in the Prometheus text format (OpenMetrics), with the
    /// executor's gauges as of `stats`.
    pub fn encode(&self, stats: ExecutorStats) -> String {
        *self.executor.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        let mut text = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Counts a connection open until the returned guard is dropped.
    pub fn connection(&self, listener: Listener) -> OpenConnection {
        let gauge = self
            .connections_open
            .get_or_create(&ListenerLabel {
                listener: listener.as_str(),
            })
            .clone();
        gauge.inc();
        OpenConnection(gauge)
    }

    /// A connection refused or closed before it was served: `reason` is one
    /// of a few fixed words (`max_connections`, `tls`, `handshake`, …).
    pub fn connection_refused(&self, listener: Listener, reason: &'static str) {
        let labels = RefusedLabels {
            listener: listener.as_str(),
            reason,
        };
        self.connections_refused.get_or_create(&labels).inc();
    }

    pub fn auth_failed(&self, listener: Listener) {
        let labels = ListenerLabel {
            listener: listener.as_str(),
        };
        self.auth_failures.get_or_create(&labels).inc();
    }

    /// A task request refused before anything ran.
    pub fn request_refused(&self, kind: ErrorKind) {
        let labels = KindLabel {
            kind: kind.as_str(),
        };
        self.requests_refused.get_or_create(&labels).inc();
    }

    pub fn frames_received(&self, frames: u64) {
        self.frames_received.inc_by(frames);
    }

    pub fn frames_sent(&self, frames: u64) {
        self.frames_sent.inc_by(frames);
    }

    pub fn bytes_received(&self, bytes: u64) {
        self.bytes_received.inc_by(bytes);
    }

    pub fn bytes_sent(&self, bytes: u64) {
        self.bytes_sent.inc_by(bytes);
    }

    /// An HTTP request answered; `endpoint` is the matched route (or
    /// `other`), never the requested path.
    pub fn http_request(&self, endpoint: &'static str, code: u16) {
        self.http_requests
            .get_or_create(&HttpLabels { endpoint, code })
            .inc();
    }
}

/// Keeps a connection counted in `tcptask_connections_open` while it lives.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn path_name(path: Option<RunPath>) -> &'static str {
    path.map_or("none", RunPath::as_str)
}

impl Observer for Metrics {
    fn queue_wait(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    fn task_started(&self, path: RunPath, latency: Duration) {
        let labels = PathLabel {
            path: path.as_str(),
        };
        self.start_latency
            .get_or_create(&labels)
            .observe(latency.as_secs_f64());
    }

    fn task_ended(&self, path: Option<RunPath>, result: &Result<Outcome, TaskError>) {
        let outcome = match result {
            Ok(outcome) => outcome.ending.as_str(),
            Err(_) => "failed",
        };
        let labels = TaskLabels {
            outcome,
            path: path_name(path),
        };
        self.tasks.get_or_create(&labels).inc();
        match result {
            Ok(outcome) => {
                let labels = PathLabel {
                    path: path_name(path),
                };
                let seconds = outcome.duration().as_secs_f64();
                self.duration.get_or_create(&labels).observe(seconds);
            }
            Err(error) => {
                let labels = KindLabel {
                    kind: error.kind.as_str(),
                };
                self.task_errors.get_or_create(&labels).inc();
                if error.kind == ErrorKind::Engine {
                    self.engine_errors.inc();
                }
            }
        }
    }
}

/// The executor's counts as of the scrape: running and queued tasks, the
/// warm pools summed over their keys (a key names an image, so it is not a
/// label), whether the engine answers.
#[derive(Debug)]
struct Snapshot(Arc<Mutex<ExecutorStats>>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let sum = |pick: fn(&crate::executor::PoolStats) -> u64| -> u64 {
            stats.pools.iter().map(pick).sum()
        };
        let gauges: [(&str, &str, i64); 5] = [
            (
                "tcptask_tasks_running",
                "Tasks whose process is running",
                stats.running as i64,
            ),
            (
                "tcptask_queue_depth",
                "Tasks waiting for a free slot",
                stats.queued as i64,
            ),
            (
                "tcptask_warm_ready_containers",
                "Warm containers started and waiting for a task, all pools",
                sum(|p| p.warm) as i64,
            ),
            (
                "tcptask_warm_in_use_containers",
                "Warm containers running a task, all pools",
                sum(|p| p.in_use) as i64,
            ),
            (
                "tcptask_engine_up",
                "1 when the container engine answered at the last scrape, else 0",
                i64::from(stats.engine.reachable),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let counters = [
            (
                "tcptask_warm_hits",
                "Tasks that found a warm container ready, all pools",
                sum(|p| p.hits),
            ),
            (
                "tcptask_warm_misses",
                "Tasks that found no warm container of their key and ran cold, all pools",
                sum(|p| p.misses),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// The server process's own CPU time and resident memory, from
/// `/proc/self/stat`: what it costs to run (and to scrape). Absent where
/// there is no procfs.
#[derive(Debug)]
struct ProcessCollector;

/// Clock ticks per second of `/proc/self/stat`'s times: `USER_HZ`, 100 on
/// every Linux architecture tcp-task builds for.
const USER_HZ: f64 = 100.0;
const PAGE_SIZE: u64 = 4096;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some((ticks, rss_pages)) = read_proc_stat() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(ticks as f64 / USER_HZ);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "User and system CPU time of the server process",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let rss = ConstGauge::new((rss_pages * PAGE_SIZE) as i64);
        rss.encode(encoder.encode_descriptor(
            "process_resident_memory",
            "Resident memory of the server process",
            Some(&Unit::Bytes),
            rss.metric_type(),
        )?)?;
        Ok(())
    }
}

/// utime + stime (ticks) and rss (pages) from `/proc/self/stat`. The
/// command name (field 2) may hold spaces and parentheses, so the fields
/// are counted from the last `)`.
fn read_proc_stat() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, so field N is at index N - 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)? + field(15)?, field(24)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Ending;

    #[test]
    fn tasks_are_counted_by_outcome_and_path() {
        let metrics = Metrics::new();
        let outcome = Outcome {
            ending: Ending::Exited,
            exit_code: Some(0),
            signal: None,
            duration_ms: 20,
            output_truncated: false,
        };
        metrics.task_ended(Some(RunPath::Warm), &Ok(outcome));
        let engine = TaskError::new(ErrorKind::Engine, "down");
        metrics.task_ended(None, &Err(engine));
        metrics.request_refused(ErrorKind::PolicyDenied);
        let text = metrics.encode(ExecutorStats::default());
        for line in [
            r#"tcptask_tasks_total{outcome="exited",path="warm"} 1"#,
            r#"tcptask_tasks_total{outcome="failed",path="none"} 1"#,
            r#"tcptask_task_errors_total{kind="engine"} 1"#,
            "tcptask_engine_errors_total 1",
            r#"tcptask_requests_refused_total{kind="policy_denied"} 1"#,
            r#"tcptask_task_duration_seconds_count{path="warm"} 1"#,
            "tcptask_engine_up 0",
        ] {
            assert!(text.contains(line), "no `{line}` in\n{text}");
        }
    }

    #[test]
    fn the_process_own_times_are_read() {
        let (_ticks, rss_pages) = read_proc_stat().expect("a procfs");
        assert!(rss_pages > 0);
    }
}

//! The protocol's hot path, for a profiler: `TCP_TASK_PINGS` (default
//! 20,000) pipelined pings, at most 256 in flight, from a library client
//! to an in-process server on one loopback connection, and nothing else.
//! Criterion's timings move with the machine's load; instructions counted
//! by callgrind do not, so this is how the per-frame cost is compared
//! between two commits (issue 14; the figures are in README.md):
//!
//! ```sh
//! cargo bench --bench hot_path --no-run
//! bin=$(ls -t target/release/deps/hot_path-* | grep -v '\.d$' | head -1)
//! for n in 20000 60000; do
//!   TCP_TASK_PINGS=$n valgrind --tool=callgrind --callgrind-out-file=hot.$n $bin
//! done
//! # instructions per ping: (total of hot.60000 - total of hot.20000) / 40000
//! callgrind_annotate --inclusive=yes hot.60000 | head -40
//! ```
//!
//! The difference of two counts removes what does not scale with the
//! pings (start-up, the handshake).

use bytes::Bytes;
use futures::StreamExt;
use tcp_task::executor::{Executor, ExecutorStats, Plan, TaskIo};
use tcp_task::protocol::{ErrorKind, Outcome, TaskError};
use tcp_task::{Client, Server, ServerConfig};

const DEFAULT_PINGS: usize = 20_000;
const WINDOW: usize = 256;

/// The server runs no task: a ping never reaches an executor.
struct RefuseAll;

impl Executor for RefuseAll {
    async fn run(&self, _plan: Plan, _io: TaskIo) -> Result<Outcome, TaskError> {
        Err(TaskError::new(ErrorKind::PolicyDenied, "no tasks here"))
    }

    async fn stats(&self) -> ExecutorStats {
        ExecutorStats::default()
    }
}

fn main() {
    let pings = std::env::var("TCP_TASK_PINGS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_PINGS);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let server = Server::new(ServerConfig::default(), RefuseAll)
            .spawn("127.0.0.1:0")
            .await
            .expect("a server on loopback");
        let client = Client::connect(server.local_addr())
            .await
            .expect("the client connects");
        let payload = Bytes::from_static(&[7; 16]);
        let started = std::time::Instant::now();
        futures::stream::iter(0..pings)
            .map(|_| client.ping_with(payload.clone()))
            .buffer_unordered(WINDOW)
            .for_each(|answer| {
                answer.expect("a pong");
                futures::future::ready(())
            })
            .await;
        println!("hot_path: {pings} pings in {:?}", started.elapsed());
    });
}

//! Warm and cold give the same results: every case of the differential
//! corpus (common/corpus.rs) runs on the cold path and on a warm container,
//! and stdout, stderr, exit status and the outcome's ending must agree.

mod common;

use common::corpus::{corpus, mismatches, observe, spec_of};
use common::{Harness, Run};
use tcp_task::executor::{ExecutorConfig, WarmConfig};
use tcp_task::protocol::{Ending, ErrorKind, TaskSpec};

/// Every key warms up at its first request, one container at a time.
fn on_first_request() -> ExecutorConfig {
    ExecutorConfig {
        warm: WarmConfig {
            demand_threshold: 1,
            on_demand: 1,
            ..WarmConfig::default()
        },
        ..ExecutorConfig::default()
    }
}

/// Runs `spec` until it runs on a warm container: the first request for
/// its key misses (and warms the key up), the next one hits.
async fn warm_run(h: &Harness, spec: &TaskSpec) -> Run {
    for _ in 0..3 {
        h.exec.settle().await;
        let hits = h.hits().await;
        let run = h.run(spec.clone()).await;
        if h.hits().await > hits {
            return run;
        }
    }
    panic!("no warm container for {spec:?}: {:?}", h.pools().await);
}

type Essence = Result<(Ending, Option<i32>, Option<i32>), ErrorKind>;

fn essence(run: &Run) -> Essence {
    match &run.result {
        Ok(o) => Ok((o.ending, o.exit_code, o.signal)),
        Err(e) => Err(e.kind),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_matches_cold_on_the_corpus() {
    let cold = Harness::standard().await;
    let warm = Harness::warm(on_first_request(), Default::default()).await;
    let mut found = Vec::new();
    for case in corpus() {
        let spec = spec_of(&case);
        let cold_run = cold.run(spec.clone()).await;
        let warm_run = warm_run(&warm, &spec).await;
        if essence(&cold_run) != essence(&warm_run) {
            found.push(format!(
                "{}: outcome cold {:?} vs warm {:?}",
                case.name,
                essence(&cold_run),
                essence(&warm_run)
            ));
        }
        found.extend(mismatches(&case, observe(cold_run), observe(warm_run)));
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
    cold.assert_clean().await;
    warm.drain_and_assert_clean().await;
}

//! Differential test: for a corpus of commands, the executor gives the same
//! stdout, stderr and exit status as `docker run` on the same image.
//!
//! The reference runs `docker run --rm --init --network none`: tcp-task
//! always runs docker-init as PID 1 (a hardening default), and without it a
//! process that is PID 1 cannot even kill itself, so `--init` is what makes
//! the two comparable. Where tcp-task reports a task that could not start
//! as an error (a missing command), the error's `exit_status()` is compared.
//! The corpus is in `common/corpus.rs`, shared with the warm path's test.

mod common;

use common::corpus::{corpus, docker_run, mismatches, tcp_task_run};
use common::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_task_matches_docker_run_on_the_corpus() {
    let h = Harness::standard().await;
    let mut found = Vec::new();
    for case in corpus() {
        let reference = docker_run(&case).await;
        let ours = tcp_task_run(&h, &case).await;
        found.extend(mismatches(&case, reference, ours));
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_exercises_every_ending_kind() {
    // Guards the corpus itself: it must keep covering a success, a failure,
    // a signal and a start failure.
    let h = Harness::standard().await;
    let statuses: Vec<i32> = {
        let mut v = Vec::new();
        for name in ["exit 0", "exit 42", "signal", "missing command"] {
            let case = corpus()
                .into_iter()
                .find(|c| c.name == name)
                .expect("case exists");
            v.push(tcp_task_run(&h, &case).await.status);
        }
        v
    };
    assert_eq!(statuses, vec![0, 42, 143, 127]);
    h.assert_clean().await;
}

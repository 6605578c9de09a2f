//! Kept tasks as the durable tests drive them through the CLI (tests/durable.rs,
//! tests/swarm_durable.rs): detach, list, wait for a state, and the output
//! `ticks` must give.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::Server;

/// What `ticks N _ _` writes: `out i` on stdout, `err i` on stderr.
pub fn ticks_output(n: usize) -> (Vec<u8>, Vec<u8>) {
    let lines = |tag: &str| {
        (0..n)
            .map(|i| format!("{tag} {i}\n"))
            .collect::<String>()
            .into_bytes()
    };
    (lines("out"), lines("err"))
}

pub fn sha(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A task id printed by `run -d`.
pub fn detach(server: &Server, args: &[&str]) -> String {
    let mut all = vec!["run", "-d"];
    all.extend_from_slice(args);
    let out = server.run(&all);
    assert_eq!(out.code, 0, "run -d failed: {}", out.stderr);
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(id.len(), 20, "a task id: {id:?}");
    id
}

/// `tcp-task run ARGS…` in the background, its output collected later.
pub fn run_in_background(server: &Server, args: &[&str]) -> (Child, Instant) {
    let mut command = server.cli(["run"].iter().chain(args));
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    (
        command.spawn().expect("tcp-task run starts"),
        Instant::now(),
    )
}

/// The tasks `ps -a --json` lists.
pub fn ps_all(server: &Server) -> Vec<Value> {
    let out = server.run(&["ps", "-a", "--json"]);
    assert_eq!(out.code, 0, "ps failed: {}", out.stderr);
    serde_json::from_slice(&out.stdout).expect("ps --json prints JSON")
}

pub fn state_of(server: &Server, id: &str) -> Option<Value> {
    ps_all(server)
        .into_iter()
        .find(|t| t["id"] == id)
        .map(|t| t["state"].clone())
}

pub fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

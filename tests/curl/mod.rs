//! curl, as the HTTP tests drive a server with it: one request, its
//! status, headers and body.
#![allow(dead_code)] // each test binary uses its own part

use serde_json::Value;
use std::process::Command;

/// What curl got: the status, the headers (lower-cased names) and the body.
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `curl -sS -i ARGS…`, split into status, headers and body.
pub fn curl(args: &[&str]) -> Answer {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl runs (scripts/test.sh installs it)");
    let mut text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    // An interim `100 Continue` (curl asks for one before a large body).
    while text.starts_with("HTTP/1.1 1") {
        match text.split_once("\n\n") {
            Some((_, rest)) => text = rest.to_string(),
            None => break,
        }
    }
    let (head, body) = text.split_once("\n\n").unwrap_or_else(|| {
        panic!(
            "curl {args:?} got no HTTP answer: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    Answer {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// One sample's value in a metrics text, `None` when the series is absent.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

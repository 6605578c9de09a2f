//! Whether the engine answers, asked at most once a second.
//!
//! `/metrics`, `/readyz` and `status` each want to know; asking the engine
//! afresh (`GET /version`) was 40 % of a scrape's cost, and a scraper or a
//! load balancer may ask many times a second. So an answer is reused for
//! [`ENGINE_CHECK_TTL`], and concurrent askers share one request.

use bollard::Docker;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

use super::stats::EngineHealth;

/// How long an answer from the engine stands for it: an engine that stops
/// answering is seen as down at most this late.
pub const ENGINE_CHECK_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(crate) struct EngineCheck {
    last: Mutex<Option<(Instant, EngineHealth)>>,
}

impl EngineCheck {
    pub async fn health(&self, docker: &Docker) -> EngineHealth {
        // Held across the request: whoever comes meanwhile waits for this
        // answer instead of asking again.
        let mut last = self.last.lock().await;
        if let Some((at, health)) = last.as_ref() {
            if at.elapsed() < ENGINE_CHECK_TTL {
                return health.clone();
            }
        }
        let health = ask(docker).await;
        *last = Some((Instant::now(), health.clone()));
        health
    }
}

async fn ask(docker: &Docker) -> EngineHealth {
    match docker.version().await {
        Ok(version) => EngineHealth {
            reachable: true,
            version: version.version,
            api_version: Some(docker.client_version().to_string()),
            error: None,
        },
        Err(e) => EngineHealth {
            reachable: false,
            error: Some(e.to_string()),
            ..EngineHealth::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// A socket that answers every HTTP request as an engine's
    /// `GET /version` would, and counts them.
    fn counting_engine(path: &std::path::Path) -> Arc<AtomicUsize> {
        let listener = UnixListener::bind(path).unwrap();
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = asked.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            counter.fetch_add(1, Ordering::SeqCst);
                            let body = r#"{"Version":"20.10.24","ApiVersion":"1.41"}"#;
                            let reply = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if stream.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        asked
    }

    #[tokio::test]
    async fn the_engine_is_asked_at_most_once_a_ttl_and_concurrent_askers_share_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.sock");
        let asked = counting_engine(&path);
        let docker =
            Docker::connect_with_unix(path.to_str().unwrap(), 5, bollard::API_DEFAULT_VERSION)
                .unwrap();
        let check = EngineCheck::default();

        let answers = futures::future::join_all((0..5).map(|_| check.health(&docker))).await;
        assert!(answers.iter().all(|h| h.reachable), "{answers:?}");
        assert_eq!(answers[0].version.as_deref(), Some("20.10.24"));
        assert_eq!(asked.load(Ordering::SeqCst), 1, "five at once, one request");
        check.health(&docker).await;
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "within the TTL, no request"
        );

        tokio::time::sleep(ENGINE_CHECK_TTL + Duration::from_millis(50)).await;
        check.health(&docker).await;
        assert_eq!(asked.load(Ordering::SeqCst), 2, "past the TTL, asked again");
    }
}

//! Connecting to the Docker engine, shared by the image builder and the
//! executor.
//!
//! Two things every caller needs and bollard does not do by itself: honour
//! `DOCKER_HOST`, and negotiate the API version. bollard speaks a newer API
//! than older engines (Debian's docker.io 20.10 speaks 1.41) and such an
//! engine rejects every request made with a newer version, so we ask the
//! engine first and step down to its version.

use bollard::Docker;
use std::error::Error as StdError;
use std::time::Duration;

/// Where the engine is when `DOCKER_HOST` is not set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// How long to wait for the engine's first answer: a local engine answers in
/// milliseconds, so a longer wait means something is wrong with the address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the engine could not be reached. Each message says what to do next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DockerError {
    /// `DOCKER_HOST` (or the given address) is not something we can dial.
    #[error("cannot use Docker engine address {host:?}: {detail}. Set DOCKER_HOST to unix:///var/run/docker.sock or tcp://HOST:PORT")]
    BadAddress { host: String, detail: String },
    /// The engine did not answer, or answered with an error.
    #[error("cannot reach the Docker engine at {host}: {detail}. {hint}")]
    Unreachable {
        host: String,
        detail: String,
        hint: &'static str,
    },
}

impl DockerError {
    /// Whether the engine's socket refused this user (a setting to change,
    /// not an engine that is away).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, DockerError::Unreachable { detail, .. }
            if detail.to_ascii_lowercase().contains("permission denied"))
    }
}

/// The engine address in effect: `DOCKER_HOST`, or the local socket.
pub fn docker_host() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_string())
}

/// Connects to the engine at `DOCKER_HOST` (or the local socket) and
/// negotiates the API version. Fails, with advice, if the engine does not
/// answer.
pub async fn connect_docker() -> Result<Docker, DockerError> {
    connect_docker_at(&docker_host()).await
}

/// Like [`connect_docker`], for an explicit address such as
/// `unix:///run/docker.sock` or `tcp://127.0.0.1:2375`.
pub async fn connect_docker_at(host: &str) -> Result<Docker, DockerError> {
    let docker = Docker::connect_with_host(host).map_err(|e| match e {
        // bollard checks that a unix socket exists before any request.
        bollard::errors::Error::SocketNotFoundError(_) => unreachable(host, &e),
        _ => DockerError::BadAddress {
            host: host.to_string(),
            detail: error_chain(&e),
        },
    })?;
    match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(e)) => Err(unreachable(host, &e)),
        Err(_) => Err(DockerError::Unreachable {
            host: host.to_string(),
            detail: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            hint: "Check that DOCKER_HOST points at a running engine and that nothing blocks the connection.",
        }),
    }
}

/// For a caller that can wait for the engine (a server started while
/// dockerd restarts): like [`connect_docker`] when the engine answers;
/// when it does not, a client all the same, with why it did not answer.
/// Its API version is not negotiated yet: call [`negotiate`] once the
/// engine answers (every clone of the client then speaks the version
/// agreed). Fails when no client can be made at all (a bad address, a
/// socket file that does not exist) and when the socket refuses this user.
pub async fn connect_docker_or_later() -> Result<(Docker, Option<DockerError>), DockerError> {
    match connect_docker().await {
        Ok(docker) => Ok((docker, None)),
        // Waiting does not let in a user who may not use the socket.
        Err(error @ DockerError::Unreachable { .. }) if !error.is_permission_denied() => {
            let host = docker_host();
            let docker = Docker::connect_with_host(&host).map_err(|_| error.clone())?;
            Ok((docker, Some(error)))
        }
        Err(error) => Err(error),
    }
}

/// Negotiates the API version of `docker` (made by
/// [`connect_docker_or_later`]) with the engine, once it answers. The
/// version is shared by every clone of the client.
pub async fn negotiate(docker: &Docker) -> Result<(), DockerError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, docker.clone().negotiate_version()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(&docker_host(), &e)),
        Err(_) => Err(DockerError::Unreachable {
            host: docker_host(),
            detail: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            hint: "Check that DOCKER_HOST points at a running engine and that nothing blocks the connection.",
        }),
    }
}

fn unreachable(host: &str, err: &bollard::errors::Error) -> DockerError {
    let detail = error_chain(err);
    DockerError::Unreachable {
        host: host.to_string(),
        hint: hint_for(&detail),
        detail,
    }
}

fn hint_for(detail: &str) -> &'static str {
    let lower = detail.to_ascii_lowercase();
    if lower.contains("permission denied") {
        "This user may not use the engine's socket: run as root, or add the user to the `docker` \
         group (`sudo usermod -aG docker $USER`, then log in again)."
    } else {
        "Is dockerd running? Try `sudo systemctl start docker` (or `scripts/start-docker.sh` from \
         the tcp-task repository), or set DOCKER_HOST to where the engine listens."
    }
}

/// An error and its sources, `outer: inner: innermost`: bollard's own message
/// ("error in the hyper legacy client") is useless without the io error under it.
pub(crate) fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_socket_says_what_to_do() {
        let err = connect_docker_at("unix:///nonexistent/docker.sock")
            .await
            .expect_err("no engine there");
        let msg = err.to_string();
        assert!(
            msg.contains("cannot reach the Docker engine at unix:///nonexistent/docker.sock"),
            "{msg}"
        );
        assert!(msg.contains("Is dockerd running?"), "{msg}");
    }

    #[tokio::test]
    async fn a_refused_tcp_connection_says_what_to_do() {
        // Port 1 on loopback: nothing listens there.
        let err = connect_docker_at("tcp://127.0.0.1:1")
            .await
            .expect_err("no engine there");
        let msg = err.to_string();
        assert!(matches!(err, DockerError::Unreachable { .. }), "{msg}");
        assert!(msg.contains("Is dockerd running?"), "{msg}");
    }

    #[tokio::test]
    async fn an_unknown_scheme_is_a_bad_address() {
        let err = connect_docker_at("ftp://example")
            .await
            .expect_err("bad scheme");
        assert!(matches!(err, DockerError::BadAddress { .. }), "{err}");
        assert!(err.to_string().contains("Set DOCKER_HOST"), "{err}");
    }
}

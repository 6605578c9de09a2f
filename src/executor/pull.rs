//! Making sure a task's image is on the engine: pulled when missing, with
//! the request's credentials or the server's, and the engine's per-layer
//! progress relayed as [`ProgressEvent::Pulling`].

use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::CreateImageOptions;
use bollard::Docker;
use futures::StreamExt;
use std::collections::BTreeMap;

use super::config::RegistryCredentials;
use super::engine::engine_error;
use super::events::EventSink;
use crate::task::{ErrorKind, ProgressEvent, RegistryAuth, TaskError};

/// The registry host Docker assumes for names without one.
const DEFAULT_REGISTRY: &str = "docker.io";

/// An image name split the way the pull API wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageRef {
    /// The registry host, `docker.io` when the name has none.
    pub registry: String,
    /// The name without tag or digest, e.g. `127.0.0.1:5000/examples`.
    pub repository: String,
    /// The tag or digest; `latest` when the name has neither. Never empty:
    /// an empty tag would make the engine pull every tag.
    pub tag: String,
}

impl ImageRef {
    pub(crate) fn parse(image: &str) -> ImageRef {
        let (repository, tag) = match image.split_once('@') {
            Some((name, digest)) => (name.to_owned(), digest.to_owned()),
            None => split_tag(image),
        };
        ImageRef {
            registry: registry_of(&repository),
            repository,
            tag,
        }
    }
}

/// A colon after the last slash starts a tag; one before it is a port.
fn split_tag(image: &str) -> (String, String) {
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash + i;
            (image[..at].to_owned(), image[at + 1..].to_owned())
        }
        None => (image.to_owned(), "latest".to_owned()),
    }
}

/// Docker's rule: the first component is a registry host when it has a dot
/// or a port, or is `localhost`.
fn registry_of(repository: &str) -> String {
    match repository.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_owned(),
        _ => DEFAULT_REGISTRY.to_owned(),
    }
}

/// The credentials to pull `image` with: the request's, else the server's
/// for that registry, else none.
pub(crate) fn credentials_for(
    image: &ImageRef,
    request: Option<&RegistryAuth>,
    configured: &BTreeMap<String, RegistryCredentials>,
) -> Option<DockerCredentials> {
    if let Some(auth) = request {
        return Some(DockerCredentials {
            username: Some(auth.username.clone()),
            password: Some(auth.password.clone()),
            serveraddress: Some(
                auth.server
                    .clone()
                    .unwrap_or_else(|| image.registry.clone()),
            ),
            ..DockerCredentials::default()
        });
    }
    configured.get(&image.registry).map(|c| DockerCredentials {
        username: Some(c.username.clone()),
        password: Some(c.password.clone()),
        serveraddress: Some(image.registry.clone()),
        ..DockerCredentials::default()
    })
}

/// Pulls `image` unless the engine already has it.
pub(crate) async fn ensure_image(
    docker: &Docker,
    image: &str,
    credentials: Option<DockerCredentials>,
    events: &EventSink,
) -> Result<Vec<String>, TaskError> {
    match docker.inspect_image(image).await {
        Ok(found) => return Ok(default_command(found)),
        Err(BollardError::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => return Err(engine_error("inspecting the image", &e)),
    }
    pull(docker, image, credentials, events).await?;
    let found = docker
        .inspect_image(image)
        .await
        .map_err(|e| engine_error("inspecting the image", &e))?;
    Ok(default_command(found))
}

/// The image's entrypoint and CMD, as `docker run IMAGE` runs them.
fn default_command(image: bollard::models::ImageInspect) -> Vec<String> {
    let config = image.config.unwrap_or_default();
    let mut argv = config.entrypoint.unwrap_or_default();
    argv.extend(config.cmd.unwrap_or_default());
    argv
}

async fn pull(
    docker: &Docker,
    image: &str,
    credentials: Option<DockerCredentials>,
    events: &EventSink,
) -> Result<(), TaskError> {
    let reference = ImageRef::parse(image);
    let options = CreateImageOptions {
        from_image: Some(reference.repository.clone()),
        tag: Some(reference.tag.clone()),
        ..CreateImageOptions::default()
    };
    let had_credentials = credentials.is_some();
    let mut progress = docker.create_image(Some(options), None, credentials);
    while let Some(item) = progress.next().await {
        let info = item.map_err(|e| pull_error(image, &reference, had_credentials, &e))?;
        let detail = info.progress_detail.unwrap_or_default();
        let event = ProgressEvent::Pulling {
            layer: info.id.unwrap_or_default(),
            status: info.status.unwrap_or_default(),
            current: detail.current.and_then(|n| u64::try_from(n).ok()),
            total: detail.total.and_then(|n| u64::try_from(n).ok()),
        };
        // A client that left will be noticed by the task's cancel token; the
        // pull itself is harmless to finish.
        let _ = events.progress(event).await;
    }
    Ok(())
}

/// Classifies a failed pull by the engine's words, which are all it gives:
/// registries answer 401 or 404 and the engine turns them into text.
fn pull_error(
    image: &str,
    reference: &ImageRef,
    had_credentials: bool,
    e: &BollardError,
) -> TaskError {
    let text = match e {
        BollardError::DockerStreamError { error } => error.clone(),
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        other => return engine_error("pulling the image", other),
    };
    let lower = text.to_lowercase();
    let registry = &reference.registry;
    if is_auth_failure(&lower) && !had_credentials {
        TaskError::new(
            ErrorKind::RegistryAuth,
            format!(
                "registry {registry} requires credentials for `{image}` ({text}); send them with \
                 the task (registry_auth) or configure them for {registry} on the server"
            ),
        )
    } else if is_auth_failure(&lower) {
        TaskError::new(
            ErrorKind::RegistryAuth,
            format!(
                "registry {registry} refused the credentials for `{image}` ({text}); check the \
                 user name and password, or configure them for {registry} on the server"
            ),
        )
    } else if is_not_found(&lower) {
        TaskError::new(
            ErrorKind::ImageNotFound,
            format!(
                "image `{image}` was not found locally nor in registry {registry} ({text}); \
                 check the name and tag, or build/push it first"
            ),
        )
    } else {
        TaskError::new(
            ErrorKind::Engine,
            format!("pulling `{image}` from {registry} failed: {text}"),
        )
    }
}

fn is_auth_failure(lower: &str) -> bool {
    ["unauthorized", "authentication required", "no basic auth credentials", "denied: "]
        .iter()
        .any(|needle| lower.contains(needle))
        // Docker Hub answers an unknown repository with "pull access denied
        // ... does not exist or may require 'docker login'": that is a
        // missing image as far as a user can tell.
        && !lower.contains("does not exist")
}

fn is_not_found(lower: &str) -> bool {
    [
        "not found",
        "manifest unknown",
        "does not exist",
        "no such host",
        "name unknown",
        "pull access denied",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(image: &str) -> (String, String, String) {
        let r = ImageRef::parse(image);
        (r.registry, r.repository, r.tag)
    }

    #[test]
    fn parses_names_like_docker() {
        let s = |x: &str| x.to_owned();
        assert_eq!(parsed("alpine"), (s("docker.io"), s("alpine"), s("latest")));
        assert_eq!(
            parsed("tcp-task-examples:0.1.0"),
            (s("docker.io"), s("tcp-task-examples"), s("0.1.0"))
        );
        assert_eq!(
            parsed("127.0.0.1:5000/ex/img"),
            (s("127.0.0.1:5000"), s("127.0.0.1:5000/ex/img"), s("latest"))
        );
        assert_eq!(
            parsed("localhost/img:2"),
            (s("localhost"), s("localhost/img"), s("2"))
        );
        assert_eq!(
            parsed("r.example.com/img@sha256:abc"),
            (s("r.example.com"), s("r.example.com/img"), s("sha256:abc"))
        );
    }

    #[test]
    fn request_credentials_win_over_configured_ones() {
        let image = ImageRef::parse("127.0.0.1:5000/img:1");
        let mut configured = BTreeMap::new();
        configured.insert(
            "127.0.0.1:5000".to_owned(),
            RegistryCredentials {
                username: "server".into(),
                password: "p".into(),
            },
        );
        let from_config = credentials_for(&image, None, &configured).expect("configured");
        assert_eq!(from_config.username.as_deref(), Some("server"));
        let request = RegistryAuth {
            username: "client".into(),
            password: "q".into(),
            server: None,
        };
        let from_request = credentials_for(&image, Some(&request), &configured).expect("given");
        assert_eq!(from_request.username.as_deref(), Some("client"));
        assert_eq!(
            from_request.serveraddress.as_deref(),
            Some("127.0.0.1:5000")
        );
    }

    #[test]
    fn classifies_registry_answers() {
        assert!(is_auth_failure(
            "head https://127.0.0.1:5000/v2/x/manifests/1: unauthorized: authentication required"
        ));
        assert!(is_not_found("manifest for x:1 not found: manifest unknown"));
        assert!(!is_auth_failure(
            "pull access denied for nope, repository does not exist or may require 'docker login'"
        ));
    }
}
